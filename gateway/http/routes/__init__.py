"""The HTTP routes, built per app (``handlers``) so each app gets its own guards."""

from __future__ import annotations

from litestar.handlers import HTTPRouteHandler

from gateway.http.auth import Auth
from gateway.http.routes import admin, keys, openai, ops, ui


def handlers(auth: Auth) -> list[HTTPRouteHandler]:
    return [*openai.handlers(auth), *ops.handlers(auth), *admin.handlers(auth), *ui.handlers(auth), *keys.handlers(auth)]
