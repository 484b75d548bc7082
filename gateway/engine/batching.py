"""Continuous batching: one decode loop drives one llama.cpp context for every request.

One thread owns the context. Each step it builds one batch: the next token of every generating
sequence, then as much of the waiting prompts as the step may take (chunked prefill,
gateway.engine.prefill); decodes it once; samples every sequence that got logits; and hands each
choice's new text to its job's event queue (gateway.engine.sequence). New jobs join between
steps, in arrival order, as slots free up; a finished or cancelled sequence leaves its slot at
once, its cells kept as that slot's prompt cache (gateway.engine.slots). The design follows
llama.cpp's tools/server ``update_slots`` and examples/parallel.

``n`` choices of one prompt decode the prompt once, in one slot; when it is read its cells are
copied (``llama_memory_seq_cp``) to one more slot per further choice, which all sample from the
prompt's last logits.

Failures stay with their job: a grammar that allows no token, a sampler or stopping criterion
that raises, or a decode that fails ends only the jobs in that batch's sequences. When the
shared KV pool (``kv_unified``) is full, idle caches go first, then prompt chunks wait, then the
newest sequence ends with finish reason "length".

With a StepProfiler (gateway.engine.step_profile; bench/engine_parts.py) the loop splits each
step's time by part: scheduling, batch building, llama_decode, sampling, text, sending.
"""

from __future__ import annotations

import logging
import operator
import os
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.engine.decode_thread import PIPELINE_MIN_TOKENS, DecodeThread
from gateway.engine.jobs import EmbeddingJob, Embeddings, Failure, GenerationJob, Job, Summary
from gateway.engine.llama_batch import Batch
from gateway.engine.loading import LoadedModel
from gateway.engine.prefill import PrefillBudget
from gateway.engine.protocol import ErrorKind, Stats
from gateway.engine.sampling import GrammarDeadEnd, GreedyRows, StepLogits, logits_at, token_logprobs
from gateway.engine.sequence import SeqState, Sequence
from gateway.engine.slots import KvMemory, Slot, pick_slot
from gateway.engine.stats import StepStats
from gateway.engine.step_profile import BATCH, DECODE, SAMPLE, SEND, TEXT, StepProfiler
from gateway.engine.vocab import Vocab

log = logging.getLogger("gateway.engine.batching")
_busy = operator.attrgetter("busy")
_pending, _n_past, _slot_index = operator.attrgetter("pending"), operator.attrgetter("n_past"), operator.attrgetter("slot.index")


@dataclass
class _Running:
    """A generation job in slots."""

    job: GenerationJob
    sequences: list[Sequence]
    cached_prompt_tokens: int
    started_at: float  # when it took its slots: its prompt is read from then on
    first_token_at: float | None = None
    last_token_at: float | None = None
    cancelled: bool = False


class BatchEngine:
    """The decode loop and its scheduler. ``submit``, ``cancel`` and ``stop`` may be called from
    any thread; everything else runs on the loop's own thread, the context's only user."""

    def __init__(
        self,
        loaded: LoadedModel,
        vocab: Vocab,
        *,
        send_stats: Callable[[Stats], None] | None = None,
        after_step: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        profiler: StepProfiler | None = None,
        pipeline_min_tokens: int | None = PIPELINE_MIN_TOKENS,
    ) -> None:
        """``after_step``: called on the loop's thread after each step that did work (the worker
        flushes the stream chunks the step's jobs wrote). ``profiler``: splits each step's time
        by part (a benchmark's; None costs the loop an ``is not None`` test here and there).
        ``pipeline_min_tokens``: a step with at least that many greedy tokens to take does their
        text and sending while the next step decodes (gateway.engine.decode_thread); None: never."""
        from llama_cpp import llama_cpp as capi

        self._capi = capi
        self.loaded = loaded
        self.vocab = vocab
        self.slots = [Slot(i) for i in range(loaded.spec.slots)]
        self._ctx = loaded.ctx
        self._kv = KvMemory(loaded.ctx, loaded.n_swa)
        self._batch = Batch(loaded.n_batch)
        self._budget = PrefillBudget(loaded.n_batch)
        self._clock = clock
        self._stats = StepStats(len(self.slots), send_stats, clock)
        self._after_step = after_step
        self._unified = loaded.spec.kv_unified
        self._profiler = profiler
        self._greedy_rows = GreedyRows()
        self._step_logits = StepLogits(loaded.ctx, loaded.n_vocab)
        # A step takes at most one greedy token a slot: with fewer slots nothing is ever deferred.
        pipelined = pipeline_min_tokens is not None and len(self.slots) >= pipeline_min_tokens
        self._pipeline_min = pipeline_min_tokens if pipelined else None
        self._decoder = DecodeThread(self._decode, clock) if pipelined else None
        # The last step's greedy tokens whose text waits for the next decode: (sequence, token,
        # piece or None for an end of generation), and when they were sampled.
        self._deferred: list[tuple[Sequence, int, bytes | None]] = []
        self._deferred_at = 0.0
        self._decoding = False  # a decode runs on the decode thread: no llama.cpp call here
        self._free_after_decode: list[GenerationJob] = []

        self._lock = threading.Condition()
        self._inbox: deque[Job] = deque()
        self._cancels: list[Job] = []
        self._stopping = False

        self._waiting: deque[Job] = deque()
        self._running: dict[Job, _Running] = {}
        self._prefilling: list[Sequence] = []  # in admission order
        self._admissions = 0
        self._prefill_blocked = False  # the shared KV pool is full: no prompt chunks until a sequence ends
        self._embedding: EmbeddingJob | None = None
        self._embedding_next = 0
        self._embedding_vectors: list[list[float]] = []
        self._thread = threading.Thread(target=self._run, name="decode-loop", daemon=True)

    # ------------------------------------------------------------------ any thread

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._lock:
            self._inbox.append(job)
            self._lock.notify()

    def cancel(self, job: Job) -> None:
        with self._lock:
            self._cancels.append(job)
            self._lock.notify()

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        if self._decoder is not None and not self._thread.is_alive():
            self._decoder.close()

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        profiler = self._profiler
        try:
            while True:
                if profiler is not None:
                    profiler.begin()
                self._stats.maybe_send(self.busy_slots())  # the last pass's activity, or the wait's
                if not self._take_inbox():
                    break
                self._admit()
                worked = self._embedding is not None and self._embedding_step()
                # A generation step follows every embedding step: streams keep flowing.
                worked = self._generation_step() or worked
                if worked:
                    self._flush()
                if profiler is not None:
                    profiler.end(counted=worked)
                if not worked:
                    self._idle_wait()
        except Exception:  # noqa: BLE001 - the loop must not die silently
            # A bug here leaves the context in an unknown state: fail everything and exit, so
            # the gateway restarts the worker as after any crash.
            print(f"decode loop failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
            failure = Failure(ErrorKind.ENGINE, "the decode loop failed; the worker restarts")
            for job in [r.job for r in self._running.values()] + list(self._waiting) + [self._embedding]:
                if job is not None:
                    job.emit(failure)
            os._exit(1)

    def _flush(self) -> None:
        """``after_step``: the chunks the loop queued go out (its time is the send part's)."""
        if self._after_step is None:
            return
        profiler = self._profiler
        previous = profiler.switch(SEND) if profiler is not None else ""
        self._after_step()
        if profiler is not None:
            profiler.switch(previous)

    def _take_inbox(self) -> bool:
        """Move new jobs and cancels in; False when the loop must stop."""
        with self._lock:
            if self._stopping:
                return False
            new, cancels = list(self._inbox), list(self._cancels)
            self._inbox.clear()
            self._cancels.clear()
        self._waiting.extend(new)
        for job in cancels:
            self._apply_cancel(job)
        return True

    def _idle_wait(self) -> None:
        """Sleep until a job, a cancel or a stop comes, or the pending stats are due. Waiting
        jobs are no reason to wake: only a running job's end frees the slots they wait for."""
        with self._lock:
            if self._inbox or self._cancels or self._stopping or self._running or self._embedding is not None:
                return
            timeout = None
            if self._stats.pending(self.busy_slots()):
                timeout = max(0.0, self._stats.due() - self._clock())
            self._lock.wait(timeout)

    def busy_slots(self) -> int:
        return len(self.slots) - list(map(_busy, self.slots)).count(None)

    # ------------------------------------------------------------------ admission

    def _apply_cancel(self, job: Job) -> None:
        if job in self._waiting:
            self._waiting.remove(job)
            if isinstance(job, GenerationJob):
                job.free_chains()
                job.emit(Summary(len(job.prompt), 0, 0, None, None, cancelled=True))
            else:
                job.emit(Summary(0, 0, 0, None, None, cancelled=True))
            return
        if job is self._embedding:
            job.emit(Summary(0, 0, 0, None, None, cancelled=True))
            self._embedding = None
            return
        running = self._running.get(job)
        if running is not None:
            running.cancelled = True
            for seq in running.sequences:
                self._finish(seq, "cancelled")

    def _idle_slots(self) -> list[Slot]:
        return [s for s in self.slots if s.busy is None]

    def _admit(self) -> None:
        """Start waiting jobs, in arrival order, while there are slots for them."""
        idle = self._idle_slots() if self._waiting else []
        while self._waiting and self._embedding is None:
            job = self._waiting[0]
            if isinstance(job, EmbeddingJob):
                if not idle:
                    return
                self._waiting.popleft()
                self._embedding, self._embedding_next, self._embedding_vectors = job, 0, []
                return
            if not isinstance(job, GenerationJob) or len(idle) < job.n_choices:
                return
            self._waiting.popleft()
            self._start(job, idle)
            idle = [s for s in idle if s.busy is None]

    def _start(self, job: GenerationJob, idle: list[Slot]) -> None:
        # A seeded job takes no cached prefix (GenerationJob.fresh_prompt): the same request
        # then decodes the same batches on an idle model, and samples the same text.
        slot, shared = pick_slot([] if job.fresh_prompt else job.prompt, idle)
        n_past = self._kv.reuse(slot, job.prompt, shared)
        self._admissions += 1
        first = Sequence(job, 0, slot, job.chains[0], SeqState.PREFILL, self._admissions, n_past=n_past, prompt_pos=n_past)
        slot.busy = first
        sequences = [first]
        others = sorted((s for s in idle if s is not slot), key=lambda s: (s.last_used, len(s.cached))) if job.n_choices > 1 else []
        for choice, extra in zip(range(1, job.n_choices), others):
            self._kv.clear(extra)
            fork = Sequence(job, choice, extra, job.chains[choice], SeqState.WAIT_FORK, self._admissions)
            extra.busy = fork
            first.forks.append(fork)
            sequences.append(fork)
        self._running[job] = _Running(job, sequences, cached_prompt_tokens=n_past, started_at=self._clock())
        if self._profiler is not None and job.sink is not None:
            job.sink = self._profiler.timed_sink(SEND, job.sink)  # a stream chunk's time is sending's
        self._prefilling.append(first)
        self._stats.cached(n_past)

    # ------------------------------------------------------------------ generation

    def _generation_step(self) -> bool:
        """One decode of every generating sequence plus prompt chunks; False when idle."""
        profiler = self._profiler
        if profiler is not None:
            profiler.switch(BATCH)
        deferred = self._deferred
        if deferred:
            self._deferred = []
        batch = self._batch
        batch.clear()
        state = SeqState.GENERATING
        # A sequence whose deferred token ends it (end of generation, max_tokens) has none
        # pending: it is not decoded again, its text is taken below.
        generating = [seq for seq in map(_busy, self.slots) if seq is not None and seq.state is state and seq.pending is not None]
        tokens: list[int] = []
        if generating:
            # Each column read by one map over the sequences (attrgetter: no Python frame a token).
            tokens = list(map(_pending, generating))
            first = batch.add_singles(tokens, list(map(_n_past, generating)), list(map(_slot_index, generating)))
            for k, seq in enumerate(generating, first):
                seq.batch_index = seq.logits_row = k  # the batch's first tokens, each with its logits
        chunks: list[tuple[Sequence, int]] = []
        budget = 0 if self._prefill_blocked else self._budget.tokens(len(generating), waiting=len(self._prefilling))
        for seq in self._prefilling:
            take = min(budget, batch.free_room(), len(seq.job.prompt) - seq.prompt_pos)
            if take <= 0:
                break
            last = seq.prompt_pos + take == len(seq.job.prompt)
            seq.logits_row = batch.n_outputs
            index = batch.add(seq.job.prompt[seq.prompt_pos : seq.prompt_pos + take], seq.prompt_pos, seq.slot.index, output_last=last)
            seq.batch_index = index if last else -1
            chunks.append((seq, take))
            budget -= take
        if batch.n == 0:
            if deferred:  # every deferred token ended its sequence
                self._take_plain(deferred, self._deferred_at)
                return True
            return False

        if profiler is not None:
            profiler.switch(DECODE)
        started = self._clock()
        if deferred:
            ret, decoded_at = self._decode_beside(deferred)
        else:
            ret, decoded_at = self._decode(), self._clock()
        if ret == 1:
            ret = self._make_room(generating, chunks)
            if ret is None:
                return True  # the next step is built without what gave way
            decoded_at = self._clock()  # the retry ran here: the step's decode time is its
        if ret != 0:
            self._fail_batch(generating, chunks, ret)
            return True
        now = self._clock()
        if profiler is not None:
            profiler.switch(BATCH)
        self._budget.observe(len(generating), sum(take for _, take in chunks), decoded_at - started)
        self._stats.decoded(batch.n)

        # The step's bookkeeping first, then its sampling in the same order as one pass:
        # (sequence, batch index of its logits). A sequence that a stop string in its deferred
        # text ended meanwhile was decoded all the same: its slot keeps that token's cell.
        for seq, token in zip(generating, tokens):
            seq.slot.cached.append(token)
            seq.n_past += 1
            seq.pending = None
        if deferred:
            done = SeqState.DONE
            generating = [seq for seq in generating if seq.state is not done]
        to_sample = [(seq, seq) for seq in generating]  # (sequence, the one whose logits it samples from)
        for seq, take in chunks:
            seq.slot.cached.extend(seq.job.prompt[seq.prompt_pos : seq.prompt_pos + take])
            seq.prompt_pos += take
            seq.n_past += take
            if seq.done or seq.prompt_pos < len(seq.job.prompt):
                continue
            self._prefilling.remove(seq)
            seq.state = SeqState.GENERATING
            for fork in seq.forks:
                if not fork.done:
                    self._kv.copy(seq.slot, fork.slot)
                    fork.n_past = seq.n_past
                    fork.state = SeqState.GENERATING
                    to_sample.append((fork, seq))
            to_sample.append((seq, seq))
        picked = self._greedy_pass(to_sample)
        plain: list[tuple[Sequence, int]] = []
        for (seq, source), token in zip(to_sample, picked):
            if token is not None and seq.plain:
                plain.append((seq, token))
            else:
                self._sample(seq, source.batch_index, now, token)
        if plain:
            items = self._with_pieces(plain)
            if self._pipeline_min is not None and len(items) >= self._pipeline_min:
                self._defer(items, now)
            else:
                self._take_plain(items, now)
        return True

    def _with_pieces(self, plain: list[tuple[Sequence, int]]) -> list[tuple[Sequence, int, bytes | None]]:
        """The greedy tokens with their pieces (None: an end of generation), looked up at once."""
        profiler = self._profiler
        previous = profiler.switch(TEXT) if profiler is not None else ""
        items = [(seq, token, piece) for (seq, token), piece in zip(plain, self.vocab.pieces([token for _, token in plain]))]
        if profiler is not None:
            profiler.switch(previous)
        return items

    def _defer(self, items: list[tuple[Sequence, int, bytes | None]], now: float) -> None:
        """Take these tokens' text during the next decode (``_decode_beside``). Whether a token
        ends its sequence by an end of generation or max_tokens is known now: those are not
        decoded again. Any other continues and is decoded next step; a stop string its text
        completes ends it then, a step late, its last token decoded but never sent."""
        for seq, token, piece in items:
            if piece is not None and len(seq.completion) + 1 < seq.job.max_tokens:
                seq.pending = token
        self._deferred, self._deferred_at = items, now

    def _decode_beside(self, deferred: list[tuple[Sequence, int, bytes | None]]) -> tuple[int, float]:
        """llama_decode on the decode thread while this one takes the last step's deferred
        tokens and writes their stream chunks (``after_step``); its result and when it ended. No
        llama.cpp call is made here meanwhile: a job that ends frees its sampler chains after
        the decode."""
        decoder = self._decoder
        if decoder is None:  # not reached: tokens are deferred only with a decode thread
            raise RuntimeError("deferred tokens without a decode thread")
        profiler = self._profiler
        decoder.start()
        self._decoding = True
        work_started = self._clock()
        try:
            self._take_plain(deferred, self._deferred_at)
            self._flush()
            work_ended = self._clock()
        finally:
            ret = decoder.wait()
            self._decoding = False
            jobs, self._free_after_decode = self._free_after_decode, []
            for job in jobs:
                job.free_chains()
        if profiler is not None:
            profiler.overlapped(max(0.0, min(work_ended, decoder.ended_at) - work_started))
        return ret, decoder.ended_at

    def _take_plain(self, items: list[tuple[Sequence, int, bytes | None]], now: float) -> None:
        """The tokens that a step's greedy pass picked for sequences that need no logits (no
        log-probabilities, no stopping criteria), with their pieces: each taken as ``_sample``
        takes it, without its per-token sampling and profiler work."""
        profiler = self._profiler
        previous = profiler.switch(TEXT) if profiler is not None else ""
        running_of = self._running
        done = SeqState.DONE
        for seq, token, piece in items:
            if seq.state is done:
                continue
            running = running_of[seq.job]
            if running.first_token_at is None:
                running.first_token_at = now
            running.last_token_at = now
            try:
                reason = "stop" if piece is None else seq.take(token, piece, None)
                if reason is not None:
                    self._finish(seq, reason)
            except Exception as exc:  # noqa: BLE001 - a failing stream (its sink) fails its job alone
                log.exception("taking a token failed")
                self._fail(seq.job, ErrorKind.ENGINE, f"{type(exc).__name__}: {exc}")
        if profiler is not None:
            profiler.switch(previous)

    def _greedy_pass(self, to_sample: list[tuple[Sequence, Sequence]]) -> list[int | None]:
        """The tokens of the step's plain greedy sequences, picked together in one pass over the
        step's logits (gateway.engine.sampling.greedy_rows), in ``to_sample``'s order; None for
        the others, which sample one by one (and a lone greedy sequence: one row gains nothing)."""
        picked: list[int | None] = [None] * len(to_sample)
        seen: set[int] = set()
        chosen: list[int] = []  # positions in to_sample
        rows: list[int] = []
        for k, (seq, source) in enumerate(to_sample):
            if seq.chain.greedy is not None and source.logits_row not in seen:  # n choices share a row: the rest pick alone
                seen.add(source.logits_row)
                chosen.append(k)
                rows.append(source.logits_row)
        if len(chosen) < 2:
            return picked
        profiler = self._profiler
        previous = profiler.switch(SAMPLE) if profiler is not None else ""
        try:
            logits = self._step_logits(self._batch.n_outputs)
            tokens = self._greedy_rows.pick(logits, rows, [to_sample[k][0].chain.greedy for k in chosen])
            for k, token in zip(chosen, tokens):
                picked[k] = token
            return picked
        finally:
            if profiler is not None:
                profiler.switch(previous)

    def _decode(self) -> int:
        """llama_decode of the step's batch, on the loop's thread or the decode thread."""
        ret = int(self._capi.llama_decode(self._ctx, self._batch.view()))
        if self._profiler is not None:
            # llama_decode may return before the backend has finished (its scheduler computes
            # asynchronously: a GPU's kernels), and the first logits read waits for the rest:
            # with a profiler that wait is llama_decode's, not sampling's. Without one, the
            # step's bookkeeping runs while the backend finishes.
            self._capi.llama_synchronize(self._ctx)
        return ret

    def _make_room(self, generating: list[Sequence], chunks: list[tuple[Sequence, int]]) -> int | None:
        """No KV cells for the batch (a full shared pool): free what matters least. The retried
        decode's result, or None when the step must be built again without something. A slot
        that a stop string in deferred text freed during the decode still has its last token in
        the batch: clearing it, the retry would write that cell back at its old position while
        its ``cached`` restarts at 0, so it is no idle cache to clear here (the next step's is)."""
        in_batch = {seq.slot.index for seq in generating}
        generating = [seq for seq in generating if not seq.done]
        idle_caches = [s for s in self.slots if s.busy is None and s.cached and s.index not in in_batch]
        for slot in idle_caches:
            self._kv.clear(slot)
        if idle_caches:
            ret = self._decode()
            if ret != 1:
                return ret
        if chunks and generating:
            self._prefill_blocked = True  # prompts wait until a running sequence ends
        elif chunks:
            newest = max((seq for seq, _ in chunks), key=lambda s: s.admitted)
            self._fail(newest.job, ErrorKind.INVALID_REQUEST, "the prompt does not fit in the free KV cache cells (kv_pool_tokens)")
        elif generating:
            self._finish(max(generating, key=lambda s: s.admitted), "length")
        # else: every sequence in the batch ended meanwhile (deferred stop strings); the next
        # step is built without them, and their slots' caches may go then
        return None

    def _fail_batch(self, generating: list[Sequence], chunks: list[tuple[Sequence, int]], ret: int) -> None:
        for seq in generating:
            if seq.done and seq.slot.busy is None:
                # Ended meanwhile by its deferred text, its last token in this batch: its slot,
                # a prompt cache now, may hold that token's cell past what ``cached`` lists.
                self._kv.clear(seq.slot)
        jobs = dict.fromkeys([s.job for s in generating] + [s.job for s, _ in chunks])
        for job in jobs:
            running = self._running.get(job)
            if running is None:  # it ended meanwhile (its deferred text ended it)
                continue
            for seq in running.sequences:
                self._kv.clear(seq.slot)  # what the failed decode left there is unknown
            self._fail(job, ErrorKind.ENGINE, f"llama_decode failed ({ret})")

    def _sample(self, seq: Sequence, index: int, now: float, picked: int | None = None) -> None:
        """Sample the sequence's next token from batch position ``index`` (``picked``: the
        step's greedy pass picked it already) and act on it."""
        if seq.done:
            return
        job = seq.job
        running = self._running[job]
        profiler = self._profiler
        previous = profiler.switch(SAMPLE) if profiler is not None else ""
        try:
            token = seq.chain.sample(self._ctx, index) if picked is None else picked
            logits = None
            if job.logprobs is not None or job.stopping_criteria is not None:
                logits = logits_at(self._ctx, index, self.loaded.n_vocab)
            logprob = token_logprobs(logits, token, job.logprobs) if job.logprobs is not None else None
            if profiler is not None:
                profiler.switch(TEXT)
            if running.first_token_at is None:
                running.first_token_at = now
            running.last_token_at = now
            if self.vocab.is_eog(token) or seq.stops_here(token, logits):
                self._finish(seq, "stop")
                return
            reason = seq.take(token, self.vocab.piece(token), logprob)
            if reason is not None:
                self._finish(seq, reason)
        except GrammarDeadEnd as exc:
            self._fail(job, ErrorKind.INVALID_REQUEST, str(exc))
        except Exception as exc:  # noqa: BLE001 - a sampler or stopping criterion fails its job alone
            log.exception("sampling failed")
            self._fail(job, ErrorKind.ENGINE, f"{type(exc).__name__}: {exc}")
        finally:
            if profiler is not None:
                profiler.switch(previous)

    def _finish(self, seq: Sequence, reason: str) -> None:
        if seq.done:
            return
        seq.close(reason)
        for fork in seq.forks:
            if fork.state is SeqState.WAIT_FORK:
                self._finish(fork, reason)
        self._release(seq)
        running = self._running.get(seq.job)
        if running is not None and all(s.done for s in running.sequences):
            self._end(running)

    def _release(self, seq: Sequence) -> None:
        """The sequence leaves its slot; the slot keeps its cells as a prompt cache."""
        seq.state = SeqState.DONE
        if seq in self._prefilling:
            self._prefilling.remove(seq)
        if seq.slot.busy is seq:
            seq.slot.busy = None
            seq.slot.last_used = self._clock()
            self._prefill_blocked = False  # its cells may make room

    def _end(self, running: _Running) -> None:
        job = running.job
        del self._running[job]
        self._free_chains(job)
        job.emit(
            Summary(
                prompt_tokens=len(job.prompt),
                completion_tokens=sum(len(s.completion) for s in running.sequences),
                cached_prompt_tokens=running.cached_prompt_tokens,
                started_at=running.started_at,
                first_token_at=running.first_token_at,
                last_token_at=running.last_token_at,
                cancelled=running.cancelled,
            )
        )

    def _fail(self, job: Job, kind: ErrorKind, message: str) -> None:
        """End a job with an error; its sequences leave their slots."""
        running = self._running.pop(job, None)
        if running is not None:
            for seq in running.sequences:
                self._release(seq)
            self._free_chains(running.job)
        job.emit(Failure(kind, message))

    def _free_chains(self, job: GenerationJob) -> None:
        """Free a finished job's sampler chains, after the decode running on the decode thread."""
        if self._decoding:
            self._free_after_decode.append(job)
        else:
            job.free_chains()

    # ------------------------------------------------------------------ embeddings

    def _embedding_step(self) -> bool:
        """Embed as many of the embedding job's inputs as idle slots and one batch take."""
        job = self._embedding
        idle = self._idle_slots()
        if job is None or not idle:
            return False
        capi = self._capi
        profiler = self._profiler
        if profiler is not None:
            profiler.switch(BATCH)
        batch = self._batch
        batch.clear()
        placed: list[tuple[Slot, int, int]] = []  # (slot, first batch index, tokens)
        # llama.cpp's own pooling of several sequences in one batch comes out wrong with one KV
        # stream per sequence (mean pooling, this build: the first sequence's vector differs
        # from the one it gets alone; right with kv_unified): then one input per decode.
        per_step = len(idle) if job.pool_mean or self._unified else 1
        while self._embedding_next < len(job.inputs) and len(placed) < per_step:
            tokens = job.inputs[self._embedding_next]
            if placed and len(tokens) > batch.free_room():
                break
            slot = idle[len(placed)]
            self._kv.clear(slot)
            first = batch.n
            batch.add(tokens, 0, slot.index, output_last=True, output_all=True)
            placed.append((slot, first, len(tokens)))
            self._embedding_next += 1
        capi.llama_set_embeddings(self._ctx, True)
        try:
            if profiler is not None:
                profiler.switch(DECODE)
            ret = self._decode()
            if profiler is not None:
                profiler.switch(BATCH)
            if ret != 0:
                job.emit(Failure(ErrorKind.ENGINE, f"llama_decode failed ({ret}) while embedding"))
                self._embedding = None
                return True
            self._stats.decoded(batch.n)
            for slot, first, count in placed:
                self._embedding_vectors.append(self._read_embedding(job, slot, first, count))
        finally:
            capi.llama_set_embeddings(self._ctx, False)
            for slot, _, _ in placed:
                self._kv.clear(slot)
                slot.last_used = self._clock()
        if self._embedding_next >= len(job.inputs):
            total = sum(len(t) for t in job.inputs)
            done = self._clock()
            job.emit(Embeddings(tuple(self._embedding_vectors), total))
            job.emit(Summary(total, 0, 0, done, done))  # an embedding's "first token" is its result
            self._embedding = None
        return True

    def _read_embedding(self, job: EmbeddingJob, slot: Slot, first: int, count: int) -> list[float]:
        capi = self._capi
        n_embd = self.loaded.n_embd
        if job.pool_mean:
            rows = [np.ctypeslib.as_array(capi.llama_get_embeddings_ith(self._ctx, first + k), shape=(n_embd,)) for k in range(count)]
            return np.mean(np.stack(rows), axis=0).tolist()
        pointer = capi.llama_get_embeddings_seq(self._ctx, slot.index)
        if not pointer:
            raise RuntimeError("llama.cpp returned no pooled embedding")
        return np.ctypeslib.as_array(pointer, shape=(n_embd,)).tolist()
