"""Learning from what was measured (issue 23, item 4): a model that needed more than planned is
planned with the measured figure from then on.

After each load the pool (gateway.runtime.pool) hands ``measure`` the model's launch and what
its worker reported: llama.cpp's buffers (the Ready message's ``allocated``) and, on a GPU,
NVML's memory of its process. Per GPU, *measured* is the buffers llama.cpp allocated there
(weights, KV cache, output, compute) plus what buffers cannot show and the plan counts the same
way (the CUDA context and the growth after the first requests), or NVML's figure where that is
larger; the *estimate* is the planner's figure without anything learned. A build without CUDA
prints no GPU buffer (its compute is in host memory): it measures nothing per GPU.

The learned figure of a model is the most it needed beyond its estimate on any of its GPUs,
when that is more than ``LEARN_MIN_BYTES`` (printing rounding and allocation granularity are
not learned). It is planned on each GPU that holds the model's layers (``ModelRequest.
learned_bytes``) until a later load measures another figure, or none. It holds only for the
settings it was measured with (``fingerprint``: the model's path and the context the planner
sized); a model whose settings changed is estimated afresh.

``LearnedMemory`` is the shell's store: one small JSON file (``[planner] learned_file``, by
default ``learned-memory.json`` in the gateway's cache folder, which survives restarts and is
writable in the Docker image and the Kubernetes deployment, unlike the config's folder),
read once when the gateway starts and written atomically (a temporary file renamed over it)
whenever a figure changes. The planner gets the figures as data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config.model_files import default_cache_dir
from gateway.config.schema import Config, ModelConfig
from planner.llama_log import llama_buffers_per_gpu
from gateway.placement.launch import ModelLaunch
from gateway.placement.mapping import run_settings
from planner.units import MIB

log = logging.getLogger("gateway")

LEARNED_FILE_NAME = "learned-memory.json"
LEARNED_FILE_VERSION = 1
# Below this, a measured excess is llama.cpp's printing rounding (0.01 MiB a buffer) or the
# allocator's granularity (NVML counts 2 MiB pages), not an error of the estimate.
LEARN_MIN_BYTES = 8 * MIB


def learned_path(config: Config, environ: Mapping[str, str]) -> Path:
    """Where the learned figures are kept: ``[planner] learned_file`` (relative to the config's
    folder), else ``learned-memory.json`` in the cache folder (gateway.config.model_files)."""
    if config.planner.learned_file is not None:
        return Path(config.planner.learned_file)
    return default_cache_dir(dict(environ)) / LEARNED_FILE_NAME


def fingerprint(model: ModelConfig) -> str:
    """What a learned figure was measured with: the model's file and the context the planner
    sized (gateway.placement.mapping.run_settings), hashed."""
    what = f"{model.path}|{run_settings(model)!r}|{model.n_gpu_layers}|{model.split_mode}|{model.tensor_split}"
    return hashlib.sha256(what.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Measurement:
    """One load of one model, per GPU index: the planner's estimate (without anything learned),
    what the load needed, and what was learned when it was planned."""

    estimate: Mapping[int, int]
    measured: Mapping[int, int]
    learned: Mapping[int, int]

    @property
    def error(self) -> dict[int, int]:
        """Measured less estimated, by GPU (negative: the estimate was larger)."""
        return {gpu: self.measured[gpu] - self.estimate[gpu] for gpu in self.measured}

    @property
    def excess(self) -> int:
        """The figure to learn: the most it needed beyond the estimate on a GPU, 0 when within
        ``LEARN_MIN_BYTES`` of it everywhere."""
        worst = max(self.error.values(), default=0)
        return worst if worst > LEARN_MIN_BYTES else 0


def measure(launch: ModelLaunch, allocated: Mapping[str, Any], gpu_used_bytes: Mapping[str, int]) -> Measurement | None:
    """Compare a load with its plan; None when nothing was measured on its GPUs (no GPU, a build
    without CUDA, or a worker that reported no buffers and NVML that saw nothing)."""
    if not launch.devices:
        return None
    order = [d.gpu for d in launch.devices]
    buffers = llama_buffers_per_gpu(allocated, order)
    nvml = {int(gpu): int(used) for gpu, used in gpu_used_bytes.items()}
    if not buffers and not nvml:
        return None
    measured = {}
    for d in launch.devices:
        figures = []
        if buffers:
            figures.append(buffers.get(d.gpu, 0) + d.overhead_bytes)
        if d.gpu in nvml:
            figures.append(nvml[d.gpu])
        if figures:
            measured[d.gpu] = max(figures)
    return Measurement(
        estimate={d.gpu: d.estimate_bytes for d in launch.devices if d.gpu in measured},
        measured=measured,
        learned={d.gpu: d.learned_bytes for d in launch.devices if d.gpu in measured},
    )


@dataclass(frozen=True)
class Learned:
    """One model's learned figure and what it was measured with."""

    excess_bytes: int  # per GPU holding its layers, beyond the estimate
    fingerprint: str


class LearnedMemory:
    """The learned figures, by model name; kept in ``path`` (None: in memory only, as in tests)."""

    def __init__(self, path: Path | None = None, figures: Mapping[str, Learned] | None = None) -> None:
        self.path = path
        self._figures: dict[str, Learned] = dict(figures or {})

    @classmethod
    def load(cls, path: Path) -> LearnedMemory:
        """The figures kept in ``path``; none when it does not exist yet. An unreadable file is
        named in a warning and replaced at the next figure learned (the estimates hold meanwhile)."""
        try:
            raw = json.loads(path.read_text())
            figures = {
                str(name): Learned(int(item["excess_bytes"]), str(item["fingerprint"]))
                for name, item in raw["models"].items()
            }
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("learned memory: %s cannot be read (%s): planning with the estimates until a load measures more", path, exc)
            return cls(path)
        return cls(path, figures)

    def bytes_for(self, model: ModelConfig) -> int:
        """The learned figure for the model as configured now; 0 when none was learned with
        these settings."""
        got = self._figures.get(model.name)
        return got.excess_bytes if got is not None and got.fingerprint == fingerprint(model) else 0

    def for_config(self, config: Config) -> dict[str, int]:
        """Every model's learned figure (0 for most)."""
        return {m.name: self.bytes_for(m) for m in config.models}

    def record(self, model: ModelConfig, measurement: Measurement) -> None:
        """Keep what a load measured: a new or larger figure is warned about (once: the next
        loads plan with it), one the estimate now meets is dropped; the file is rewritten when
        the figure changed."""
        before = self.bytes_for(model)
        excess = measurement.excess
        if excess == before:
            return
        if excess > before:
            worst = max(measurement.error, key=lambda g: measurement.error[g])
            log.warning(
                "model %s used more GPU memory than planned: %s MiB measured on GPU %d, %s MiB estimated "
                "(%s MiB more); planning it with the measured figure from now on (kept in %s)",
                model.name,
                f"{measurement.measured[worst] / MIB:,.0f}",
                worst,
                f"{measurement.estimate[worst] / MIB:,.0f}",
                f"{excess / MIB:,.0f}",
                self.path or "memory",
            )
        else:
            log.info(
                "model %s: measured %s MiB beyond its estimate (was %s MiB): planning it with that",
                model.name,
                f"{excess / MIB:,.0f}",
                f"{before / MIB:,.0f}",
            )
        if excess:
            self._figures[model.name] = Learned(excess, fingerprint(model))
        else:
            self._figures.pop(model.name, None)
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        doc = {
            "version": LEARNED_FILE_VERSION,
            "models": {name: dataclasses.asdict(item) for name, item in sorted(self._figures.items())},
        }
        try:
            write_atomically(self.path, json.dumps(doc, indent=2) + "\n")
        except OSError as exc:
            log.warning("learned memory: cannot write %s (%s): the figures hold until the gateway stops", self.path, exc)


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old file or the new one, never part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
