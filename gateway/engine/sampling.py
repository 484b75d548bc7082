"""Per-request sampling: llama.cpp sampler chains, built the way llama-cpp-python builds them.

The chain's order is llama-cpp-python 0.3.36's ``Llama._init_sampler``: logit bias (there a
Python logits processor, here llama.cpp's sampler), penalties, grammar, then greedy
(temperature 0), mirostat, or top-k, typical, top-p, min-p, temperature and the seeded draw.
Penalties see the generated tokens only, as there.

A grammar can leave no token allowed (a schema the model cannot follow, or one that forbids
everything): llama.cpp would then accept a forbidden token and abort the whole process
(GGML_ABORT in llama_grammar_accept_impl). With a grammar the chain is therefore applied here,
step by step, and such a dead end raises ``GrammarDeadEnd`` for that request alone.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import field
from typing import Any

import numpy as np

from gateway.engine.options import engine_options, options_class

LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # llama.h: a random seed
PENALTY_LAST_N = 64  # llama-cpp-python's last_n_tokens_size


class GrammarDeadEnd(Exception):
    """The grammar allows no token here."""


# The sampler chain's settings: a field per sampler option (gateway.engine.options, where their
# defaults are), under the engine's argument names, plus the grammar.
SamplingParams: Any = options_class(
    "SamplingParams",
    engine_options("completion", sampler=True),
    overrides={
        "seed": (int, LLAMA_DEFAULT_SEED),
        "logit_bias": (dict[int, float], field(default_factory=dict)),
    },
    extra=[
        ("grammar", str | None, None),  # GBNF
        ("grammar_root", str, "root"),
    ],
    module=__name__,
    doc="One choice's sampler settings, checked (``sampling_params``).",
)


def sampling_params(options: Any, *, grammar: Any, n_vocab: int) -> SamplingParams:
    """The sampler settings of ``options`` (any object with the sampler options' engine
    arguments as attributes: a CompletionOptions), each checked by its declaration before
    llama.cpp sees it (InvalidRequestError naming the field); logit_bias's token ids are
    checked against the vocabulary; ``grammar`` a LlamaGrammar or GBNF text."""
    values: dict[str, Any] = {}
    for o in engine_options("completion", sampler=True):
        value = o.check(getattr(options, o.engine_arg))
        if value is not None:
            values[o.engine_arg] = value
    bias: dict[int, float] = {}
    for key, value in (values.get("logit_bias") or {}).items():
        token = int(key)
        if not 0 <= token < n_vocab:
            raise ValueError(f"logit_bias: token id {token} is not in the vocabulary (0..{n_vocab - 1})")
        bias[token] = float(value)
    values["logit_bias"] = bias
    if "seed" in values:
        values["seed"] &= 0xFFFFFFFF
    text, root = None, "root"
    if grammar is not None:
        text = getattr(grammar, "_grammar", grammar)
        root = getattr(grammar, "_root", "root")
        if not isinstance(text, str) or not isinstance(root, str):
            raise ValueError("grammar must be GBNF text")
    return SamplingParams(**values, grammar=text, grammar_root=root)


class Greedy:
    """Temperature 0 with at most a logit bias: the first highest (biased) logit, which is the
    token llama.cpp's logit-bias and greedy samplers pick, read straight off the logits.

    Why not the chain: ``llama_sampler_sample`` first copies every one of the vocabulary's
    candidates, 0.47 ms a token for Gemma 3's 262,144 against 0.05 ms here (docs/benchmarks.md),
    and a decode step samples each of its sequences in turn while the other cores wait."""

    def __init__(self, logit_bias: dict[int, float]) -> None:
        self.ids = np.fromiter(logit_bias.keys(), dtype=np.int64, count=len(logit_bias))
        self.bias = np.fromiter(logit_bias.values(), dtype=np.float32, count=len(logit_bias))
        # Every bias finite and <= 0 (none, or tokens suppressed): the biased argmax is then the
        # raw one unless the raw one is a biased token (``GreedyRows``).
        self.lowers_only = bool(np.all(np.isfinite(self.bias) & (self.bias <= 0)))
        self.lowered = frozenset(logit_bias)

    def pick(self, logits: np.ndarray) -> int:
        if not self.ids.size:
            return int(np.argmax(logits))
        # The biased entries only, in place and put back at once (float32 sums, as llama.cpp's
        # bias sampler makes them): no copy of the whole row.
        kept = logits[self.ids]
        logits[self.ids] = kept + self.bias
        try:
            return int(np.argmax(logits))
        finally:
            logits[self.ids] = kept


BiasIndex = tuple[np.ndarray, np.ndarray, np.ndarray]  # (rows, token ids, biases) of every biased entry


def bias_index(rows: list[int], pickers: list[Greedy]) -> BiasIndex | None:
    """Where ``pickers``' logit biases go in a step's logits (each picker at its row), and the
    biases; None when none has one."""
    biased = [(row, p) for row, p in zip(rows, pickers) if p.ids.size]
    if not biased:
        return None
    # One repeat for every biased row's index, not an array per row (issue 24).
    at_rows = np.repeat(np.fromiter((row for row, _ in biased), dtype=np.int64, count=len(biased)), [p.ids.size for _, p in biased])
    return at_rows, np.concatenate([p.ids for _, p in biased]), np.concatenate([p.bias for _, p in biased])


class GreedyRows:
    """``greedy_rows`` for the decode loop, with less numpy work a step (issue 24).

    When every picker's biases only lower tokens (``Greedy.lowers_only``: the loop's common
    case, no bias or end-of-generation suppressed), a step is one argmax over the raw logits:
    a finite bias <= 0 cannot make another token win, so a row's biased pick differs from its
    raw one only when the raw one is a biased token, and that row alone is picked again with
    its bias (``Greedy.pick``). Else the step's bias index is kept while its (row, picker)
    pairs stay what they were the step before (a steady batch of streams).

    Why fewer calls matter more than their size suggests: llama_decode's working set (KV cells,
    mask, weights, compute buffers: MiBs on the CPU) evicts the loop's code and data from the
    CPU caches, so the numpy calls right after each decode run cold. At 64 streams on the tiny
    model the bias pass with fancy indexing cost ~180 us of the loop thread's CPU a step, the
    same call again on the same logits ~30 us (docs/benchmarks.md)."""

    def __init__(self) -> None:
        self._rows: list[int] = []
        self._pickers: list[Greedy] = []
        self._at_rows = np.zeros(0, dtype=np.int64)
        self._index: BiasIndex | None = None
        self._lowers_only = True
        self._lowered: list[tuple[int, frozenset[int]]] = []  # (position in rows, biased tokens)
        self._in_order = True  # rows == 0, 1, 2, ...

    def pick(self, logits: np.ndarray, rows: list[int], pickers: list[Greedy]) -> list[int]:
        if rows != self._rows or pickers != self._pickers:  # Greedy compares by identity
            self._rows, self._pickers = rows, pickers
            self._at_rows = np.asarray(rows, dtype=np.int64)
            self._lowers_only = all(p.lowers_only for p in pickers)
            self._index = None if self._lowers_only else bias_index(rows, pickers)
            self._lowered = [(k, p.lowered) for k, p in enumerate(pickers) if p.ids.size]
            self._in_order = rows == list(range(len(rows)))
        if not self._lowers_only:
            return greedy_rows(logits, self._at_rows, pickers, self._index).tolist()
        if 2 * len(rows) < logits.shape[0]:
            top = np.argmax(logits[self._at_rows], axis=1).tolist()
        else:
            top = np.argmax(logits, axis=1).tolist()  # every row, no copy: most are asked for
            if not (self._in_order and len(rows) == len(top)):
                top = [top[r] for r in rows]
        for k, lowered in self._lowered:
            if top[k] in lowered:
                top[k] = pickers[k].pick(logits[rows[k]])
        return top


def greedy_rows(logits: np.ndarray, rows: np.ndarray, pickers: list[Greedy], index: BiasIndex | None | bool = False) -> np.ndarray:
    """The token each of ``pickers`` picks from its row of a step's logits, all in one pass.

    ``logits``: the step's [outputs, n_vocab] array (``step_logits``, llama.cpp's own buffer);
    ``rows``: each picker's row, no row twice. Every picker's logit bias is added in place (float32
    sums, as llama.cpp's bias sampler makes them), one argmax runs over the rows, and the biased
    entries are put back, so that log-probabilities and stopping criteria still read the raw
    logits. The same token as each picker's ``pick`` on its row, without a Python call and a
    ctypes view per sequence (issue 24). ``index``: ``bias_index(rows, pickers)`` when the
    caller has it (GreedyRows), else it is made here."""
    if index is False:
        index = bias_index(rows.tolist(), pickers)
    if index is not None:
        at_rows, at_ids, bias = index  # type: ignore[misc]
        kept = logits[at_rows, at_ids]
        logits[at_rows, at_ids] = kept + bias
    try:
        if 2 * rows.size >= logits.shape[0]:
            return np.argmax(logits, axis=1)[rows]  # every row, no copy: most are asked for
        return np.argmax(logits[rows], axis=1)
    finally:
        if index is not None:
            logits[at_rows, at_ids] = kept


class SamplerChain:
    """One choice's llama.cpp sampler chain. Not thread-safe: the decode loop alone samples."""

    def __init__(self, params: SamplingParams, vocab: Any, n_vocab: int) -> None:
        """``vocab``: the model's llama_vocab_p. ValueError when llama.cpp refuses the grammar."""
        from llama_cpp import llama_cpp as capi

        self._capi = capi
        self._n_vocab = n_vocab
        self.has_grammar = params.grammar is not None
        # Plain greedy keeps no state for a chain to track: it needs no chain at all.
        plain = not self.has_grammar and (params.repeat_penalty, params.frequency_penalty, params.presence_penalty) == (1.0, 0.0, 0.0)
        self.greedy = Greedy(params.logit_bias) if plain and params.temperature == 0.0 else None
        self._chain = capi.llama_sampler_chain_init(capi.llama_sampler_chain_default_params())
        self._candidates: np.ndarray | None = None
        try:
            self._build(params, vocab)
        except BaseException:
            self.free()
            raise

    def _add(self, sampler: Any) -> None:
        if not sampler:
            raise ValueError("llama.cpp could not create a sampler")
        self._capi.llama_sampler_chain_add(self._chain, sampler)

    def _build(self, p: SamplingParams, vocab: Any) -> None:
        capi = self._capi
        if p.logit_bias:
            biases = (capi.llama_logit_bias * len(p.logit_bias))()
            for i, (token, bias) in enumerate(p.logit_bias.items()):
                biases[i].token = token
                biases[i].bias = bias
            # llama.cpp copies the biases: the array may go.
            self._add(capi.llama_sampler_init_logit_bias(self._n_vocab, len(p.logit_bias), biases))
        if (p.repeat_penalty, p.frequency_penalty, p.presence_penalty) != (1.0, 0.0, 0.0):
            self._add(
                capi.llama_sampler_init_penalties(self._n_vocab, PENALTY_LAST_N, p.repeat_penalty, p.frequency_penalty, p.presence_penalty)
            )
        if p.grammar is not None:
            grammar = capi.llama_sampler_init_grammar(vocab, p.grammar.encode("utf-8"), p.grammar_root.encode("utf-8"))
            if not grammar:
                raise ValueError("grammar: llama.cpp could not parse it (its log says where)")
            self._add(grammar)
        if p.temperature < 0.0:
            self._add(capi.llama_sampler_init_dist(p.seed))
        elif p.temperature == 0.0:
            self._add(capi.llama_sampler_init_greedy())
        elif p.mirostat_mode == 1:
            self._add(capi.llama_sampler_init_mirostat(self._n_vocab, p.seed, p.mirostat_tau, p.mirostat_eta, 100))
        elif p.mirostat_mode == 2:
            self._add(capi.llama_sampler_init_mirostat_v2(p.seed, p.mirostat_tau, p.mirostat_eta))
        else:
            self._add(capi.llama_sampler_init_top_k(p.top_k))
            self._add(capi.llama_sampler_init_typical(p.typical_p, 1))
            self._add(capi.llama_sampler_init_top_p(p.top_p, 1))
            self._add(capi.llama_sampler_init_min_p(p.min_p, 1))
            self._add(capi.llama_sampler_init_temp(p.temperature))
            self._add(capi.llama_sampler_init_dist(p.seed))

    def sample(self, ctx: Any, index: int) -> int:
        """The token for the logits at batch position ``index`` (accepted into the chain)."""
        if self.greedy is not None:
            return self.greedy.pick(logits_at(ctx, index, self._n_vocab))
        if not self.has_grammar:
            return int(self._capi.llama_sampler_sample(self._chain, ctx, index))
        return self._sample_checked(logits_at(ctx, index, self._n_vocab))

    def _sample_checked(self, logits: np.ndarray) -> int:
        capi = self._capi
        if self._candidates is None:
            self._candidates = np.zeros(self._n_vocab, dtype=np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)]))
            self._ids = np.arange(self._n_vocab, dtype=np.int32)
        cand = self._candidates
        cand["id"] = self._ids
        cand["logit"] = logits
        cand["p"] = 0.0
        array = capi.llama_token_data_array(
            data=cand.ctypes.data_as(capi.llama_token_data_p), size=self._n_vocab, selected=-1, sorted=False
        )
        capi.llama_sampler_apply(self._chain, ctypes.byref(array))
        selected = array.selected
        if not 0 <= selected < array.size or not math.isfinite(float(cand["logit"][selected])):
            raise GrammarDeadEnd("the grammar allows no token here: the request cannot be completed")
        token = int(cand["id"][selected])
        capi.llama_sampler_accept(self._chain, token)
        return token

    def free(self) -> None:
        if self._chain is not None:
            self._capi.llama_sampler_free(self._chain)
            self._chain = None

    def __del__(self) -> None:
        self.free()


def step_logits(ctx: Any, outputs: int, n_vocab: int) -> np.ndarray:
    """The last decode's logits, one row per output in batch order (llama_get_logits puts them
    in that order): a view, valid until the next decode."""
    from llama_cpp import llama_cpp as capi

    return _floats(capi.llama_get_logits(ctx), (outputs, n_vocab))


class StepLogits:
    """``step_logits`` for the decode loop: the view is kept while llama.cpp's logits buffer and
    the step's output count stay the same (they change only when llama.cpp reallocates its
    output buffer or a step has another number of outputs), and the address is read through a
    function object of its own that returns it as an int: no ctypes pointer, cast and array
    interface a step (issue 24)."""

    def __init__(self, ctx: Any, n_vocab: int) -> None:
        from llama_cpp import llama_cpp as capi

        # A function object of its own (CDLL item access makes a new one): llama-cpp-python's
        # binding keeps its float * result type.
        self._get = capi._lib["llama_get_logits"]
        self._get.argtypes = [ctypes.c_void_p]
        self._get.restype = ctypes.c_void_p
        self._ctx = ctx
        self._n_vocab = n_vocab
        self._key = (0, 0)
        self._view = np.zeros((0, n_vocab), dtype=np.float32)

    def __call__(self, outputs: int) -> np.ndarray:
        """The last decode's logits, [outputs, n_vocab] in batch order: valid until the next
        decode. llama_get_logits is called every step (it puts reordered outputs back in batch
        order)."""
        address = self._get(self._ctx)
        if not address:
            raise RuntimeError("llama.cpp returned no logits")
        if (address, outputs) != self._key:
            self._key = (address, outputs)
            self._view = np.asarray(_FloatsAt(address, (outputs, self._n_vocab)))
        return self._view


def logits_at(ctx: Any, index: int, n_vocab: int) -> np.ndarray:
    """The raw logits of batch position ``index`` (a view: valid until the next decode)."""
    from llama_cpp import llama_cpp as capi

    return _floats(capi.llama_get_logits_ith(ctx, index), (n_vocab,))


class _FloatsAt:
    """An array interface over C floats at an address (``_floats``)."""

    __slots__ = ("__array_interface__",)

    def __init__(self, address: int, shape: tuple[int, ...]) -> None:
        self.__array_interface__ = {"data": (address, False), "shape": shape, "typestr": "<f4", "version": 3}


def _floats(pointer: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A writable numpy view of the C floats at ``pointer`` (a ``float *``). Not
    np.ctypeslib.as_array: in the decode loop it cost ~0.17 ms a step (its ctypes array types
    and their buffer format), this a few microseconds (issue 24)."""
    address = ctypes.cast(pointer, ctypes.c_void_p).value
    if not address:
        raise RuntimeError("llama.cpp returned no logits")
    return np.asarray(_FloatsAt(address, shape))


def token_logprobs(logits: np.ndarray, token: int, top_n: int) -> tuple[float, list[tuple[int, float]]]:
    """(the token's log-probability, the ``top_n`` most likely tokens with theirs), from the
    model's raw logits, as llama-cpp-python computes them (``Llama.logits_to_logprobs``)."""
    values = logits.astype(np.float64, copy=False)
    peak = float(values.max())
    log_sum = peak + math.log(float(np.exp(values - peak).sum()))
    top: list[tuple[int, float]] = []
    if top_n > 0:
        n = min(top_n, values.size)
        best = np.argpartition(-values, n - 1)[:n]
        best = best[np.argsort(-values[best], kind="stable")]
        top = [(int(i), float(values[i]) - log_sum) for i in best]
    return float(values[token]) - log_sum, top
