"""Where the decode loop's time goes, step by step, by part (issue 24's engine benchmark).

A ``StepProfiler`` handed to gateway.engine.batching.BatchEngine splits the wall time of every
step that did work into the parts of ``PARTS``: each moment of the step belongs to exactly one
part, the one switched to last, so the parts of a step always add up to the step's time. The
loop switches parts where its work changes; a part may be entered inside another (a stream
chunk is sent from inside the text part) and hands the time back when it ends (``timed``).

When the decode runs on the decode thread (gateway.engine.decode_thread), the loop's own parts go
on while it computes: the decode part then holds only the wait for it, and ``overlapped`` adds
the time of the loop's work that ran beside it (on the engine's wall clock), so that
``decode_s`` is the decode's whole time and ``outside_decode_s`` what the loop added to the
step. With a thread CPU clock nothing is subtracted (the loop thread's CPU time is all its own).

Without a profiler (the worker's case) the loop only tests ``is not None`` at those places.
bench/engine_parts.py drives an engine in-process with one and prints the parts per step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SCHEDULE = "schedule"  # new jobs and cancels, admission to slots, the stats message
BATCH = "batch"  # building the step's batch, and the slots' bookkeeping after its decode
DECODE = "decode"  # llama_decode
SAMPLE = "sample"  # the sampler chain, the logits read for log-probabilities and stopping criteria
TEXT = "text"  # end of generation, detokenizing, stop strings, stopping criteria, a choice's end
# A stream chunk made, encoded and written from the loop (a job's sink); the step's flush. The
# events of a job without a sink go onto its queue inside the text part.
SEND = "send"
PARTS = (SCHEDULE, BATCH, DECODE, SAMPLE, TEXT, SEND)


@dataclass(frozen=True)
class StepReport:
    """The totals over the counted steps (seconds)."""

    steps: int
    step_s: float
    parts_s: dict[str, float]
    overlapped_s: float = 0.0  # the loop's work done while the decode thread decoded

    def per_step_ms(self, part: str) -> float:
        seconds = self.decode_s if part == DECODE else self.parts_s[part]
        return 1000.0 * seconds / self.steps if self.steps else 0.0

    @property
    def decode_s(self) -> float:
        """llama_decode's whole time: what the loop waited for it, and what ran beside it."""
        return self.parts_s[DECODE] + self.overlapped_s

    @property
    def outside_decode_s(self) -> float:
        """What the loop's own work added to the steps (its parts, less what overlapped)."""
        return sum(s for part, s in self.parts_s.items() if part != DECODE) - self.overlapped_s


class StepProfiler:
    """Splits each step's time by part. Used from the decode loop's thread only."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter, *, wall_clock: bool = True) -> None:
        """``wall_clock``: ``clock`` is a wall clock (False for a thread's CPU time: then the
        decode's overlap is not subtracted)."""
        self._clock = clock
        self._totals = dict.fromkeys(PARTS, 0.0)
        self._step = dict.fromkeys(PARTS, 0.0)
        self._steps = 0
        self._step_s = 0.0
        self._part = SCHEDULE
        self._started = 0.0
        self._last = 0.0
        self._overlapped = 0.0
        self._step_overlapped = 0.0
        self._wall = wall_clock

    def begin(self) -> None:
        """A step starts, in the schedule part."""
        now = self._clock()
        self._started = self._last = now
        self._part = SCHEDULE
        self._step_overlapped = 0.0
        for part in PARTS:
            self._step[part] = 0.0

    def switch(self, part: str) -> str:
        """From now on the time is ``part``'s; returns the part it was (to switch back to)."""
        now = self._clock()
        self._step[self._part] += now - self._last
        self._last = now
        previous, self._part = self._part, part
        return previous

    def end(self, counted: bool) -> None:
        """The step ends; ``counted``: it did work (an idle pass of the loop is not a step)."""
        now = self._clock()
        self._step[self._part] += now - self._last
        self._last = now
        if not counted:
            return
        self._steps += 1
        self._step_s += now - self._started
        self._overlapped += self._step_overlapped
        for part in PARTS:
            self._totals[part] += self._step[part]

    def overlapped(self, seconds: float) -> None:
        """``seconds`` of this step's other parts ran while the decode thread decoded (wall)."""
        if self._wall:
            self._step_overlapped += seconds

    def timed(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` with its time counted as ``part``, then handed back to the part it was called in."""

        def run(*args: Any, **kwargs: Any) -> Any:
            previous = self.switch(part)
            try:
                return fn(*args, **kwargs)
            finally:
                self.switch(previous)

        return run

    def timed_sink(self, part: str, sink: Any) -> Any:
        """A job's stream sink (gateway.engine.jobs.StreamSink) whose calls count as ``part``."""
        return _TimedSink(self.timed(part, sink.delta), self.timed(part, sink.finish))

    def report(self) -> StepReport:
        return StepReport(self._steps, self._step_s, dict(self._totals), self._overlapped)


@dataclass(frozen=True)
class _TimedSink:
    delta: Callable[..., None]
    finish: Callable[..., None]
