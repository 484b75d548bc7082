"""The OpenAI endpoints: chat and text completions, embeddings, the model list."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar import Request, Response, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.response import Stream

from gateway.errors import InvalidRequestError
from gateway.http import proxy
from gateway.http.auth import Auth
from gateway.http.openai_params import chat_params, completion_params, embedding_params, include_usage, is_stream
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.telemetry import REQUEST_ID_HEADER, new_record
from gateway.runtime.pool import ModelPool


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise InvalidRequestError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    return body


async def _generate(request: Request, pool: NamedDependency[ModelPool], metrics: NamedDependency[GatewayMetrics], endpoint: str, op: str) -> Response | Stream:
    record = request.state.record = new_record(endpoint, request.headers.get(REQUEST_ID_HEADER))
    body = await _json_body(request)
    stream = is_stream(body)
    params = chat_params(body) if op == "chat" else completion_params(body)
    entry = pool.resolve(body.get("model"))
    record.model = entry.name
    lease = await pool.acquire(entry)
    if stream:
        return await proxy.streamed(lease, record, metrics, op, params, include_usage(body))
    return await proxy.whole(lease, record, metrics, op, params)


async def chat_completions(request: Request, pool: NamedDependency[ModelPool], metrics: NamedDependency[GatewayMetrics]) -> Response | Stream:
    return await _generate(request, pool, metrics, "/v1/chat/completions", "chat")


async def completions(request: Request, pool: NamedDependency[ModelPool], metrics: NamedDependency[GatewayMetrics]) -> Response | Stream:
    return await _generate(request, pool, metrics, "/v1/completions", "completion")


async def embeddings(request: Request, pool: NamedDependency[ModelPool], metrics: NamedDependency[GatewayMetrics]) -> Response:
    record = request.state.record = new_record("/v1/embeddings", request.headers.get(REQUEST_ID_HEADER))
    body = await _json_body(request)
    entry = pool.resolve(body.get("model"))
    record.model = entry.name
    if not entry.config.embedding:
        raise InvalidRequestError(f"model {entry.name!r} does not serve embeddings (set embedding = true)", param="model")
    params = embedding_params(body)
    return await proxy.whole(await pool.acquire(entry), record, metrics, "embedding", params)


async def list_models(pool: NamedDependency[ModelPool]) -> dict[str, Any]:
    return {"object": "list", "data": [pool.describe(e) for e in pool.entries.values()]}


async def get_model(pool: NamedDependency[ModelPool], model_id: FromPath[str]) -> dict[str, Any]:
    return pool.describe(pool.resolve(model_id.lstrip("/")))


def handlers(auth: Auth) -> list[HTTPRouteHandler]:
    api = [auth.guard("api")]
    return [
        post("/v1/chat/completions", status_code=200, guards=api, operation_id="createChatCompletion")(chat_completions),
        post("/v1/completions", status_code=200, guards=api, operation_id="createCompletion")(completions),
        post("/v1/embeddings", status_code=200, guards=api, operation_id="createEmbedding")(embeddings),
        get("/v1/models", guards=api, operation_id="listModels")(list_models),
        get("/v1/models/{model_id:path}", guards=api, operation_id="retrieveModel")(get_model),
    ]
