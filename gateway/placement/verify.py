"""``gateway plan --verify``: confirm a plan with llama.cpp itself before anything is allocated.

Each model placed on a GPU is loaded once, in its own process, exactly as its worker would load
it (the same ``CUDA_VISIBLE_DEVICES``, ``tensor_split``, ``n_gpu_layers`` and context
parameters, built by ``gateway.engine.llama_params`` from the launch's ``WorkerSpec`` for both, in
the launch's ``worker_env``: one context with the model's slots), but with ``no_alloc = True`` and
``load_mode = LLAMA_LOAD_MODE_NONE``: llama.cpp then reads only the header, reserves the compute
graphs and prints what it *would* allocate, while allocating nothing but the CUDA context (H200:
the same 304.00 / 1886.01 MiB compute buffers as a real load, in 0.53 s;
docs/calibration.md#dry-run).

What a dry run prints, and so what is compared with the planner:

- ``sched_reserve: CUDA<i> compute buffer size`` per GPU, and the host's (``CUDA_Host``/``CPU``):
  exact; compared per device with the planner's ``compute_bytes``.
- ``llama_kv_cache: size = ...``: the whole cache over every device (the per-buffer KV lines
  print 0.00 without allocation); compared with the planner's KV summed over GPUs and host.
- ``load_tensors: offloaded k/n layers``: compared with the planned layer count.

Weights are not compared: a dry run prints 0.00 for every model buffer (the planner's weights
are exact from the header anyway, tests/unit/planner/test_memory_h200.py).

Each dry run is ``python -m gateway.engine.dry_run '<WorkerSpec JSON>'`` (one JSON line back).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.config.schema import Config
from gateway.engine.dry_run import DryRun
from gateway.engine.process import exit_reason
from gateway.engine.protocol import WorkerSpec
from gateway.errors import VerifyError
from gateway.nvml import read_nvml_devices
from gateway.placement.launch import ModelLaunch, config_models, launches_from_plan
from planner.llama_log import gpu_buffer_slot
from planner.plan import Placement, Plan
from planner.units import MIB

# llama.cpp prints MiB with two decimals: one printed figure is within 0.005 MiB of the truth.
PRINT_ROUNDING_BYTES = int(0.01 * MIB)
# Compute buffers: the planner's formulas are within 1% of llama.cpp on every calibrated case
# (tests/unit/planner/test_memory_h200.py); a difference beyond 2% is reported as a mismatch.
COMPUTE_TOLERANCE = 0.02
DRY_RUN_TIMEOUT_S = 600.0
REPO_ROOT = Path(__file__).resolve().parents[2]  # so the child imports this checkout's gateway



# --------------------------------------------------------------------------------------------
# Is there a CUDA build and a GPU?
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CudaStatus:
    gpu_offload: bool  # llama_cpp.llama_supports_gpu_offload()
    nvml_gpus: int  # GPUs NVML sees
    detail: str = ""  # why gpu_offload is False when llama_cpp could not even be imported

    @property
    def available(self) -> bool:
        return self.gpu_offload and self.nvml_gpus > 0


def _llama_supports_gpu_offload(timeout: float = 60.0) -> tuple[bool, str]:
    """Ask llama-cpp-python in a child process, so this one never creates a CUDA context (which
    would change the free memory the planner and the GPU check read from NVML)."""
    code = "import sys, llama_cpp; sys.stdout.write('yes' if llama_cpp.llama_supports_gpu_offload() else 'no')"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=dict(os.environ), check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"cannot ask llama_cpp: {exc}"
    if proc.returncode != 0:
        tail = " ".join(proc.stderr.strip().splitlines()[-1:])
        return False, f"llama_cpp does not import: {tail}"
    return proc.stdout.strip().endswith("yes"), ""


def cuda_status() -> CudaStatus:
    offload, detail = _llama_supports_gpu_offload()
    return CudaStatus(gpu_offload=offload, nvml_gpus=len(read_nvml_devices()), detail=detail)


def unavailable_message(status: CudaStatus, *, what: str = "plan --verify", outcome: str = "the plan is not verified") -> str:
    """One line: what is missing, with the two facts that say so."""
    offload = f"llama_supports_gpu_offload() is {status.gpu_offload}"
    if status.detail:
        offload += f": {status.detail}"
    gpus = "NVML found no GPU" if status.nvml_gpus == 0 else f"NVML found {status.nvml_gpus} GPU(s)"
    if not status.gpu_offload and status.nvml_gpus == 0:
        has = f"neither ({offload}, {gpus})"
    elif not status.gpu_offload:
        has = f"an NVIDIA GPU but no CUDA build of llama-cpp-python ({offload}; {gpus})"
    else:
        has = f"a CUDA build but no NVIDIA GPU ({offload}, {gpus})"
    return f"{what} needs llama-cpp-python built with CUDA and an NVIDIA GPU; this machine has {has}: {outcome}"


def require_cuda(status: CudaStatus | None = None) -> CudaStatus:
    status = status or cuda_status()
    if not status.available:
        raise VerifyError(unavailable_message(status))
    return status


def dry_run(spec: WorkerSpec, env: Mapping[str, str], *, timeout: float = DRY_RUN_TIMEOUT_S) -> DryRun:
    """One no_alloc load of ``spec`` in a child process with the worker's environment."""
    root = str(REPO_ROOT)
    child_env = dict(env)
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (root, child_env.get("PYTHONPATH", "")) if p)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "gateway.engine.dry_run", spec.to_json()],
            capture_output=True,
            timeout=timeout,
            env=child_env,
            check=False,
            cwd=root,
        )
    except subprocess.TimeoutExpired:
        return DryRun(ok=False, error=f"the dry run took longer than {timeout:g} s")
    last = [line for line in proc.stdout.decode(errors="replace").splitlines() if line.strip()]
    try:
        doc = json.loads(last[-1]) if last else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        lines = [line for line in proc.stderr.decode(errors="replace").splitlines() if line.strip()]
        return DryRun(ok=False, error=exit_reason("the dry run", proc.returncode, lines))
    return DryRun(
        ok=bool(doc.get("ok")),
        lines=tuple(doc.get("lines") or ()),
        seconds=float(doc.get("seconds") or 0.0),
        error=doc.get("error"),
    )


# --------------------------------------------------------------------------------------------
# Planner vs llama.cpp
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyRow:
    """One figure of one model: the planner's and llama.cpp's (dry run)."""

    model: str
    device: str  # "GPU 0 (CUDA0)", "host (CUDA_Host)", "all devices"
    what: str  # "compute", "KV", "layers"
    planned: int  # bytes, or a layer count when what == "layers"
    llama: int | None  # None: the dry run failed (see error)
    tolerance: int = 0
    error: str | None = None

    @property
    def unit(self) -> str:
        return "layers" if self.what == "layers" else "bytes"

    @property
    def diff(self) -> int | None:
        return None if self.llama is None else self.planned - self.llama

    @property
    def ok(self) -> bool:
        return self.llama is not None and abs(self.planned - self.llama) <= self.tolerance


def _mib_bytes(mib: float) -> int:
    return round(mib * MIB)


def compare_dry_run(placement: Placement, run: DryRun, *, compute_tolerance: float = COMPUTE_TOLERANCE) -> list[VerifyRow]:
    """The planner's compute, KV and layer figures for one placement beside a dry run's."""
    name = placement.name
    if not run.ok:
        return [VerifyRow(name, "-", "dry run", 0, None, error=run.error or "the dry run failed")]
    buffers = run.buffers
    rows: list[VerifyRow] = []
    mem = placement.memory
    for slot, gpu in enumerate(placement.gpus):
        planned = mem.devices[slot].compute_bytes
        llama = _mib_bytes(buffers.compute.get(f"CUDA{slot}", 0.0))
        tol = max(PRINT_ROUNDING_BYTES, int(compute_tolerance * max(planned, llama)))
        rows.append(VerifyRow(name, f"GPU {gpu} (CUDA{slot})", "compute", planned, llama, tol))
    host_buffers = sorted(b for b in buffers.compute if gpu_buffer_slot(b) is None)
    host_llama = _mib_bytes(sum(buffers.compute[b] for b in host_buffers))
    host_planned = mem.host.compute_bytes
    rows.append(
        VerifyRow(
            name,
            f"host ({'+'.join(host_buffers) or 'none'})",
            "compute",
            host_planned,
            host_llama,
            max(PRINT_ROUNDING_BYTES, int(compute_tolerance * max(host_planned, host_llama))),
        )
    )
    kv_planned = sum(d.kv_bytes for d in mem.devices) + mem.host.kv_bytes
    kv_lines = sum(1 for line in run.lines if "llama_kv_cache: size =" in line)
    rows.append(
        VerifyRow(
            name,
            "all devices",
            "KV",
            kv_planned,
            _mib_bytes(buffers.kv_size_mib),
            PRINT_ROUNDING_BYTES * max(1, kv_lines),
        )
    )
    if buffers.offloaded_layers is not None:
        rows.append(VerifyRow(name, "all GPUs", "layers", sum(placement.layer_counts), buffers.offloaded_layers))
    return rows


Runner = Callable[[WorkerSpec, Mapping[str, str]], DryRun]


def verify_plan(
    config: Config,
    plan: Plan,
    paths: Mapping[str, str | os.PathLike[str]],
    *,
    runner: Runner | None = None,
    status: CudaStatus | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[VerifyRow]:
    """Dry-run every model the plan puts on a GPU and compare llama.cpp's figures with ours.

    Raises VerifyError, before anything runs, where there is no CUDA build or no GPU. CPU-only
    models are not dry-run (nothing of theirs is on a GPU). ``runner`` stands in for
    ``dry_run`` in tests.
    """
    if runner is None:
        require_cuda(status)
        runner = dry_run
    models = config_models(config)
    launches: dict[str, ModelLaunch] = launches_from_plan(plan, {n: str(p) for n, p in paths.items()})
    base_env = dict(os.environ if environ is None else environ)
    rows: list[VerifyRow] = []
    for placement in plan.placements:
        if not placement.gpus:
            continue
        launch = launches[placement.name]
        spec = launch.worker_spec(models[placement.name])
        rows += compare_dry_run(placement, runner(spec, launch.worker_env(base_env)))
    return rows


def _fmt(row: VerifyRow, value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if row.unit == "layers" else f"{value / MIB:,.2f}"


def format_verify_table(rows: Sequence[VerifyRow]) -> str:
    """A table of planned vs llama.cpp figures, then one line that sums it up."""
    if not rows:
        return "plan --verify: no model is placed on a GPU; nothing to verify"
    header = ("model", "device", "what", "planned", "llama.cpp", "diff", "diff %", "status")
    table = [header]
    for r in rows:
        if r.llama is None:
            table.append((r.model, r.device, r.what, _fmt(r, r.planned), "-", "-", "-", f"FAILED: {r.error}"))
            continue
        diff = r.planned - r.llama
        pct = f"{diff / r.llama * 100:+.1f}%" if r.llama else ("+0.0%" if diff == 0 else "n/a")
        diff_text = f"{diff:+,}" if r.unit == "layers" else f"{diff / MIB:+,.2f}"
        table.append((r.model, r.device, r.what, _fmt(r, r.planned), _fmt(r, r.llama), diff_text, pct, "ok" if r.ok else "DIFFERS"))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    right = {3, 4, 5, 6}
    lines = []
    for k, row in enumerate(table):
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    bad = [r for r in rows if not r.ok]
    lines.append("")
    lines.append("MiB unless 'layers'; KV is the whole cache (llama.cpp's 'size =' line), compute per buffer")
    if bad:
        lines.append(f"plan --verify: {len(bad)} of {len(rows)} figures differ from llama.cpp's dry run")
    else:
        lines.append(f"plan --verify: all {len(rows)} figures match llama.cpp's dry run (within print rounding, compute within {COMPUTE_TOLERANCE:.0%})")
    return "\n".join(lines)


def verify_json(rows: Sequence[VerifyRow]) -> list[dict[str, Any]]:
    return [{**asdict(r), "ok": r.ok, "diff": r.diff, "unit": r.unit} for r in rows]
