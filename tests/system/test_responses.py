"""POST /v1/responses (issue 22, item 3) on the real server with the official openai client:
a tiny random-weight model, and one that carries the Hermes tool template (tests.chat_templates),
whose calls are forced by tool_choice as in test_tools."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.chat_templates import TOOL_TEMPLATES
from testkit.ggufmaker import tiny_tokenizer, write_tiny_llama
from testkit.serving import free_port, running_gateway

pytestmark = pytest.mark.llama

KEY = "responses-key"
EOS = tiny_tokenizer()[4]
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("responses")
    port = free_port()
    plain = write_tiny_llama(tmp / "plain.gguf", n_layers=2, n_embd=64, ctx=512)
    hermes = write_tiny_llama(tmp / "hermes.gguf", ctx=4096, chat_template=TOOL_TEMPLATES["hermes"])
    cfg = tmp / "models.toml"
    cfg.write_text(
        f'[gateway]\nport = {port}\napi_keys = ["{KEY}"]\n'
        f'\n[[models]]\nname = "tiny"\npath = "{plain}"\nn_ctx = 512\n'
        f'\n[[models]]\nname = "hermes"\npath = "{hermes}"\nn_ctx = 4096\n'
    )
    with running_gateway(cfg, port, tmp / "serve.log") as gw:
        yield gw


@pytest.fixture(scope="module")
def client(gateway):
    return openai.OpenAI(base_url=gateway.base + "/v1", api_key=KEY, max_retries=0, timeout=120)


def test_a_text_input_answers_a_response_with_a_message_and_usage(client):
    r = client.responses.create(
        model="tiny", input="Say hello.", instructions="Be brief.", max_output_tokens=5, temperature=0, extra_body={"logit_bias": {"97": 50.0}}
    )
    assert r.object == "response" and r.id.startswith("resp_") and r.model == "tiny"
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    [item] = r.output
    assert item.type == "message" and item.role == "assistant"
    assert item.content[0].type == "output_text" and r.output_text == item.content[0].text
    assert r.usage.output_tokens == 5
    assert r.usage.total_tokens == r.usage.input_tokens + 5


def test_instructions_are_the_system_message(client):
    bare = client.responses.create(model="tiny", input="Say hello.", max_output_tokens=1)
    instructed = client.responses.create(model="tiny", input="Say hello.", instructions="You are terse and polite.", max_output_tokens=1)
    assert instructed.usage.input_tokens > bare.usage.input_tokens


def test_a_streamed_response_sends_the_events_in_order_and_ends_completed(client):
    # Greedy and biased to "a": the random tiny model must not end its text before the 4 tokens.
    events = list(
        client.responses.create(
            model="tiny", input="Say hello.", max_output_tokens=4, temperature=0, stream=True, extra_body={"logit_bias": {"97": 50.0}}
        )
    )
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.incomplete"]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert final.output_text == deltas
    assert final.usage.output_tokens == 4
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_a_required_tool_choice_answers_a_function_call_item(client):
    r = client.responses.create(
        model="hermes",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "What is the weather in Paris?"}]}],
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=200,
        temperature=0,
        extra_body={"logit_bias": {str(EOS): 100.0}},
    )
    calls = [item for item in r.output if item.type == "function_call"]
    assert len(calls) == 1
    assert calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments)["city"] in ("Paris", "Oslo")
    # The call and its result go back as items for the next turn.
    follow = client.responses.create(
        model="hermes",
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {"type": "function_call", "call_id": calls[0].call_id, "name": calls[0].name, "arguments": calls[0].arguments},
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"},
        ],
        tools=[WEATHER],
        max_output_tokens=3,
    )
    assert follow.usage.input_tokens > r.usage.input_tokens


def test_a_streamed_function_call_sends_argument_deltas(client):
    events = list(
        client.responses.create(
            model="hermes",
            input="What is the weather in Paris?",
            tools=[WEATHER],
            tool_choice={"type": "function", "name": "get_weather"},
            max_output_tokens=200,
            temperature=0,
            stream=True,
            extra_body={"logit_bias": {str(EOS): 100.0}},
        )
    )
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert json.loads(done.arguments)["city"] in ("Paris", "Oslo")
    assert kinds[-1] == "response.completed"
    [item] = [i for i in events[-1].response.output if i.type == "function_call"]
    assert item.arguments == done.arguments


def test_previous_response_id_is_refused_as_stateless(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="tiny", input="hi", previous_response_id="resp_123")
    assert caught.value.body["param"] == "previous_response_id"
    assert "stateless" in caught.value.body["message"]


def test_a_request_without_the_key_is_refused_and_metrics_name_the_route(gateway, client):
    r = httpx.post(gateway.base + "/v1/responses", json={"model": "tiny", "input": "hi"}, timeout=30)
    assert r.status_code == 401
    client.responses.create(model="tiny", input="hi", max_output_tokens=1)
    metrics = httpx.get(gateway.base + "/metrics", timeout=30).text
    assert 'endpoint="/v1/responses"' in metrics
