"""What a fake node's gateway answers in the router's in-process tests (httpx.MockTransport)."""

from __future__ import annotations

import httpx


def models_listing(*names: str) -> httpx.Response:
    """A node's /v1/models: each model ready, 4 slots."""
    data = [{"id": name, "object": "model", "created": 1, "state": "ready", "queue": {"max_concurrency": 4}} for name in names]
    return httpx.Response(200, json={"object": "list", "data": data})


def completion(model: str, object_: str = "text_completion") -> httpx.Response:
    """A node's answer to a completion (``object_``: "chat.completion" for a chat) of one token."""
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    return httpx.Response(200, json={"id": "c", "object": object_, "created": 1, "model": model, "choices": [], "usage": usage})
