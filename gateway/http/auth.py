"""Who may call what: API keys (``Authorization: Bearer``), found by their sha256 and compared
in constant time (gateway.access.keyring).

``Auth`` reads the settings and keys in force at each request (a reload that changes
``api_keys`` or ``[[keys]]`` applies to the next request) and makes the guards of the four kinds
of endpoint. It is the one place that decides; every endpoint of a kind gets its rule:

- ``api``: every OpenAI endpoint; a key when any key is configured (which models the key may
  use is the handler's question: gateway.access.gate).
- ``admin``: /admin/* (and the web page's actions); a key with ``admin = true`` (every plain
  ``api_keys`` entry is one) when any key is configured, else loopback clients only. The server
  process forwarding a SIGHUP proves itself with the reload token instead. A browser's admin
  action (an unsafe method with an ``Origin``) also needs the page's token (``ui_token``, which
  /ui/state gives to admins), on top of gateway.http.network's checks of Host and Origin.
- ``health``, ``metrics``: a key only with ``health_requires_key`` / ``metrics_requires_key``.

The key found is kept in the connection's state for the handler (``request_key``).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import Literal

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from gateway.access.keyring import ApiKey, KeyRing
from gateway.config.schema import GatewaySettings
from gateway.errors import AuthenticationError, CrossSiteRequestError, PermissionDeniedError
from gateway.http.network import SAFE_METHODS, UI_TOKEN_HEADER, is_loopback

RELOAD_TOKEN_HEADER = "X-Gateway-Reload-Token"
KEY_STATE = "api_key"

Kind = Literal["api", "admin", "health", "metrics"]
Guard = Callable[[ASGIConnection, BaseRouteHandler], Awaitable[None]]


def bearer_token(connection: ASGIConnection) -> str | None:
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def request_key(connection: ASGIConnection) -> ApiKey | None:
    """The key the guard let this request in with; None on a gateway without keys."""
    return connection.state.get(KEY_STATE)


def provide_key(request: Request) -> ApiKey | None:
    """``request_key`` as a Litestar dependency (``key``)."""
    return request_key(request)


class Auth:
    def __init__(
        self,
        settings: Callable[[], GatewaySettings],
        reload_token: str | None = None,
        *,
        keyring: Callable[[], KeyRing] | None = None,
    ) -> None:
        """``keyring``: the keys in force (gateway.access.gate.Access.ring); without it, the
        plain ``api_keys`` of ``settings`` only."""
        self._settings = settings
        self._reload_token = reload_token
        self._keyring = keyring or self._plain_keys
        self._plain: tuple[GatewaySettings, KeyRing] | None = None
        # The web page's admin actions send it back (UI_TOKEN_HEADER); new with each app.
        self.ui_token = secrets.token_urlsafe(32)

    def keys_required(self) -> bool:
        """Whether the keys in force ask callers for a key."""
        return self._keyring().required

    def _plain_keys(self) -> KeyRing:
        settings = self._settings()
        if self._plain is None or self._plain[0] is not settings:
            self._plain = (settings, KeyRing.build(settings.api_keys, []))
        return self._plain[1]

    def guard(self, kind: Kind) -> Guard:
        # Async on purpose: Litestar runs a sync guard in its thread pool, a hop to a thread and
        # back on every request (~0.2 ms here) for a check that takes microseconds.
        async def check(connection: ASGIConnection, _: BaseRouteHandler) -> None:
            self.check(connection, kind)

        return check

    def check(self, connection: ASGIConnection, kind: Kind) -> None:
        if kind == "admin" and self._reload_token:
            given = connection.headers.get(RELOAD_TOKEN_HEADER, "")
            if given and hmac.compare_digest(given.encode(), self._reload_token.encode()):
                return  # the server process itself, forwarding a SIGHUP
        settings = self._settings()
        keys = self._keyring()
        if not keys.required:
            if kind == "admin" and (connection.client is None or not is_loopback(connection.client.host)):
                raise AuthenticationError("without api_keys, admin endpoints answer loopback clients only")
            self._check_ui_token(connection, kind)
            return
        if kind == "health" and not settings.health_requires_key:
            return
        if kind == "metrics" and not settings.metrics_requires_key:
            return
        token = bearer_token(connection)
        key = keys.find(token) if token is not None else None
        if key is None:
            raise AuthenticationError("a valid API key is required (Authorization: Bearer <key>)")
        connection.state[KEY_STATE] = key
        if kind == "admin" and not key.admin:
            raise PermissionDeniedError(f"key {key.name!r} may not call admin endpoints (it has admin = false)")
        self._check_ui_token(connection, kind)

    def _check_ui_token(self, connection: ASGIConnection, kind: Kind) -> None:
        """A browser's admin action (an unsafe method with an Origin) carries the page's token.
        Checked after the key, so that a caller without one hears that first (401)."""
        if kind == "admin" and connection.scope.get("method") not in SAFE_METHODS and "origin" in connection.headers:
            given = connection.headers.get(UI_TOKEN_HEADER, "")
            if not hmac.compare_digest(given.encode(), self.ui_token.encode()):
                raise CrossSiteRequestError(
                    f"an admin action from a browser needs the page's token ({UI_TOKEN_HEADER}, from /ui/state)"
                )

    def allows(self, connection: ASGIConnection, kind: Kind) -> bool:
        """Whether ``check`` lets this connection through (for a page that shows or hides actions)."""
        try:
            self.check(connection, kind)
        except (AuthenticationError, PermissionDeniedError, CrossSiteRequestError):
            return False
        return True
