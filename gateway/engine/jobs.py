"""The work a request hands the decode loop, and what comes back.

A request's thread builds a job (its prompt tokens, sampler chains, limits) and submits it to
gateway.engine.batching.BatchEngine; the decode loop puts events on the job's queue as it goes;
the request's thread reads them with a ``JobReader``. The loop never waits for a reader.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from gateway.engine.protocol import ErrorKind, Timings

if TYPE_CHECKING:  # the worker imports this module before llama.cpp, sampling brings numpy
    from gateway.engine.sampling import SamplerChain


class JobFailed(Exception):
    """The decode loop ended the job with an error (``kind``: the protocol's error kind)."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class TokenLogprob:
    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]
    offset: int  # where the token's text starts in its choice's text (characters)


@dataclass(frozen=True)
class Delta:
    """New text of one choice, with the log-probabilities of the tokens it completes."""

    choice: int
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Finish:
    choice: int
    reason: str  # "stop" | "length" | "cancelled"
    completion_tokens: int


@dataclass(frozen=True)
class Summary:
    """A finished job's counts and times (monotonic seconds)."""

    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    first_token_at: float | None
    last_token_at: float | None
    cancelled: bool = False
    started_at: float | None = None  # when it took its slots (None: it never did)


@dataclass(frozen=True)
class Failure:
    kind: ErrorKind
    message: str


@dataclass(frozen=True)
class Embeddings:
    vectors: tuple[list[float], ...]
    prompt_tokens: int


Event = Delta | Finish | Summary | Failure | Embeddings


class StreamSink(Protocol):
    """Takes a job's text and choice ends on the decode loop's thread, as they come, instead of
    its queue: a streamed completion writes its stream chunks from there (gateway.engine.
    completion.ChunkSink), without a thread woken and a Delta made per token (issue 24)."""

    def delta(self, choice: int, text: str, logprobs: tuple[TokenLogprob, ...]) -> None: ...

    def finish(self, choice: int, reason: str, completion_tokens: int) -> None: ...


@dataclass(eq=False)  # a job is itself: hashed and compared by identity
class Job:
    """Common to every job: arrival and the event queue."""

    accepted_at: float  # when the worker read the request (monotonic): time to first token counts from here
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    # Takes each choice's text and end on the decode loop's thread instead of the queue (a
    # streamed completion sends its chunks from there, without waking a thread per token); the
    # Summary and any Failure still come through ``events``.
    sink: StreamSink | None = None

    def emit(self, event: Event) -> None:
        """Queue an event for the job's reader: its end (Summary, Failure, Embeddings); a
        Delta or Finish goes to the sink when the job has one (``emit_text``, ``emit_finish``)."""
        if isinstance(event, Delta):
            self.emit_text(event.choice, event.text, event.logprobs)
        elif isinstance(event, Finish):
            self.emit_finish(event.choice, event.reason, event.completion_tokens)
        else:
            self.events.put(event)

    def emit_text(self, choice: int, text: str, logprobs: tuple[TokenLogprob, ...] = ()) -> None:
        """A choice's new text: to the sink as it is, or onto the queue as a Delta."""
        if self.sink is not None:
            self.sink.delta(choice, text, logprobs)
        else:
            self.events.put(Delta(choice, text, logprobs))

    def emit_finish(self, choice: int, reason: str, completion_tokens: int) -> None:
        if self.sink is not None:
            self.sink.finish(choice, reason, completion_tokens)
        else:
            self.events.put(Finish(choice, reason, completion_tokens))


@dataclass(eq=False)
class GenerationJob(Job):
    """One prompt and its ``len(chains)`` choices, which share the prompt's KV cells."""

    prompt: list[int] = field(default_factory=list)
    chains: list[SamplerChain] = field(default_factory=list)
    max_tokens: int = 16  # already capped so that prompt + completion fits the request's context
    stops: list[str] = field(default_factory=list)
    logprobs: int | None = None  # top alternatives per token; None: no log-probabilities
    text_offset: int = 0  # where the choice's text starts, for logprobs text offsets
    # llama-cpp-python's StoppingCriteriaList (from some chat formats): (tokens so far, logits) -> stop
    stopping_criteria: Callable[[Any, Any], bool] | None = None
    # A seeded request decodes its whole prompt, never a slot's cached prefix: logits computed
    # in another batch shape (a cached prefix plus the rest) differ in their last bits, and a
    # sampled text with them (issue 21, item 12).
    fresh_prompt: bool = False

    @property
    def n_choices(self) -> int:
        return len(self.chains)

    def free_chains(self) -> None:
        for chain in self.chains:
            chain.free()


@dataclass(eq=False)
class EmbeddingJob(Job):
    inputs: list[list[int]] = field(default_factory=list)  # token ids, one list per input
    pool_mean: bool = False  # the context does not pool (pooling none): average the token vectors here


class JobReader:
    """Reads one job's events for its request's thread: all choices together, or one choice
    at a time (a chat with n > 1 reads each choice through its own chat handler call).

    Events of other choices than the one asked for are kept for later, so the choice streams of
    one job can be read in turn from one thread.
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        self._all: deque[Delta | Finish] = deque()
        self._per_choice: dict[int, deque[Delta | Finish]] = {}
        self._ended: set[int] = set()  # choices whose Finish was handed out
        self.summary: Summary | None = None
        self.failure: Failure | None = None
        self.embeddings: Embeddings | None = None

    def _read(self, timeout: float | None = None) -> Event:
        event = self.job.events.get(timeout=timeout)
        if isinstance(event, Summary):
            self.summary = event
        elif isinstance(event, Failure):
            self.failure = event
        elif isinstance(event, Embeddings):
            self.embeddings = event
        return event

    def next(self, choice: int | None = None) -> Delta | Finish | None:
        """The next Delta or Finish (of ``choice``, or of any); None when there are no more.
        JobFailed when the decode loop failed the job."""
        while True:
            if choice is None:
                if self._all:
                    return self._all.popleft()
            else:
                kept = self._per_choice.get(choice)
                if kept:
                    event = kept.popleft()
                    if isinstance(event, Finish):
                        self._ended.add(choice)
                    return event
                if choice in self._ended:
                    return None
            if self.failure is not None:
                raise JobFailed(self.failure.kind, self.failure.message)
            if self.summary is not None:
                return None
            event = self._read()
            if isinstance(event, (Delta, Finish)):
                if choice is None:
                    self._all.append(event)
                else:
                    self._per_choice.setdefault(event.choice, deque()).append(event)

    def wait(self, timeout: float | None = None) -> Summary:
        """Read to the job's end and return its Summary; JobFailed when it failed. Events read
        on the way stay for ``next``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.summary is None and self.failure is None:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                event = self._read(remaining)
            except queue.Empty:
                raise TimeoutError("the decode loop did not finish the job in time") from None
            if isinstance(event, (Delta, Finish)):
                # A reader reads all choices or one at a time, never both: keep it for either.
                self._all.append(event)
                self._per_choice.setdefault(event.choice, deque()).append(event)
        if self.failure is not None:
            raise JobFailed(self.failure.kind, self.failure.message)
        return self.summary  # type: ignore[return-value]


class Cancelled(Exception):
    """The request was cancelled before its job could start."""


class RequestScope:
    """One request's cancel flag and the jobs it submitted (a chat may submit several)."""

    def __init__(self, request_id: int, accepted_at: float | None = None) -> None:
        self.request_id = request_id
        self.accepted_at = time.monotonic() if accepted_at is None else accepted_at
        self._lock = threading.Lock()
        self._cancelled = False
        self._jobs: list[Job] = []
        self._cancel_job: Callable[[Job], None] | None = None
        self._readers: list[JobReader] = []
        self.summaries: list[Summary] = []  # of the jobs that ended

    def track(self, reader: JobReader) -> None:
        self._readers.append(reader)

    def settle(self, timeout: float | None = None) -> None:
        """Wait for every job of the request to end, and keep their summaries."""
        for reader in self._readers:
            if reader.failure is None:
                self.summaries.append(reader.wait(timeout))
        self._readers.clear()

    def usage(self) -> dict[str, int]:
        prompt = sum(s.prompt_tokens for s in self.summaries)
        completion = sum(s.completion_tokens for s in self.summaries)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def timings(self) -> Timings:
        """The protocol's timings, over every job of the request."""
        firsts = [s.first_token_at for s in self.summaries if s.first_token_at is not None]
        lasts = [s.last_token_at for s in self.summaries if s.last_token_at is not None]
        first = min(firsts) if firsts else None
        starts = [s.started_at for s in self.summaries if s.started_at is not None]
        return Timings(
            ttft_s=None if first is None else round(first - self.accepted_at, 6),
            prompt_s=round(first - min(starts), 6) if first is not None and starts else None,
            decode_s=round(max(lasts) - first, 6) if first is not None and lasts else 0.0,
            completion_tokens=sum(s.completion_tokens for s in self.summaries),
            prompt_tokens=sum(s.prompt_tokens for s in self.summaries),
            cached_prompt_tokens=sum(s.cached_prompt_tokens for s in self.summaries),
        )

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def register(self, job: Job, cancel_job: Callable[[Job], None]) -> None:
        """Track ``job``; Cancelled when the request is cancelled already (the job is not run)."""
        with self._lock:
            if self._cancelled:
                raise Cancelled()
            self._jobs.append(job)
            self._cancel_job = cancel_job

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            jobs, cancel_job = list(self._jobs), self._cancel_job
        if cancel_job is not None:
            for job in jobs:
                cancel_job(job)
