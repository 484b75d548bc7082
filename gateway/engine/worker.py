"""One model's worker process: llama.cpp engines behind the line protocol of gateway.engine.protocol.

Run as ``python -m gateway.engine.worker '<WorkerSpec JSON>'``. The worker loads ``replicas`` engines,
says "ready", then serves up to ``replicas`` requests at once (more wait here, in arrival order).
It dies with its parent (PR_SET_PDEATHSIG, and EOF on stdin), ignores SIGINT (the gateway handles
Ctrl-C and sends "shutdown") and exits on SIGTERM by the default action.

llama-cpp-python is imported only after fd 1 has been pointed at stderr, so nothing it prints
while loading can reach the protocol stream.
"""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, NoReturn

import msgspec

from gateway.nvml import process_gpu_memory
from gateway.engine.protocol import WorkerSpec, decode, encode
from planner.llama_log import parse_buffer_lines
from planner.memory import kv_type

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
GGML_LOG_LEVEL_ERROR = 4  # ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5
PROGRESS_STEP = 5  # percent between two "progress" messages
SHUTDOWN_GRACE_S = 2.0  # how long "shutdown" waits for cancelled generations to send "end"

Send = Callable[[dict[str, Any]], None]


def _die_with_parent() -> None:
    """Have the kernel SIGKILL us when our parent dies, however it dies (Linux only).

    The signal follows the parent *thread* that spawned us: the gateway must spawn workers from
    a thread that lives as long as they do. A parent that died before this call is caught by the
    EOF on stdin instead.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        print(f"worker: prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}", file=sys.stderr)


def _take_stdout() -> BinaryIO:
    """A private copy of fd 1 for the protocol; fd 1 itself then points at stderr."""
    fd = os.dup(1)
    os.dup2(2, 1)
    return os.fdopen(fd, "wb")


def _one_line(text: str) -> str:
    return " ".join(text.split())


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
                self.errors.append(_one_line(decoded))
            *complete, self._partial = (self._partial + decoded).split("\n")
            self.lines.extend(complete)


class LoadProgress:
    """Load progress over all replicas, as "progress" messages every 5% and at 100%."""

    def __init__(self, send: Send, replicas: int) -> None:
        self._send = send
        self._replicas = replicas
        self._sent = 0

    def of_replica(self, index: int) -> Callable[[float], None]:
        def report(fraction: float) -> None:
            percent = min(100, int((index + fraction) * 100 / self._replicas))
            if percent >= self._sent + PROGRESS_STEP or (percent == 100 and self._sent < 100):
                self._sent = percent
                self._send({"type": "progress", "percent": percent})

        return report


@contextlib.contextmanager
def _load_progress_to(report: Callable[[float], None]) -> Iterator[None]:
    """Make the Llama() built inside this block report its load fraction to ``report``.

    llama-cpp-python takes no progress callback, and the dots llama.cpp prints without one are
    one per callback call that moved the percentage, not one per percent (16 dots for the tiny
    test model, 29 for Gemma 3 270M): so we fill the callback into the parameters it builds.
    """
    from llama_cpp import llama_cpp as capi

    def on_progress(fraction: float, _user_data: ctypes.c_void_p) -> bool:
        report(fraction)
        return True  # False would abort the load

    callback = capi.llama_progress_callback(on_progress)
    default_params = capi.llama_model_default_params

    def params_with_progress():  # type: ignore[no-untyped-def]
        params = default_params()
        params.progress_callback = callback
        return params

    capi.llama_model_default_params = params_with_progress
    try:
        yield
    finally:
        capi.llama_model_default_params = default_params


def llama_kwargs(spec: WorkerSpec) -> dict[str, Any]:
    """The Llama() keyword arguments for a spec."""
    from llama_cpp import llama_cpp as capi

    split_modes = {
        "none": capi.LLAMA_SPLIT_MODE_NONE,
        "layer": capi.LLAMA_SPLIT_MODE_LAYER,
        "row": capi.LLAMA_SPLIT_MODE_ROW,
    }
    if spec.split_mode not in split_modes:
        raise ValueError(f"split_mode {spec.split_mode!r} (must be one of: {', '.join(split_modes)})")
    kwargs: dict[str, Any] = {
        "model_path": spec.model_path,
        "n_ctx": spec.n_ctx,
        "n_batch": spec.n_batch,
        "n_ubatch": spec.n_ubatch,
        "n_gpu_layers": spec.n_gpu_layers,
        "split_mode": split_modes[spec.split_mode],
        "flash_attn": spec.flash_attn,
        "type_k": int(kv_type(spec.type_k)),
        "type_v": int(kv_type(spec.type_v)),
        # Always explicit: llama-cpp-python passes nothing when None, and llama.cpp's own default
        # (full-size sliding-window caches) is not what the planner sized.
        "swa_full": spec.swa_full,
        "use_mmap": spec.use_mmap,
        "use_mlock": spec.use_mlock,
        "chat_format": spec.chat_format,
        "embedding": spec.embedding,
        "n_threads": spec.n_threads,
        "verbose": True,  # the buffer-size lines we report are only printed when verbose
    }
    if spec.tensor_split is not None:
        kwargs["tensor_split"] = list(spec.tensor_split)
    if spec.pooling is not None:
        poolings = {
            "none": capi.LLAMA_POOLING_TYPE_NONE,
            "mean": capi.LLAMA_POOLING_TYPE_MEAN,
            "cls": capi.LLAMA_POOLING_TYPE_CLS,
            "last": capi.LLAMA_POOLING_TYPE_LAST,
            "rank": capi.LLAMA_POOLING_TYPE_RANK,
        }
        if spec.pooling not in poolings:
            raise ValueError(f"pooling {spec.pooling!r} (must be one of: {', '.join(poolings)})")
        kwargs["pooling_type"] = poolings[spec.pooling]
    return kwargs


class Engine:
    """One Llama, and the cancel flag of the request it is serving."""

    def __init__(self, llama: Any) -> None:
        self.llama = llama
        self.cancel = threading.Event()
        # Token counts of the request being served: llama-cpp-python's streams carry no usage.
        self.prompt_tokens = 0
        self.completion_tokens = 0
        generate = llama.generate

        # Every completion and chat path draws its tokens from Llama.generate, so stopping here
        # ends a cancelled request within one token, streamed or not.
        def cancellable_generate(tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:
            self.prompt_tokens = len(tokens)
            n_ctx = llama.n_ctx()
            for token in generate(tokens, *args, **kwargs):
                if self.cancel.is_set():
                    return
                self.completion_tokens += 1
                yield token
                # The next token would be evaluated past the context. llama-cpp-python skips its
                # own max_tokens check while the text ends inside a UTF-8 character, and then
                # fails with "llama_decode returned 1": end the generation here ("length").
                if self.prompt_tokens + self.completion_tokens >= n_ctx:
                    return

        llama.generate = cancellable_generate

    def begin(self, cancel: threading.Event) -> None:
        self.cancel = cancel
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


class Worker:
    """A worker's state: its engines, the requests in hand and the protocol stream."""

    def __init__(self, spec: WorkerSpec, out: BinaryIO) -> None:
        self.spec = spec
        self._out = out
        self._out_lock = threading.Lock()
        self._engines: queue.Queue[Engine] = queue.Queue()
        self._pool = ThreadPoolExecutor(max_workers=max(1, spec.replicas), thread_name_prefix="request")
        self._cancel_flags: dict[int, threading.Event] = {}  # accepted and not yet answered
        self._flags_lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        line = encode(message)
        with self._out_lock:
            try:
                self._out.write(line)
                self._out.flush()
            except OSError:
                self.exit(1)  # the gateway is gone: nobody left to answer

    def exit(self, code: int) -> NoReturn:
        """Leave now: os._exit, because interpreter shutdown would wait for generations."""
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)

    def fail(self, kind: str, message: str) -> NoReturn:
        self.send({"type": "failed", "kind": kind, "message": message})
        self.exit(1)

    def load(self, log: LlamaLog) -> None:
        """Load every replica and send "ready", or send "failed" and exit 1."""
        import llama_cpp

        if not os.path.isfile(self.spec.model_path):
            self.fail("model_file", f"model file not found: {self.spec.model_path}")
        progress = LoadProgress(self.send, self.spec.replicas)
        started = time.monotonic()
        try:
            kwargs = llama_kwargs(self.spec)
            for index in range(self.spec.replicas):
                with _load_progress_to(progress.of_replica(index)):
                    self._engines.put(Engine(llama_cpp.Llama(**kwargs)))
        except Exception as exc:
            # llama-cpp-python only says "Failed to load model from file"; llama.cpp's last
            # error line says why (a bad cache type, an allocation that failed...).
            reason = f"{type(exc).__name__}: {exc}"
            if log.errors:
                reason += f" (llama.cpp: {'; '.join(log.errors[:3])})"
            self.fail("load", _one_line(reason))
        load_seconds = time.monotonic() - started
        log.stop_capturing()
        self.send(
            {
                "type": "ready",
                "load_seconds": round(load_seconds, 3),
                "allocated": parse_buffer_lines(log.lines).as_dict(),
                "gpu_used_bytes": process_gpu_memory(os.getpid(), self.spec.gpu_indices),
            }
        )

    def read_commands(self, stdin: BinaryIO | None) -> None:
        """Dispatch the gateway's messages until "shutdown" or EOF, then stop."""
        try:
            for line in stdin or ():
                if not line.strip():
                    continue
                try:
                    message = decode(line)
                except msgspec.DecodeError as exc:
                    print(f"worker: unreadable message ignored ({exc}): {line[:200]!r}", file=sys.stderr)
                    continue
                kind = message.get("type") if isinstance(message, dict) else None
                if kind == "request":
                    self._accept(message)
                elif kind == "cancel":
                    with self._flags_lock:
                        flag = self._cancel_flags.get(message.get("id"))  # type: ignore[arg-type]
                    if flag is not None:
                        flag.set()
                elif kind == "shutdown":
                    break
                else:
                    print(f"worker: unknown message ignored: {line[:200]!r}", file=sys.stderr)
        finally:
            self.stop()

    def stop(self) -> NoReturn:
        """Cancel everything, give the cancelled streams a moment to send "end", exit 0."""
        with self._flags_lock:
            for flag in self._cancel_flags.values():
                flag.set()
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        while self._cancel_flags and time.monotonic() < deadline:
            time.sleep(0.01)
        self.exit(0)

    def _accept(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        if not isinstance(request_id, int):
            print(f"worker: request without an integer id ignored: {message!r:.200}", file=sys.stderr)
            return
        flag = threading.Event()
        with self._flags_lock:
            self._cancel_flags[request_id] = flag
        self._pool.submit(self._run, request_id, message, flag)

    def _run(self, request_id: int, message: dict[str, Any], cancel: threading.Event) -> None:
        """Answer one request with exactly one of result, end or error; never raise."""
        try:
            if cancel.is_set():
                self.send({"type": "end", "id": request_id})
                return
            engine = self._engines.get()
            try:
                engine.begin(cancel)
                self._serve(engine, request_id, message, cancel)
            finally:
                self._engines.put(engine)
        except ValueError as exc:
            # llama-cpp-python's word for a bad request: a prompt longer than the context, a
            # bad response_format, logprobs without logits_all...
            self.send({"type": "error", "id": request_id, "kind": "invalid_request", "message": str(exc)})
        except Exception as exc:
            self.send({"type": "error", "id": request_id, "kind": "engine", "message": f"{type(exc).__name__}: {exc}"})
        finally:
            with self._flags_lock:
                self._cancel_flags.pop(request_id, None)

    def _serve(self, engine: Engine, request_id: int, message: dict[str, Any], cancel: threading.Event) -> None:
        llama = engine.llama
        op = message.get("op")
        methods = {
            "chat": llama.create_chat_completion,
            "completion": llama.create_completion,
            "embedding": llama.create_embedding,
        }
        if op not in methods:
            raise ValueError(f"unknown op {op!r} (must be one of: {', '.join(methods)})")
        params = message.get("params") or {}
        if not isinstance(params, dict):
            raise ValueError("params must be an object")
        stream = bool(message.get("stream")) and op != "embedding"
        if op != "embedding":
            params = {**params, "stream": stream}
        method = methods[op]
        try:
            inspect.signature(method).bind(**params)
        except TypeError as exc:  # an unknown or missing argument is the request's fault
            raise ValueError(str(exc)) from None

        response = method(**params)
        if not stream:
            # A cancelled request ends with "end" even when not streamed: its truncated result
            # must not pass for a whole one.
            if cancel.is_set():
                self.send({"type": "end", "id": request_id})
            else:
                self.send({"type": "result", "id": request_id, "data": response})
            return
        try:
            for chunk in response:
                if cancel.is_set():
                    break
                self.send({"type": "chunk", "id": request_id, "data": chunk})
        finally:
            response.close()  # runs the generator's cleanup now, before the engine is reused
        self.send({"type": "end", "id": request_id, "usage": engine.usage()})


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = _take_stdout()
    if len(args) != 1:
        print("usage: python -m gateway.engine.worker '<WorkerSpec JSON>'", file=sys.stderr)
        sys.exit(2)
    try:
        spec = WorkerSpec.from_json(args[0])
    except (msgspec.DecodeError, TypeError) as exc:
        out.write(encode({"type": "failed", "kind": "load", "message": _one_line(f"bad worker spec: {exc}")}))
        out.flush()
        sys.exit(1)
    log = LlamaLog()
    worker = Worker(spec, out)
    # Reading starts before loading so that EOF or "shutdown" ends even a long load at once.
    stdin = sys.stdin.buffer if sys.stdin is not None else None
    reader = threading.Thread(target=worker.read_commands, args=(stdin,), name="commands", daemon=True)
    reader.start()
    worker.load(log)
    reader.join()


if __name__ == "__main__":
    main()
