"""One model's worker process: the line protocol of gateway.engine.protocol around a batch engine.

Run as ``python -m gateway.engine.worker '<WorkerSpec JSON>'``. The worker loads one model and one
llama.cpp context with ``slots`` sequences (gateway.engine.loading), says "ready", then serves
every request it is sent: each request gets a thread that prepares it (chat template, tokens,
sampler chains) and turns the decode loop's output (gateway.engine.batching) into protocol
messages; ``slots`` of them decode at once, the rest wait in the loop's queue in arrival order.
It dies with its parent (PR_SET_PDEATHSIG, and EOF on stdin), ignores SIGINT (the gateway
handles Ctrl-C and sends "shutdown") and exits on SIGTERM by the default action.

llama-cpp-python is imported only after fd 1 has been pointed at stderr, so nothing it prints
while loading can reach the protocol stream, and before numpy (gateway.engine.native): the modules
imported at the top of this file must not pull numpy in.
"""

from __future__ import annotations

import contextlib
import faulthandler
import inspect
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO, NoReturn

import msgspec

from gateway.engine import native
from gateway.engine.jobs import Cancelled, JobFailed, RequestScope
from gateway.engine.process import die_with_parent, one_line, take_stdout
from gateway.engine.protocol import (
    Cancel,
    Chunk,
    End,
    Error,
    ErrorKind,
    Failed,
    LoadFailure,
    Op,
    Ready,
    Request,
    Result,
    Shutdown,
    WorkerMessage,
    WorkerSpec,
    decode_command,
    encode,
)
from gateway.errors import InvalidRequestError
from gateway.nvml import process_gpu_memory
from planner.llama_log import parse_buffer_lines

SHUTDOWN_GRACE_S = 2.0  # how long "shutdown" waits for cancelled generations to send "end"
SETTLE_TIMEOUT_S = 30.0  # how long a finished request waits for its jobs' counts



@dataclass
class Service:
    """What serves requests once the model is loaded."""

    completions: Any  # gateway.engine.completion.Completions
    chat: Any  # gateway.engine.chat.Chat
    embeddings: Any  # gateway.engine.embedding.Embeddings
    engine: Any  # gateway.engine.batching.BatchEngine
    # The argument lists of the ops that take llama-cpp-python's, read once (inspect.signature
    # costs ~0.1 ms a request); a completion's are its CompletionOptions, checked as they are made.
    signatures: dict[str, inspect.Signature] = field(init=False)

    def __post_init__(self) -> None:
        self.signatures = {
            "chat": inspect.signature(self.chat.signature_target()),
            "embedding": inspect.signature(self.embeddings.create_embedding),
        }

    def check(self, op: str, *args: Any, **params: Any) -> None:
        """ValueError naming the argument when the params do not fit the op's signature."""
        try:
            self.signatures[op].bind(*args, **params)
        except TypeError as exc:  # an unknown or missing argument is the request's fault
            raise ValueError(str(exc)) from None


class Worker:
    """A worker's state: its engine, the requests in hand and the protocol stream."""

    def __init__(self, spec: WorkerSpec, out: BinaryIO) -> None:
        self.spec = spec
        self._out = out
        self._out_lock = threading.Lock()
        self._step_lines: list[bytes] = []  # stream chunks queued for the step's write (under _out_lock)
        self._scopes: dict[int, RequestScope] = {}  # accepted and not yet answered
        self._scopes_lock = threading.Lock()
        self._service: Service | None = None
        self._ready = threading.Event()
        # A request holds its thread until it ends; the gateway sends at most max_concurrency
        # at once, so a few more threads than slots keep a stream that is still ending from
        # delaying the next request. Reused threads save ~0.1 ms a request over new ones.
        self._threads = ThreadPoolExecutor(max_workers=2 * spec.slots + 2, thread_name_prefix="request")

    def send(self, message: WorkerMessage) -> None:
        """Write one message now, after the current step's queued stream chunks (a request's
        end never overtakes its last chunks)."""
        line = encode(message)
        with self._out_lock:
            self._write(line)

    def queue(self, message: WorkerMessage) -> None:
        """Keep one message for the step's single write (``flush``): the decode loop's stream
        chunks, one write for all of a step's instead of one per chunk (issue 24)."""
        self.queue_line(encode(message))

    def queue_line(self, line: bytes) -> None:
        """``queue`` for a message already encoded (a stream chunk's line, gateway.engine.chunk_lines)."""
        with self._out_lock:
            self._step_lines.append(line)

    def flush(self) -> None:
        """Write the step's queued chunks at once (the decode loop's ``after_step``)."""
        with self._out_lock:
            self._write(b"")

    def _write(self, line: bytes) -> None:
        """Under ``_out_lock``: the queued lines and ``line`` in one write, then flushed."""
        if self._step_lines:
            self._step_lines.append(line)
            line = b"".join(self._step_lines)
            self._step_lines.clear()
        try:
            if line:
                self._out.write(line)
            self._out.flush()
        except OSError:
            self.exit(1)  # the gateway is gone: nobody left to answer

    def exit(self, code: int) -> NoReturn:
        """Leave now: os._exit, because interpreter shutdown would wait for generations."""
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)

    def fail(self, kind: LoadFailure, message: str) -> NoReturn:
        self.send(Failed(kind=kind, message=message))
        self.exit(1)

    def load(self, log: Any) -> None:
        """Load the model and its context, start the decode loop and send "ready"; or send
        "failed" and exit 1."""
        from gateway.cpus import available_cpus
        from gateway.engine import llama_params, loading
        from gateway.engine.batching import BatchEngine
        from gateway.engine.chat import Chat, chat_setup
        from gateway.engine.completion import Completions
        from gateway.engine.decode_thread import overlap_threshold
        from gateway.engine.embedding import Embeddings
        from gateway.engine.vocab import Vocab

        if not os.path.isfile(self.spec.model_path):
            self.fail(LoadFailure.MODEL_FILE, f"model file not found: {self.spec.model_path}")
        started = time.monotonic()
        try:
            loaded = loading.load(self.spec, loading.LoadProgress(self.send))
            vocab = Vocab(loaded.model)
            # The step's text beside the next decode only where the decode leaves a core for it.
            overlap = overlap_threshold(llama_params.thread_counts(self.spec)[0], available_cpus())
            engine = BatchEngine(loaded, vocab, send_stats=self.send, after_step=self.flush, pipeline_min_tokens=overlap)
            completions = Completions(engine, loaded, vocab)
            chat = Chat(completions, chat_setup(loaded.model, completions.metadata, self.spec.chat_format))
            embeddings = Embeddings(engine, loaded, vocab)
        except Exception as exc:
            # llama-cpp-python only says "Failed to load model from file"; llama.cpp's last
            # error line says why (a bad cache type, an allocation that failed...).
            self.fail(LoadFailure.LOAD, log.reason(exc))
        load_seconds = time.monotonic() - started
        log.stop_capturing()
        self._service = Service(completions, chat, embeddings, engine)
        self.send(
            Ready(
                load_seconds=round(load_seconds, 3),
                allocated=parse_buffer_lines(log.lines).as_dict(),
                gpu_used_bytes=process_gpu_memory(os.getpid(), self.spec.gpu_indices),
            )
        )
        engine.start()
        self._ready.set()  # requests that came during the load go now

    def read_commands(self, stdin: BinaryIO | None) -> None:
        """Dispatch the gateway's messages until "shutdown" or EOF, then stop."""
        try:
            for line in stdin or ():
                if not line.strip():
                    continue
                try:
                    message = decode_command(line)
                except msgspec.DecodeError as exc:  # unreadable, an unknown "type", a bad field
                    print(f"worker: message ignored ({exc}): {line[:200]!r}", file=sys.stderr)
                    continue
                if isinstance(message, Request):
                    self._accept(message)
                elif isinstance(message, Cancel):
                    with self._scopes_lock:
                        scope = self._scopes.get(message.id)
                    if scope is not None:
                        scope.cancel()
                elif isinstance(message, Shutdown):
                    break
        finally:
            self.stop()

    def stop(self) -> NoReturn:
        """Cancel everything, give the cancelled streams a moment to send "end", exit 0."""
        with self._scopes_lock:
            scopes = list(self._scopes.values())
        for scope in scopes:
            scope.cancel()
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        while self._scopes and time.monotonic() < deadline:
            time.sleep(0.01)
        self.exit(0)

    def _accept(self, message: Request) -> None:
        scope = RequestScope(message.id)  # time to first token counts from here
        with self._scopes_lock:
            self._scopes[message.id] = scope
        self._threads.submit(self._run, message.id, message, scope)

    def _end(self, request_id: int, scope: RequestScope) -> None:
        with contextlib.suppress(TimeoutError, JobFailed):
            scope.settle(SETTLE_TIMEOUT_S)
        self.send(End(id=request_id, usage=scope.usage(), timings=scope.timings()))

    def _run(self, request_id: int, message: Request, scope: RequestScope) -> None:
        """Answer one request with exactly one of result, end or error; never raise."""
        try:
            self._ready.wait()
            if scope.cancelled:
                self._end(request_id, scope)
                return
            self._serve(request_id, message, scope)
        except Cancelled:
            self._end(request_id, scope)
        except JobFailed as exc:
            self.send(Error(id=request_id, kind=exc.kind, message=str(exc)))
        except InvalidRequestError as exc:  # the request's fault, and which field it is
            self.send(Error(id=request_id, kind=ErrorKind.INVALID_REQUEST, message=str(exc), param=exc.param))
        except ValueError as exc:
            # The request's fault: a prompt longer than the context, a bad response_format,
            # an argument llama-cpp-python does not take...
            self.send(Error(id=request_id, kind=ErrorKind.INVALID_REQUEST, message=str(exc)))
        except Exception as exc:  # noqa: BLE001 - every request gets its answer
            self.send(Error(id=request_id, kind=ErrorKind.ENGINE, message=f"{type(exc).__name__}: {exc}"))
        finally:
            with self._scopes_lock:
                self._scopes.pop(request_id, None)

    def _serve(self, request_id: int, message: Request, scope: RequestScope) -> None:
        service = self._service
        if service is None:
            raise RuntimeError("the model is not loaded")
        op, params = message.op, message.params
        stream = message.stream and op is not Op.EMBEDDING

        if op is Op.EMBEDDING:
            service.check("embedding", scope, **params)
            data = service.embeddings.create_embedding(scope, **params)
            scope.settle(SETTLE_TIMEOUT_S)
            self.send(Result(id=request_id, data=data, usage=scope.usage(), timings=scope.timings()))
            return
        params = {**params, "stream": stream}
        if op is Op.COMPLETION:
            if stream:
                self._stream_completion(request_id, params, scope, service)
                return
            response = service.completions.create_completion(scope, **params)
        else:
            service.check("chat", None, **{k: v for k, v in params.items() if k != "n"})
            response = service.chat.create(scope, params, stream)

        if not stream:
            # A cancelled request ends with "end" even when not streamed: its truncated result
            # must not pass for a whole one.
            if scope.cancelled:
                self._end(request_id, scope)
                return
            scope.settle(SETTLE_TIMEOUT_S)
            self.send(Result(id=request_id, data=response, usage=scope.usage(), timings=scope.timings()))
            return
        try:
            for chunk in response:
                if scope.cancelled:
                    break
                self.send(Chunk(id=request_id, data=chunk))
        finally:
            close = getattr(response, "close", None)
            if close is not None:
                close()  # runs the generators' cleanup now (a stream left early cancels its job)
        self._end(request_id, scope)

    def _stream_completion(self, request_id: int, params: dict[str, Any], scope: RequestScope, service: Service) -> None:
        """A streamed completion's chunks go out from the decode loop's own thread as it makes
        them (queued, and written once a step for all streams), so no thread wakes per token; this one waits for the end."""
        from gateway.engine.completion import CompletionOptions

        started = service.completions.start(scope, CompletionOptions.of(params), on_line=self.queue_line, request_id=request_id)
        started.reader.wait()  # the Summary (cancelled or not), or JobFailed
        self._end(request_id, scope)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = take_stdout()
    # A native crash (llama.cpp, CUDA) prints the crashing thread's Python stack to stderr, which
    # the gateway keeps as the model's failure reason (gateway.runtime.exit_reason).
    faulthandler.enable(file=sys.stderr, all_threads=False)
    native.load_first()  # before anything imports numpy: gateway/engine/native.py says why
    if len(args) != 1:
        print("usage: python -m gateway.engine.worker '<WorkerSpec JSON>'", file=sys.stderr)
        sys.exit(2)
    try:
        spec = WorkerSpec.from_json(args[0])
    except (msgspec.DecodeError, TypeError) as exc:
        out.write(encode(Failed(kind=LoadFailure.LOAD, message=one_line(f"bad worker spec: {exc}"))))
        out.flush()
        sys.exit(1)
    from gateway.engine.loading import LlamaLog

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
