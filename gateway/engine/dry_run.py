"""One dry run of a worker's model and context, in its own process (``gateway plan --verify``).

``python -m gateway.engine.dry_run '<WorkerSpec JSON>'`` builds exactly the parameters the worker
builds (``gateway.engine.llama_params``: one context with the model's slots) but with
``no_alloc = True`` and ``load_mode = LLAMA_LOAD_MODE_NONE``: llama.cpp then reads only the
header, reserves the compute graphs and prints what it *would* allocate, while allocating nothing
but the CUDA context (H200: the same 304.00 / 1886.01 MiB compute buffers as a real load, in
0.53 s; docs/calibration.md#dry-run). It prints one JSON line: llama.cpp's buffer lines, or why
it failed. gateway.placement.verify starts it and compares the lines with the plan.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.engine.protocol import WorkerSpec
from gateway.errors import VerifyError
from planner.llama_log import AllocatedBuffers, parse_buffer_lines

# The lines a dry run sends back to the parent: the ones that say what would be allocated.
_KEEP_LINE = re.compile(r"buffer size =|llama_kv_cache: size =|offloaded \d+/\d+ layers")


# --------------------------------------------------------------------------------------------
# The parameters a worker passes (gateway.engine.llama_params), with allocation switched off
# --------------------------------------------------------------------------------------------


def dry_run_params(spec: WorkerSpec) -> tuple[Any, Any, tuple[Any, ...]]:
    """(llama_model_params, llama_context_params, keep-alive objects): the worker's own
    (``gateway.engine.llama_params``, the one builder both use) with ``no_alloc`` and no loading."""
    from llama_cpp import llama_cpp as capi

    from gateway.engine import llama_params

    model = llama_params.model_params(spec)
    mp, cp = model.params, llama_params.context_params(spec)
    names = {name for name, _ in type(mp)._fields_}
    if "no_alloc" not in names or not hasattr(capi, "LLAMA_LOAD_MODE_NONE"):
        raise VerifyError(
            "this llama-cpp-python has no no_alloc model parameter (llama_model_params): "
            "a dry run needs 0.3.36 or later"
        )
    mp.no_alloc = True
    mp.load_mode = capi.LLAMA_LOAD_MODE_NONE
    return mp, cp, model.keep


# --------------------------------------------------------------------------------------------
# One dry run, in its own process
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DryRun:
    """What one dry run reported: llama.cpp's buffer lines, or why it failed."""

    ok: bool
    lines: tuple[str, ...] = ()
    seconds: float = 0.0
    error: str | None = None

    @property
    def buffers(self) -> AllocatedBuffers:
        return parse_buffer_lines(self.lines)


def _dry_run_in_this_process(spec: WorkerSpec) -> float:
    """Create the worker's model and context (one context with ``spec.slots`` sequences)
    without allocating."""
    from llama_cpp import llama_cpp as capi

    if not os.path.isfile(spec.model_path):
        raise FileNotFoundError(f"model file not found: {spec.model_path}")
    capi.llama_backend_init()
    mp, cp, _keep = dry_run_params(spec)
    started = time.monotonic()
    model = capi.llama_model_load_from_file(spec.model_path.encode(), mp)
    if not model:
        raise RuntimeError("llama_model_load_from_file failed")
    try:
        ctx = capi.llama_init_from_model(model, cp)
        if not ctx:
            raise RuntimeError("llama_init_from_model failed")
        capi.llama_free(ctx)
        return time.monotonic() - started
    finally:
        capi.llama_model_free(model)


def _child_main(argv: Sequence[str]) -> int:
    """``python -m gateway.engine.dry_run '<WorkerSpec JSON>'``: one dry run, one JSON line on stdout."""
    from gateway.engine.process import take_stdout

    out = take_stdout()  # llama.cpp's prints must not reach the result line
    import faulthandler

    from gateway.engine import native

    faulthandler.enable(file=sys.stderr, all_threads=False)  # a native crash names its Python stack
    native.load_first()  # before anything imports numpy: gateway/engine/native.py says why
    from gateway.engine.loading import LlamaLog

    if len(argv) != 1:
        print("usage: python -m gateway.engine.dry_run '<WorkerSpec JSON>'", file=sys.stderr)
        return 2
    try:
        spec = WorkerSpec.from_json(argv[0])
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        out.write((json.dumps({"ok": False, "error": f"bad worker spec: {exc}"}) + "\n").encode())
        out.flush()
        return 1
    log = LlamaLog()
    try:
        seconds = _dry_run_in_this_process(spec)
        result: dict[str, Any] = {
            "ok": True,
            "seconds": round(seconds, 3),
            "lines": [line for line in log.lines if _KEEP_LINE.search(line)],
        }
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        result = {"ok": False, "error": log.reason(exc), "lines": [l for l in log.lines if _KEEP_LINE.search(l)]}
    out.write((json.dumps(result) + "\n").encode())
    out.flush()
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
