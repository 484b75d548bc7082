"""One choice of one generation job, as it decodes in a slot: its tokens, text and events."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from gateway.engine.jobs import GenerationJob, TokenLogprob
from gateway.engine.sampling import SamplerChain
from gateway.engine.slots import Slot
from gateway.engine.text import TextStream


class SeqState(Enum):
    PREFILL = "prefill"  # reading its prompt (a job's first choice)
    WAIT_FORK = "wait_fork"  # a further choice: waits for the first choice's prompt cells
    GENERATING = "generating"
    DONE = "done"


@dataclass
class Sequence:
    job: GenerationJob
    choice: int
    slot: Slot
    chain: SamplerChain
    state: SeqState
    admitted: int  # admission order: the newest gives way first when the shared KV pool is full
    n_past: int = 0  # tokens in the slot's KV cells
    prompt_pos: int = 0  # the next prompt token to read
    pending: int | None = None  # sampled, decoded in the next step
    completion: list[int] = field(default_factory=list)
    text: TextStream = field(default_factory=TextStream)
    batch_index: int = -1  # where its logits are in the step's batch
    logits_row: int = -1  # and their row in the step's logits (llama_get_logits: outputs in batch order)
    forks: list[Sequence] = field(default_factory=list)  # the further choices of its prompt
    tokens: Any = None  # numpy prompt + completion, for a chat format's stopping criteria
    plain: bool = field(init=False, default=False)
    _held: list[tuple[int, TokenLogprob]] = field(default_factory=list)  # (byte offset, entry) not yet sent
    _chars_sent: int = 0

    def __post_init__(self) -> None:
        self.text = TextStream(self.job.stops)
        # A token picked by the step's greedy pass needs nothing more than its piece: no
        # logits read for log-probabilities or a chat format's stopping criteria.
        self.plain = self.job.logprobs is None and self.job.stopping_criteria is None
        if self.job.stopping_criteria is not None:
            self.tokens = np.zeros(len(self.job.prompt) + self.job.max_tokens + 1, dtype=np.intc)
            self.tokens[: len(self.job.prompt)] = self.job.prompt

    @property
    def done(self) -> bool:
        return self.state is SeqState.DONE

    def stops_here(self, token: int, logits: Any) -> bool:
        """The chat format's stopping criteria (llama-cpp-python's StoppingCriteriaList), on the
        tokens so far with this one."""
        criteria = self.job.stopping_criteria
        if criteria is None:
            return False
        end = len(self.job.prompt) + len(self.completion)
        self.tokens[end] = token
        return bool(criteria(self.tokens[: end + 1], logits))

    def take(self, token: int, piece: bytes, logprob: tuple[float, list[tuple[int, float]]] | None) -> str | None:
        """Add a sampled token (not an end of generation) and send the text it completes; the
        finish reason when it ends the choice, else None (it is then decoded next step)."""
        job = self.job
        self.completion.append(token)
        if logprob is not None:
            # Where the token's text starts: characters sent, then those still held.
            offset = job.text_offset + self._chars_sent + len(self.text.held().decode("utf-8", errors="ignore"))
            self._held.append((self.text.size, TokenLogprob(token, logprob[0], tuple(logprob[1]), offset)))
        text = self.text
        out = text.push(piece)
        if out:
            if self._held:
                self._send(out, text.emitted)
            else:  # _send without log-probabilities, one call less a token
                sent = out.decode("utf-8", errors="ignore")
                self._chars_sent += len(sent)
                job.emit_text(self.choice, sent)
        if text.stopped:
            return "stop"
        if len(self.completion) >= job.max_tokens:
            return "length"
        self.pending = token
        return None

    def close(self, reason: str) -> None:
        """End the choice: what text is still held goes out (unless cancelled), then Finish."""
        if self.done:
            return
        if reason != "cancelled":
            rest = b"" if self.text.stopped else self.text.flush()
            # Tokens a stop string cut off have no text left: their log-probabilities go too.
            end = self.text.size
            self._held = [(s, e) for s, e in self._held if s < end]
            if rest or self._held:
                self._send(rest, end + 1)
        self.state = SeqState.DONE
        self.pending = None
        self.job.emit_finish(self.choice, reason, len(self.completion))

    def _send(self, out: bytes, released_to: int) -> None:
        entries: tuple[TokenLogprob, ...] = ()
        if self._held:  # log-probabilities were asked for
            entries = tuple(e for s, e in self._held if s < released_to)
            self._held = [(s, e) for s, e in self._held if s >= released_to]
        text = out.decode("utf-8", errors="ignore")
        self._chars_sent += len(text)
        self.job.emit_text(self.choice, text, entries)
