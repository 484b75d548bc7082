"""Sampler chains against llama.cpp's own samplers, on a real context's logits."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.engine.sampling import SamplerChain, SamplingParams, logits_at
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
