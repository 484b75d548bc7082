"""What operators and their tools read: /health, /metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio

from litestar.di import NamedDependency
from litestar import Request, Response, get
from litestar.handlers import HTTPRouteHandler

from gateway.access.gate import Access
from gateway.config.schema import Config
from gateway.http.auth import Auth, bearer_token, request_key
from gateway.http.openapi import OPENAPI_PATH, document
from gateway.observability.metrics import GatewayMetrics
from gateway.runtime.pool import ModelPool


async def health(request: Request, pool: NamedDependency[ModelPool], access: NamedDependency[Access]) -> Response:
    """200 while a request could be served (a model ready, or one that loads on demand).

    On a gateway with keys, a failure's reason (which may name files and paths) is shown only to
    a caller with a valid key (``health_requires_key``); a probe without one gets the states.
    """
    status, serving, models = pool.health()
    ring = access.ring()
    if ring.required and request_key(request) is None:
        # health_requires_key = false: the guard let everyone in without looking at the key.
        token = bearer_token(request)
        keyed = token is not None and ring.find(token) is not None
    else:
        keyed = True
    if not keyed:
        models = {name: {**model, "reason": None} for name, model in models.items()}
    return Response(content={"status": status, "models": models}, status_code=200 if serving else 503)


async def metrics_endpoint(request: Request, metrics: NamedDependency[GatewayMetrics]) -> Response:
    # A scrape reads NVML (a few ms per GPU): keep it off the event loop.
    body, content_type = await asyncio.to_thread(metrics.render, request.headers.get("accept"))
    return Response(content=body, media_type=content_type)


def openapi_json(request: Request, config: NamedDependency[Config]) -> Response:
    """The OpenAPI document (gateway/http/openapi.py): open to all, like OpenAI's published spec."""
    return Response(content=document(request.app, config), media_type="application/json")


def handlers(auth: Auth) -> list[HTTPRouteHandler]:
    return [
        get("/health", guards=[auth.guard("health")], operation_id="health")(health),
        get("/metrics", guards=[auth.guard("metrics")], operation_id="metrics")(metrics_endpoint),
        get(OPENAPI_PATH, include_in_schema=False, sync_to_thread=False)(openapi_json),
    ]
