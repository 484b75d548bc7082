"""The Responses API's translation to and from chat completions (gateway.http.responses)."""

from __future__ import annotations

import json

import pytest

from gateway.errors import InvalidRequestError
from gateway.http.openai_params import chat_params
from gateway.http.responses import StreamEvents, chat_body, response_object


def test_a_string_input_is_one_user_message_after_the_instructions():
    chat = chat_body({"model": "m", "input": "hi", "instructions": "be brief", "max_output_tokens": 7, "temperature": 0.5, "top_p": 0.9})
    assert chat == {
        "model": "m",
        "temperature": 0.5,
        "top_p": 0.9,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "max_tokens": 7,
    }
    params = chat_params(chat)
    assert params["max_tokens"] == 7 and params["temperature"] == 0.5


def test_items_become_messages_with_tool_calls_and_tool_results():
    chat = chat_body(
        {
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
                {"type": "function_call", "call_id": "c2", "name": "get_time", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "function_call_output", "call_id": "c2", "output": "noon"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sunny at noon."}]},
            ]
        }
    )
    assert chat["messages"] == [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
                {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "noon"},
        {"role": "assistant", "content": "Sunny at noon."},
    ]


def test_function_tools_and_a_named_choice_take_the_chat_shape():
    chat = chat_body(
        {
            "input": "x",
            "tools": [{"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}, "strict": True}],
            "tool_choice": {"type": "function", "name": "f"},
            "parallel_tool_calls": False,
        }
    )
    assert chat["tools"] == [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}, "strict": True}}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert chat["parallel_tool_calls"] is False
    assert chat_body({"input": "x", "tool_choice": "required"})["tool_choice"] == "required"


def test_a_json_schema_text_format_is_the_chat_response_format():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    chat = chat_body({"input": "x", "text": {"format": {"type": "json_schema", "name": "thing", "schema": schema}}})
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {"name": "thing", "schema": schema}}
    assert chat_params(chat)["response_format"] == {"type": "json_object", "schema": schema}
    assert "response_format" not in chat_body({"input": "x", "text": {"format": {"type": "text"}}})


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"input": "x", "store": True}, "store", "stateless"),
        ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id", "send the whole conversation"),
        ({"input": "x", "conversation": "conv_1"}, "conversation", "stateless"),
        ({}, "input", "'input' is required"),
        ({"input": []}, "input", "non-empty list"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", "must be one of user"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]}, "input[0].content[0]", "'input_image'"),
        ({"input": [{"type": "reasoning"}]}, "input[0].type", "'reasoning'"),
        ({"input": [{"type": "function_call", "name": "f"}]}, "input[0]", "call_id"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0]", "'web_search' is not supported"),
        ({"input": "x", "tool_choice": {"type": "function"}}, "tool_choice", "none, auto, required"),
        ({"input": "x", "text": {"format": {"type": "json_schema"}}}, "text.format.schema", "JSON Schema"),
        ({"input": "x", "instructions": 3}, "instructions", "string"),
    ],
)
def test_what_cannot_be_served_is_refused_naming_the_field(body, param, words):
    with pytest.raises(InvalidRequestError) as caught:
        chat_body(body)
    assert caught.value.param == param
    assert words in str(caught.value)


def test_a_message_items_text_parts_are_joined_as_a_chat_messages_are():
    parts = [{"type": "input_text", "text": "What is the weather"}, {"type": "input_text", "text": "in Paris?"}]
    from_responses = chat_body({"input": [{"role": "user", "content": parts}]})["messages"]
    from_chat = chat_params({"messages": [{"role": "user", "content": [{"type": "text", "text": p["text"]} for p in parts]}]})["messages"]
    assert from_responses == from_chat == [{"role": "user", "content": "What is the weather\nin Paris?"}]


@pytest.mark.parametrize(
    ("part", "words"),
    [
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}, "'image_url' part: this model reads text only"),
        ({"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}}, "'input_audio' part"),
        ({"type": "text"}, "string 'text'"),
        ("hello", "an object with a 'type'"),
    ],
)
def test_a_chat_content_part_that_is_not_text_is_refused_naming_it(part, words):
    with pytest.raises(InvalidRequestError) as caught:
        chat_params({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, part]}]})
    assert caught.value.param == "messages[0].content[1]"
    assert words in str(caught.value)


def test_store_false_is_accepted():
    assert chat_body({"input": "x", "store": False})["messages"] == [{"role": "user", "content": "x"}]


def _chat(message, finish="stop"):
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 123,
        "model": "tiny",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8, "prompt_tokens_details": {"cached_tokens": 2}},
    }


def test_a_chat_answer_is_a_response_with_one_message_item():
    r = response_object(_chat({"role": "assistant", "content": "Hello"}), {"input": "hi", "instructions": "be brief"})
    assert r["object"] == "response" and r["id"].startswith("resp_")
    assert (r["created_at"], r["status"], r["model"], r["instructions"]) == (123, "completed", "tiny", "be brief")
    [item] = r["output"]
    assert item["type"] == "message" and item["role"] == "assistant" and item["status"] == "completed"
    assert item["content"] == [{"type": "output_text", "text": "Hello", "annotations": []}]
    assert r["usage"] == {
        "input_tokens": 5,
        "input_tokens_details": {"cached_tokens": 2},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 8,
    }


def test_tool_calls_are_function_call_items_and_length_is_incomplete():
    call = {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    r = response_object(_chat({"role": "assistant", "content": None, "tool_calls": [call]}, finish="length"), {"input": "x"})
    [item] = r["output"]
    assert {k: item[k] for k in ("type", "call_id", "name", "arguments", "status")} == {
        "type": "function_call",
        "call_id": "call_9",
        "name": "f",
        "arguments": '{"a":1}',
        "status": "completed",
    }
    assert r["status"] == "incomplete" and r["incomplete_details"] == {"reason": "max_output_tokens"}


def _events(raw: bytes) -> list[dict]:
    events = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        kind, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert kind == "event: " + event["type"]
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def _delta(content=None, tool_calls=None, finish=None):
    delta = {k: v for k, v in (("content", content), ("tool_calls", tool_calls)) if v is not None}
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


USAGE = {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}}


def test_streamed_text_is_the_message_item_events_then_the_completed_response():
    s = StreamEvents({"input": "hi"}, "tiny")
    raw = s.chunk(_delta("He")) + s.chunk(_delta("llo", finish="stop")) + s.chunk(USAGE) + s.done()
    events = _events(raw)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["delta"] for e in events if e["type"] == "response.output_text.delta"] == ["He", "llo"]
    assert events[6]["text"] == "Hello"
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["usage"]["total_tokens"] == 6
    assert final["output"][0]["content"][0]["text"] == "Hello"
    assert final["id"] == events[0]["response"]["id"]


def test_streamed_tool_calls_are_function_call_items_with_argument_deltas():
    s = StreamEvents({"input": "x"}, "tiny")
    first = [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]
    raw = (
        s.chunk(_delta(tool_calls=first))
        + s.chunk(_delta(tool_calls=[{"index": 0, "function": {"arguments": '{"a":'}}]))
        + s.chunk(_delta(tool_calls=[{"index": 0, "function": {"arguments": "1}"}}], finish="tool_calls"))
        + s.chunk(USAGE)
        + s.done()
    )
    events = _events(raw)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[2]["item"]["name"] == "f" and events[2]["item"]["call_id"] == "call_1"
    assert events[5]["arguments"] == '{"a":1}'
    [item] = events[-1]["response"]["output"]
    assert (item["type"], item["arguments"], item["status"]) == ("function_call", '{"a":1}', "completed")


def test_a_stream_cut_by_length_ends_incomplete():
    s = StreamEvents({"input": "x", "max_output_tokens": 1}, "tiny")
    events = _events(s.chunk(_delta("a", finish="length")) + s.done())
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_an_in_band_error_fails_the_response():
    s = StreamEvents({"input": "x"}, "tiny")
    raw = s.chunk(_delta("a")) + s.chunk({"error": {"message": "boom", "type": "server_error"}}) + s.done()
    events = _events(raw)
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"] == {"code": "server_error", "message": "boom"}
