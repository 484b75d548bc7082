"""The exception tree mapped once to OpenAI-shaped error responses.

Every error is classified by its class, never by its text. Each response also finishes the
request's record (metrics and the request log line) and carries its request id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException

from gateway.engine.protocol import Error, ErrorKind
from gateway.errors import (
    AuthenticationError,
    ConflictError,
    CrossSiteRequestError,
    EngineError,
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelUnavailableError,
    PermissionDeniedError,
    QueueFullError,
    QueueTimeoutError,
    RateLimitError,
    RoutingLoopError,
    UnsupportedMediaTypeError,
    UpstreamError,
)
from gateway.http.auth import request_key
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.telemetry import REQUEST_ID_HEADER, UNMATCHED_ENDPOINT, RequestRecord, new_record
from gateway.runtime.requests import WorkerExited

log = logging.getLogger("gateway")

RETRY_AFTER_S = "1"
# The error code of a request that went from a router to a router (RoutingLoopError, 508).
ROUTING_LOOP = "routing_loop"


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_message(response: Response) -> str | None:
    """The message of an error body built by ``error_body`` (None for any other content)."""
    content = response.content
    error = content.get("error") if isinstance(content, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else None


def endpoint_of(request: Request) -> str:
    """The route a request matched, as its template (``/v1/models/{model_id}``), never the raw
    path: a metric label per path would grow a series per random URL. ``UNMATCHED_ENDPOINT``
    for a path no route matched (a 404 or 405 from the router)."""
    template = request.scope.get("path_template") if "route_handler" in request.scope else None
    return template if isinstance(template, str) else UNMATCHED_ENDPOINT


def request_record(request: Request) -> RequestRecord:
    """The request's record; requests that failed before a handler ran get one here."""
    record = request.state.get("record")
    if record is None:
        key = request_key(request)  # set by the guard, also when it refused (an admin call)
        record = request.state.record = new_record(
            endpoint_of(request), request.headers.get(REQUEST_ID_HEADER), key.name if key is not None else None
        )
    return record


def worker_error(reply: Error | WorkerExited, name: str) -> GatewayError:
    """A request's failed end, from the worker of model ``name``, as the exception it stands for."""
    if isinstance(reply, WorkerExited):
        return ModelUnavailableError(f"model {name!r}: {reply.message}")
    match reply.kind:  # exhaustive (mypy): a new kind needs its exception here
        case ErrorKind.INVALID_REQUEST:
            return InvalidRequestError(reply.message, param=reply.param)
        case ErrorKind.ENGINE:
            return EngineError(f"model {name!r}: {reply.message}")


def classify(exc: GatewayError) -> tuple[int, dict[str, Any], dict[str, str], str | None]:
    """(status, body, headers, rejection reason for the metrics)."""
    if isinstance(exc, ModelNotFoundError):
        return 404, error_body(str(exc), "invalid_request_error", "model", "model_not_found"), {}, None
    if isinstance(exc, InvalidRequestError):
        return 400, error_body(str(exc), "invalid_request_error", exc.param), {}, None
    if isinstance(exc, AuthenticationError):
        return 401, error_body(str(exc), "invalid_request_error", None, "invalid_api_key"), {"WWW-Authenticate": "Bearer"}, None
    if isinstance(exc, CrossSiteRequestError):
        return 403, error_body(str(exc), "permission_denied", None, "cross_site_request"), {}, None
    if isinstance(exc, UnsupportedMediaTypeError):
        return 415, error_body(str(exc), "invalid_request_error", None, "unsupported_media_type"), {}, None
    if isinstance(exc, PermissionDeniedError):
        return 403, error_body(str(exc), "permission_denied", None, "permission_denied"), {}, "scope"
    if isinstance(exc, ConflictError):
        return 409, error_body(str(exc), "conflict", None, "conflict"), {}, None
    if isinstance(exc, RateLimitError):
        headers = {"Retry-After": str(max(1, round(exc.retry_after_s))), **exc.headers}
        return 429, error_body(str(exc), "rate_limit_error", None, exc.code), headers, exc.code
    if isinstance(exc, QueueFullError):
        return 429, error_body(str(exc), "rate_limit_error", None, "queue_full"), {"Retry-After": RETRY_AFTER_S}, "queue_full"
    if isinstance(exc, UpstreamError):
        return 502, error_body(str(exc), "server_error", None, "node_failed"), {}, None
    if isinstance(exc, RoutingLoopError):
        return 508, error_body(str(exc), "server_error", None, ROUTING_LOOP), {}, None
    if isinstance(exc, (QueueTimeoutError, ModelUnavailableError)):
        reason = "queue_timeout" if isinstance(exc, QueueTimeoutError) else "model_unavailable"
        return 503, error_body(str(exc), "service_unavailable", None, reason), {"Retry-After": RETRY_AFTER_S}, reason
    return 500, error_body(str(exc), "server_error", None, type(exc).__name__), {}, None


Handlers = dict[type[Exception], Callable[[Request, Any], Response]]
Finish = Callable[[Request, Response, "str | None"], Response]


def mapped_handlers(finish: Finish) -> Handlers:
    """Litestar's exception handlers over the one mapping (``classify``); ``finish`` records each
    answer (the metrics and log line of its app) and returns the response."""

    def gateway_error(request: Request, exc: GatewayError) -> Response:
        status, body, headers, reason = classify(exc)
        return finish(request, Response(content=body, status_code=status, headers=headers), reason)

    def http_error(request: Request, exc: HTTPException) -> Response:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return finish(request, Response(content=error_body(detail, type_), status_code=exc.status_code, headers=exc.headers or {}), None)

    def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return finish(request, Response(content=error_body("internal server error", "server_error"), status_code=500), None)

    return {GatewayError: gateway_error, HTTPException: http_error, Exception: internal_error}


def exception_handlers(metrics: GatewayMetrics, on_rejected: Callable[[str | None, str], None] | None = None) -> Handlers:
    """The gateway's handlers, recording into its metrics; ``on_rejected`` (key name, reason)
    also hears of every refusal (a key's last minute: gateway.access)."""

    def finish(request: Request, response: Response, reason: str | None) -> Response:
        record = request_record(request)
        if reason is not None:
            metrics.rejected(record.model, reason, key=record.key)
            if on_rejected is not None:
                on_rejected(record.key, reason)
        record.finish(metrics, response.status_code, error=error_message(response))
        response.headers[REQUEST_ID_HEADER] = record.request_id
        return response

    return mapped_handlers(finish)
