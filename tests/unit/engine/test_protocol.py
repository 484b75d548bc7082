"""The worker protocol's Structs (gateway.engine.protocol): each one's JSON line, and back."""

from __future__ import annotations

import typing

import msgspec
import pytest

from gateway.engine.protocol import (
    Cancel,
    Chunk,
    Command,
    End,
    Error,
    ErrorKind,
    Failed,
    LoadFailure,
    Op,
    Progress,
    Ready,
    Request,
    Result,
    Shutdown,
    Stats,
    Timings,
    WorkerMessage,
    decode_command,
    decode_worker_message,
    encode,
)

TIMINGS = Timings(ttft_s=0.25, prompt_s=None, decode_s=1.5, completion_tokens=4, prompt_tokens=3, cached_prompt_tokens=1)
TIMINGS_JSON = {"ttft_s": 0.25, "prompt_s": None, "decode_s": 1.5, "completion_tokens": 4, "prompt_tokens": 3, "cached_prompt_tokens": 1}
USAGE = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
CHUNK = {"object": "text_completion", "choices": [{"index": 0, "text": "a", "finish_reason": None}]}

# Every message, and its line as the protocol's docstring (and the wire before the Structs) has it.
EXAMPLES: list[tuple[msgspec.Struct, dict]] = [
    (
        Request(id=7, op=Op.CHAT, stream=True, params={"messages": [{"role": "user", "content": "hi"}], "n": 2}),
        {"type": "request", "id": 7, "op": "chat", "stream": True, "params": {"messages": [{"role": "user", "content": "hi"}], "n": 2}},
    ),
    (Cancel(id=7), {"type": "cancel", "id": 7}),
    (Shutdown(), {"type": "shutdown"}),
    (Progress(percent=55), {"type": "progress", "percent": 55}),
    (
        Ready(load_seconds=1.25, allocated={"CUDA0": {"model": 100}}, gpu_used_bytes={"0": 2048}),
        {"type": "ready", "load_seconds": 1.25, "allocated": {"CUDA0": {"model": 100}}, "gpu_used_bytes": {"0": 2048}},
    ),
    (Failed(kind=LoadFailure.MODEL_FILE, message="model file not found: x"), {"type": "failed", "kind": "model_file", "message": "model file not found: x"}),
    (Chunk(id=7, data=CHUNK), {"type": "chunk", "id": 7, "data": CHUNK}),
    (
        Result(id=7, data={"object": "text_completion", "usage": USAGE}, usage=USAGE, timings=TIMINGS),
        {"type": "result", "id": 7, "data": {"object": "text_completion", "usage": USAGE}, "usage": USAGE, "timings": TIMINGS_JSON},
    ),
    (End(id=7, usage=USAGE, timings=TIMINGS), {"type": "end", "id": 7, "usage": USAGE, "timings": TIMINGS_JSON}),
    (
        Error(id=7, kind=ErrorKind.INVALID_REQUEST, message="bad", param="response_format"),
        {"type": "error", "id": 7, "kind": "invalid_request", "message": "bad", "param": "response_format"},
    ),
    (Error(id=7, kind=ErrorKind.ENGINE, message="RuntimeError: x"), {"type": "error", "id": 7, "kind": "engine", "message": "RuntimeError: x"}),
    (
        Stats(busy_slots=1, slots=4, batch_sizes={1: 10, 512: 2}, cached_prompt_tokens=30),
        {"type": "stats", "busy_slots": 1, "slots": 4, "batch_sizes": {"1": 10, "512": 2}, "cached_prompt_tokens": 30},
    ),
]


def _decoder(message: msgspec.Struct):
    return decode_command if isinstance(message, typing.get_args(Command)) else decode_worker_message


def test_the_examples_cover_every_message_of_both_directions():
    assert {type(m) for m, _ in EXAMPLES} == set(typing.get_args(Command)) | set(typing.get_args(WorkerMessage))


@pytest.mark.parametrize(("message", "wire"), EXAMPLES, ids=[type(m).__name__ for m, _ in EXAMPLES])
def test_every_message_is_one_json_line_that_decodes_back_to_it(message, wire):
    line = encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert msgspec.json.decode(line) == wire  # the JSON on the wire, "type" first as the tag
    assert _decoder(message)(line) == message


@pytest.mark.parametrize(
    "line",
    [
        b'{"type": "bogus", "id": 7}',  # an unknown tag
        b'{"id": 7, "data": {}}',  # no tag
        b'{"type": "request", "id": 7, "op": "chat", "stream": false, "params": {}}',  # the other direction's
        b'{"type": "chunk", "id": 7}',  # a missing field
        b'{"type": "chunk", "id": "7", "data": {}}',  # a mistyped field
        b'{"type": "error", "id": 7, "kind": "worker_exited", "message": "x"}',  # a kind the enum lacks
        b'["chunk", 7]',
        b"not json",
    ],
)
def test_a_line_that_is_not_a_worker_message_does_not_decode(line):
    with pytest.raises(msgspec.ValidationError if line != b"not json" else msgspec.DecodeError):
        decode_worker_message(line)


def test_an_unknown_command_does_not_decode_in_the_worker():
    with pytest.raises(msgspec.ValidationError):
        decode_command(b'{"type": "restart"}')
    with pytest.raises(msgspec.ValidationError):
        decode_command(b'{"type": "request", "id": 7, "op": "translate", "stream": false, "params": {}}')
