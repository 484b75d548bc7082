"""The OpenAI endpoints: chat and text completions, responses, embeddings, the model list."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar import Request, Response, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.response import Stream

from gateway.access.gate import Access
from gateway.access.keyring import ApiKey
from gateway.access.limits import Ticket
from gateway.engine.protocol import Op
from gateway.errors import InvalidRequestError
from gateway.http import proxy, responses
from gateway.http.auth import Auth
from gateway.http.openai_params import chat_params, completion_params, embedding_params, include_usage, is_stream
from gateway.observability.metrics import GatewayMetrics
from gateway.placement.facts import ModelFactsReader
from gateway.observability.telemetry import REQUEST_ID_HEADER, new_record
from gateway.runtime.pool import Lease, ModelEntry, ModelPool

Key = NamedDependency[ApiKey | None]  # the request's API key (gateway.http.auth), None without keys


@dataclass(frozen=True)
class Call:
    """What an OpenAI endpoint needs, as one dependency (``call``, gateway.http.app): Litestar
    resolves a handler's independent dependencies concurrently, in an anyio task group with a
    task each, on every request (~0.1 ms here), which the hot path has no use for."""

    pool: ModelPool
    metrics: GatewayMetrics
    access: Access
    key: ApiKey | None  # the request's API key, None without keys


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise InvalidRequestError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    return body


async def _lease(pool: ModelPool, access: Access, key: ApiKey | None, entry: ModelEntry) -> tuple[Lease, Ticket]:
    """The key's ticket (its limits: 429), then a run slot on the model; both held until the end."""
    ticket = access.admit(key)
    try:
        return await pool.acquire(entry), ticket
    except BaseException:
        ticket.release()
        raise


async def _generate(request: Request, call: Call, endpoint: str, op: Op) -> Response | Stream:
    pool, access, key = call.pool, call.access, call.key
    record = request.state.record = new_record(endpoint, request.headers.get(REQUEST_ID_HEADER), key.name if key else None)
    body = await _json_body(request)
    stream = is_stream(body)
    params = chat_params(body) if op is Op.CHAT else completion_params(body)
    entry = access.resolve(pool, key, body.get("model"))
    record.model = entry.name
    lease, ticket = await _lease(pool, access, key, entry)
    if stream:
        return await proxy.streamed(lease, record, call.metrics, op, params, include_usage(body), ticket)
    return await proxy.whole(lease, record, call.metrics, op, params, ticket, proxy.client_gone(request))


async def chat_completions(request: Request, call: NamedDependency[Call]) -> Response | Stream:
    return await _generate(request, call, "/v1/chat/completions", Op.CHAT)


async def completions(request: Request, call: NamedDependency[Call]) -> Response | Stream:
    return await _generate(request, call, "/v1/completions", Op.COMPLETION)


async def create_response(request: Request, call: NamedDependency[Call]) -> Response | Stream:
    """The Responses API, translated to a chat completion (gateway.http.responses) and back."""
    pool, access, key = call.pool, call.access, call.key
    record = request.state.record = new_record("/v1/responses", request.headers.get(REQUEST_ID_HEADER), key.name if key else None)
    body = await _json_body(request)
    chat = responses.chat_body(body)
    stream = is_stream(chat)
    params = chat_params(chat)
    entry = access.resolve(pool, key, body.get("model"))
    record.model = entry.name
    lease, ticket = await _lease(pool, access, key, entry)
    if stream:
        frame = responses.StreamEvents(body, entry.name)
        return await proxy.streamed(lease, record, call.metrics, Op.CHAT, params, True, ticket, frame)
    shape = functools.partial(responses.response_object, body=body)
    return await proxy.whole(lease, record, call.metrics, Op.CHAT, params, ticket, proxy.client_gone(request), shape)


async def embeddings(request: Request, call: NamedDependency[Call]) -> Response:
    pool, access, key = call.pool, call.access, call.key
    record = request.state.record = new_record("/v1/embeddings", request.headers.get(REQUEST_ID_HEADER), key.name if key else None)
    body = await _json_body(request)
    entry = access.resolve(pool, key, body.get("model"))
    record.model = entry.name
    if not entry.config.embedding:
        raise InvalidRequestError(f"model {entry.name!r} does not serve embeddings (set embedding = true)", param="model")
    params = embedding_params(body)
    lease, ticket = await _lease(pool, access, key, entry)
    return await proxy.whole(lease, record, call.metrics, Op.EMBEDDING, params, ticket, proxy.client_gone(request))


async def list_models(
    pool: NamedDependency[ModelPool], access: NamedDependency[Access], model_facts: NamedDependency[ModelFactsReader], key: Key
) -> dict[str, Any]:
    """The models the key may use (all of them for an unscoped key or a gateway without keys)."""
    entries = access.visible(key, pool.entries.values())
    facts = await model_facts.facts(e.config.path for e in entries)
    return {"object": "list", "data": [pool.describe(e, facts[e.config.path]) for e in entries]}


async def get_model(
    pool: NamedDependency[ModelPool], access: NamedDependency[Access], model_facts: NamedDependency[ModelFactsReader], key: Key, model_id: FromPath[str]
) -> dict[str, Any]:
    entry = access.resolve(pool, key, model_id.lstrip("/"))
    facts = await model_facts.facts([entry.config.path])
    return pool.describe(entry, facts[entry.config.path])


def handlers(auth: Auth) -> list[HTTPRouteHandler]:
    api = [auth.guard("api")]
    return [
        post("/v1/chat/completions", status_code=200, guards=api, operation_id="createChatCompletion")(chat_completions),
        post("/v1/completions", status_code=200, guards=api, operation_id="createCompletion")(completions),
        post("/v1/responses", status_code=200, guards=api, operation_id="createResponse")(create_response),
        post("/v1/embeddings", status_code=200, guards=api, operation_id="createEmbedding")(embeddings),
        get("/v1/models", guards=api, operation_id="listModels")(list_models),
        get("/v1/models/{model_id:path}", guards=api, operation_id="retrieveModel")(get_model),
    ]
