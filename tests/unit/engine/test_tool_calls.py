"""gateway.engine.tool_calls: each family's calls parsed from answers as its models write them
(the shapes of llama.cpp's tests/test-chat.cpp and the models' cards), whole and streamed."""

from __future__ import annotations

import json

import pytest

from gateway.engine.tool_calls import (
    FAMILIES,
    FUNCTIONARY_V3_1,
    FUNCTIONARY_V3_2,
    HERMES,
    LLAMA3,
    MISTRAL,
    CallRule,
    Family,
    ToolCall,
    family_of,
    parse,
)
from tests.chat_templates import TOOL_TEMPLATES

WEATHER = ToolCall("get_weather", '{"location": "Paris, France"}')
TIME = ToolCall("get_time", '{"timezone": "Europe/Paris"}')

# (family, an answer as its model writes it, the content, the calls)
ANSWERS = [
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"location": "Paris, France"}}\n</tool_call>', "", [WEATHER]),
    (
        HERMES,
        'Let me check both.\n<tool_call>\n{"name": "get_weather", "arguments": {"location": "Paris, France"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {"timezone": "Europe/Paris"}}\n</tool_call>',
        "Let me check both.\n",
        [WEATHER, TIME],
    ),
    # Qwen 3 thinks first; a stop string may cut the closing tag.
    (HERMES, '<think>\nok\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"location": "Paris, France"}}', "<think>\nok\n</think>\n\n", [WEATHER]),
    (LLAMA3, '{"name": "get_weather", "parameters": {"location": "Paris, France"}}', "", [WEATHER]),
    (LLAMA3, '<|python_tag|>{"name": "get_weather", "parameters": {"location": "Paris, France"}}', "", [WEATHER]),
    (LLAMA3, '{"type": "function", "name": "get_weather", "parameters": {"location": "Paris, France"}}', "", [WEATHER]),
    (LLAMA3, "It is sunny in Paris.", "It is sunny in Paris.", []),
    (
        MISTRAL,
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"location": "Paris, France"}, "id": "a1b2c3d4e"}, '
        '{"name": "get_time", "arguments": {"timezone": "Europe/Paris"}}]',
        "",
        [ToolCall("get_weather", WEATHER.arguments, "a1b2c3d4e"), TIME],
    ),
    # [TOOL_CALLS] is a control token, which the engine renders as nothing.
    (MISTRAL, '[{"name": "get_weather", "arguments": {"location": "Paris, France"}}]', "", [WEATHER]),
    (MISTRAL, "[1, 2] is a list.", "[1, 2] is a list.", []),
    (MISTRAL, '[TOOL_CALLS]get_weather[ARGS]{"location": "Paris, France"}[TOOL_CALLS]get_time[ARGS]{"timezone": "Europe/Paris"}', "", [WEATHER, TIME]),
    (FUNCTIONARY_V3_1, 'Sure. <function=get_weather>{"location": "Paris, France"}</function>', "Sure. ", [WEATHER]),
    (FUNCTIONARY_V3_1, "<|python_tag|>print(1)", "", [ToolCall("python", '{"code": "print(1)"}')]),
    # The v3.2 prompt ends in ">>>": the answer begins with the first recipient.
    (FUNCTIONARY_V3_2, 'get_weather\n{"location": "Paris, France"}>>>get_time\n{"timezone": "Europe/Paris"}', "", [WEATHER, TIME]),
    (FUNCTIONARY_V3_2, 'all\nChecking.>>>get_weather\n{"location": "Paris, France"}', "Checking.", [WEATHER]),
    (FUNCTIONARY_V3_2, "all\nHello there.", "Hello there.", []),
]


@pytest.mark.parametrize("family,text,content,calls", ANSWERS)
def test_an_answer_parses_into_content_and_calls(family: Family, text, content, calls):
    parsed = parse(family, text, final=True)
    assert parsed.content == content
    assert list(parsed.calls) == calls


@pytest.mark.parametrize("family,text,content,calls", ANSWERS)
def test_streamed_text_gives_content_that_only_grows_and_calls_once_closed(family: Family, text, content, calls):
    shown, seen = "", []
    for end in range(len(text) + 1):
        parsed = parse(family, text[:end], final=False)
        assert parsed.content.startswith(shown), (text[:end], parsed.content, shown)
        assert list(parsed.calls[: len(seen)]) == seen
        shown, seen = parsed.content, list(parsed.calls)
    final = parse(family, text, final=True)
    assert final.content.startswith(shown) and list(final.calls[: len(seen)]) == seen
    # Once a call opens, no more of the text is content.
    if calls:
        assert shown == content


@pytest.mark.parametrize("family", [HERMES, MISTRAL, LLAMA3, FUNCTIONARY_V3_1])
def test_a_half_written_opening_is_held_back_from_the_content(family: Family):
    opening = {"hermes": "<tool_c", "mistral": "[TOOL_CA", "llama3": "<|python_t", "functionary-v3.1": "<funct"}[family.name]
    parsed = parse(family, "Sure. " + opening, final=False)
    assert parsed.content == "Sure. "


@pytest.mark.parametrize(
    "family,text",
    [(HERMES, "<tool_call>\nnot json\n</tool_call>"), (LLAMA3, "{this is not a call}"), (MISTRAL, "[TOOL_CALLS] oops")],
)
def test_text_that_only_looks_like_a_call_stays_the_content(family: Family, text):
    parsed = parse(family, text, final=True)
    assert parsed.calls == () and parsed.content == text


def test_arguments_written_as_a_json_string_are_kept_as_json_text():
    text = '<tool_call>\n{"name": "get_weather", "arguments": "{\\"location\\": \\"Paris, France\\"}"}\n</tool_call>'
    (call,) = parse(HERMES, text, final=True).calls
    assert json.loads(call.arguments) == {"location": "Paris, France"}


@pytest.mark.parametrize("name,template", sorted(TOOL_TEMPLATES.items()))
def test_each_real_template_is_told_to_its_family(name, template):
    family = family_of(template)
    assert family is not None and family.name == name


def test_a_template_without_tools_has_no_family():
    assert family_of("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}") is None
    # Llama 3's header tokens without tools: Llama 3.0, which has no tool calls.
    assert family_of("<|start_header_id|>{{ message['role'] }}<|end_header_id|>") is None


def test_the_table_has_one_entry_per_family():
    names = [family.name for family, _ in FAMILIES]
    assert len(names) == len(set(names)) == len(TOOL_TEMPLATES)


RULES = [CallRule("get_weather", "w-args"), CallRule("get_time", "t-args")]


def test_the_grammar_writes_the_family_syntax_around_each_function_arguments_rule():
    assert HERMES.grammar(RULES[:1], False, "") == (
        '"<tool_call>\\n" ( "{\\"name\\": \\"get_weather\\", \\"arguments\\": " w-args "}" ) "\\n</tool_call>"'
    )
    parallel = MISTRAL.grammar(RULES, True, "")
    assert parallel.startswith('"[TOOL_CALLS][" ') and '", "' in parallel and "w-args" in parallel and "t-args" in parallel


def test_functionary_v3_2_grammar_does_not_repeat_the_recipient_mark_the_prompt_ends_with():
    assert FUNCTIONARY_V3_2.grammar(RULES[:1], False, "...assistant<|end_header_id|>\n\n>>>") == '( "get_weather\\n" w-args )'
    assert FUNCTIONARY_V3_2.grammar(RULES[:1], False, "...assistant<|end_header_id|>\n\n").startswith('">>>" ')
