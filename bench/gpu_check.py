"""GPU check: the planner's per-GPU prediction against what a real worker uses, on a CUDA machine.

    make gpu-check                                   # or: .venv/bin/python bench/gpu_check.py
    .venv/bin/python bench/gpu_check.py --record gpu-check.json
    .venv/bin/python bench/gpu_check.py --from gpu-check.json    # judge recorded figures again
    .venv/bin/python bench/gpu_check.py --dry-run --gpus 80GiB    # the CPU part (CI)

On a CUDA machine it writes sparse test models of realistic shapes with the gguf writer (the
header is real, the tensor data a hole in the file, so even a 70B shape costs no disk): a dense
Llama-3.1-8B-shaped Q4_K_M, a Gemma-3-4B-shaped sliding-window model, and a model of 70B-shaped
layers sized to need partial CPU offload on the live GPU. Each model is planned alone against
the live NVML inventory, started through the gateway's own worker path (``WorkerHandle`` with
the launch's ``WorkerSpec`` and environment: its CUDA_VISIBLE_DEVICES, n_gpu_layers and
tensor_split), given a few requests (a 512-token prompt and 128 greedy tokens each; zero
weights generate garbage, which is fine), then measured: the NVML "used" delta of each of its
GPUs against the moment before it started (nothing else runs meanwhile), beside NVML's
per-process figure and llama.cpp's own buffer lines.

Verdict: every predicted total within 3% of measured, and no prediction under measured by more
than 1% (exit 1 otherwise). Off a GPU, without ``--dry-run`` or ``--from``, it says why and exits
2: it never makes up a figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

import gguf  # noqa: E402
import tomli_w  # noqa: E402

from gateway.config.loading import parse_config  # noqa: E402
from gateway.config.schema import Config, ModelConfig  # noqa: E402
from gateway.placement.launch import ModelLaunch, config_models, launch_from_placement  # noqa: E402
from gateway.placement.planning import plan_config, plan_policy, read_models  # noqa: E402
from planner.devices import Device, select_devices  # noqa: E402
from planner.model_info import ModelInfo  # noqa: E402
from gateway.nvml import device_used_bytes, process_gpu_memory, read_nvml_devices  # noqa: E402
from planner.plan import Placement, Plan  # noqa: E402
from testkit.ggufmaker import model_tensor_specs, q4_k_m_types, write_header_only_model  # noqa: E402

MIB = 1024 * 1024
GIB = 1024 * MIB
TOLERANCE_PCT = 3.0  # |predicted - measured| / measured
UNDER_PCT = 1.0  # predicted may be under measured by at most this much
EXIT_PASS, EXIT_FAIL, EXIT_NO_GPU = 0, 1, 2
RECORD_FORMAT = 1

# The header-only writer puts BOS at token 0 and EOS at token 1.
EOS_TOKEN = 1
PROMPT_TOKENS = 512  # as in the H200 measurements (docs/calibration.md#gpu-check): 512-token prompt + 128 tokens
MAX_TOKENS = 128
REQUESTS = 3
N_MERGES = 1024  # llama.cpp's BPE loader needs merges; their number changes no buffer


# --------------------------------------------------------------------------------------------
# Figures, table and verdict: pure, tested on recorded figures in CI
# --------------------------------------------------------------------------------------------


@dataclass
class Measurement:
    """One model on one GPU: the plan's prediction and what was measured."""

    model: str
    gpu: int  # NVML index
    predicted_bytes: int
    measured_bytes: int | None  # NVML "used" delta after the requests; None: not measured
    buffers: dict[str, float] = field(default_factory=dict)  # llama.cpp's lines, MiB: {"CUDA0 model": 4168.09, ...}
    process_bytes: int | None = None  # NVML's per-process figure for the worker on that GPU
    after_load_bytes: int | None = None  # NVML delta right after loading, before any request
    source: str = "nvml"  # where measured_bytes comes from
    note: str = ""

    @property
    def error_pct(self) -> float | None:
        if not self.measured_bytes:
            return None
        return (self.predicted_bytes - self.measured_bytes) / self.measured_bytes * 100


@dataclass(frozen=True)
class Verdict:
    ok: bool
    failures: tuple[str, ...]


def judge(measurements: Sequence[Measurement], *, tolerance_pct: float = TOLERANCE_PCT, under_pct: float = UNDER_PCT) -> Verdict:
    """Pass when every row was measured, within ``tolerance_pct``, and never ``under_pct`` under."""
    failures = []
    if not measurements:
        failures.append("nothing was measured")
    for m in measurements:
        where = f"{m.model} on GPU {m.gpu}"
        err = m.error_pct
        if err is None:
            failures.append(f"{where}: not measured" + (f" ({m.note})" if m.note else ""))
        elif err < -under_pct:
            failures.append(f"{where}: predicted {err:+.2f}% under measured (at most {under_pct:g}% under allowed)")
        elif abs(err) > tolerance_pct:
            failures.append(f"{where}: error {err:+.2f}% (tolerance {tolerance_pct:g}%)")
    return Verdict(ok=not failures, failures=tuple(failures))


def _mib(b: int | None) -> str:
    return "-" if b is None else f"{b / MIB:,.1f}"


def _buffers_text(buffers: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:,.2f}" for k, v in buffers.items()) or "-"


def render_table(measurements: Sequence[Measurement], meta: dict[str, Any] | None = None, *, tolerance_pct: float = TOLERANCE_PCT, under_pct: float = UNDER_PCT) -> str:
    """The per-model, per-GPU table and the verdict, as printed and as in docs/gpu-validation.md."""
    lines = []
    if meta:
        parts = [f"{k} {v}" for k, v in meta.items() if v not in (None, "")]
        lines.append("gpu-check: " + ", ".join(parts))
    header = ("model", "GPU", "predicted MiB", "measured MiB", "error %", "NVML proc MiB", "llama.cpp buffers (MiB)")
    rows = [header]
    for m in measurements:
        err = m.error_pct
        rows.append(
            (
                m.model,
                str(m.gpu),
                _mib(m.predicted_bytes),
                _mib(m.measured_bytes),
                "-" if err is None else f"{err:+.2f}%",
                _mib(m.process_bytes),
                _buffers_text(m.buffers) + (f" [{m.note}]" if m.note else ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    for k, r in enumerate(rows):
        cells = [r[i].rjust(widths[i]) if 1 <= i <= 5 else r[i].ljust(widths[i]) for i in range(len(widths))]
        lines.append("  ".join(cells + [r[-1]]))
        if k == 0:
            lines.append("  ".join(["-" * w for w in widths] + ["-" * len(header[-1])]))
    verdict = judge(measurements, tolerance_pct=tolerance_pct, under_pct=under_pct)
    lines.append("")
    lines.append(
        f"tolerance: every predicted total within {tolerance_pct:g}% of measured, never more than {under_pct:g}% under"
    )
    if verdict.ok:
        lines.append(f"PASS: {len(measurements)} of {len(measurements)} within tolerance")
    else:
        lines.append(f"FAIL: {len(verdict.failures)} problem(s)")
        lines += [f"  {f}" for f in verdict.failures]
    return "\n".join(lines)


def save_record(path: str | os.PathLike[str], meta: dict[str, Any], measurements: Sequence[Measurement]) -> None:
    doc = {"format": RECORD_FORMAT, "meta": meta, "measurements": [asdict(m) for m in measurements]}
    Path(path).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def load_record(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[Measurement]]:
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if doc.get("format") != RECORD_FORMAT:
        raise ValueError(f"{path}: unknown record format {doc.get('format')!r} (expected {RECORD_FORMAT})")
    return dict(doc.get("meta") or {}), [Measurement(**m) for m in doc["measurements"]]


# --------------------------------------------------------------------------------------------
# The test models
# --------------------------------------------------------------------------------------------


# Llama-3.1-70B layers (the offload model repeats them as often as the GPU needs).
LLAMA70B_LAYER = {"n_embd": 8192, "n_head": 64, "n_head_kv": 8, "n_ff": 28672, "n_vocab": 128256}
LLAMA70B_LAYERS = 80


def llama70b_layer_bytes() -> int:
    """Bytes of one Q4_K_M 70B-shaped layer (an average over the Q4_K / Q6_K mix)."""
    n = LLAMA70B_LAYERS
    specs = model_tensor_specs(n_layers=n, tensor_types=q4_k_m_types(n), **LLAMA70B_LAYER)
    return sum(s.nbytes for s in specs if s.name.startswith("blk.")) // n


def offload_layers(budget_bytes: int, layer_bytes: int, spill_bytes: int) -> int:
    """Layers for a model that fills ``budget_bytes`` of GPUs and spills about ``spill_bytes`` to
    the CPU: never fewer than a real 70B's 80."""
    return max(LLAMA70B_LAYERS, math.ceil((budget_bytes + spill_bytes) / layer_bytes))


@dataclass(frozen=True)
class CheckModel:
    """One sparse model and the models.toml settings it runs with."""

    key: str
    description: str
    file: str
    write: Callable[[Path], Path]
    settings: dict[str, Any]
    max_tokens: int = MAX_TOKENS


def write_dense_8b(path: Path) -> Path:
    """Llama 3.1 8B Q4_K_M shape: 32 layers, n_embd 4096, 32/8 heads, n_ff 14336, vocab 128,256."""
    return write_header_only_model(
        path, arch="llama", n_layers=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336,
        n_vocab=128256, tensor_types=q4_k_m_types(32), context_length=131072, n_merges=N_MERGES,
        name="Llama 3.1 8B-shaped (zero weights)", file_type=int(gguf.LlamaFileType.MOSTLY_Q4_K_M),
    )  # fmt: skip


def write_gemma3_4b_like(path: Path) -> Path:
    """Gemma 3 4B shape: 34 layers, n_embd 2560, 8/4 heads of 256, n_ff 10240, vocab 262,144,
    tied embeddings, sliding window 1024 on 5 of every 6 layers (llama.cpp's gemma3 rule)."""
    return write_header_only_model(
        path, arch="gemma3", n_layers=34, n_embd=2560, n_head=8, n_head_kv=4, n_ff=10240,
        n_vocab=262144, key_length=256, value_length=256, tensor_types=q4_k_m_types(34, q6_k_matrix="token_embd.weight"),
        tied=True, qk_norm=True, post_norms=True, sliding_window=1024, context_length=131072,
        n_merges=N_MERGES, name="Gemma 3 4B-shaped (zero weights)",
        file_type=int(gguf.LlamaFileType.MOSTLY_Q4_K_M),
    )  # fmt: skip


def write_offload_model(path: Path, n_layers: int) -> Path:
    """``n_layers`` Llama-3.1-70B-shaped Q4_K_M layers (80 is the real 70B)."""
    return write_header_only_model(
        path, arch="llama", n_layers=n_layers, tensor_types=q4_k_m_types(n_layers),
        context_length=131072, n_merges=N_MERGES, name=f"Llama 70B-shaped x{n_layers} layers (zero weights)",
        file_type=int(gguf.LlamaFileType.MOSTLY_Q4_K_M), **LLAMA70B_LAYER,
    )  # fmt: skip


def check_models(offload_n_layers: int, offload_vram_mib: int | None = None) -> list[CheckModel]:
    big: dict[str, Any] = {"n_ctx": 4096, "flash_attn": True, "allow_cpu_offload": True, "use_mmap": False}
    if offload_vram_mib is not None:
        big["max_vram_mib"] = offload_vram_mib
    return [
        CheckModel("dense-8b", "Llama 3.1 8B Q4_K_M shape, flash attention", "dense-8b.gguf", write_dense_8b,
                  {"n_ctx": 8192, "flash_attn": True}),
        CheckModel("dense-8b-nofa", "the same file without flash attention, n_ctx 16384", "dense-8b.gguf", write_dense_8b,
                  {"n_ctx": 16384, "flash_attn": False}),
        CheckModel("gemma3-4b-swa", "Gemma 3 4B shape, sliding-window KV (swa_full = false)", "gemma3-4b.gguf",
                  write_gemma3_4b_like, {"n_ctx": 32768, "flash_attn": True, "swa_full": False}),
        CheckModel("offload-70b-layers", f"{offload_n_layers} Llama-70B-shaped layers, partial CPU offload",
                  f"offload-{offload_n_layers}l.gguf", lambda p: write_offload_model(p, offload_n_layers), big,
                  max_tokens=16),
    ]  # fmt: skip


def write_models(models: Sequence[CheckModel], workdir: Path) -> dict[str, Path]:
    """Write each distinct file once; return model key -> path."""
    written: dict[str, Path] = {}
    out = {}
    for m in models:
        if m.file not in written:
            written[m.file] = m.write(workdir / m.file)
        out[m.key] = written[m.file]
    return out


def disk_bytes(path: Path) -> int:
    """Bytes the file really occupies (a sparse file: far less than its size)."""
    return os.stat(path).st_blocks * 512


# --------------------------------------------------------------------------------------------
# Planning one model the way the gateway does
# --------------------------------------------------------------------------------------------


def config_text(model: CheckModel, path: Path, *, gpus: Sequence[str] | None, devices: Sequence[int] | None, reserve_mib: int) -> str:
    """The models.toml the check plans ``model`` with (``--configs`` writes it for ``gateway plan --verify``)."""
    planner: dict[str, Any] = {"reserve_mib": reserve_mib}
    if gpus:
        planner["gpus"] = list(gpus)
    if devices is not None:
        planner["devices"] = list(devices)
    return tomli_w.dumps({"planner": planner, "models": [{"name": model.key, "path": str(path), **model.settings}]})


def config_for(model: CheckModel, path: Path, **kw: Any) -> Config:
    return parse_config(config_text(model, path, **kw), environ={})


@dataclass
class Planned:
    model: CheckModel
    config: Config
    info: ModelInfo
    plan: Plan
    path: Path

    @property
    def placement(self) -> Placement | None:
        return self.plan.placement(self.model.key)

    @property
    def model_config(self) -> ModelConfig:
        return config_models(self.config)[self.model.key]

    def launch(self) -> ModelLaunch:
        assert self.placement is not None
        return launch_from_placement(self.placement, str(self.path))


def plan_one(model: CheckModel, path: Path, devices_now: Sequence[Device], **kw: Any) -> Planned:
    config = config_for(model, path, **kw)
    files = read_models(config)
    if files.problems:
        raise SystemExit("\n".join(files.problems))
    return Planned(model, config, files.infos[model.key], plan_config(config, files.infos, devices_now), path)


def budget_bytes(config: Config, devices_now: Sequence[Device]) -> int:
    usable, _ = select_devices(devices_now, plan_policy(config).devices)
    return sum(u.budget_bytes for u in usable)


def placement_text(p: Planned) -> str:
    pl = p.placement
    if pl is None:
        return "    does not fit: " + "; ".join(p.plan.problems)
    n = p.info.n_layers + 1
    on_gpu = sum(pl.layer_counts)
    lines = [
        f"    n_gpu_layers {pl.n_gpu_layers}, CUDA_VISIBLE_DEVICES={pl.cuda_visible_devices!r}, "
        f"tensor_split {list(pl.tensor_split) if pl.tensor_split else None}, {on_gpu} of {n} layers on GPU"
        + (" (partial offload)" if 0 < on_gpu < n else "")
    ]
    for slot, gpu in enumerate(pl.gpus):
        d = pl.memory.devices[slot]
        lines.append(
            f"    GPU {gpu}: {pl.layer_counts[slot]} layers, predicted {d.total_bytes / MIB:,.1f} MiB "
            f"(weights {d.weights_bytes / MIB:,.1f}, KV {d.kv_bytes / MIB:,.1f}, compute {d.compute_bytes / MIB:,.1f}, "
            f"context + growth {(d.overhead_bytes + d.growth_bytes) / MIB:,.0f})"
        )
    lines.append(f"    host: {pl.memory.host.total_bytes / MIB:,.1f} MiB")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# NVML
# --------------------------------------------------------------------------------------------


def machine_meta(indices: Sequence[int]) -> dict[str, Any]:
    """Card, driver, CUDA (the driver's) and llama-cpp-python version, for the record."""
    meta: dict[str, Any] = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")}
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            cards = []
            for i in indices:
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                name = pynvml.nvmlDeviceGetName(h)
                name = name.decode() if isinstance(name, bytes) else str(name)
                cards.append(f"{i}: {name} ({pynvml.nvmlDeviceGetMemoryInfo(h).total // MIB:,} MiB)")
            meta["card"] = "; ".join(cards)
            driver = pynvml.nvmlSystemGetDriverVersion()
            meta["driver"] = driver.decode() if isinstance(driver, bytes) else str(driver)
            cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
            meta["CUDA"] = f"{cuda // 1000}.{cuda % 1000 // 10}"
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # noqa: BLE001 - the record says what could not be read
        meta["nvml"] = f"unreadable: {exc}"
    try:
        from importlib.metadata import version

        meta["llama-cpp-python"] = version("llama-cpp-python")
    except Exception:  # noqa: BLE001
        meta["llama-cpp-python"] = "unknown"
    return meta


# --------------------------------------------------------------------------------------------
# One model through the gateway's worker path
# --------------------------------------------------------------------------------------------


def prompt_tokens(n_vocab: int, n: int = PROMPT_TOKENS) -> list[int]:
    """``n`` token ids, none of them BOS (0) or EOS (1)."""
    return [2 + (i * 7919) % (n_vocab - 2) for i in range(n)]


def request_params(n_vocab: int, max_tokens: int) -> dict[str, Any]:
    """A completion that runs to ``max_tokens``: EOS is banned, sampling is greedy."""
    return {
        "prompt": prompt_tokens(n_vocab),
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "logit_bias": {str(EOS_TOKEN): -1e9},
    }


def buffers_for_slot(allocated: dict[str, Any], slot: int) -> dict[str, float]:
    """llama.cpp's buffer lines of one device (``CUDA<slot>``), plus the host compute buffer."""
    name = f"CUDA{slot}"
    out: dict[str, float] = {}
    for key, label in (("model_mib", "model"), ("kv_mib", "KV"), ("output_mib", "output"), ("compute_mib", "compute")):
        value = (allocated.get(key) or {}).get(name)
        if value:
            out[f"{name} {label}"] = float(value)
    return out


async def _wait_released(before: dict[int, int], timeout: float = 30.0) -> None:
    """Wait until each GPU's usage is back near where it was (the worker's memory is freed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = device_used_bytes(list(before))
        if all(now.get(i, 0) <= b + 64 * MIB for i, b in before.items()):
            return
        await asyncio.sleep(0.5)


async def measure(planned: Planned, *, requests: int, load_timeout: float, log: Callable[[str], None] = print) -> list[Measurement]:
    """Start the model's worker as the gateway does, send requests, measure each of its GPUs."""
    from gateway.engine.protocol import Error, Op, Result
    from gateway.runtime.requests import WorkerExited
    from gateway.runtime.states import ModelState
    from gateway.runtime.worker_process import WorkerProcess

    placement = planned.placement
    assert placement is not None and placement.gpus
    launch = planned.launch()
    spec = launch.worker_spec(planned.model_config)
    env = launch.worker_env(dict(os.environ))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    gpus = list(placement.gpus)
    predicted = {g: placement.memory.devices[slot].total_bytes for slot, g in enumerate(gpus)}

    def failed(note: str) -> list[Measurement]:
        return [Measurement(planned.model.key, g, predicted[g], None, note=note) for g in gpus]

    before = device_used_bytes(gpus)
    handle = WorkerProcess(spec, env)
    started = time.monotonic()
    await handle.start()
    try:
        state = await handle.wait_ready(load_timeout)
        if state != ModelState.READY:
            return failed(f"load: {handle.reason or state.value}")
        log(f"  loaded in {time.monotonic() - started:.1f} s")
        after_load = device_used_bytes(gpus)
        params = request_params(planned.info.n_vocab, planned.model.max_tokens)
        for k in range(requests):
            t0 = time.monotonic()
            async for msg in handle.request(Op.COMPLETION, params, stream=False):
                if isinstance(msg, Error):
                    return failed(f"request {k + 1}: {msg.kind.value}: {msg.message}")
                if isinstance(msg, WorkerExited):
                    return failed(f"request {k + 1}: worker_exited: {msg.message}")
                if isinstance(msg, Result):
                    usage = msg.data.get("usage", {})
                    log(f"  request {k + 1}: {usage.get('prompt_tokens')} + {usage.get('completion_tokens')} tokens in {time.monotonic() - t0:.1f} s")
        await asyncio.sleep(1.0)  # let the allocator settle
        after = device_used_bytes(gpus)
        per_process = process_gpu_memory(handle.pid or 0, gpus)
    finally:
        await handle.stop()
    await _wait_released(before)
    out = []
    for slot, g in enumerate(gpus):
        out.append(
            Measurement(
                model=planned.model.key,
                gpu=g,
                predicted_bytes=predicted[g],
                measured_bytes=after[g] - before[g] if g in after and g in before else None,
                buffers=buffers_for_slot(handle.allocated, slot),
                process_bytes=per_process.get(str(g)),
                after_load_bytes=after_load[g] - before[g] if g in after_load and g in before else None,
                source="nvml used delta",
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Modes
# --------------------------------------------------------------------------------------------


def _gpus_flag(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


def _devices_flag(text: str, devices_now: Sequence[Device], reserve_mib: int) -> list[int] | None:
    if text == "all":
        return None
    if text == "best":
        if not devices_now:
            return None
        return [max(devices_now, key=lambda d: (d.free_bytes, -d.index)).index]
    return [int(x) for x in text.split(",") if x.strip()]


def prepare(args: argparse.Namespace, workdir: Path, devices_now: Sequence[Device], gpus_decl: list[str] | None, log: Callable[[str], None]) -> list[Planned]:
    """Write the models (the offload one sized against the GPUs) and plan each alone."""
    devices = _devices_flag(args.devices, devices_now, args.reserve_mib)
    probe = config_for(check_models(LLAMA70B_LAYERS)[0], workdir / "probe.gguf", gpus=gpus_decl, devices=devices, reserve_mib=args.reserve_mib)
    budget = budget_bytes(probe, devices_now)
    if args.offload_vram_gib is not None:
        budget = min(budget, int(args.offload_vram_gib * GIB))
    n_big = offload_layers(budget, llama70b_layer_bytes(), int(args.offload_spill_gib * GIB))
    vram_cap = int(args.offload_vram_gib * 1024) if args.offload_vram_gib is not None else None
    models = [m for m in check_models(n_big, vram_cap) if not args.only or m.key in args.only]
    t0 = time.monotonic()
    paths = write_models(models, workdir)
    log(f"wrote {len(set(paths.values()))} sparse model(s) to {workdir} in {time.monotonic() - t0:.1f} s")
    out = []
    for m in models:
        kw: dict[str, Any] = {"gpus": gpus_decl, "devices": devices, "reserve_mib": args.reserve_mib}
        out.append(plan_one(m, paths[m.key], devices_now, **kw))
        if args.configs:
            Path(args.configs).mkdir(parents=True, exist_ok=True)
            (Path(args.configs) / f"{m.key}.toml").write_text(config_text(m, paths[m.key], **kw))
    if args.configs:
        log(f"wrote each model's models.toml to {args.configs} (for gateway plan --config ... --verify)")
    return out


def describe(p: Planned) -> str:
    info = p.info
    size = os.stat(p.path).st_size
    return (
        f"{p.model.key}: {p.model.description}\n"
        f"    {p.path.name}: {info.architecture}, {info.n_layers} layers, n_embd {info.n_embd}, "
        f"{info.n_head}/{info.n_head_kv[0]} heads, vocab {info.n_vocab:,}, "
        f"{'sliding window ' + str(info.sliding_window) + ', ' if info.sliding_window else ''}"
        f"tensors {info.total_bytes / GIB:,.2f} GiB, file {size / GIB:,.2f} GiB, on disk {disk_bytes(p.path) / MIB:,.1f} MiB"
    )


def run_dry(args: argparse.Namespace) -> int:
    """The CPU part: write and read back the sparse models, plan them against a declared inventory."""
    from planner.devices import declared_devices

    gpus_decl = _gpus_flag(args.gpus) or ["80GiB"]
    devices_now = declared_devices(gpus_decl)
    with _workdir(args) as workdir:
        planned = prepare(args, workdir, devices_now, gpus_decl, print)
        print(f"plan against the declared inventory {', '.join(gpus_decl)} (reserve {args.reserve_mib:,} MiB per GPU):")
        ok = True
        for p in planned:
            print(describe(p))
            print(placement_text(p))
            ok &= p.placement is not None
            if args.check_load:
                ok &= _check_load(p)
    print("dry run: nothing was measured; on a CUDA machine run without --dry-run")
    return EXIT_PASS if ok else EXIT_FAIL


def _check_load(p: Planned) -> bool:
    """llama.cpp (this build, no GPU) reads the header: a no_alloc dry run of the model on the CPU."""
    from gateway.engine.protocol import WorkerSpec
    from gateway.placement.verify import dry_run
    from gateway.placement.mapping import run_settings, worker_context

    # The model's context as the planner sized it, every layer on the CPU.
    spec = WorkerSpec(name=p.model.key, model_path=str(p.path), **worker_context(run_settings(p.model_config)))
    run = dry_run(spec, {**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    if not run.ok:
        print(f"    llama.cpp could not read it: {run.error}")
        return False
    b = run.buffers
    print(f"    llama.cpp (CPU, no_alloc) reads it: KV {b.kv_size_mib:,.2f} MiB, compute {sum(b.compute.values()):,.2f} MiB")
    return True


@contextlib.contextmanager
def _workdir(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    if args.workdir:
        path = Path(args.workdir)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        yield Path(tmp)


def run_gpu(args: argparse.Namespace) -> int:
    from gateway.placement.verify import cuda_status, unavailable_message

    status = cuda_status()
    if not status.available:
        print(
            "error: " + unavailable_message(status, what="the GPU check", outcome="nothing was measured")
            + ". Run it on a CUDA machine (docs/gpu-validation.md); --dry-run runs the CPU part here.",
            file=sys.stderr,
        )
        return EXIT_NO_GPU
    devices_now = read_nvml_devices()
    with _workdir(args) as workdir:
        planned = prepare(args, workdir, devices_now, None, print)
        used = sorted({g for p in planned if p.placement for g in p.placement.gpus})
        meta = machine_meta(used or [d.index for d in devices_now])
        print(", ".join(f"{k} {v}" for k, v in meta.items()))
        results: list[Measurement] = []
        for p in planned:
            # Plan again now: the inventory's free memory is what the gateway would see.
            p = plan_one(p.model, p.path, read_nvml_devices(), gpus=None, devices=_devices_flag(args.devices, devices_now, args.reserve_mib), reserve_mib=args.reserve_mib)
            print(describe(p))
            print(placement_text(p))
            if p.placement is None or not p.placement.gpus:
                results.append(Measurement(p.model.key, -1, 0, None, note="not placed on a GPU: " + "; ".join(p.plan.problems)))
                continue
            results += asyncio.run(measure(p, requests=args.requests, load_timeout=args.load_timeout))
    print()
    print(render_table(results, meta, tolerance_pct=args.tolerance, under_pct=args.under))
    if args.record:
        save_record(args.record, meta, results)
        print(f"recorded the raw figures in {args.record}")
    return EXIT_PASS if judge(results, tolerance_pct=args.tolerance, under_pct=args.under).ok else EXIT_FAIL


def run_from(args: argparse.Namespace) -> int:
    meta, results = load_record(args.from_file)
    print(render_table(results, meta, tolerance_pct=args.tolerance, under_pct=args.under))
    return EXIT_PASS if judge(results, tolerance_pct=args.tolerance, under_pct=args.under).ok else EXIT_FAIL


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="CPU part: write, read back and plan the models against --gpus")
    mode.add_argument("--from", dest="from_file", metavar="FILE.json", help="only render and judge recorded figures")
    p.add_argument("--record", metavar="FILE.json", help="save the raw figures of a GPU run")
    p.add_argument("--gpus", help="--dry-run: declared inventory, e.g. 80GiB or 24GiB,24GiB (default 80GiB)")
    p.add_argument("--devices", default="best", help="GPUs to use: best (most free, default), all, or indices 0,1")
    p.add_argument("--reserve-mib", type=int, default=1024, help="kept free on every GPU (default 1024)")
    p.add_argument("--offload-spill-gib", type=float, default=4.0, help="how much of the offload model stays on the CPU (default 4)")
    p.add_argument("--offload-vram-gib", type=float, help="cap the offload model's VRAM (max_vram_mib): a smaller, faster model")
    p.add_argument("--only", action="append", help="run only this model (repeatable): dense-8b, dense-8b-nofa, gemma3-4b-swa, offload-70b-layers")
    p.add_argument("--requests", type=int, default=REQUESTS, help=f"requests per model before measuring (default {REQUESTS})")
    p.add_argument("--load-timeout", type=float, default=900.0, help="seconds a model may take to load (default 900)")
    p.add_argument("--tolerance", type=float, default=TOLERANCE_PCT, help=f"max |error| in percent (default {TOLERANCE_PCT:g})")
    p.add_argument("--under", type=float, default=UNDER_PCT, help=f"max under-prediction in percent (default {UNDER_PCT:g})")
    p.add_argument("--workdir", help="write the models here and keep them (default: a temporary folder)")
    p.add_argument("--configs", metavar="DIR", help="write each model's models.toml here (use with --workdir: they name its files)")
    p.add_argument("--check-load", action="store_true", help="--dry-run: also have llama.cpp (CPU, no_alloc) read each model")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.from_file:
        return run_from(args)
    if args.dry_run:
        return run_dry(args)
    return run_gpu(args)


if __name__ == "__main__":
    sys.exit(main())
