"""The messages between the gateway and a model's worker process: the Structs below.

Transport: the worker's stdin (gateway -> worker) and a private copy of its stdout (worker ->
gateway), one JSON object per line (msgspec). The worker points fd 1 at stderr before loading
llama.cpp, so nothing llama.cpp or a library prints can corrupt the stream; stderr carries
llama.cpp's log, which the worker also parses itself.

Every message is a msgspec Struct in one of two tagged unions; its tag is the JSON object's
"type" (``Chunk(id=7, data={...})`` is ``{"type": "chunk", "id": 7, "data": {...}}``). Each side
encodes Structs with ``encode`` and decodes a line into its union once, at its edge
(``decode_command`` in the worker, ``decode_worker_message`` in gateway.runtime.transport); a
line that is not one of the union's messages (an unknown "type", a missing or mistyped field)
is a ``msgspec.ValidationError``: the worker ignores such a command, the gateway kills such a
worker (a protocol failure counts as a crash).

Gateway -> worker (``Command``):
    Request   "request"   id, op (``Op``), stream, params: llama-cpp-python keyword arguments
                          (create_chat_completion / create_completion / create_embedding), plus
                          "n" (choices, chat and completion) for n > 1
    Cancel    "cancel"    id: stop that generation at the next token
    Shutdown  "shutdown"  finish nothing more, exit 0

Worker -> gateway (``WorkerMessage``):
    Progress  "progress"  percent (0..100): load progress (llama.cpp's callback)
    Ready     "ready"     load_seconds, allocated (llama.cpp's buffers), gpu_used_bytes
    Failed    "failed"    kind (``LoadFailure``), message; then the worker exits 1
    Chunk     "chunk"     id, data: one OpenAI stream chunk
    Result    "result"    id, data, usage, timings: a whole non-streamed response
    End       "end"       id, usage, timings: a stream ended (after its last chunk), or any
                          request was cancelled
    Error     "error"     id, kind (``ErrorKind``), message, param: the request field at fault,
                          if known
    Stats     "stats"     busy_slots, slots, batch_sizes, cached_prompt_tokens: the decode
                          loop's activity (below)

Every request ends with exactly one of Result, End or Error.

"usage" is OpenAI's {"prompt_tokens", "completion_tokens", "total_tokens"} (an embedding's has
no completion tokens). ``Timings``, on every Result and End, streamed or not:
    ttft_s                first token, from when the worker read the request (None when no
                          token came: cancelled early, an embedding's is its result)
    prompt_s              reading the prompt: from taking a slot to the first token (or None)
    decode_s              first token to last token
    completion_tokens     over all choices
    prompt_tokens
    cached_prompt_tokens  prompt tokens served from a slot's prompt cache, not decoded

"stats" is sent at most once a second, and only when something happened since the last one:
"busy_slots" (slots holding a running request, at sending time) of "slots"; "batch_sizes": how
many llama_decode steps of each size (tokens in the batch) ran since the last stats;
"cached_prompt_tokens": prompt tokens taken from the prompt cache since the last stats.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any, Union

import msgspec


class Op(enum.Enum):
    """What a request asks the worker for."""

    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDING = "embedding"


class ErrorKind(enum.Enum):
    """Whose fault a request's "error" is: the request's (400) or the engine's (500)."""

    INVALID_REQUEST = "invalid_request"
    ENGINE = "engine"


class LoadFailure(enum.Enum):
    """Why a worker could not load: no model file, or the load itself failed."""

    MODEL_FILE = "model_file"
    LOAD = "load"


class _Message(msgspec.Struct, tag_field="type", frozen=True, omit_defaults=True):
    """A line of the protocol; each subclass's tag is its "type"."""


# ---------------------------------------------------------------- gateway -> worker


class Request(_Message, tag="request"):
    id: int
    op: Op
    stream: bool
    params: dict[str, Any]


class Cancel(_Message, tag="cancel"):
    id: int


class Shutdown(_Message, tag="shutdown"):
    pass


# ---------------------------------------------------------------- worker -> gateway


class Timings(msgspec.Struct, frozen=True):
    ttft_s: float | None
    prompt_s: float | None
    decode_s: float
    completion_tokens: int
    prompt_tokens: int
    cached_prompt_tokens: int


class Progress(_Message, tag="progress"):
    percent: int


class Ready(_Message, tag="ready"):
    load_seconds: float
    allocated: dict[str, Any]
    gpu_used_bytes: dict[str, int]


class Failed(_Message, tag="failed"):
    kind: LoadFailure
    message: str


class Chunk(_Message, tag="chunk"):
    id: int
    data: dict[str, Any]


class Result(_Message, tag="result"):
    id: int
    data: dict[str, Any]
    usage: dict[str, int]
    timings: Timings


class End(_Message, tag="end"):
    id: int
    usage: dict[str, int]
    timings: Timings


class Error(_Message, tag="error"):
    id: int
    kind: ErrorKind
    message: str
    param: str | None = None


class Stats(_Message, tag="stats"):
    busy_slots: int
    slots: int
    batch_sizes: dict[int, int]  # tokens in a decode step -> steps (JSON keys are strings)
    cached_prompt_tokens: int


Command = Union[Request, Cancel, Shutdown]
WorkerMessage = Union[Progress, Ready, Failed, Chunk, Result, End, Error, Stats]

_encoder = msgspec.json.Encoder()
_commands = msgspec.json.Decoder(Command)
_worker_messages = msgspec.json.Decoder(WorkerMessage)


def encode(message: _Message) -> bytes:
    """One message as a line of JSON."""
    return _encoder.encode(message) + b"\n"


def decode_command(line: bytes) -> Command:
    """A line from the gateway; ``msgspec.DecodeError`` (ValidationError) when it is not a command."""
    return _commands.decode(line)


def decode_worker_message(line: bytes) -> WorkerMessage:
    """A line from a worker; ``msgspec.DecodeError`` (ValidationError) when it is not a message."""
    return _worker_messages.decode(line)


def decode_worker_messages(lines: bytes) -> list[WorkerMessage]:
    """Whole lines from a worker, decoded together; ``msgspec.DecodeError`` (ValidationError)
    when one is not a message."""
    return _worker_messages.decode_lines(lines)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to load its engine: passed as JSON in its argv."""

    name: str
    model_path: str
    n_ctx: int = 4096
    n_batch: int = 512
    n_ubatch: int = 512
    n_gpu_layers: int = 0
    split_mode: str = "layer"
    tensor_split: list[float] | None = None
    flash_attn: bool = False
    type_k: str = "f16"
    type_v: str = "f16"
    swa_full: bool = False
    use_mmap: bool = True
    use_mlock: bool = False
    chat_format: str | None = None
    embedding: bool = False
    pooling: str | None = None  # none | mean | cls | last | rank; None: the model's own
    n_threads: int | None = None  # None: os.cpu_count()
    n_threads_batch: int | None = None  # None: os.cpu_count()
    # One llama.cpp context decodes ``slots`` sequences together (continuous batching). Without
    # kv_unified every slot has its own n_ctx cells; with it the slots share one pool of
    # kv_pool_tokens cells and each request is still limited to n_ctx tokens.
    slots: int = 1
    kv_unified: bool = False
    kv_pool_tokens: int | None = None  # total KV cells of the context; None: n_ctx * slots
    gpu_indices: list[int] = field(default_factory=list)  # NVML indices, for per-process usage

    def to_json(self) -> str:
        return msgspec.json.encode(asdict(self)).decode()

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        return cls(**msgspec.json.decode(text.encode()))
