"""The OpenAI-compatible HTTP app (Litestar).

``create_app(config, launches)`` takes everything explicitly; the lifespan owns the workers:
it plans (when no launches are given), starts every model's worker in parallel, waits for them
to load, and stops them on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException
from litestar.handlers.base import BaseRouteHandler
from litestar.response import Stream

from gateway.config.schema import Config
from gateway.errors import (
    AuthenticationError,
    EngineError,
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelUnavailableError,
    PlanError,
    QueueFullError,
    QueueTimeoutError,
)
from gateway.placement.launch import ModelLaunch, launches_from_plan
from gateway.observability.metrics import GatewayMetrics
from gateway.runtime.ondemand import OnDemand
from gateway.http.openai_params import (
    chat_params,
    completion_params,
    embedding_params,
    include_usage,
    is_stream,
)
from gateway.http.openapi import OPENAPI_PATH, document, openapi_config
from gateway.runtime.registry import ModelEntry, Registry
from gateway.observability.telemetry import (
    REQUEST_ID_HEADER,
    RequestRecord,
    model_snapshots,
    new_record,
)

log = logging.getLogger("gateway")

RETRY_AFTER_S = "1"
RELOAD_TOKEN_HEADER = "X-Gateway-Reload-Token"
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
WORKER_STOP_TIMEOUT_S = 10.0
ORPHAN_POLL_S = 0.5


# ---------------------------------------------------------------- errors, mapped once


def _error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _record(request: Request) -> RequestRecord:
    """The request's record; requests that failed before a handler ran get one here."""
    record = request.state.get("record")
    if record is None:
        record = request.state.record = new_record(request.url.path, request.headers.get(REQUEST_ID_HEADER))
    return record


def _finish_error(request: Request, response: Response, reason: str | None = None) -> Response:
    record = _record(request)
    metrics: GatewayMetrics = request.app.state.metrics
    if reason is not None:
        metrics.rejected(record.model, reason)
    record.finish(metrics, response.status_code)
    response.headers[REQUEST_ID_HEADER] = record.request_id
    return response


def _gateway_error_response(request: Request, exc: GatewayError) -> Response:
    headers: dict[str, str] = {}
    reason: str | None = None
    if isinstance(exc, ModelNotFoundError):
        status, body = 404, _error_body(str(exc), "invalid_request_error", "model", "model_not_found")
    elif isinstance(exc, InvalidRequestError):
        status, body = 400, _error_body(str(exc), "invalid_request_error", exc.param)
    elif isinstance(exc, AuthenticationError):
        status, body = 401, _error_body(str(exc), "invalid_request_error", None, "invalid_api_key")
        headers["WWW-Authenticate"] = "Bearer"
    elif isinstance(exc, QueueFullError):
        status, body = 429, _error_body(str(exc), "rate_limit_error", None, "queue_full")
        headers["Retry-After"] = RETRY_AFTER_S
        reason = "queue_full"
    elif isinstance(exc, (QueueTimeoutError, ModelUnavailableError)):
        reason = "queue_timeout" if isinstance(exc, QueueTimeoutError) else "model_unavailable"
        status, body = 503, _error_body(str(exc), "service_unavailable", None, reason)
        headers["Retry-After"] = RETRY_AFTER_S
    else:
        status, body = 500, _error_body(str(exc), "server_error", None, type(exc).__name__)
    return _finish_error(request, Response(content=body, status_code=status, headers=headers), reason)


def _http_error_response(request: Request, exc: HTTPException) -> Response:
    type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    response = Response(content=_error_body(detail, type_), status_code=exc.status_code, headers=exc.headers or {})
    return _finish_error(request, response)


def _internal_error_response(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _finish_error(request, Response(content=_error_body("internal server error", "server_error"), status_code=500))


# ---------------------------------------------------------------- auth


def _key_ok(connection: ASGIConnection, keys: list[str]) -> bool:
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    # Compare against every key so the time taken does not tell which one nearly matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token.strip().encode(), key.encode())
    return matched


def _guard(kind: str):
    def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        if kind == "admin":
            token = connection.app.state.get("reload_token")
            given = connection.headers.get(RELOAD_TOKEN_HEADER, "")
            if token and given and hmac.compare_digest(given.encode(), token.encode()):
                return  # the server process itself, forwarding a SIGHUP
        settings = connection.app.state.config.gateway
        if not settings.api_keys:
            if kind == "admin" and (connection.client is None or connection.client.host not in LOOPBACK):
                raise AuthenticationError("without api_keys, admin endpoints answer loopback clients only")
            return
        if kind == "health" and not settings.health_requires_key:
            return
        if kind == "metrics" and not settings.metrics_requires_key:
            return
        if not _key_ok(connection, settings.api_keys):
            raise AuthenticationError("a valid API key is required (Authorization: Bearer <key>)")

    return guard


# ---------------------------------------------------------------- helpers


def _registry(request: Request) -> Registry:
    return request.app.state.registry


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise InvalidRequestError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    return body


def _raise_worker_error(msg: dict[str, Any], name: str) -> None:
    kind = msg.get("kind")
    text = str(msg.get("message", "error"))
    if kind == "invalid_request":
        raise InvalidRequestError(text)
    if kind == "worker_exited":
        raise ModelUnavailableError(f"model {name!r}: {text}")
    raise EngineError(f"model {name!r}: {text}")


def _sse(data: Any) -> bytes:
    return b"data: " + msgspec.json.encode(data) + b"\n\n"


async def _run(request: Request, op: str, params: dict[str, Any], stream: bool, usage: bool) -> Response | Stream:
    registry = _registry(request)
    record = _record(request)
    metrics: GatewayMetrics = request.app.state.metrics
    entry: ModelEntry = registry.resolve(request.state.body.get("model"))
    record.model = entry.name
    if not entry.on_demand:
        entry.ready_handle()  # a failed eager model answers 503 at once, without queueing
    timeout = registry.config.gateway.request_timeout_s
    stack = contextlib.AsyncExitStack()
    # The slot comes first: a model with a request waiting or running is never evicted.
    await stack.enter_async_context(entry.admission.slot(timeout))
    stack.callback(entry.touch)
    try:
        handle = await request.app.state.ondemand.acquire(entry)
    except BaseException:
        await stack.aclose()
        raise
    if not stream:
        async with stack:
            async for msg in handle.request(op, params, stream=False):
                if msg["type"] == "error":
                    _raise_worker_error(msg, entry.name)
                if msg["type"] == "result":
                    data = msg["data"]
                    if isinstance(data, dict):
                        data["model"] = entry.name
                    record.finish(metrics, 200, usage=data.get("usage") if isinstance(data, dict) else None)
                    return Response(content=data, status_code=200, headers={REQUEST_ID_HEADER: record.request_id})
        raise EngineError(f"model {entry.name!r}: no result from the worker")

    messages = handle.request(op, params, stream=True)
    # Pull the first message before answering, so an early error still gets its real status.
    first = await anext(messages)
    if first["type"] == "error":
        await messages.aclose()
        await stack.aclose()
        _raise_worker_error(first, entry.name)

    ttft = time.monotonic() - record.started

    async def events() -> AsyncIterator[bytes]:
        last: dict[str, Any] | None = None
        # A client that goes away is recorded as 499 (nginx's "client closed request").
        status, end_usage = 499, None
        try:
            msg: dict[str, Any] | None = first
            while msg is not None:
                if msg["type"] == "chunk":
                    data = msg["data"]
                    data["model"] = entry.name
                    last = data
                    yield _sse(data)
                elif msg["type"] == "end":
                    end_usage = msg.get("usage")
                    if usage and end_usage is not None:
                        yield _sse(_usage_chunk(last, entry.name, end_usage))
                    status = 200
                    break
                elif msg["type"] == "error":
                    # Headers are gone: report in-band, as OpenAI does, then end the stream.
                    yield _sse(_error_body(str(msg.get("message")), "server_error"))
                    status = 500
                    break
                msg = await anext(messages, None)
            yield b"data: [DONE]\n\n"
        finally:
            record.finish(metrics, status, ttft_s=ttft, usage=end_usage)
            await messages.aclose()
            await stack.aclose()

    return Stream(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", REQUEST_ID_HEADER: record.request_id},
    )


def _usage_chunk(last: dict[str, Any] | None, model: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": (last or {}).get("id", f"chatcmpl-{uuid.uuid4().hex}"),
        "object": (last or {}).get("object", "chat.completion.chunk"),
        "created": (last or {}).get("created", int(time.time())),
        "model": model,
        "choices": [],
        "usage": usage,
    }


# ---------------------------------------------------------------- routes


@post("/v1/chat/completions", status_code=200, guards=[_guard("api")], operation_id="createChatCompletion")
async def chat_completions(request: Request) -> Response | Stream:
    request.state.record = new_record("/v1/chat/completions", request.headers.get(REQUEST_ID_HEADER))
    body = request.state.body = await _json_body(request)
    stream = is_stream(body)
    params = chat_params(body)
    return await _run(request, "chat", params, stream, stream and include_usage(body))


@post("/v1/completions", status_code=200, guards=[_guard("api")], operation_id="createCompletion")
async def completions(request: Request) -> Response | Stream:
    request.state.record = new_record("/v1/completions", request.headers.get(REQUEST_ID_HEADER))
    body = request.state.body = await _json_body(request)
    stream = is_stream(body)
    params = completion_params(body)
    return await _run(request, "completion", params, stream, stream and include_usage(body))


@post("/v1/embeddings", status_code=200, guards=[_guard("api")], operation_id="createEmbedding")
async def embeddings(request: Request) -> Response:
    request.state.record = new_record("/v1/embeddings", request.headers.get(REQUEST_ID_HEADER))
    body = request.state.body = await _json_body(request)
    entry = _registry(request).resolve(body.get("model"))
    request.state.record.model = entry.name
    if not entry.config.embedding:
        raise InvalidRequestError(f"model {entry.name!r} does not serve embeddings (set embedding = true)", param="model")
    return await _run(request, "embedding", embedding_params(body), False, False)


@get("/v1/models", guards=[_guard("api")], operation_id="listModels")
async def list_models(request: Request) -> dict[str, Any]:
    registry = _registry(request)
    return {"object": "list", "data": [registry.describe(e) for e in registry.entries.values()]}


@get("/v1/models/{model_id:path}", guards=[_guard("api")], operation_id="retrieveModel")
async def get_model(request: Request, model_id: str) -> dict[str, Any]:
    registry = _registry(request)
    return registry.describe(registry.resolve(model_id.lstrip("/")))


@get("/metrics", guards=[_guard("metrics")], operation_id="metrics")
async def metrics_endpoint(request: Request) -> Response:
    metrics: GatewayMetrics = request.app.state.metrics
    # A scrape reads NVML (a few ms per GPU): keep it off the event loop.
    body, content_type = await asyncio.to_thread(metrics.render, request.headers.get("accept"))
    return Response(content=body, media_type=content_type)


@post("/admin/reload", status_code=200, guards=[_guard("admin")], operation_id="reload")
async def admin_reload(request: Request) -> Response:
    """Re-read models.toml and apply it (the work behind SIGHUP and `gateway reload`)."""
    from gateway.runtime.reload import reload_registry

    path = request.app.state.get("config_path")
    if path is None:
        raise InvalidRequestError("this gateway was started without a config file (--model): nothing to reload")
    lock: asyncio.Lock = request.app.state.reload_lock
    if lock.locked():
        return Response(content=_error_body("a reload is already running", "conflict"), status_code=409)
    async with lock:
        result, new_config = await reload_registry(_registry(request), Path(path))
    if new_config is not None:
        request.app.state.config = new_config
        log.info(
            "reloaded %s: unchanged %s, removed %s, changed %s, added %s",
            path, result.unchanged, result.removed, result.changed, result.added,
        )
    else:
        log.error("reload of %s refused, nothing changed:\n  %s", path, "\n  ".join(result.problems))
    return Response(content=result.as_dict(), status_code=200 if result.reloaded else 422)


@get("/health", guards=[_guard("health")], operation_id="health")
async def health(request: Request) -> Response:
    registry = _registry(request)
    states = {e.name: {"state": e.state, "reason": e.reason} for e in registry.entries.values()}
    ready = sum(1 for s in states.values() if s["state"] == "ready")
    if ready == len(states):
        status, code = "ok", 200
    elif ready:
        status, code = "degraded", 200
    else:
        status, code = "unavailable", 503
    return Response(content={"status": status, "models": states}, status_code=code)


@get(OPENAPI_PATH, include_in_schema=False, sync_to_thread=False)
def openapi_json(request: Request) -> Response:
    """The OpenAPI document (gateway/openapi.py): open to all, like OpenAI's published spec."""
    return Response(content=document(request.app), media_type="application/json")


# ---------------------------------------------------------------- the app


async def _exit_when_orphaned(registry: Registry) -> None:
    """If the process that started us dies (kill -9 of `gateway serve`), take the workers down.

    granian runs this app in a child process; nothing else would notice that the server process
    is gone, and the model workers (who die with *their* parent, this process) would live on.
    """
    parent = os.getppid()
    while True:
        await asyncio.sleep(ORPHAN_POLL_S)
        if os.getppid() != parent:
            log.error("the gateway's server process is gone: stopping every model worker")
            registry.kill_all_now()
            os._exit(70)


def _gpus(config: Config) -> list:
    from gateway.placement.planning import inventory

    return inventory(config)


def _plan_now(config: Config) -> tuple[dict[str, ModelLaunch], dict[str, str]]:
    """Plan in-process (when ``create_app`` is called without launches, as tests do)."""
    from gateway.placement.planning import inventory, plan_startup, read_models

    files = read_models(config)
    plan = plan_startup(config, files.infos, inventory(config))
    if not plan.fits:
        raise PlanError(list(plan.problems))
    return launches_from_plan(plan, {n: str(p) for n, p in files.paths.items()}), {}


def create_app(
    config: Config,
    launches: dict[str, ModelLaunch] | None = None,
    *,
    strict: bool = False,
    load_timeout_s: float | None = None,
    base_env: dict[str, str] | None = None,
    config_path: Path | None = None,
    reload_token: str | None = None,
) -> Litestar:
    """The gateway app for one config; ``launches`` (from ``gateway serve``'s plan) or plan now."""

    state: dict[str, Registry] = {}
    metrics = GatewayMetrics(lambda: model_snapshots(state.get("registry")), lambda: _gpus(config))
    for m in config.models:
        metrics.add_model(m.name)

    shown_quarter: dict[str, int] = {}  # the console shows each load in quarters

    def on_event(name: str, event: dict[str, Any]) -> None:
        model = event.get("model")
        if name == "progress":
            quarter = event["percent"] // 25
            if quarter > shown_quarter.get(model, -1):
                shown_quarter[model] = quarter
                log.info("model %s: loading %d%%", model, event["percent"])
        elif name == "starting":
            shown_quarter.pop(model, None)
            log.info("model %s: starting (pid %s)", model, event.get("pid"))
        elif name == "ready":
            log.info("model %s: ready (loaded in %.1f s)", model, event.get("load_seconds") or 0.0)
            if model is not None and event.get("load_seconds") is not None:
                metrics.model_loaded(model, float(event["load_seconds"]))
        elif name == "failed":
            log.error("model %s: failed: %s", model, event.get("reason"))
        elif name == "restarting" and model is not None:
            metrics.worker_restarted(model)
        elif name == "loading" and model is not None:
            metrics.model_load_started(model, event["reason"])
        elif name == "evicted" and model is not None:
            metrics.model_evicted(model, event["reason"])
        elif name == "load_wait" and model is not None:
            metrics.load_waited(model, event["seconds"])

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        planned = launches if launches is not None else _plan_now(config)[0]
        unplaced = {
            m.name: "not placed by the planner" for m in config.models if m.name not in planned and m.load == "eager"
        }
        env = dict(os.environ if base_env is None else base_env)
        registry = Registry(config, planned, env, unplaced=unplaced, on_event=on_event)
        app.state.registry = state["registry"] = registry
        app.state.ondemand = ondemand = OnDemand(registry, on_event=on_event)
        orphan_watch = asyncio.create_task(_exit_when_orphaned(registry))
        reaper = asyncio.create_task(ondemand.reap_idle())
        try:
            await registry.start_all(load_timeout_s)
            failed = registry.failed()
            if strict and failed:
                raise EngineError("--strict: " + "; ".join(f"{n}: {r}" for n, r in failed.items()))
            yield
            # SIGTERM: the server stops accepting; requests in flight get the grace period.
            await registry.drain(config.gateway.shutdown_grace_s)
        finally:
            orphan_watch.cancel()
            reaper.cancel()
            await registry.stop_all(WORKER_STOP_TIMEOUT_S)

    app = Litestar(
        route_handlers=[
            chat_completions,
            completions,
            embeddings,
            list_models,
            get_model,
            health,
            metrics_endpoint,
            admin_reload,
            openapi_json,
        ],
        exception_handlers={
            GatewayError: _gateway_error_response,
            HTTPException: _http_error_response,
            Exception: _internal_error_response,
        },
        lifespan=[lifespan],
        openapi_config=openapi_config(),
        request_max_body_size=config.gateway.max_body_bytes,
        debug=False,
    )
    app.state.config = config
    app.state.metrics = metrics
    app.state.config_path = str(config_path) if config_path is not None else None
    app.state.reload_token = reload_token
    app.state.reload_lock = asyncio.Lock()
    return app
