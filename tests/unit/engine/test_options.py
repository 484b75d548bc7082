"""The request options' one declaration (gateway.engine.options) reaches the HTTP parser, the
OpenAPI document and the engine's dataclasses; no model is loaded."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from gateway.engine.completion import CompletionOptions
from gateway.engine.options import BOOLEAN, INTEGER, NUMBER, OBJECT, OPTIONS, STRING, STRINGS, TOKEN_BIAS, engine_options, options_for
from gateway.engine.sampling import SamplingParams, sampling_params
from gateway.errors import InvalidRequestError
from gateway.http.openai_params import (
    CHAT_REQUEST_SCHEMA,
    COMPLETION_REQUEST_SCHEMA,
    EMBEDDING_REQUEST_SCHEMA,
    chat_params,
    completion_params,
    embedding_params,
)

PARSERS = {"chat": chat_params, "completion": completion_params, "embedding": embedding_params}
SCHEMAS = {"chat": CHAT_REQUEST_SCHEMA, "completion": COMPLETION_REQUEST_SCHEMA, "embedding": EMBEDDING_REQUEST_SCHEMA}
PAYLOADS = {"chat": {"messages": [{"role": "user", "content": "hi"}]}, "completion": {"prompt": "a"}, "embedding": {"input": "a"}}


def _valid(option):
    """A value the option accepts that is not its default."""
    if option.choices is not None:
        return next(c for c in option.choices if c != option.default)
    samples = [(NUMBER, 0.5), (INTEGER, 1), (BOOLEAN, True), (STRING, "x"), (STRINGS, ["x"]), (TOKEN_BIAS, {"1": 2.0}), (OBJECT, {})]
    return next(value for kind, value in samples if kind is option.kind)


@pytest.mark.parametrize("op", ["chat", "completion", "embedding"])
def test_every_declared_option_reaches_the_parser_the_schema_and_the_engine(op):
    for option in options_for(op):
        value = _valid(option)
        params = PARSERS[op]({**PAYLOADS[op], option.name: value, **({option.requires: True} if option.requires else {})})
        assert option.name in SCHEMAS[op]["properties"], option
        if not option.engine:
            assert option.engine_arg not in params, option
            continue
        assert params[option.engine_arg] == value, option
        if op == "completion":
            assert option.engine_arg in {f.name for f in dataclasses.fields(CompletionOptions)}, option
        if option.sampler:
            assert option.engine_arg in {f.name for f in dataclasses.fields(SamplingParams)}, option


def test_llama_server_sampling_options_reach_the_engine_through_http():
    # Issue 25, item 3: the engine took typical_p and mirostat_* that HTTP never passed on.
    body = {"prompt": "a", "typical_p": 0.5, "mirostat": 2, "mirostat_tau": 3.0, "mirostat_eta": 0.2}
    params = completion_params(body)
    sampler = sampling_params(CompletionOptions.of(params), grammar=None, n_vocab=32)
    assert (sampler.typical_p, sampler.mirostat_mode, sampler.mirostat_tau, sampler.mirostat_eta) == (0.5, 2, 3.0, 0.2)
    chat = chat_params({"messages": [{"role": "user", "content": "hi"}], "typical_p": 0.5, "mirostat": 1})
    assert (chat["typical_p"], chat["mirostat_mode"]) == (0.5, 1)
    for name in ("typical_p", "mirostat", "mirostat_tau", "mirostat_eta"):
        assert "llama-server" in COMPLETION_REQUEST_SCHEMA["properties"][name]["anyOf"][0]["description"]


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("mirostat", 3, "'mirostat' must be one of 0, 1, 2, not 3"),
        ("typical_p", 1.5, "'typical_p' must be from 0 to 1, not 1.5"),
        ("repeat_penalty", 0, "'repeat_penalty' must be greater than 0, not 0.0"),
        ("mirostat_tau", -1, "'mirostat_tau' must be at least 0, not -1.0"),
        ("top_k", "many", "'top_k' must be an integer, not str"),
        ("max_tokens", 0, "'max_tokens' must be at least 1, not 0"),
        ("max_completion_tokens", 1.5, "'max_completion_tokens' must be an integer, not 1.5"),
    ],
)
def test_a_value_the_declaration_refuses_is_a_400_naming_the_field(field, value, message):
    with pytest.raises(InvalidRequestError) as caught:
        completion_params({"prompt": "a", field: value})
    assert (caught.value.param, str(caught.value)) == (field, message)


def test_the_engine_checks_the_sampler_values_by_the_same_declaration():
    # A request that reaches the worker without the HTTP parser (its protocol, a test) cannot
    # hand llama.cpp's samplers a value they would divide by.
    with pytest.raises(InvalidRequestError) as caught:
        sampling_params(CompletionOptions.of({"prompt": "a", "repeat_penalty": 0.0}), grammar=None, n_vocab=32)
    assert caught.value.param == "repeat_penalty"


def test_the_engine_defaults_are_llama_cpp_pythons():
    from llama_cpp import Llama

    theirs = inspect.signature(Llama.create_completion).parameters
    ours = {f.name: f.default for f in dataclasses.fields(CompletionOptions) if f.default is not dataclasses.MISSING}
    for name, default in ours.items():
        if name == "n":  # ours: n choices share one prompt
            continue
        expected = theirs[name].default
        assert default == (None if name == "stop" else expected), name  # stop: their [] means the same
    sampler_defaults = {f.name: f.default for f in dataclasses.fields(SamplingParams)}
    for option in engine_options("completion", sampler=True):
        if option.engine_arg not in ("seed", "logit_bias"):  # resolved: llama.h's random seed, no bias
            assert sampler_defaults[option.engine_arg] == theirs[option.engine_arg].default


def test_each_option_is_declared_once_per_operation():
    for op in ("chat", "completion", "embedding"):
        names = [o.name for o in options_for(op)]
        assert len(names) == len(set(names)), op
    assert len({(o.name, o.ops) for o in OPTIONS}) == len(OPTIONS)
