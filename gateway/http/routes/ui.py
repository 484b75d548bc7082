"""/ui: the web page that shows where every model sits in memory, and the state it polls.

The page (gateway/http/ui/: one HTML file, one script, one style sheet, no build step) holds no
secret and is open to anyone who can reach the gateway; what it shows comes from ``/ui/state``,
which needs an API key wherever /v1/models does. A strict Content-Security-Policy allows only
the gateway's own script and style sheet (no inline script or style, no other origin), and the
script writes every name and message with ``textContent``.

``/ui/state`` is one compact document per poll (about once a second): the memory map, one row
per model and what this caller may do. It is built from the pool on every call, so it follows
a reload of models.toml at once; NVML and /proc/meminfo are read off the event loop.
"""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import Any

from litestar import Request, Response, get
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath

from gateway.config.source import ConfigFile
from gateway.errors import AuthenticationError, PermissionDeniedError
from gateway.access.gate import Access
from gateway.http.auth import Auth, Kind, request_key
from gateway.http.memory_map import held_model, live_map
from gateway.observability.activity import RecentActivity
from gateway.observability.metrics import GatewayMetrics
from gateway.placement.host_memory import read_host_memory
from gateway.runtime.pool import ModelPool
from gateway.runtime.view import ModelView

UI_PATH = "/ui"

# The only files /ui/static serves (anything else is a 404), with their types.
STATIC_FILES: dict[str, str] = {
    "app.js": "text/javascript",
    "app.css": "text/css",
    "icon.svg": "image/svg+xml",
}

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _ui_file(name: str) -> bytes:
    return resources.files("gateway.http").joinpath("ui", name).read_bytes()


def ui_page() -> Response:
    return Response(content=_ui_file("index.html"), media_type="text/html", headers=dict(SECURITY_HEADERS))


def ui_static(name: FromPath[str]) -> Response:
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise NotFoundException(f"no such file: /ui/static/{name}")
    return Response(content=_ui_file(name), media_type=media_type, headers=dict(SECURITY_HEADERS))


def allows(auth: Auth, connection: ASGIConnection, kind: Kind) -> bool:
    """Whether the guard of ``kind`` would let this caller through (the guard decides, not us)."""
    try:
        auth.check(connection, kind)
    except (AuthenticationError, PermissionDeniedError):
        return False
    return True


def model_row(view: ModelView, recent: RecentActivity, estimate_bytes: int | None = None) -> dict[str, Any]:
    """One row of the page's models table; ``estimate_bytes``: the planner's estimate for a model
    never placed (ModelPool.estimate_bytes)."""
    activity = recent.of(view.name)
    last = activity.last_error
    if view.planned_total_bytes is not None:
        needs, needs_from = view.planned_total_bytes, "placement"
    elif view.last_planned_bytes is not None:
        needs, needs_from = view.last_planned_bytes, "last placement"
    elif estimate_bytes is not None:
        needs, needs_from = estimate_bytes, "estimate"
    else:
        needs, needs_from = None, None
    return {
        "name": view.name,
        "aliases": list(view.config.aliases),
        "state": view.state.value,
        "progress": view.progress,
        "load": view.config.load,
        "gpus": view.gpus,
        # Why it went there (the planner's notes: packing, partial offload), for the GPUs cell.
        "placement": list(view.launch.notes) if view.launch is not None else [],
        "placed": view.launch is not None,
        # The planner's bytes (GPUs and host together) of its placement (None: not placed, as a
        # stopped on-demand model), and whether its worker holds them now.
        "planned_bytes": view.planned_total_bytes,
        "holds_memory": view.holds_memory,
        # What loading it needs: its placement's planned bytes, else its last placement's (an
        # unloaded on-demand model), else the planner's estimate from its header (never placed).
        "needs_bytes": needs,
        "needs_from": needs_from,
        "n_ctx": view.config.n_ctx,
        "running": view.running,
        "max_concurrency": view.max_concurrency,
        "waiting": view.waiting,
        "queue_size": view.queue_size,
        "idle_ttl_s": view.idle_ttl_s,
        "unload_in_s": view.unload_in_s,
        "requests_1m": activity.requests,
        # Requests answered 5xx (observability.activity.failed): a model that is "ready" while
        # its requests fail shows it here and in the last request error.
        "errors_1m": activity.errors,
        "error_rate_1m": round(activity.error_rate, 3),
        "tokens_per_s_1m": round(activity.tokens_per_s, 2),
        # A failed worker's reason, else why the last on-demand load failed (the planner's
        # explanation when it could not be placed).
        "error": view.reason or view.last_error,
        # The last request of this model that failed, whatever its age (age_s says how old).
        "last_request_error": (
            None
            if last is None
            else {"status": last.status, "message": last.message, "age_s": round(activity.last_error_age_s or 0.0, 1)}
        ),
    }


def handlers(auth: Auth) -> list[HTTPRouteHandler]:
    async def ui_state(
        request: Request,
        pool: NamedDependency[ModelPool],
        metrics: NamedDependency[GatewayMetrics],
        access: NamedDependency[Access],
        config_file: NamedDependency[ConfigFile],
    ) -> Response:
        config = pool.config
        devices, host = await asyncio.gather(asyncio.to_thread(pool.devices), asyncio.to_thread(read_host_memory))
        # A scoped key sees its own models only, in the table and on the map (as in /v1/models);
        # the others' memory still shows as used on their GPUs.
        entries = list(access.visible(request_key(request), pool.entries.values()))
        views = [pool.view(e) for e in entries]
        held = [
            held_model(v.name, v.state.value, v.launch, v.allocated, v.gpu_used_bytes)
            for v in views
            if v.launch is not None and v.holds_memory
        ]
        unplaced = [e for e, v in zip(entries, views) if e.on_demand and v.launch is None and v.last_planned_bytes is None]
        estimates = dict(zip([e.name for e in unplaced], await asyncio.to_thread(lambda: [pool.estimate_bytes(e) for e in unplaced])))
        status, _, _ = pool.health()
        admin = allows(auth, request, "admin")
        body = {
            "status": status,
            "admin": admin,
            # Sent back with each admin action (gateway.http.auth); a page of another site cannot
            # read this document (same-origin policy; a re-bound name fails the Host check).
            "admin_token": auth.ui_token if admin else None,
            "reloadable": config_file.path is not None,
            "inventory": "declared" if config.planner.gpus is not None else "nvml",
            "window_s": metrics.recent.window_s,
            "map": live_map(config, devices, host, held),
            "models": [model_row(v, metrics.recent, estimates.get(v.name)) for v in views],
        }
        return Response(content=body, headers={"Cache-Control": "no-store"})

    return [
        get(UI_PATH, include_in_schema=False, sync_to_thread=False)(ui_page),
        get(f"{UI_PATH}/static/{{name:str}}", include_in_schema=False, sync_to_thread=False)(ui_static),
        get(f"{UI_PATH}/state", guards=[auth.guard("api")], include_in_schema=False)(ui_state),
    ]
