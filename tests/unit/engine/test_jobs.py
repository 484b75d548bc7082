"""Jobs and their readers, without a model."""

from __future__ import annotations

import time

from gateway.engine.jobs import Delta, Finish, GenerationJob, JobReader, Summary


class _Sink:
    def __init__(self) -> None:
        self.seen: list = []

    def delta(self, choice, text, logprobs):
        self.seen.append(Delta(choice, text, logprobs))

    def finish(self, choice, reason, completion_tokens):
        self.seen.append(Finish(choice, reason, completion_tokens))


def test_a_job_with_a_sink_hands_it_text_and_finish_and_queues_only_its_end():
    sink = _Sink()
    job = GenerationJob(accepted_at=time.monotonic(), sink=sink)
    job.emit_text(0, "Hello")
    job.emit(Finish(0, "stop", 1))
    job.emit(Summary(3, 1, 0, None, None))
    assert sink.seen == [Delta(0, "Hello"), Finish(0, "stop", 1)]
    reader = JobReader(job)
    assert reader.next() is None  # nothing but the end came through the queue
    assert reader.summary == Summary(3, 1, 0, None, None)


def test_a_job_without_a_sink_queues_everything_for_its_reader():
    job = GenerationJob(accepted_at=time.monotonic())
    job.emit(Delta(0, "Hi"))
    job.emit(Finish(0, "length", 1))
    job.emit(Summary(2, 1, 0, None, None))
    reader = JobReader(job)
    assert [reader.next(), reader.next(), reader.next()] == [Delta(0, "Hi"), Finish(0, "length", 1), None]
