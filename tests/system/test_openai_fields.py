"""What OpenAI clients (and llama-server's users) expect in answers, on the real server with the
official openai client: the model's own chat template, unit-length and base64 embeddings,
cached prompt tokens and timings, and model entries a client can choose by (issue 22)."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import API_KEY

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
