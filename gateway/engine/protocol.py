"""The messages between the gateway and a model's worker process.

Transport: the worker's stdin (gateway -> worker) and a private copy of its stdout (worker ->
gateway), one JSON object per line (msgspec). The worker points fd 1 at stderr before loading
llama.cpp, so nothing llama.cpp or a library prints can corrupt the stream; stderr carries
llama.cpp's log, which the worker also parses itself.

Gateway -> worker:
    {"type": "request", "id": 7, "op": "chat" | "completion" | "embedding", "stream": bool,
     "params": {...}}              params are llama-cpp-python keyword arguments
                                   (create_chat_completion / create_completion / create_embedding),
                                   plus "n" (choices, chat and completion) for n > 1
    {"type": "cancel", "id": 7}    stop that generation at the next token
    {"type": "shutdown"}           finish nothing more, exit 0

Worker -> gateway:
    {"type": "progress", "percent": 0..100}              load progress (llama.cpp's callback)
    {"type": "ready", "load_seconds": float, "allocated": {...}, "gpu_used_bytes": {...}}
    {"type": "failed", "kind": "model_file" | "load", "message": str}   then the worker exits 1
    {"type": "chunk", "id": 7, "data": {...}}            one OpenAI stream chunk
    {"type": "result", "id": 7, "data": {...}, "usage": {...}, "timings": {...}}
                                                         a whole non-streamed response
    {"type": "end", "id": 7, "usage": {...}, "timings": {...}}
                                                         a stream ended (after its last chunk),
                                                         or any request was cancelled
    {"type": "error", "id": 7, "kind": "invalid_request" | "engine", "message": str,
     "param": str | None}                                 param: the request field at fault, if known
    {"type": "stats", "busy_slots": int, "slots": int, "batch_sizes": {"<tokens>": count},
     "cached_prompt_tokens": int}                        the decode loop's activity (below)

Every request ends with exactly one of result, end or error.

"usage" is OpenAI's {"prompt_tokens", "completion_tokens", "total_tokens"} (an embedding's has
no completion tokens). "timings", on every result and end, streamed or not:
    {"ttft_s": float | None,       first token, from when the worker read the request (None when
                                   no token came: cancelled early, an embedding's is its result)
     "prompt_s": float | None,     reading the prompt: from taking a slot to the first token
     "decode_s": float,            first token to last token
     "completion_tokens": int,     over all choices
     "prompt_tokens": int,
     "cached_prompt_tokens": int}  prompt tokens served from a slot's prompt cache, not decoded

"stats" is sent at most once a second, and only when something happened since the last one:
"busy_slots" (slots holding a running request, at sending time) of "slots"; "batch_sizes": how
many llama_decode steps of each size (tokens in the batch) ran since the last stats;
"cached_prompt_tokens": prompt tokens taken from the prompt cache since the last stats.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def encode(message: dict[str, Any]) -> bytes:
    """One message as a line of JSON."""
    return _encoder.encode(message) + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    return _decoder.decode(line)


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
    # kv_size cells and each request is still limited to n_ctx tokens.
    slots: int = 1
    kv_unified: bool = False
    kv_size: int | None = None  # total KV cells of the context; None: n_ctx * slots
    gpu_indices: list[int] = field(default_factory=list)  # NVML indices, for per-process usage

    def to_json(self) -> str:
        return msgspec.json.encode(asdict(self)).decode()

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        return cls(**msgspec.json.decode(text.encode()))
