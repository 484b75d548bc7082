"""gateway.engine.tool_chat without a model: an answer's text as OpenAI chat shapes (whole and
streamed), the history as templates want it, and the grammar llama.cpp compiles."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from gateway.engine.tool_calls import FAMILIES, FUNCTIONARY_V3_2, HERMES, LLAMA3, MISTRAL
from gateway.engine.tool_chat import _Answer, call_id, named_tool, template_messages, tools_grammar
from gateway.engine.sampling import SamplerChain, SamplingParams
from gateway.errors import InvalidRequestError
from testkit.ggufmaker import write_tiny_llama

STARTED = SimpleNamespace(completion_id="cmpl-1", created=1, model_name="m")
ANSWER = 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
USAGE = {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}


def _completion_chunks(text: str, piece: int, finish: str = "stop"):
    for i in range(0, len(text), piece):
        yield {"choices": [{"text": text[i : i + piece], "finish_reason": None}]}
    yield {"choices": [{"text": "", "finish_reason": finish}]}


def test_a_whole_answer_has_its_text_as_content_and_its_calls_as_tool_calls():
    r = _Answer(HERMES, STARTED, parallel=True).response({"choices": [{"text": ANSWER, "finish_reason": "stop"}], "usage": USAGE})
    choice = r["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me look.\n"
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}


def test_an_answer_cut_by_max_tokens_keeps_finish_reason_length():
    r = _Answer(HERMES, STARTED, parallel=True).response({"choices": [{"text": ANSWER[:40], "finish_reason": "length"}], "usage": USAGE})
    assert r["choices"][0]["finish_reason"] == "length"
    assert "tool_calls" not in r["choices"][0]["message"]


@pytest.mark.parametrize("piece", [1, 3, 1000])
def test_a_streamed_answer_shows_text_until_the_call_opens_then_the_call_as_deltas(piece):
    chunks = list(_Answer(HERMES, STARTED, parallel=True).chunks(_completion_chunks(ANSWER, piece)))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant"}
    assert "".join(d.get("content", "") for d in deltas) == "Let me look.\n"
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    head, *rest = calls
    assert head["index"] == 0 and head["id"] and head["function"]["name"] == "get_weather"
    assert json.loads(head["function"]["arguments"] + "".join(c["function"]["arguments"] for c in rest)) == {"city": "Paris"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # No content after the call opened.
    first_call = next(i for i, d in enumerate(deltas) if "tool_calls" in d)
    assert not any(d.get("content") for d in deltas[first_call:])


def test_a_streamed_answer_that_is_not_a_call_after_all_comes_as_content():
    text = "{not a call}"
    chunks = list(_Answer(LLAMA3, STARTED, parallel=False).chunks(_completion_chunks(text, 2)))
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == text
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_without_parallel_calls_only_the_first_call_is_kept():
    two = ANSWER + '\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    r = _Answer(HERMES, STARTED, parallel=False).response({"choices": [{"text": two, "finish_reason": "stop"}], "usage": USAGE})
    assert [c["function"]["name"] for c in r["choices"][0]["message"]["tool_calls"]] == ["get_weather"]


def test_mistral_call_ids_are_nine_letters_and_digits():
    ids = {call_id(MISTRAL) for _ in range(20)}
    assert all(len(i) == 9 and i.isalnum() for i in ids)


def test_history_calls_get_object_arguments_where_the_template_writes_them_with_tojson():
    history = [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]},
        {"role": "assistant", "content": "hi", "tool_calls": None},
    ]
    hermes = template_messages(history, HERMES)
    assert hermes[0]["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    assert "tool_calls" not in hermes[1]  # templates test `'tool_calls' in message`
    # Functionary concatenates the JSON text.
    assert template_messages(history, FUNCTIONARY_V3_2)[0]["tool_calls"][0]["function"]["arguments"] == '{"a": 1}'


def test_a_named_function_not_among_the_tools_is_refused():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    assert named_tool(tools, "required") is None
    with pytest.raises(InvalidRequestError) as caught:
        named_tool(tools, {"type": "function", "function": {"name": "g"}})
    assert caught.value.param == "tool_choice"


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import llama_cpp

    path = write_tiny_llama(tmp_path_factory.mktemp("tool_chat") / "tiny.gguf")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False)
    yield llm
    llm.close()


@pytest.mark.llama
@pytest.mark.parametrize("family", [f for f, _ in FAMILIES], ids=lambda f: f.name)
@pytest.mark.parametrize("parallel", [False, True])
def test_each_family_grammar_compiles_in_llama_cpp(tiny, family, parallel):
    gbnf = tools_grammar(family, TOOLS, parallel=parallel, prompt="")
    chain = SamplerChain(SamplingParams(grammar=gbnf), tiny._model.vocab, tiny.n_vocab())  # ValueError when llama.cpp refuses it
    chain.free()


@pytest.mark.llama
def test_a_tool_schema_the_grammar_cannot_follow_is_refused_naming_it():
    bad = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"$ref": "https://example.com/s.json"}}}}}]
    with pytest.raises(InvalidRequestError) as caught:
        tools_grammar(HERMES, bad, parallel=False, prompt="")
    assert "tools[0].function.parameters" in str(caught.value) and caught.value.param == "tools"
