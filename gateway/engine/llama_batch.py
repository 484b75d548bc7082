"""A llama_batch backed by numpy arrays, so a step fills it with vector writes.

``llama_batch_init`` allocates one sequence-id array per token; here every token's pointer
points into one numpy array (one sequence id per token: ``n`` choices share a prompt through
``llama_memory_seq_cp`` instead). The struct is ours, so it is never passed to
``llama_batch_free``.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np


class Batch:
    def __init__(self, capacity: int) -> None:
        from llama_cpp import llama_cpp as capi

        self.capacity = capacity
        self.token = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.n_seq_id = np.ones(capacity, dtype=np.int32)
        self.seq = np.zeros(capacity, dtype=np.int32)
        self.output = np.zeros(capacity, dtype=np.int8)
        int_p = ctypes.POINTER(ctypes.c_int32)
        base = self.seq.ctypes.data
        self._seq_ptrs = (int_p * capacity)(*(ctypes.cast(base + 4 * i, int_p) for i in range(capacity)))
        self.c = capi.llama_batch()
        self.c.token = self.token.ctypes.data_as(int_p)
        self.c.embd = None
        self.c.pos = self.pos.ctypes.data_as(int_p)
        self.c.n_seq_id = self.n_seq_id.ctypes.data_as(int_p)
        self.c.seq_id = ctypes.cast(self._seq_ptrs, ctypes.POINTER(int_p))
        self.c.logits = self.output.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self.n = 0
        self.n_outputs = 0  # tokens with an output so far: the next output's row in the step's logits

    def clear(self) -> None:
        self.n = 0
        self.n_outputs = 0

    def add(self, tokens: list[int], start_pos: int, seq: int, *, output_last: bool, output_all: bool = False) -> int:
        """Append one sequence's tokens at positions start_pos...; the batch index of the last.
        Outputs (logits or embeddings) for the last token, or for every token."""
        k = len(tokens)
        i, j = self.n, self.n + k
        self.token[i:j] = tokens
        self.pos[i:j] = np.arange(start_pos, start_pos + k, dtype=np.int32)
        self.seq[i:j] = seq
        self.output[i:j] = 1 if output_all else 0
        if output_last:
            self.output[j - 1] = 1
        self.n_outputs += k if output_all else int(output_last)
        self.n = j
        return j - 1

    def add_singles(self, tokens: list[int], positions: list[int], seqs: list[int]) -> int:
        """Append one token of each of several sequences (the step's generating tokens), each
        with its logits, in three vector writes; the batch index of the first."""
        k = len(tokens)
        i, j = self.n, self.n + k
        self.token[i:j] = tokens
        self.pos[i:j] = positions
        self.seq[i:j] = seqs
        self.output[i:j] = 1
        self.n_outputs += k
        self.n = j
        return i

    def free_room(self) -> int:
        return self.capacity - self.n

    def view(self) -> Any:
        """The llama_batch struct of what was added, for llama_decode."""
        self.c.n_tokens = self.n
        return self.c
