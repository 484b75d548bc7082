"""Fuzzing with schemathesis against the gateway's own OpenAPI document (/openapi.json).

A real server (gateway serve -> granian -> Litestar -> workers) with two tiny models. For every
operation schemathesis generates bodies, path parameters and headers that follow the schema
(positive) and that break it (negative), sends them, and checks each response: never a 5xx, a
documented status code and content type, the documented headers, and a body that conforms to
the documented schema. A few hundred requests in all, bounded in time.

The document is served as is; the test only narrows it before generating: `max_tokens` at most
16 (so that a generation takes milliseconds) and `model` one of the served models (so that most
requests reach a worker rather than getting 404). Hypothesis runs derandomized (a fixed seed; the
cases still vary a little between runs); `pytest -s` prints the statuses, FUZZ_VERBOSE=1 each
400's message too.
"""

from __future__ import annotations

import copy
import os
import time
from collections import Counter

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from testkit.ggufmaker import write_tiny_llama
from testkit.serving import free_port, running_gateway

pytestmark = pytest.mark.llama

KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_TOKENS = 16
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

# operationId -> (positive examples, negative examples): about 400 requests in all.
BUDGET = {
    "createChatCompletion": (150, 60),
    "createCompletion": (120, 60),
    "createResponse": (60, 30),
    "createEmbedding": (50, 30),
    "listModels": (10, 0),
    "retrieveModel": (10, 20),
    "health": (10, 0),
    "metrics": (10, 0),
    "reload": (5, 0),
    "loadModel": (10, 10),
    "unloadModel": (10, 10),
    "restartModel": (5, 10),
    "modelLogs": (10, 10),
    "planPreview": (25, 20),
    "listKeys": (5, 0),
    "drain": (0, 0),  # documented, never sent: it ends the server's service (SIGTERM's first step)
}



_CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
_TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
EXPLICIT = {
    "/v1/chat/completions": [
        _CHAT,
        {**_CHAT, "stream": True},
        {**_CHAT, "stream": True, "stream_options": {"include_usage": True}},
        {**_CHAT, "tools": [_TOOL], "tool_choice": {"type": "function", "function": {"name": "f"}}, "stream": True},
    ],
    "/v1/completions": [
        {"model": "tiny", "prompt": "a", "max_tokens": 4},
        {"model": "tiny", "prompt": "a", "max_tokens": 4, "stream": True, "stream_options": {"include_usage": True}},
    ],
    "/v1/embeddings": [{"model": "tiny-embed", "input": ["a", "b"]}],
    "/v1/responses": [
        {"model": "tiny", "input": "hi", "max_output_tokens": 4},
        {"model": "tiny", "input": "hi", "max_output_tokens": 4, "stream": True},
    ],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    tiny = write_tiny_llama(tmp / "tiny.gguf", n_layers=2, n_embd=64, ctx=512)
    port = free_port()
    cfg = tmp / "models.toml"
    cfg.write_text(
        f"""
[gateway]
port = {port}
api_keys = ["{KEY}"]
default_model = "tiny"
max_body_bytes = 65536
request_timeout_s = 20

[[models]]
name = "tiny"
path = "{tiny}"
n_ctx = 256

[[models]]
name = "tiny-embed"
path = "{tiny}"
n_ctx = 256
embedding = true
pooling = "mean"
"""
    )
    with running_gateway(cfg, port, tmp / "serve.log") as gw:
        yield {"base": gw.base, "log": gw.log, "proc": gw.proc}


def _narrowed(doc: dict) -> dict:
    """The served document with max_tokens <= 16 and model (mostly) one of the served models."""
    doc = copy.deepcopy(doc)
    schemas = doc["components"]["schemas"]
    for name, models in (
        ("CreateChatCompletionRequest", ["tiny"]),
        ("CreateCompletionRequest", ["tiny"]),
        ("CreateEmbeddingRequest", ["tiny-embed"]),
    ):
        props = schemas[name]["properties"]
        props["model"] = {"type": "string", "enum": models}
        for key in ("max_tokens", "max_completion_tokens"):
            if key in props:
                props[key] = {"type": "integer", "minimum": 1, "maximum": MAX_TOKENS}
        # Chat completions run to the end of the context without max_tokens: always send one.
        # Embeddings without a model go to default_model (tiny, not an embedding model): a 400.
        extra = "max_tokens" if name != "CreateEmbeddingRequest" else "model"
        schemas[name]["required"] = [*schemas[name]["required"], extra]
    # Ask for the served models and a few unknown names (random ones come from the negative mode).
    (param,) = doc["paths"]["/v1/models/{model_id}"]["get"]["parameters"]
    param["schema"] = {"type": "string", "enum": ["tiny", "tiny-embed", "gpt-4o", "..", "tiny/x"]}
    # The admin actions on the served (eager) models: load answers 200, unload 400.
    for action in ("load", "unload"):
        (param,) = doc["paths"][f"/admin/models/{{name}}/{action}"]["post"]["parameters"]
        param["schema"] = {"type": "string", "enum": ["tiny", "tiny-embed", "gpt-4o", "tiny/x"]}
    return doc


def test_the_document_describes_every_route(server):
    doc = httpx.get(server["base"] + "/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.1")
    ops = {op["operationId"]: (path, method) for path, item in doc["paths"].items() for method, op in item.items()}
    assert set(ops) == set(BUDGET)
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CreateChatCompletionRequest"
    }
    assert {"200", "400", "401", "404", "413", "429", "503"} <= set(chat["responses"])
    assert chat["responses"]["429"]["headers"]["Retry-After"]["required"] is True
    assert chat["security"] == [{"bearer": []}]
    assert "security" not in doc["paths"]["/health"]["get"]  # health_requires_key is false
    assert httpx.get(server["base"] + "/docs/openapi.json", timeout=10).json() == doc


def _fuzzer(base, strategy, examples, checks, seen, op_id, mode):
    """A Hypothesis test that sends ``examples`` cases from ``strategy`` and checks each answer."""

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case):
        response = case.call_and_validate(base_url=base, headers=AUTH, checks=checks, timeout=30)
        seen[(op_id, mode, response.status_code)] += 1
        if os.environ.get("FUZZ_VERBOSE") and response.status_code == 400:
            print(f"  400 {op_id} {mode}: {response.json()['error']['message'][:150]!r}")

    return run


def test_schemathesis_finds_no_5xx_and_every_response_conforms(server):
    base = server["base"]
    schema = schemathesis.openapi.from_dict(_narrowed(httpx.get(base + "/openapi.json", timeout=10).json()))
    seen: Counter[tuple[str, str, int]] = Counter()
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        op_id = operation.definition.raw["operationId"]
        for mode, examples in zip(("positive", "negative"), BUDGET[op_id]):
            if not examples:
                continue
            strategy = operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode))
            # ignored_auth sends the request again without the key and expects a 401.
            checks = CHECKS + ([ignored_auth] if mode == "positive" and op_id not in ("health", "metrics") else [])

            _fuzzer(base, strategy, examples, checks, seen, op_id, mode)()
    # An unload (or a failed restart) of an eager model keeps it down until an admin load: the
    # fuzzer may have sent one; bring both models back for the hand-written cases.
    for model in ("tiny", "tiny-embed"):
        r = httpx.post(f"{base}/admin/models/{model}/load", headers=AUTH, json={}, timeout=60)
        assert r.status_code == 200, r.text
    # The same checks on a few hand-written cases, so that every run covers the streams (the
    # server-sent events are checked one by one against the documented event schema).
    streams = 0
    for path, bodies in EXPLICIT.items():
        operation = schema[path]["POST"]
        for body in bodies:
            response = operation.Case(body=body, media_type="application/json").call_and_validate(
                base_url=base, headers=AUTH, checks=CHECKS, timeout=30
            )
            assert response.status_code == 200, response.text
            streams += response.headers.get("content-type", [""])[0].startswith("text/event-stream")
            seen[(operation.definition.raw["operationId"], "explicit", response.status_code)] += 1
    assert streams == sum(bool(b.get("stream")) for bodies in EXPLICIT.values() for b in bodies)
    elapsed = time.monotonic() - started
    total = sum(seen.values())
    print(f"\nschemathesis: {total} requests in {elapsed:.1f} s")
    for (op_id, mode, status), n in sorted(seen.items()):
        print(f"  {op_id:22s} {mode:8s} {status}: {n}")
    assert total >= 300
    assert not [k for k in seen if k[2] >= 500]
    # The generated requests reached the models, not only the validation in front of them.
    assert seen[("createChatCompletion", "positive", 200)] > 0
    assert seen[("createCompletion", "positive", 200)] > 0
    assert seen[("createEmbedding", "positive", 200)] > 0
    # ...and the server is still whole afterwards.
    assert server["proc"].poll() is None
    health = httpx.get(base + "/health", timeout=5).json()
    assert health["status"] == "ok", health
