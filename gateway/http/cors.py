"""CORS for the OpenAI API: the answers that let a web page of another origin call ``/v1/*``.

A page served from an origin that ``[gateway] allowed_origins`` lists (a chat UI on
``http://localhost:3000``, a notebook, a playground) may call the OpenAI API from the browser:

- its preflight (``OPTIONS`` with ``Access-Control-Request-Method``) gets 204 with the methods
  (GET, POST), the request headers the OpenAI clients send (``ALLOWED_REQUEST_HEADERS``, any
  ``x-stainless-*``) and how long the browser may remember the answer; a public site's page
  calling a gateway on this machine or the LAN is also told it may (Chrome's Private Network
  Access preflight, ``Access-Control-Request-Private-Network``);
- every answer to it, streams and errors included, carries ``Access-Control-Allow-Origin``
  (that origin), ``Vary: Origin`` and ``Access-Control-Expose-Headers`` (the headers a client
  reads: ``x-request-id``, ``retry-after``, ``x-ratelimit-*``).

The unsafe request itself passes gateway.http.network.BrowserGuard, which opens the same paths
to the same origins (``origin_allowed``: one rule for both). ``/admin/*``, ``/ui`` and the rest
never get CORS headers. No cookies are involved (keys travel in ``Authorization``), so
``Access-Control-Allow-Credentials`` is never sent.

Why not Litestar's ``CORSConfig``: its middleware is built once, from a fixed list, when the app
is built, so a reload could not change the origins; and it answers on every path, which would
open ``/admin/*`` and the web page's actions too. This middleware reads the settings in force per
request (as the guard does) and touches ``/v1/*`` only. A request that carries no allowed
``Origin`` goes straight through: no send wrapper, so no cost per streamed chunk.

``cross_origin`` puts it where Litestar puts its own CORS middleware: around the app's router and
its exception handler, so every answer passes it (the router's own 404 and 405 included). Not as
app ``middleware=``: Litestar then gives every route a second exception handler of its own, whose
send wrapper costs every streamed chunk of every request about half a microsecond.
"""

from __future__ import annotations

from collections.abc import Callable

from litestar import Litestar
from litestar.datastructures import Headers, MutableScopeHeaders
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from gateway.access.limits import RATE_HEADERS
from gateway.config.schema import GatewaySettings
from gateway.http.network import origin_allowed
from gateway.observability.telemetry import REQUEST_ID_HEADER

ALLOWED_METHODS = "GET, POST"
# What the OpenAI clients (Python and JavaScript) send besides the CORS-safelisted headers.
ALLOWED_REQUEST_HEADERS = frozenset(
    {"authorization", "content-type", "openai-organization", "openai-project", "openai-beta", "idempotency-key", REQUEST_ID_HEADER.lower()}
)
CLIENT_HEADER_PREFIX = "x-stainless-"  # the OpenAI SDKs' own: x-stainless-lang, -retry-count, ...
EXPOSED_HEADERS = ", ".join((REQUEST_ID_HEADER.lower(), "retry-after", *RATE_HEADERS))
PREFLIGHT_MAX_AGE_S = "600"


def cross_origin(app: Litestar, settings: Callable[[], GatewaySettings]) -> Litestar:
    """``app`` answering the origins of ``settings().allowed_origins`` (read per request)."""
    app.asgi_handler = CrossOrigin(app.asgi_handler, settings)
    return app


def allowed_request_headers(requested: str) -> str:
    """The headers of an ``Access-Control-Request-Headers`` list that a page may send."""
    names = (h.strip().lower() for h in requested.split(","))
    return ", ".join(h for h in names if h in ALLOWED_REQUEST_HEADERS or h.startswith(CLIENT_HEADER_PREFIX))


class CrossOrigin:
    """The CORS middleware (see the module docstring); ``settings``: the ``[gateway]`` in force."""

    def __init__(self, app: ASGIApp, settings: Callable[[], GatewaySettings]) -> None:
        self.app = app
        self._settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings = self._settings()
        if scope["type"] != "http" or not settings.allowed_origins:
            await self.app(scope, receive, send)
            return
        headers = Headers.from_scope(scope)
        origin = headers.get("origin")
        if origin is None or not origin_allowed(settings, origin, scope["path"]):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            private = headers.get("access-control-request-private-network", "").lower() == "true"
            await self._preflight(origin, headers.get("access-control-request-headers", ""), private, send)
            return
        await self.app(scope, receive, _marking(send, origin))

    @staticmethod
    async def _preflight(origin: str, requested: str, private: bool, send: Send) -> None:
        answer = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-methods", ALLOWED_METHODS.encode()),
            (b"access-control-max-age", PREFLIGHT_MAX_AGE_S.encode()),
            (b"vary", b"Origin"),
        ]
        if allowed := allowed_request_headers(requested):
            answer.append((b"access-control-allow-headers", allowed.encode("latin-1")))
        if private:
            answer.append((b"access-control-allow-private-network", b"true"))
        await send({"type": "http.response.start", "status": 204, "headers": answer})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _marking(send: Send, origin: str) -> Send:
    """``send`` that adds the CORS headers to the answer's start (its body passes as it is)."""

    async def marked(message: Message) -> None:
        if message["type"] == "http.response.start":
            out = MutableScopeHeaders.from_message(message)
            out["access-control-allow-origin"] = origin
            out["access-control-expose-headers"] = EXPOSED_HEADERS
            out.add("vary", "Origin")
        await send(message)

    return marked
