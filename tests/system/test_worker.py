"""gateway.engine.worker, spawned for real (``python -m gateway.engine.worker``) and spoken to over its protocol.

Most cases run the tiny random-weight model (loads in milliseconds, hundreds of tokens/s on two
cores); one runs Gemma 3 270M.
Every wait has a timeout, so a broken worker fails a test instead of hanging the suite.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gateway.engine.protocol import WorkerSpec
from testkit.ggufmaker import write_tiny_llama
from tests.workers import GEMMA_TIMEOUT_S, GREEDY, REPO, TIMEOUT_S, WorkerProcess, decode

pytestmark = pytest.mark.llama


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory) -> WorkerSpec:
    path = write_tiny_llama(tmp_path_factory.mktemp("worker") / "tiny.gguf")
    return WorkerSpec(name="tiny", model_path=str(path), n_ctx=512, n_threads=2)


def _ready(spawn, spec: WorkerSpec) -> WorkerProcess:
    worker = spawn(spec)
    worker.wait_ready()
    return worker


def _pid_gone(pid: int) -> bool:
    """Gone or a zombie (a container's PID 1 may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_worker_reports_progress_then_ready_with_llama_buffers(spawn, tiny_spec):
    progress, ready = spawn(tiny_spec).wait_ready()

    percents = [m["percent"] for m in progress]
    assert percents and percents[-1] == 100
    assert all(b - a >= 5 for a, b in zip(percents[:-1], percents[1:-1])), percents  # throttled
    assert percents == sorted(percents) and len(set(percents)) == len(percents)
    assert ready["load_seconds"] > 0
    allocated = ready["allocated"]
    assert allocated["model_mib"]["CPU_Mapped"] > 0
    assert allocated["kv_mib"]["CPU"] > 0
    assert allocated["compute_mib"]["CPU"] > 0
    assert ready["gpu_used_bytes"] == {}


def test_worker_streams_chunks_then_end(spawn, tiny_spec):
    worker = _ready(spawn, tiny_spec)
    worker.request(1, "completion", {**GREEDY, "max_tokens": 12}, stream=True)

    messages = worker.answer(1)

    assert [m["type"] for m in messages[:-1]] == ["chunk"] * (len(messages) - 1)
    end = messages[-1]
    assert (end["type"], end["id"]) == ("end", 1)
    # Streams carry no usage in llama-cpp-python: the worker counts the tokens itself.
    chunks = [m for m in messages if m["type"] == "chunk"]
    assert end["usage"]["completion_tokens"] >= len(chunks) - 1
    assert end["usage"]["prompt_tokens"] > 0
    assert end["usage"]["total_tokens"] == end["usage"]["prompt_tokens"] + end["usage"]["completion_tokens"]
    chunks = [m["data"] for m in messages[:-1]]
    assert len(chunks) >= 12
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_worker_returns_whole_completion_when_not_streaming(spawn, tiny_spec):
    worker = _ready(spawn, tiny_spec)
    worker.request(1, "completion", {**GREEDY, "max_tokens": 8})

    [message] = worker.answer(1)

    assert message["type"] == "result"
    data = message["data"]
    assert data["object"] == "text_completion"
    assert data["usage"]["completion_tokens"] == 8
    assert data["choices"][0]["finish_reason"] == "length"
    assert isinstance(data["choices"][0]["text"], str)


def test_worker_chat_completion_on_gemma(spawn, gemma_path):
    spec = WorkerSpec(name="gemma", model_path=str(gemma_path), n_ctx=1024, n_threads=2, chat_format="gemma")
    worker = _ready(spawn, spec)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    worker.request(1, "chat", {"messages": messages, "max_tokens": 16, "temperature": 0.0})

    [message] = worker.answer(1, timeout=GEMMA_TIMEOUT_S)

    # The packaged Gemma 3 270M is the base model, not the instruction-tuned one: its answers
    # are no test of the chat format, so only the response's shape is checked.
    assert message["type"] == "result", message
    data = message["data"]
    assert data["object"] == "chat.completion"
    choice = data["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert 0 < data["usage"]["completion_tokens"] <= 16


def test_worker_cancel_stops_generation_promptly(spawn, tiny_spec):
    worker = _ready(spawn, dataclasses.replace(tiny_spec, n_ctx=4096))
    worker.request(1, "completion", {**GREEDY, "max_tokens": 4000}, stream=True)
    assert worker.recv()["type"] == "chunk"

    worker.send(type="cancel", id=1)
    after = worker.answer(1)

    # Promptly: it ends with "end" long before its 4000 tokens (ignored, the cancel would let it
    # run to its length and end the same way, with 4000).
    end = after[-1]
    assert (end["type"], end["id"]) == ("end", 1)
    assert end["usage"]["completion_tokens"] < 4000, end
    assert len(after) - 1 < 4000 - 1, f"{len(after) - 1} chunks followed the cancel"
    # The engine is still good for the next request.
    worker.request(2, "completion", {**GREEDY, "max_tokens": 4})
    assert worker.answer(2)[-1]["type"] == "result"


def test_worker_prompt_longer_than_context_is_invalid_request_and_worker_survives(spawn, tiny_spec):
    worker = _ready(spawn, dataclasses.replace(tiny_spec, n_ctx=256))
    worker.request(1, "completion", {"prompt": "hello world " * 200, "max_tokens": 4})

    [error] = worker.answer(1)

    assert error["type"] == "error" and error["kind"] == "invalid_request"
    assert "exceed context window" in error["message"]
    worker.request(2, "completion", {**GREEDY, "max_tokens": 4})
    assert worker.answer(2)[-1]["type"] == "result"


def test_worker_unknown_parameter_is_invalid_request(spawn, tiny_spec):
    worker = _ready(spawn, tiny_spec)
    worker.request(1, "chat", {"messages": [{"role": "user", "content": "hi"}], "no_such_option": 1})

    [error] = worker.answer(1)

    assert error["kind"] == "invalid_request" and "no_such_option" in error["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_worker_unknown_completion_parameter_is_invalid_request_streamed_or_not(spawn, tiny_spec, stream):
    worker = _ready(spawn, tiny_spec)
    worker.request(1, "completion", {"prompt": "hi", "max_tokens": 2, "no_such_option": 1}, stream=stream)

    [error] = worker.answer(1)

    assert error["kind"] == "invalid_request" and "no_such_option" in error["message"]
    # The worker goes on: the next request is answered.
    worker.request(2, "completion", {"prompt": "hi", "max_tokens": 2})
    assert worker.answer(2)[-1]["type"] == "result"


def test_worker_embedding(spawn, tiny_spec):
    worker = _ready(spawn, dataclasses.replace(tiny_spec, embedding=True))
    worker.request(1, "embedding", {"input": ["hello world", "the end"]})

    [message] = worker.answer(1)

    assert message["type"] == "result", message
    data = message["data"]["data"]
    assert [d["index"] for d in data] == [0, 1]
    # The tiny llama has no pooling: one 64-wide vector per token.
    assert np.asarray(data[0]["embedding"]).shape[-1] == 64


def test_worker_with_two_slots_runs_two_requests_at_once(spawn, tiny_spec):
    worker = _ready(spawn, dataclasses.replace(tiny_spec, slots=2, n_threads=1))
    for request_id in (1, 2):
        worker.request(request_id, "completion", {**GREEDY, "max_tokens": 300}, stream=True)

    spans: dict[int, list[float]] = {1: [], 2: []}
    ended = set()
    while ended != {1, 2}:
        at, message = worker.recv_timed()
        if "id" not in message:
            continue  # the decode loop's "stats"
        spans[message["id"]].append(at)
        if message["type"] == "end":
            ended.add(message["id"])

    (first1, last1), (first2, last2) = ((s[0], s[-1]) for s in spans.values())
    # One engine would finish one stream before starting the other.
    assert max(first1, first2) < min(last1, last2)


def test_worker_missing_model_file_reports_failed_and_exits_1(spawn, tiny_spec, tmp_path):
    worker = spawn(dataclasses.replace(tiny_spec, model_path=str(tmp_path / "absent.gguf")))

    message = worker.recv()

    assert message["type"] == "failed" and message["kind"] == "model_file"
    assert "absent.gguf" in message["message"]
    assert worker.wait_exit() == 1


def test_worker_load_failure_reports_llama_cpp_reason(spawn, tiny_spec):
    # A quantized V cache needs flash attention: llama.cpp refuses the context.
    worker = spawn(dataclasses.replace(tiny_spec, type_v="q8_0", flash_attn=False))

    message = worker.recv()
    while message["type"] == "progress":
        message = worker.recv()

    assert message["type"] == "failed" and message["kind"] == "load"
    assert "\n" not in message["message"]
    assert "llama.cpp:" in message["message"]
    assert worker.wait_exit() == 1


def test_worker_bad_spec_reports_failed_and_exits_1():
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.engine.worker", '{"name": "x"}'], capture_output=True, cwd=REPO, timeout=TIMEOUT_S
    )

    message = decode(proc.stdout.splitlines()[0])
    assert message["type"] == "failed" and message["kind"] == "load"
    assert "bad worker spec" in message["message"]
    assert proc.returncode == 1


def test_worker_exits_when_stdin_closes(spawn, tiny_spec):
    worker = _ready(spawn, tiny_spec)

    worker.proc.stdin.close()

    assert worker.wait_exit(timeout=TIMEOUT_S) == 0  # (a hang guard)


def test_worker_shutdown_ends_running_stream_and_exits_0(spawn, tiny_spec):
    worker = _ready(spawn, dataclasses.replace(tiny_spec, n_ctx=4096))
    worker.request(1, "completion", {**GREEDY, "max_tokens": 4000}, stream=True)
    assert worker.recv()["type"] == "chunk"

    worker.send(type="shutdown")

    # The running stream is cancelled, not waited for: the worker exits 0 with it short of its
    # 4000 tokens (its "end" is sent if it comes within the worker's shutdown grace).
    rest = [m for m in worker.until_closed() if m.get("id") == 1]
    assert worker.wait_exit(timeout=TIMEOUT_S) == 0  # (a hang guard)
    assert sum(m["type"] == "chunk" for m in rest) < 4000 - 1, f"{len(rest)} messages followed the shutdown"
    assert all(m["usage"]["completion_tokens"] < 4000 for m in rest if m["type"] == "end"), rest


INTERMEDIATE = textwrap.dedent(
    """
    import subprocess, sys, time
    # The worker inherits our stdin, which the test keeps open: only PR_SET_PDEATHSIG can end it.
    worker = subprocess.Popen(
        [sys.executable, "-m", "gateway.engine.worker", sys.argv[1]],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    for line in worker.stdout:
        if b'"ready"' in line:
            break
    print(worker.pid, flush=True)
    time.sleep(600)  # until the test kills it (the bound only ends a process a failed test left)
    """
)


def test_worker_dies_with_its_parent(tiny_spec):
    parent = subprocess.Popen(
        [sys.executable, "-c", INTERMEDIATE, tiny_spec.to_json()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    worker_pid = None
    try:
        pids: list[bytes] = []
        reader = threading.Thread(target=lambda: pids.append(parent.stdout.readline()), daemon=True)
        reader.start()
        reader.join(TIMEOUT_S)
        assert pids and pids[0].strip(), "the intermediate never reported a ready worker"
        worker_pid = int(pids[0])
        assert not _pid_gone(worker_pid)

        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)

        deadline = time.monotonic() + TIMEOUT_S  # a hang guard: PR_SET_PDEATHSIG acts at once
        while not _pid_gone(worker_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _pid_gone(worker_pid), "the worker outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)
        if worker_pid is not None and not _pid_gone(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)
        parent.stdin.close()
        parent.stdout.close()
