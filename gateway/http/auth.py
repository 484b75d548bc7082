"""Who may call what: API keys (``Authorization: Bearer``), compared in constant time.

``Auth`` reads the settings in force at each request (a reload that changes ``api_keys`` applies
to the next request) and makes the guards of the four kinds of endpoint:

- ``api``: every OpenAI endpoint; a key when ``api_keys`` is set.
- ``admin``: /admin/*; a key when ``api_keys`` is set, else loopback clients only. The server
  process forwarding a SIGHUP proves itself with the reload token instead.
- ``health``, ``metrics``: a key only with ``health_requires_key`` / ``metrics_requires_key``.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Literal

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from gateway.config.schema import GatewaySettings
from gateway.errors import AuthenticationError

RELOAD_TOKEN_HEADER = "X-Gateway-Reload-Token"
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})

Kind = Literal["api", "admin", "health", "metrics"]
Guard = Callable[[ASGIConnection, BaseRouteHandler], None]


def bearer_token(connection: ASGIConnection) -> str | None:
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def key_matches(token: str, keys: list[str]) -> bool:
    # Compare against every key so the time taken does not tell which one nearly matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token.encode(), key.encode())
    return matched


class Auth:
    def __init__(self, settings: Callable[[], GatewaySettings], reload_token: str | None = None) -> None:
        self._settings = settings
        self._reload_token = reload_token

    def guard(self, kind: Kind) -> Guard:
        def check(connection: ASGIConnection, _: BaseRouteHandler) -> None:
            self.check(connection, kind)

        return check

    def check(self, connection: ASGIConnection, kind: Kind) -> None:
        if kind == "admin" and self._reload_token:
            given = connection.headers.get(RELOAD_TOKEN_HEADER, "")
            if given and hmac.compare_digest(given.encode(), self._reload_token.encode()):
                return  # the server process itself, forwarding a SIGHUP
        settings = self._settings()
        if not settings.api_keys:
            if kind == "admin" and (connection.client is None or connection.client.host not in LOOPBACK):
                raise AuthenticationError("without api_keys, admin endpoints answer loopback clients only")
            return
        if kind == "health" and not settings.health_requires_key:
            return
        if kind == "metrics" and not settings.metrics_requires_key:
            return
        token = bearer_token(connection)
        if token is None or not key_matches(token, settings.api_keys):
            raise AuthenticationError("a valid API key is required (Authorization: Bearer <key>)")
