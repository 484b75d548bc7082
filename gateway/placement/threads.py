"""How many threads each model's engine gets, chosen when the models are launched.

llama.cpp runs a graph's CPU part on ``n_threads`` threads while decoding and ``n_threads_batch``
while reading prompts. The rule, for the models started together:

- a model that computes on the CPU (no GPU, or some layers left on the CPU) gets the machine's
  cores, divided equally between all such models started together (the first ones get one
  more when they do not divide evenly): a CPU decode is bound by the cores it has, and
  llama-cpp-python's default of half the cores halved it (issue 12: 28.5 vs 52.8 tokens/s for
  one stream of Gemma 3 270M on 2 cores). Models already running on the CPU count too
  (``cpu_models_running``);
- a model wholly on GPUs gets ``GPU_MODEL_THREADS``: its CPU share of a decode step is reading
  its batch's rows of ``token_embd`` (which stays in host memory) and handing the graph to the
  GPU, work for one thread; a second one covers an op the GPU backend leaves to the CPU, and
  more would only compete with the CPU models for cores;
- ``n_threads`` / ``n_threads_batch`` in a model's config override this for that model only
  (``n_threads_batch`` follows ``n_threads`` when only that is set, as in llama.cpp).

Pure: the CPU count is passed in (gateway.cpus.available_cpus reads it, at launch time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from planner.plan import Placement

GPU_MODEL_THREADS = 2


@dataclass(frozen=True)
class Threads:
    n_threads: int
    n_threads_batch: int


def computes_on_cpu(n_gpus: int, n_gpu_layers: int) -> bool:
    """Whether any of a model's layers (the output layer included) stays on the CPU."""
    return n_gpus == 0 or n_gpu_layers != -1


def default_threads(placements: Sequence[Placement], cpu_count: int, *, cpu_models_running: int = 0) -> dict[str, Threads]:
    """Each placed model's threads when its config sets none (see the module docstring)."""
    if cpu_count < 1:
        raise ValueError(f"cpu_count {cpu_count} (must be >= 1)")
    on_cpu = [p.name for p in placements if computes_on_cpu(len(p.gpus), p.n_gpu_layers)]
    share, extra = divmod(cpu_count, len(on_cpu) + cpu_models_running) if on_cpu else (0, 0)
    out = {}
    for p in placements:
        if p.name in on_cpu:
            n = max(1, share + (1 if on_cpu.index(p.name) < extra else 0))
        else:
            n = min(GPU_MODEL_THREADS, cpu_count)
        out[p.name] = Threads(n, n)
    return out


def configured_threads(default: Threads, n_threads: int | None, n_threads_batch: int | None) -> Threads:
    """The config's values where set; n_threads_batch follows a configured n_threads."""
    threads = n_threads if n_threads is not None else default.n_threads
    if n_threads_batch is not None:
        batch = n_threads_batch
    elif n_threads is not None:
        batch = n_threads
    else:
        batch = default.n_threads_batch
    return Threads(threads, batch)
