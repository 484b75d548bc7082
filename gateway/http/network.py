"""Who can reach the gateway, and what a web page in someone's browser can make it do.

A gateway without API keys trusts its network position: it listens on loopback and serves
whoever connects. Two things would break that trust, and both are refused here:

- Listening beyond loopback without keys (``exposure_problem``): anyone on the network could use
  every model. ``[gateway] allow_unauthenticated_network = true`` says the operator means it.
- A browser used as a proxy. Any page a local user visits can send requests to 127.0.0.1, and
  a page whose name is re-bound to 127.0.0.1 (DNS rebinding) can also read the answers. The
  app-wide guard (``BrowserGuard``) therefore refuses, before any handler runs:

  - a ``Host`` that is not one of the names this gateway is served under (``allowed_hosts``),
    which is what a rebinding page sends (an IP address is always served: there is no name to
    re-bind);
  - an unsafe method (POST, ...) whose ``Origin`` is another site's, or that the browser marks
    as cross-site (``Sec-Fetch-Site``), unless it calls the OpenAI API (``/v1/*``) from an
    origin the operator lists in ``[gateway] allowed_origins`` (``origin_allowed``; the CORS
    answers are gateway.http.cors). ``/admin/*`` and the web page's actions are never opened
    to another origin;
  - a request body that is not ``application/json``: the content types a page may send
    without asking the server first (a CORS preflight, which this gateway grants only to
    ``allowed_origins``) are text/plain, form data and multipart, so a JSON-only API cannot be
    reached by a page's form or a "simple" fetch.

The web page's own admin actions carry the token the page reads from ``/ui/state``
(``UI_TOKEN_HEADER``; checked by gateway.http.auth).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from urllib.parse import urlsplit

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from gateway.config.fields import ANY_ORIGIN
from gateway.config.schema import Config, GatewaySettings
from gateway.errors import CrossSiteRequestError, InvalidRequestError, UnsupportedMediaTypeError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_ADDRESSES = frozenset({"0.0.0.0", "::", ""})
ANY_HOST = "*"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
JSON_MEDIA_TYPE = "application/json"
UI_TOKEN_HEADER = "X-Gateway-UI-Token"
# The paths other origins may call when allowed_origins lists them: the OpenAI API, nothing else.
CROSS_ORIGIN_PREFIX = "/v1/"


def is_loopback(host: str) -> bool:
    """Whether a listen address or client address is this machine's loopback only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_problem(config: Config, keys_required: bool, host: str | None = None) -> str | None:
    """Why serving ``config`` on ``host`` (default: its own) would open every model to the
    network, or None. ``keys_required``: whether the config asks for API keys
    (gateway.access.keyring.keys_required)."""
    host = config.gateway.host if host is None else host
    if keys_required or is_loopback(host) or config.gateway.allow_unauthenticated_network:
        return None
    return (
        f"gateway.host: {host!r} (listens beyond loopback, and no API key is configured: anyone who "
        "can reach it could use every model; set api_keys or [[keys]], or listen on 127.0.0.1, or set "
        "allow_unauthenticated_network = true to serve the network without keys on purpose)"
    )


def served_hosts(settings: GatewaySettings, keys_required: bool) -> frozenset[str] | None:
    """The ``Host`` names requests may carry (lower case), or None for any.

    ``allowed_hosts`` when set; else the listen address and the loopback names. A gateway that
    listens on every interface (0.0.0.0, ::) with API keys accepts any name: its clients reach it
    by names it cannot know, and its keys, not its address, are what it trusts.
    """
    if settings.allowed_hosts is not None:
        names = {h.lower() for h in settings.allowed_hosts}
        return None if ANY_HOST in names else frozenset(names)
    if settings.host in WILDCARD_ADDRESSES and keys_required:
        return None
    names = set(LOOPBACK_NAMES)
    if settings.host not in WILDCARD_ADDRESSES:
        names.add(settings.host.strip("[]").lower())
    return frozenset(names)


def is_ip_literal(name: str) -> bool:
    """An address rather than a name. A ``Host`` that is one is always served: DNS rebinding needs
    a name to re-bind, and a page whose origin is an address is this gateway's own page or reaches
    another machine; so a scraper or probe that calls a pod by its IP is answered."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_name(header: str) -> str:
    """The name in a ``Host`` header, without its port or brackets, lower case."""
    text = header.strip().lower()
    if text.startswith("["):
        return text[1 : text.find("]")] if "]" in text else text
    if text.count(":") == 1:
        text = text.partition(":")[0]
    return text.rstrip(".")


def origin_allowed(settings: GatewaySettings, origin: str, path: str) -> bool:
    """Whether a page of ``origin`` may call ``path`` (``[gateway] allowed_origins``; /v1/* only).
    Origins compare without regard to case, as browsers lower-case the scheme and host."""
    if not settings.allowed_origins or not path.startswith(CROSS_ORIGIN_PREFIX):
        return False
    allowed = settings.allowed_origins
    return ANY_ORIGIN in allowed or origin.lower() in (o.lower() for o in allowed)


def _origin_authority(origin: str) -> str | None:
    parts = urlsplit(origin)
    return parts.netloc.lower() if parts.scheme in ("http", "https") and parts.netloc else None


def _has_body(connection: ASGIConnection) -> bool:
    length = connection.headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "transfer-encoding" in connection.headers


class BrowserGuard:
    """The app-wide guard (see the module docstring); reads the settings in force per request."""

    def __init__(self, settings: Callable[[], GatewaySettings], keys_required: Callable[[], bool]) -> None:
        self._settings = settings
        self._keys_required = keys_required

    async def __call__(self, connection: ASGIConnection, _: BaseRouteHandler) -> None:
        self.check(connection)

    def check(self, connection: ASGIConnection) -> None:
        settings = self._settings()
        host = connection.headers.get("host", "")
        allowed = served_hosts(settings, self._keys_required())
        if allowed is not None and host_name(host) not in allowed and not is_ip_literal(host_name(host)):
            raise InvalidRequestError(
                f"this gateway is not served under the name {host_name(host)[:100]!r} "
                "(the Host header; [gateway] allowed_hosts lists the names it answers to)"
            )
        if connection.scope.get("method", "GET") in SAFE_METHODS:
            return
        origin = connection.headers.get("origin")
        if origin is None or not origin_allowed(settings, origin, connection.scope["path"]):
            self._check_same_site(connection, origin, host)
        self._check_json(connection)

    @staticmethod
    def _check_same_site(connection: ASGIConnection, origin: str | None, host: str) -> None:
        if origin is not None and _origin_authority(origin) != host.strip().lower():
            raise CrossSiteRequestError(
                f"a request from another site (Origin {origin[:100]!r}) may not call this gateway; "
                "call it from its own page or without a browser"
            )
        if connection.headers.get("sec-fetch-site", "").lower() in ("cross-site", "same-site"):
            raise CrossSiteRequestError("a request from another site (Sec-Fetch-Site) may not call this gateway")

    @staticmethod
    def _check_json(connection: ASGIConnection) -> None:
        if _has_body(connection):
            media_type = connection.headers.get("content-type", "").partition(";")[0].strip().lower()
            if media_type != JSON_MEDIA_TYPE:
                raise UnsupportedMediaTypeError(
                    f"the request body must be JSON (Content-Type: {JSON_MEDIA_TYPE}), not {media_type or 'untyped'!r}"
                )
