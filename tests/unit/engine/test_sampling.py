"""Sampler chains against llama.cpp's own samplers, on a real context's logits."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.engine.sampling import Greedy, GreedyRows, SamplerChain, SamplingParams, StepLogits, greedy_rows, logits_at, step_logits
from testkit.ggufmaker import write_tiny_llama


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    """A tiny random model's context after a few tokens: logits with no ties to speak of."""
    import llama_cpp

    path = write_tiny_llama(tmp_path_factory.mktemp("sampling") / "tiny.gguf", n_layers=2, n_embd=64, ctx=256)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False)
    llm.eval([1, 5, 9, 13])
    yield llm
    llm.close()


def _llama_cpp_greedy(llm, bias: dict[int, float]) -> int:
    """What llama.cpp's logit-bias and greedy samplers pick."""
    from llama_cpp import llama_cpp as capi

    chain = capi.llama_sampler_chain_init(capi.llama_sampler_chain_default_params())
    try:
        if bias:
            entries = (capi.llama_logit_bias * len(bias))()
            for i, (token, value) in enumerate(bias.items()):
                entries[i].token, entries[i].bias = token, value
            capi.llama_sampler_chain_add(chain, capi.llama_sampler_init_logit_bias(llm.n_vocab(), len(bias), entries))
        capi.llama_sampler_chain_add(chain, capi.llama_sampler_init_greedy())
        return int(capi.llama_sampler_sample(chain, llm._ctx.ctx, -1))
    finally:
        capi.llama_sampler_free(chain)


def test_greedy_without_a_chain_picks_what_llama_cpps_greedy_sampler_picks(context):
    llm = context
    n_vocab = llm.n_vocab()
    logits = logits_at(llm._ctx.ctx, -1, n_vocab)
    before = logits.copy()
    best, runner_up = (int(i) for i in np.argsort(-logits)[:2])
    low = int(np.argmin(logits))
    for bias in ({}, {best: -100.0}, {low: 100.0}, {best: -100.0, runner_up: -100.0, 3: 0.5}):
        chain = SamplerChain(SamplingParams(temperature=0.0, logit_bias=bias), llm._model.vocab, n_vocab)
        try:
            assert chain.greedy is not None
            assert chain.sample(llm._ctx.ctx, -1) == _llama_cpp_greedy(llm, bias)
        finally:
            chain.free()
    assert np.array_equal(logits, before)  # the bias was put back: logprobs read the raw logits


def test_greedy_with_penalties_or_a_grammar_keeps_llama_cpps_chain(context):
    llm = context
    for params in (SamplingParams(temperature=0.0, repeat_penalty=1.1), SamplingParams(temperature=0.0, grammar='root ::= "a"')):
        chain = SamplerChain(params, llm._model.vocab, llm.n_vocab())
        try:
            assert chain.greedy is None
        finally:
            chain.free()


def test_one_greedy_pass_over_a_steps_rows_picks_what_each_sequence_picks_alone():
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(6, 50)).astype(np.float32)
    logits[2, [4, 9]] = logits[2].max() + 1.0  # a tie: the first highest wins, as llama.cpp's greedy
    before = logits.copy()
    pickers = [
        Greedy({}),
        Greedy({int(np.argmax(logits[1])): -100.0}),
        Greedy({}),
        Greedy({3: 100.0, 11: 0.5}),
        Greedy({int(np.argmax(logits[4])): -1e9, 0: -1.0}),
        Greedy({9: 0.0}),
    ]
    alone = [p.pick(logits[row]) for row, p in enumerate(pickers)]
    for rows in ([0, 1, 2, 3, 4, 5], [5, 3, 1, 0, 2, 4], [4, 1]):  # every row, shuffled, a few (a copy of them)
        got = greedy_rows(logits, np.array(rows), [pickers[r] for r in rows])
        assert got.tolist() == [alone[r] for r in rows]
        assert np.array_equal(logits, before)  # every bias put back: logprobs read the raw logits


def test_the_loops_greedy_pass_keeps_picking_right_as_its_rows_and_pickers_change_from_step_to_step():
    """GreedyRows keeps its bias index only while a step's (row, picker) pairs are the last
    step's: a sequence that leaves, joins or moves to another row gets its own bias again."""
    rng = np.random.default_rng(11)
    pickers = [Greedy({}), Greedy({5: 50.0}), Greedy({7: 50.0, 8: -1.0}), Greedy({5: -1e9})]
    greedy = GreedyRows()
    steps = [[0, 1, 2, 3], [0, 1, 2, 3], [1, 2, 3], [3, 2, 1], [3, 2, 1, 0], [0, 1, 2, 3]]
    for order in steps:
        logits = rng.normal(size=(len(order), 20)).astype(np.float32)
        before = logits.copy()
        rows = list(range(len(order)))
        got = greedy.pick(logits, rows, [pickers[p] for p in order])
        assert got == [pickers[p].pick(before[row].copy()) for row, p in zip(rows, order)]
        assert np.array_equal(logits, before)


def test_the_loops_greedy_pass_with_only_lowering_biases_picks_what_each_sequence_picks_alone():
    """With every bias finite and <= 0 the pass is one argmax over the raw logits; a row whose
    raw pick is a biased token is picked again with its bias (its raw best suppressed, a tie
    with a lowered token before it, a bias of 0, a bias too small to change the pick)."""
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(6, 40)).astype(np.float32)
    logits[0, 7] = logits[0].max() + 5.0  # row 0's raw best, suppressed
    logits[2, [3, 12]] = logits[2].max() + 1.0  # a tie: 3 is lowered, so 12 wins
    logits[4, 20] = logits[4].max() + 5.0  # lowered by 0.5: still the best
    before = logits.copy()
    pickers = [Greedy({7: -100.0}), Greedy({}), Greedy({3: -1.0}), Greedy({9: 0.0}), Greedy({20: -0.5, 1: -1e9}), Greedy({39: -100.0})]
    assert all(p.lowers_only for p in pickers)
    alone = [p.pick(before[row].copy()) for row, p in enumerate(pickers)]
    assert alone[0] != 7 and alone[2] == 12 and alone[4] == 20
    greedy = GreedyRows()
    for rows in ([0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5], [5, 3, 1, 0, 2, 4], [4, 1], [0, 1, 2]):
        got = greedy.pick(logits, rows, [pickers[r] for r in rows])
        assert got == [alone[r] for r in rows]
        assert np.array_equal(logits, before)


def test_a_raising_or_non_finite_bias_is_not_a_lowering_one():
    assert not Greedy({3: 0.5}).lowers_only
    assert not Greedy({3: -1.0, 4: 2.0}).lowers_only
    assert not Greedy({3: float("-inf")}).lowers_only  # +inf logit + -inf bias is NaN: the whole pass
    assert Greedy({}).lowers_only and Greedy({3: -100.0, 4: 0.0}).lowers_only


def test_logits_views_are_writable_views_of_llama_cpps_buffer(context):
    """The greedy pass adds biases in place: the view must be llama.cpp's memory, not a copy."""
    from llama_cpp import llama_cpp as capi

    n_vocab = context.n_vocab()
    row = logits_at(context._ctx.ctx, -1, n_vocab)
    again = logits_at(context._ctx.ctx, -1, n_vocab)
    first = row[0].copy()
    row[0] = first + np.float32(1.0)
    try:
        assert again[0] == first + np.float32(1.0)
        assert row.dtype == np.float32 and row.shape == (n_vocab,)
        assert np.array_equal(row, np.ctypeslib.as_array(capi.llama_get_logits_ith(context._ctx.ctx, -1), shape=(n_vocab,)))
    finally:
        row[0] = first


def test_a_steps_logits_rows_are_its_outputs_in_batch_order(tmp_path):
    """The greedy pass reads llama_get_logits as [outputs, n_vocab] in batch order."""
    from llama_cpp import llama_cpp as capi

    from gateway.engine import loading
    from gateway.engine.llama_batch import Batch
    from gateway.engine.protocol import WorkerSpec

    path = write_tiny_llama(tmp_path / "tiny.gguf", n_layers=2, n_embd=64, ctx=256)
    loaded = loading.load(WorkerSpec(name="tiny", model_path=str(path), n_ctx=64, n_threads=1, slots=3))
    try:
        batch = Batch(loaded.n_batch)
        indices = [batch.add(tokens, 0, seq, output_last=True) for seq, tokens in enumerate(([1, 5, 9], [1, 7], [1, 2, 3, 4]))]
        assert capi.llama_decode(loaded.ctx, batch.view()) == 0
        alone = [logits_at(loaded.ctx, i, loaded.n_vocab).copy() for i in indices]
        rows = step_logits(loaded.ctx, len(indices), loaded.n_vocab)
        for row, expected in zip(rows, alone):
            assert np.array_equal(row, expected)
        # The loop's kept view: the same rows, and the same buffer (the greedy pass writes into it).
        loop_view = StepLogits(loaded.ctx, loaded.n_vocab)
        kept = loop_view(len(indices))
        assert kept.shape == (len(indices), loaded.n_vocab) and np.array_equal(kept, rows)
        assert loop_view(len(indices)) is kept and loop_view(2).shape == (2, loaded.n_vocab)
        first = kept[1, 0]
        kept[1, 0] = first + np.float32(1.0)
        try:
            assert rows[1, 0] == first + np.float32(1.0)
        finally:
            kept[1, 0] = first
    finally:
        loaded.close()
