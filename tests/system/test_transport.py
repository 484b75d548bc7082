"""The real transport (gateway.runtime.transport) around a real worker process and its pipes."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import pytest

from gateway.engine.protocol import Op, WorkerSpec
from gateway.runtime.events import Crashed, ModelEvent
from gateway.runtime.requests import WorkerExited
from gateway.runtime.states import ModelState
from gateway.runtime.transport import SubprocessTransport
from gateway.runtime.worker_process import WorkerProcess
from testkit.ggufmaker import write_tiny_llama

pytestmark = pytest.mark.llama

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 60.0
LINE_LIMIT = 64 * 1024  # the gateway's is 64 MiB; the tiny model's answers are smaller


def test_a_real_worker_whose_answer_is_over_the_line_limit_is_killed_and_its_request_ends(tmp_path):
    # Issue 21, item 2: a line over the limit (Gemma with top_logprobs: 1000000 writes ~16 MB a
    # token) raised in the reader with the worker alive; its exit never came, the request hung
    # and the model stayed "ready".
    async def run():
        events: list[ModelEvent] = []
        spec = WorkerSpec(name="tiny", model_path=str(write_tiny_llama(tmp_path / "tiny.gguf")), n_ctx=512, n_threads=2)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        transport = SubprocessTransport(line_limit=LINE_LIMIT)
        worker = WorkerProcess(spec, env, transport, lambda w, event: events.append(event))
        await worker.start()
        try:
            assert await worker.wait_ready(TIMEOUT_S) is ModelState.READY
            pid = worker.pid
            # Every token of the vocabulary as an alternative, 100 tokens: one line of ~2 MB.
            params = {"prompt": "a", "max_tokens": 100, "temperature": 0, "logit_bias": {"97": 50.0}, "logprobs": 1_000_000}
            async with asyncio.timeout(TIMEOUT_S):
                # (The exit fails the requests and moves the state in one step.)
                answer = [m async for m in worker.request(Op.COMPLETION, params, stream=False)]
            return answer, pid, events, worker.state, worker.reason
        finally:
            worker.kill_now()  # (before the fix, stop() itself never returned)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await worker.stop(5)

    answer, pid, events, state, reason = asyncio.run(run())
    assert isinstance(answer[-1], WorkerExited), answer[-1]
    assert "over the 0.0625 MiB limit" in answer[-1].message
    assert any(isinstance(e, Crashed) for e in events) and state is ModelState.FAILED and "killed" in (reason or "")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# A worker that says "ready", reads one request and answers it with ``LINE``, then waits to be
# killed: the line is decoded at the real transport's edge.
LIAR = """
import sys, time
sys.stdout.write('{"type": "ready", "load_seconds": 0.0, "allocated": {}, "gpu_used_bytes": {}}\\n')
sys.stdout.flush()
sys.stdin.readline()
sys.stdout.write(LINE + "\\n")
sys.stdout.flush()
time.sleep(600)  # until it is killed (the bound only ends a process a failed test left)
"""


@pytest.mark.parametrize(
    "line",
    [
        '{"type": "bogus", "id": 1}',  # an unknown tag
        '{"type": "chunk", "id": 1}',  # a known one without its data
        '{"type": "error", "id": 1, "kind": "oops", "message": "x"}',  # an error kind nobody maps
    ],
    ids=["unknown-tag", "missing-field", "unknown-error-kind"],
)
def test_a_line_that_is_no_protocol_message_kills_the_worker_as_a_crash_and_ends_its_request(tmp_path, line):
    (tmp_path / "liar_worker.py").write_text(f"LINE = {line!r}\n" + LIAR)

    async def run():
        events: list[ModelEvent] = []
        spec = WorkerSpec(name="liar", model_path="unused.gguf")
        env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
        worker = WorkerProcess(spec, env, SubprocessTransport(module="liar_worker"), lambda w, event: events.append(event))
        await worker.start()
        try:
            assert await worker.wait_ready(TIMEOUT_S) is ModelState.READY
            pid = worker.pid
            async with asyncio.timeout(TIMEOUT_S):
                answer = [m async for m in worker.request(Op.COMPLETION, {"prompt": "a"}, stream=False)]
            return answer, pid, events, worker.state, worker.reason
        finally:
            worker.kill_now()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await worker.stop(5)

    answer, pid, events, state, reason = asyncio.run(run())
    assert len(answer) == 1 and isinstance(answer[0], WorkerExited), answer
    assert "not a message" in answer[0].message
    assert any(isinstance(e, Crashed) for e in events) and state is ModelState.FAILED and "killed" in (reason or "")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
