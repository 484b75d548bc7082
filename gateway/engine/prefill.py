"""Chunked prefill: how many prompt tokens one decode step may take beside running streams."""

from __future__ import annotations


class PrefillBudget:
    """The step's time is modelled as (a step of generation tokens alone) + (one prompt token)
    * chunk; the chunk is the largest that keeps a step within ``ratio`` of the generation-only
    time, so running streams' inter-token latency stays within that ratio while a long prompt
    is read (issue 12's target is 2x: a ratio of 1.6 came out 1.84-1.99x on the 2-vCPU machine,
    the model being optimistic and the VM's speed drifting, hence 1.5). Both times are running
    averages of measured steps, so the rule adapts to the hardware: a few dozen prompt
    tokens per step where they cost real time (a CPU), the whole batch where a chunk costs
    little more than one token (a GPU). Without generating sequences a prompt gets the whole
    batch.

    Fairness between the two kinds of waiting (issue 24): while more prompts wait to be read than
    streams generate, a step reads prompts up to the whole batch, as llama.cpp's server fills
    its batch (the generating tokens first, then prompt tokens up to n_batch) and as its batch
    API alone reads every prompt in its first decode: the streams that would wait for them are
    the fewer. 63 prompts that came just after a first stream started are then read at once,
    not a few dozen tokens a step; one long prompt beside running streams keeps the ratio.
    """

    def __init__(self, n_batch: int, *, ratio: float = 1.5, floor: int = 8, first_guess: int = 16) -> None:
        self.n_batch = n_batch
        self.ratio = ratio
        self.floor = min(floor, n_batch)
        self.first_guess = min(first_guess, n_batch)
        self.step_s: float | None = None  # a generation-only step
        self.token_s: float | None = None  # what one prompt token adds to a step

    def tokens(self, generating: int, waiting: int = 1) -> int:
        """Prompt tokens a step with ``generating`` streams may read, with ``waiting`` prompts
        (sequences still reading theirs) in line."""
        room = self.n_batch - generating
        if generating == 0 or waiting > generating:
            return room
        if self.step_s is None or self.token_s is None:
            # Until measured, a prompt token is guessed to cost what a generating one does (at
            # most: it computes no logits): (ratio - 1) x generating of them keep the ratio. The
            # measure needs a step without prompts, which never comes while prompts keep
            # arriving; the bare first guess then cut every prompt into 16-token chunks.
            chunk = max(self.first_guess, int((self.ratio - 1.0) * generating))
        elif self.token_s <= 0:
            chunk = room
        else:
            chunk = int((self.ratio - 1.0) * self.step_s / self.token_s)
        return max(0, min(room, max(self.floor, chunk)))

    def observe(self, generating: int, prompt_tokens: int, seconds: float) -> None:
        alpha = 0.2
        if generating and not prompt_tokens:
            self.step_s = seconds if self.step_s is None else (1 - alpha) * self.step_s + alpha * seconds
        elif generating and prompt_tokens and self.step_s is not None:
            per = max(0.0, seconds - self.step_s) / prompt_tokens
            self.token_s = per if self.token_s is None else (1 - alpha) * self.token_s + alpha * per
