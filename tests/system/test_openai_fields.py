"""What OpenAI clients (and llama-server's users) expect in answers, on the real server with the
official openai client: the model's own chat template, unit-length and base64 embeddings,
cached prompt tokens and timings, and model entries a client can choose by (issue 22)."""

from __future__ import annotations

import base64
import math

import httpx
import numpy as np
import openai
import pytest

from tests.shared_server import API_KEY

pytestmark = pytest.mark.llama

SYSTEM = "You are a terse assistant who answers every question in exactly one short sentence."


@pytest.fixture()
def client(gateway_server):
    return openai.OpenAI(base_url=gateway_server["base"] + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def _prompt_tokens(client, messages) -> int:
    r = client.chat.completions.create(model="gemma", messages=messages, max_tokens=1, temperature=0)
    return r.usage.prompt_tokens


def test_a_chat_without_chat_format_keeps_the_system_message(client):
    # The session's Gemma sets no chat_format, as configs/demo.toml: its file has no template, so
    # it chats in ChatML as llama-server does; the "gemma" format used to drop system messages.
    user = [{"role": "user", "content": "Say hello."}]
    alone = _prompt_tokens(client, user)
    with_system = _prompt_tokens(client, [{"role": "system", "content": SYSTEM}, *user])
    assert with_system >= alone + 10  # the "gemma" format: equal


TEXTS = ["The cat sat on the mat.", "A completely different sentence about the stock market."]


def test_embeddings_are_unit_length(client):
    r = client.embeddings.create(model="tiny-embed", input=TEXTS)
    norms = [math.sqrt(sum(x * x for x in d.embedding)) for d in r.data]
    assert norms == [pytest.approx(1.0, abs=1e-5)] * 2


def test_base64_embeddings_are_the_little_endian_float32_bytes_of_the_float_ones(client):
    floats = client.embeddings.create(model="tiny-embed", input=TEXTS, encoding_format="float")
    encoded = client.embeddings.create(model="tiny-embed", input=TEXTS, encoding_format="base64")
    for f, e in zip(floats.data, encoded.data, strict=True):
        assert isinstance(e.embedding, str)
        decoded = np.frombuffer(base64.b64decode(e.embedding), dtype="<f4")
        assert decoded.tolist() == pytest.approx(f.embedding, abs=1e-6)


def test_dimensions_is_refused_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="tiny-embed", input="hello", dimensions=16)
    error = caught.value.body
    assert error["param"] == "dimensions"
    assert "no model served here can shorten its embeddings" in error["message"]


def test_an_unknown_encoding_format_is_refused_naming_the_allowed_ones(gateway_server):
    r = httpx.post(
        gateway_server["base"] + "/v1/embeddings",
        json={"model": "tiny-embed", "input": "hi", "encoding_format": "int8"},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    )
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "'encoding_format' must be one of float, base64, not 'int8'"


def test_model_entries_carry_what_a_client_chooses_by(client, gemma_path):
    entries = {m.id: m.model_dump() for m in client.models.list().data}
    gemma, tiny, embed = entries["gemma"], entries["tiny"], entries["tiny-embed"]
    assert gemma["state"] == "ready"
    assert (gemma["n_ctx"], gemma["context_length"]) == (1024, 32768)
    assert gemma["capabilities"] == {"completion": True, "chat": True, "embeddings": False, "tools": False}
    assert gemma["chat_format"] == "chatml"  # the file has no template: llama-server's fallback
    assert (gemma["architecture"], gemma["quantization"]) == ("gemma3", "Q4_K_M")
    assert gemma["n_params"] == 268_098_176  # llama.cpp's llama_model_n_params for this file
    assert gemma["file_bytes"] == gemma_path.stat().st_size
    # A file with a chat template chats in it; an embedding model says so.
    assert (tiny["n_ctx"], tiny["context_length"], tiny["chat_format"]) == (256, 512, "chat_template.default")
    assert embed["capabilities"] == {"completion": True, "chat": True, "embeddings": True, "tools": False}
    # GET /v1/models/{id}, by name or alias: the same entry.
    one = client.models.retrieve("gemma-3-270m").model_dump()
    assert {k: one[k] for k in ("id", "n_ctx", "context_length", "capabilities", "n_params", "file_bytes", "quantization")} == {
        k: gemma[k] for k in ("id", "n_ctx", "context_length", "capabilities", "n_params", "file_bytes", "quantization")
    }


TIMINGS = {"cache_n", "prompt_n", "prompt_ms", "prompt_per_token_ms", "prompt_per_second", "predicted_n", "predicted_ms", "predicted_per_token_ms", "predicted_per_second"}
LONG = "Here is a long shared preamble that a chat client sends with every turn of the conversation. " * 4


def test_a_repeated_prompt_reports_its_cached_tokens_and_llama_server_timings(client):
    messages = [{"role": "system", "content": LONG}, {"role": "user", "content": "Say hello."}]
    first = client.chat.completions.create(model="gemma", messages=messages, max_tokens=4, temperature=0)
    again = client.chat.completions.create(model="gemma", messages=messages, max_tokens=4, temperature=0)
    # Gemma has one slot: the second request finds the first's prompt in it.
    assert first.usage.prompt_tokens_details.cached_tokens < 10
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert again.usage.prompt_tokens - 2 <= cached < again.usage.prompt_tokens
    timings = again.model_dump()["timings"]
    assert set(timings) == TIMINGS
    assert (timings["cache_n"], timings["prompt_n"]) == (cached, again.usage.prompt_tokens - cached)
    assert timings["predicted_n"] == again.usage.completion_tokens
    assert timings["prompt_ms"] > 0 and timings["prompt_per_second"] > 0
    assert timings["predicted_ms"] >= 0


def test_a_completion_carries_timings_too(client):
    r = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=5, temperature=0)
    timings = r.model_dump()["timings"]
    assert set(timings) == TIMINGS
    assert timings["prompt_n"] + timings["cache_n"] == r.usage.prompt_tokens
    assert timings["predicted_n"] == r.usage.completion_tokens


def test_the_last_streamed_chunk_carries_the_timings(client):
    stream = client.chat.completions.create(
        model="gemma", messages=[{"role": "user", "content": "Count to three."}], max_tokens=6, stream=True
    )
    chunks = [c.model_dump() for c in stream]
    assert chunks[-1]["choices"][0]["finish_reason"] is not None
    assert set(chunks[-1]["timings"]) == TIMINGS
    assert chunks[-1]["timings"]["predicted_n"] == 6 or chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("timings" not in c for c in chunks[:-1])


def test_with_include_usage_the_usage_chunk_is_last_with_cached_tokens_and_timings(client):
    stream = client.chat.completions.create(
        model="gemma",
        # Greedy, the base model answers this one with text (sampled, it may end its turn at once:
        # no completion token to count).
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens > 0
    assert last.usage.prompt_tokens_details.cached_tokens >= 0
    timings = last.model_dump()["timings"]
    assert timings["predicted_n"] == last.usage.completion_tokens
    assert timings["prompt_n"] + timings["cache_n"] == last.usage.prompt_tokens
