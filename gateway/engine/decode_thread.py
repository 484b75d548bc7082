"""llama_decode on a thread of its own, so that the decode loop's Python work overlaps it (issue 24).

The decode loop's text and sending for a step (each choice's piece into its text, stop strings,
stream chunks made and written) need only that step's sampled tokens, while the next step's
decode needs only the tokens themselves. So once a step is sampled, the loop builds and starts the
next decode here and does the previous step's text and sending while it runs
(gateway.engine.batching). ctypes releases the GIL for the call's duration, so the two run on two
cores. On a GPU llama_decode returns once its work is queued and the first logits read waits for
it; the overlap then comes from the same order without needing a second core.

A hand-off costs two thread wake-ups, so the loop uses it only for steps with enough text work
to hide (``PIPELINE_MIN_TOKENS``), and only where the decode's threads leave a core free
(``overlap_threshold``). ``start`` returns once this thread has taken the decode: had
the loop gone on with its Python work at once, this thread would have waited for the GIL (up to
the interpreter's 5 ms switch interval) before it could call llama_decode.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import Enum

# Sampled tokens whose text a step defers to the next decode: below this the two wake-ups cost
# about what the overlap saves (bench/engine_parts.py; docs/benchmarks.md, "Issue 24: text and
# sending beside the next decode").
PIPELINE_MIN_TOKENS = 8


def overlap_threshold(decode_threads: int, cpus: int) -> int | None:
    """The decode loop's ``pipeline_min_tokens`` for a decode on ``decode_threads`` threads of
    ``cpus``: PIPELINE_MIN_TOKENS when the decode leaves a core for the loop's own work, None
    (never overlap) when its threads take them all. llama.cpp's threads wait for each other at
    every graph node, so the loop's work preempting one of them stalls the whole decode: with 2
    threads on 2 cores the overlap cost 1-25% of the tokens/s it was meant to add (the same
    section of docs/benchmarks.md). A model wholly on GPUs decodes on few threads (the launch
    gives it 2), which leaves the rest."""
    return PIPELINE_MIN_TOKENS if decode_threads < cpus else None


class _State(Enum):
    IDLE = "idle"
    REQUESTED = "requested"
    RUNNING = "running"
    DONE = "done"
    CLOSED = "closed"


class DecodeThread:
    """Runs ``decode`` (a call that returns llama_decode's result) when asked, one at a time.
    Used from the decode loop's thread only: ``start``, then that thread's own work, then ``wait``."""

    def __init__(self, decode: Callable[[], int], clock: Callable[[], float] = time.perf_counter) -> None:
        self._decode = decode
        self._clock = clock
        self._cond = threading.Condition()
        self._state = _State.IDLE
        self._result = 0
        self._error: BaseException | None = None
        self.ended_at = 0.0  # when the last decode returned (``clock``)
        self._thread = threading.Thread(target=self._run, name="decode-call", daemon=True)
        self._thread.start()

    def start(self) -> None:
        """Start a decode; returns once the thread is calling it."""
        with self._cond:
            if self._state is not _State.IDLE:
                raise RuntimeError(f"a decode was started while the last one is {self._state.value}")
            self._state = _State.REQUESTED
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._state is not _State.REQUESTED)

    def wait(self) -> int:
        """The started decode's result (its exception, raised here)."""
        with self._cond:
            self._cond.wait_for(lambda: self._state in (_State.DONE, _State.CLOSED))
            if self._state is _State.CLOSED:
                raise RuntimeError("the decode thread was closed")
            self._state = _State.IDLE
            error, self._error = self._error, None
        if error is not None:
            raise error
        return self._result

    def close(self) -> None:
        with self._cond:
            self._state = _State.CLOSED
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._state in (_State.REQUESTED, _State.CLOSED))
                if self._state is _State.CLOSED:
                    return
                self._state = _State.RUNNING
                self._cond.notify_all()
            try:
                result, error = self._decode(), None
            except BaseException as exc:  # noqa: BLE001 - handed to the loop's thread, raised there
                result, error = 0, exc
            ended = self._clock()
            with self._cond:
                if self._state is _State.CLOSED:
                    return
                self._result, self._error, self.ended_at = result, error, ended
                self._state = _State.DONE
                self._cond.notify_all()
