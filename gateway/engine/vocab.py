"""The model's vocabulary: tokenizing, token pieces, end-of-generation tokens.

Detokenizing follows llama-cpp-python 0.3.36 (``LlamaModel.detokenize``): the concatenated
pieces of the tokens (special tokens render as nothing), without the leading space that a
sentencepiece vocabulary puts after a BOS token.
"""

from __future__ import annotations

import ctypes
from typing import Any


_UNSEEN: Any = object()  # Vocab.pieces: a token not looked up yet


class Vocab:
    def __init__(self, model: Any) -> None:
        """``model``: llama-cpp-python's ``_internals.LlamaModel``."""
        from llama_cpp import llama_cpp as capi

        self._capi = capi
        self._model = model
        self._vocab = model.vocab
        self.n_vocab = model.n_vocab()
        self.bos = model.token_bos()
        self.eos = model.token_eos()
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        self._texts: dict[int, bytes | None] = {}  # the piece, None for an end of generation

    @property
    def model(self) -> Any:
        return self._model

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return self._model.tokenize(text, add_bos=add_bos, special=special)

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (nothing for a special token)."""
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        size = 64
        while True:
            buffer = ctypes.create_string_buffer(size)
            n = self._capi.llama_token_to_piece(self._vocab, token, buffer, size, 0, False)
            if n >= 0:
                break
            size = -n  # the piece needs that many bytes
        piece = buffer.raw[:n]
        self._pieces[token] = piece
        return piece

    def pieces(self, tokens: list[int]) -> list[bytes | None]:
        """The pieces of a step's sampled tokens at once, None for an end of generation (its
        text is never sent): one dict look-up a token once each token was seen (issue 24)."""
        texts = self._texts
        out = [texts.get(t, _UNSEEN) for t in tokens]
        if _UNSEEN in out:
            for k, token in enumerate(tokens):
                if out[k] is _UNSEEN:
                    out[k] = texts[token] = None if self.is_eog(token) else self.piece(token)
        return out  # type: ignore[return-value]

    def detokenize(self, tokens: list[int]) -> bytes:
        out = b"".join(self.piece(t) for t in tokens)
        if tokens and tokens[0] == self.bos and out[:1] == b" ":
            return out[1:]
        return out

    def text(self, token: int) -> str:
        """A token's piece as text for logprobs: incomplete UTF-8 bytes are dropped."""
        return self.piece(token).decode("utf-8", errors="ignore")

    def is_eog(self, token: int) -> bool:
        known = self._eog.get(token)
        if known is None:
            known = self._eog[token] = bool(self._capi.llama_vocab_is_eog(self._vocab, token))
        return known

    def check_tokens(self, tokens: list[int], what: str) -> None:
        """ValueError for a token id outside the vocabulary: llama.cpp would fail the whole
        batch it is in, and a logit bias would write past the candidates."""
        for token in tokens:
            if not 0 <= token < self.n_vocab:
                raise ValueError(f"{what}: token id {token} is not in the vocabulary (0..{self.n_vocab - 1})")
