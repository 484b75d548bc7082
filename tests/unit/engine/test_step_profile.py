"""The decode loop's step profiler (gateway.engine.step_profile) on a fake clock."""

from __future__ import annotations

import pytest

from gateway.engine.step_profile import BATCH, DECODE, PARTS, SAMPLE, SCHEDULE, SEND, TEXT, StepProfiler


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _step(profiler: StepProfiler, clock: FakeClock, n_sequences: int) -> None:
    """One step as the loop makes it: schedule, batch, decode, then per sequence sample, text
    and a chunk sent from inside the text part; the step's flush."""
    profiler.begin()
    clock.advance(0.001)
    profiler.switch(BATCH)
    clock.advance(0.002)
    profiler.switch(DECODE)
    clock.advance(0.010)
    profiler.switch(BATCH)
    send = profiler.timed(SEND, lambda: clock.advance(0.0005))
    for _ in range(n_sequences):
        previous = profiler.switch(SAMPLE)
        clock.advance(0.0003)
        profiler.switch(TEXT)
        clock.advance(0.0001)
        send()
        clock.advance(0.0001)  # the text part again, after the chunk went out
        profiler.switch(previous)
    profiler.switch(SEND)
    clock.advance(0.0002)
    profiler.end(counted=True)


def test_the_parts_of_every_step_add_up_to_the_step_time():
    clock = FakeClock()
    profiler = StepProfiler(clock)
    started = clock.now
    for n in (1, 4, 16):
        _step(profiler, clock, n)

    report = profiler.report()
    assert report.steps == 3
    assert report.step_s == pytest.approx(clock.now - started)
    assert sum(report.parts_s.values()) == pytest.approx(report.step_s)
    sequences = 1 + 4 + 16
    assert report.parts_s == pytest.approx(
        {
            SCHEDULE: 3 * 0.001,
            BATCH: 3 * 0.002,
            DECODE: 3 * 0.010,
            SAMPLE: sequences * 0.0003,
            TEXT: sequences * 0.0002,
            SEND: sequences * 0.0005 + 3 * 0.0002,
        }
    )
    assert report.outside_decode_s == pytest.approx(report.step_s - 3 * 0.010)
    assert report.per_step_ms(DECODE) == pytest.approx(10.0)


def test_an_idle_pass_of_the_loop_is_not_a_step():
    clock = FakeClock()
    profiler = StepProfiler(clock)
    _step(profiler, clock, 2)
    profiler.begin()
    clock.advance(5.0)  # waiting for work
    profiler.end(counted=False)

    report = profiler.report()
    assert report.steps == 1
    assert sum(report.parts_s.values()) == pytest.approx(report.step_s)
    assert report.parts_s[SCHEDULE] == pytest.approx(0.001)


def test_a_timed_call_that_raises_hands_the_time_back_to_its_caller_part():
    clock = FakeClock()
    profiler = StepProfiler(clock)

    def fails() -> None:
        clock.advance(0.004)
        raise RuntimeError("the client went away")

    profiler.begin()
    profiler.switch(TEXT)
    with pytest.raises(RuntimeError):
        profiler.timed(SEND, fails)()
    clock.advance(0.001)
    profiler.end(counted=True)

    report = profiler.report()
    assert report.parts_s[SEND] == pytest.approx(0.004)
    assert report.parts_s[TEXT] == pytest.approx(0.001)
    assert set(report.parts_s) == set(PARTS)


def _overlapped_step(profiler: StepProfiler, clock: FakeClock) -> None:
    """A step whose decode (10 ms) runs on the decode thread while the loop takes 3 ms of the
    last step's text and sending, then waits 7 ms for it."""
    profiler.begin()
    profiler.switch(BATCH)
    clock.advance(0.002)
    profiler.switch(DECODE)
    previous = profiler.switch(TEXT)
    clock.advance(0.002)
    profiler.switch(SEND)
    clock.advance(0.001)
    profiler.switch(previous)
    clock.advance(0.007)
    profiler.overlapped(0.003)
    profiler.switch(SAMPLE)
    clock.advance(0.001)
    profiler.end(counted=True)


def test_work_beside_the_decode_thread_counts_as_the_decodes_time_not_as_the_steps_extra():
    clock = FakeClock()
    profiler = StepProfiler(clock)
    _overlapped_step(profiler, clock)

    report = profiler.report()
    assert report.step_s == pytest.approx(0.013)
    assert report.parts_s[TEXT] == pytest.approx(0.002) and report.parts_s[SEND] == pytest.approx(0.001)
    assert report.decode_s == pytest.approx(0.010)  # 7 ms waited, 3 ms beside
    assert report.per_step_ms(DECODE) == pytest.approx(10.0)
    assert report.outside_decode_s == pytest.approx(0.003)  # batch and sample: what the step added
    assert report.decode_s + report.outside_decode_s == pytest.approx(report.step_s)


def test_a_thread_clock_profile_keeps_the_loops_own_time_whole():
    clock = FakeClock()
    profiler = StepProfiler(clock, wall_clock=False)  # the loop thread's CPU time: the decode's is another thread's
    _overlapped_step(profiler, clock)

    report = profiler.report()
    assert report.overlapped_s == 0.0
    assert report.outside_decode_s == pytest.approx(0.006)
