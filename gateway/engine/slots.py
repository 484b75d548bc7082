"""The slots: llama.cpp sequences of one context, their KV cells and the prompt cache they hold.

A slot that finished keeps its tokens' cells: a new prompt that begins with them goes to that
slot and decodes only the rest (llama.cpp server's ``cache_prompt``). How much of a cached
prefix can really be reused is the memory's to say: a sliding-window cache dropped the cells
older than its window, so the prefix is reused only while the cells its end attends to are
still held (llama.cpp server's ``llama_memory_seq_pos_min`` check); a recurrent model's cache
cannot be cut at all (``llama_memory_seq_rm`` says so), and then the slot starts over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# A prompt shares a slot's cache only when the common prefix is more than this share of it
# (llama.cpp server's default slot_prompt_similarity); otherwise the least recently used slot.
CACHE_SIMILARITY = 0.1


@dataclass
class Slot:
    index: int  # the llama.cpp sequence id
    cached: list[int] = field(default_factory=list)  # the tokens whose KV cells the sequence holds, from position 0
    busy: Any = None  # the sequence decoding in it (gateway.engine.sequence.Sequence), or None
    last_used: float = 0.0


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def pick_slot(prompt: list[int], idle: list[Slot]) -> tuple[Slot, int]:
    """The idle slot whose cache shares the most of the prompt (when enough does), else the
    least recently used one; with the shared prefix length."""
    best, best_len = None, 0
    for slot in idle:
        n = common_prefix(slot.cached, prompt)
        if n > best_len:
            best, best_len = slot, n
    if best is not None and best_len > CACHE_SIMILARITY * len(prompt):
        return best, best_len
    lru = min(idle, key=lambda s: (s.last_used, len(s.cached)))
    return lru, common_prefix(lru.cached, prompt)


class KvMemory:
    """The context's KV memory, one sequence (slot) at a time."""

    def __init__(self, ctx: Any, n_swa: int) -> None:
        from llama_cpp import llama_cpp as capi

        self._capi = capi
        self._mem = capi.llama_get_memory(ctx)
        self.n_swa = n_swa  # 0: no sliding window (or swa_full)

    def clear(self, slot: Slot) -> None:
        self._capi.llama_memory_seq_rm(self._mem, slot.index, -1, -1)  # a whole sequence always goes
        slot.cached.clear()

    def copy(self, src: Slot, dst: Slot) -> None:
        """dst holds src's cells afterwards (across KV streams the data is copied at the next decode)."""
        self._capi.llama_memory_seq_cp(self._mem, src.index, dst.index, -1, -1)
        dst.cached = list(src.cached)

    def reuse(self, slot: Slot, prompt: list[int], shared: int) -> int:
        """Keep the cells of the first ``shared`` prompt tokens that can serve ``prompt`` and drop
        the rest; how many are kept. At least one prompt token is left to decode, for its logits."""
        capi = self._capi
        n_past = min(shared, len(prompt) - 1)
        if n_past > 0 and self.n_swa > 0:
            # The first new token at position n_past attends to the n_swa positions before it.
            pos_min = capi.llama_memory_seq_pos_min(self._mem, slot.index)
            if pos_min > max(0, n_past - self.n_swa):
                n_past = 0
        if n_past < len(slot.cached) or n_past == 0:
            if not capi.llama_memory_seq_rm(self._mem, slot.index, n_past, -1):
                self.clear(slot)  # the memory cannot be cut there (recurrent state)
                return 0
        del slot.cached[n_past:]
        return n_past
