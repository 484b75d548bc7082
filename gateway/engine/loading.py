"""Loading a worker's model and its one context, with llama.cpp's log and load progress.

llama-cpp-python's ``Llama()`` is not used: it creates a context of its own for one sequence.
The model is loaded through its ``_internals.LlamaModel`` (tokenizer, metadata) and the context
is made with the parameters of gateway.engine.llama_params, which the dry run shares.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.engine import llama_params
from gateway.engine.process import one_line
from gateway.engine.protocol import Progress, WorkerSpec

GGML_LOG_LEVEL_ERROR = 4  # ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5
PROGRESS_STEP = 5  # percent between two "progress" messages


class LlamaLog:
    """llama.cpp's log, forwarded to stderr as it comes and kept (while loading) for parsing.

    A llama_log_set callback rather than a pipe on fd 2: whatever ggml writes straight to fd 2
    as it aborts (GGML_ASSERT and its backtrace) still reaches the operator, where a pipe would
    lose it with the reader thread.
    """

    def __init__(self) -> None:
        import llama_cpp

        self.lines: list[str] = []
        self.errors: list[str] = []  # llama.cpp's error lines while loading: the first says why
        self._partial = ""
        self._capturing = True
        self._lock = threading.Lock()
        # C keeps only a pointer: this reference is what keeps the callback alive.
        self._callback = llama_cpp.llama_log_callback(self._on_log)
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))

    def stop_capturing(self) -> None:
        """Keep forwarding, stop keeping: a serving worker's log only grows."""
        with self._lock:
            self._capturing = False
            self._partial = ""

    def _on_log(self, level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
        # Exceptions cannot cross back into C (ctypes would print and drop them): none escape.
        try:
            os.write(2, text)
        except OSError:
            pass
        with self._lock:
            if not self._capturing:
                return
            decoded = text.decode("utf-8", "replace")
            if level == GGML_LOG_LEVEL_ERROR and decoded.strip():
                self.errors.append(one_line(decoded))
            *complete, self._partial = (self._partial + decoded).split("\n")
            self.lines.extend(complete)

    def reason(self, exc: BaseException) -> str:
        """One line: the exception, and llama.cpp's first error lines, which say why."""
        text = f"{type(exc).__name__}: {exc}"
        if self.errors:
            text += f" (llama.cpp: {'; '.join(self.errors[:3])})"
        return one_line(text)


class LoadProgress:
    """The load fraction as ``Progress`` messages every 5% and at 100%."""

    def __init__(self, send: Callable[[Progress], None]) -> None:
        self._send = send
        self._sent = 0

    def report(self, fraction: float) -> None:
        percent = max(0, min(100, int(fraction * 100)))
        if percent >= self._sent + PROGRESS_STEP or (percent == 100 and self._sent < 100):
            self._sent = percent
            self._send(Progress(percent=percent))

    def c_callback(self) -> Any:
        """A llama_progress_callback calling ``report`` (keep a reference while loading)."""
        from llama_cpp import llama_cpp as capi

        def on_progress(fraction: float, _user_data: ctypes.c_void_p) -> bool:
            try:
                self.report(fraction)
            except Exception:  # noqa: BLE001 - nothing may cross back into C
                pass
            return True  # False would abort the load

        return capi.llama_progress_callback(on_progress)


@dataclass
class LoadedModel:
    """A model and the one context its worker decodes all requests in."""

    spec: WorkerSpec
    model: Any  # llama_cpp._internals.LlamaModel: tokenizer, metadata, special tokens
    ctx: Any  # llama_context_p; the decode loop is its only user once serving
    n_vocab: int
    n_embd: int  # the width of an embedding (llama_model_n_embd_out)
    n_ctx_seq: int  # the most tokens (prompt and completion) one request may hold
    n_batch: int
    n_swa: int  # sliding window of the cache (0: none, or swa_full): bounds prompt-cache reuse
    pooling: int  # the context's resolved llama_pooling_type

    def close(self) -> None:
        from llama_cpp import llama_cpp as capi

        if self.ctx is not None:
            capi.llama_free(self.ctx)
            self.ctx = None
        self.model.close()


def load(spec: WorkerSpec, progress: LoadProgress | None = None) -> LoadedModel:
    """Load the spec's model and create its context; ValueError when llama.cpp refuses either."""
    from llama_cpp import _internals as internals
    from llama_cpp import llama_cpp as capi

    capi.llama_backend_init()
    callback = progress.c_callback() if progress is not None else None
    mp = llama_params.model_params(spec, callback)
    cp = llama_params.context_params(spec)
    model = internals.LlamaModel(path_model=spec.model_path, params=mp.params, verbose=True)
    ctx = capi.llama_init_from_model(model.model, cp)
    if not ctx:
        model.close()
        raise ValueError("Failed to create llama_context")
    if progress is not None:
        progress.report(1.0)
    n_ctx_seq = capi.llama_n_ctx_seq(ctx)
    if spec.kv_unified:
        # One shared pool: each request is still held to its n_ctx.
        n_ctx_seq = min(n_ctx_seq, spec.n_ctx)
    return LoadedModel(
        spec=spec,
        model=model,
        ctx=ctx,
        n_vocab=model.n_vocab(),
        n_embd=capi.llama_model_n_embd_out(model.model),
        n_ctx_seq=n_ctx_seq,
        n_batch=capi.llama_n_batch(ctx),
        n_swa=0 if spec.swa_full else max(0, capi.llama_model_n_swa(model.model)),
        pooling=capi.llama_pooling_type(ctx),
    )
