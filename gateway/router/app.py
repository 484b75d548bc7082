"""The router's Litestar app: the OpenAI API on one address, answered by the cluster's nodes.

``create_router_app(config)`` takes everything explicitly (``transport`` and ``clock`` are seams
for tests). The lifespan owns the HTTP client and the poller: it reads every node's /v1/models
once before the first request, then every ``[router] poll_interval_s``.

A request is forwarded byte for byte (its body, its answer) to the best node for its ``model``
(gateway.router.directory); the answer is relayed as it arrives, never buffered, so a streamed
generation reaches the client token by token. A node that refuses the connection, or answers
that the model cannot take requests now (503 model_unavailable, 429 queue_full), is skipped for
the next replica; with none left the client gets the node's answer, or 503 naming each node and
what is wrong there.

Clients' API keys are checked here with the gateway's own machinery: the same guards
(gateway.http.auth), scopes, limits and usage (gateway.access), per-key series under the same
names (gateway.observability.metrics.KeyMetrics); the nodes get the internal key, and each
request's tokens are charged to its key from the node's answer (gateway.router.metering).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath
from litestar.response import Stream

from gateway.access.gate import Access
from gateway.access.keyring import ApiKey
from gateway.access.limits import Clock
from gateway.config.schema import Config
from gateway.config.source import ConfigFile
from gateway.errors import GatewayError, InvalidRequestError, RoutingLoopError, UpstreamError
from gateway.http.auth import Auth, request_key
from gateway.http.cors import cross_origin
from gateway.http.errors import ROUTING_LOOP, Handlers, error_body, mapped_handlers
from gateway.http.network import BrowserGuard
from gateway.http.proxy import CLIENT_CLOSED, client_gone, unless_disconnected
from gateway.observability.telemetry import REQUEST_ID_HEADER
from gateway.router.directory import Directory, NodeState
from gateway.observability.metrics import REJECT_REASONS
from gateway.router.metering import RESPONSES_PATH, Metered, shape_of
from gateway.router.metrics import NO_NODE, RouterMetrics
from gateway.router.reload import reload_router

log = logging.getLogger("gateway.router")

NODE_HEADER = "X-Gateway-Node"
# Sent with every request a router makes to a node (its polls, the requests it forwards): a
# router that receives it refuses (508), so a [[nodes]] url that points at a router (itself or
# another) is a node marked down with that reason, not a loop of requests and nested listings.
ROUTED_HEADER = "X-Gateway-Routed"
# Answers of a node that mean "not now, try another replica" (OpenAI error codes of our nodes).
RETRY_CODES = {503: "model_unavailable", 429: "queue_full"}
FAILOVER_REASON = {"model_unavailable": "node_unavailable", "queue_full": "queue_full"}
# Relayed from a node's answer to the client; hop-by-hop and length headers are the server's.
PASSED_HEADERS = ("content-type", "cache-control", "retry-after", "www-authenticate", "x-accel-buffering", REQUEST_ID_HEADER.lower())
SSE_DONE = b"data: [DONE]\n\n"


class _Fields(msgspec.Struct):
    """The fields the router reads from a request body."""

    model: Any = None
    stream: Any = None
    stream_options: Any = None


class Router:
    """What the handlers share: the config in force, the directory, the HTTP client, the
    metrics and the keys (an ``Access`` over the config in force).

    ``config`` is replaced whole by ``apply`` (a reload, gateway.router.reload); everything
    here reads it when it needs it, never a copy."""

    def __init__(self, config: Config, directory: Directory, metrics: RouterMetrics, *, key_clock: Clock = time.monotonic) -> None:
        self.config = config
        self.directory = directory
        self.metrics = metrics
        self.access = Access(lambda: self.config, clock=key_clock, on_keys=metrics.keys.add_keys)
        self.reloading = asyncio.Lock()  # gateway.router.reload: one reload at a time
        self._client: httpx.AsyncClient | None = None

    @property
    def poll_interval_s(self) -> float:
        return self.config.router.poll_interval_s if self.config.router is not None else 1.0

    @property
    def poll_timeout_s(self) -> float:
        return self.config.router.poll_timeout_s if self.config.router is not None else 2.0

    def apply(self, config: Config) -> None:
        """Put a reloaded config in force: the keys from the next request, the nodes and models
        in the directory now. Requests in flight keep their tickets and their node."""
        self.config = config
        self.directory.reconfigure(config)
        self.access.ring()  # the new keys' series exist from the next scrape

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise GatewayError("the router's HTTP client is not running (outside the app's lifespan)")
        return self._client

    @contextlib.asynccontextmanager
    async def running(self, transport: httpx.AsyncBaseTransport | None) -> AsyncIterator[None]:
        """The HTTP client to the nodes, and the poller, for the app's lifetime."""
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
        async with httpx.AsyncClient(transport=transport, limits=limits, timeout=None) as client:
            self._client = client
            await self.poll_all()  # know the nodes before the first request
            poller = asyncio.create_task(self.poll_forever(), name="poll-nodes")
            try:
                yield
            finally:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
                self._client = None

    def _forward_timeout(self) -> httpx.Timeout:
        # Connecting to a node takes poll_timeout_s at most; its answer as long as it takes.
        return httpx.Timeout(connect=self.poll_timeout_s, read=None, write=None, pool=None)

    def node_headers(self, request_id: str | None = None) -> dict[str, str]:
        headers = {ROUTED_HEADER: "1"}
        if self.config.gateway.internal_api_key:
            headers["authorization"] = f"Bearer {self.config.gateway.internal_api_key}"
        if request_id:
            headers[REQUEST_ID_HEADER] = request_id
        return headers

    # ------------------------------------------------------------------ polling

    async def poll_node(self, node: NodeState) -> None:
        try:
            resp = await self.client.get(node.url + "/v1/models", headers=self.node_headers(), timeout=self.poll_timeout_s)
        except httpx.HTTPError as exc:
            self._down(node, _transport_reason(exc))
            return
        if not self._current(node):
            return  # removed or given a new address by a reload while this poll was out
        if resp.status_code != 200:
            if _error_code(resp.content) == ROUTING_LOOP:
                self._down(node, f"{node.url} is a router, not a node's gateway (its url must point at a node)")
            else:
                self._down(node, f"/v1/models answered HTTP {resp.status_code}")
            return
        try:
            listing = resp.json()
        except ValueError:
            self._down(node, "/v1/models answered no JSON")
            return
        was_up = node.up
        self.directory.update(node.name, listing)
        if node.up and not was_up:
            log.info("node %s: up (%s)", node.name, ", ".join(sorted(node.models)) or "no models")

    def _current(self, node: NodeState) -> bool:
        """Whether ``node`` is still the directory's: a reload may have removed it, or given its
        name a new address (a new NodeState), while a poll or a request was out."""
        return self.directory.nodes.get(node.name) is node

    def _down(self, node: NodeState, reason: str) -> None:
        if not self._current(node):
            return
        if node.up or not node.polled:
            # Going down, or down from the first poll (a wrong url, a node not started yet).
            log.warning("node %s: down (%s)", node.name, reason)
        self.directory.mark_down(node.name, reason)

    async def poll_all(self) -> None:
        await asyncio.gather(*(self.poll_node(n) for n in self.directory.nodes.values()))

    async def poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            await self.poll_all()

    # ------------------------------------------------------------------ forwarding

    async def forward(self, request: Request, path: str, key: ApiKey | None) -> Response | Stream:
        started = request.state.started = time.monotonic()
        raw = await request.body()
        try:
            fields = msgspec.json.decode(raw, type=_Fields)
        except msgspec.ValidationError:
            raise InvalidRequestError("the request body must be a JSON object") from None
        except msgspec.DecodeError as exc:
            raise InvalidRequestError(f"the request body is not valid JSON: {exc}") from None
        # The key's scope (403), then its limits (429), as on a gateway (gateway.access).
        model = self.access.permit(key, fields.model)
        request.state.model = model
        ticket = self.access.admit(key)
        try:
            stream = fields.stream is True
            options = fields.stream_options
            metered = Metered(ticket, stream, isinstance(options, dict) and bool(options.get("include_usage")), shape_of(path))
            sending = self._send(request, path, model, metered.body(raw), metered, started)
            # A stream's relay notices a client that leaves by itself (its next write fails). A
            # whole answer is watched while the node works on it: cancelling closes the connection
            # to the node, which stops the generation there (issue 21, item 6).
            answer = await (sending if stream else unless_disconnected(sending, client_gone(request)))
            if answer is None:
                answer = Response(content=b"", status_code=CLIENT_CLOSED)  # the client is gone
        except BaseException:
            ticket.release()
            raise
        if not isinstance(answer, Stream):
            ticket.release()
        return answer

    async def _send(self, request: Request, path: str, model: str, raw: bytes, metered: Metered, started: float) -> Response | Stream:
        request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        headers = {"content-type": request.headers.get("content-type", "application/json"), **self.node_headers(request_id)}
        if "accept" in request.headers:
            headers["accept"] = request.headers["accept"]
        last: tuple[httpx.Response, bytes, NodeState] | None = None
        for node in self.directory.candidates(model):
            self.directory.started(node, model)
            self.metrics.started(node.name, model)
            upstream_req = self.client.build_request("POST", node.url + path, content=raw, headers=headers, timeout=self._forward_timeout())
            try:
                upstream = await self.client.send(upstream_req, stream=True)
            except asyncio.CancelledError:
                # The client left while the node worked on a whole answer: closing the
                # connection (httpx does, on cancel) stops the generation on the node.
                self._finish(node, model, CLIENT_CLOSED, started, metered)
                raise
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Nothing reached the node: safe to give the request to the next replica.
                self._ended(node, model)
                self._down(node, _transport_reason(exc))
                self.metrics.failover(node.name, model, "connect_error")
                continue
            except httpx.HTTPError as exc:
                self._ended(node, model)
                self._down(node, _transport_reason(exc))
                raise _NodeFailed(node.name, exc) from None
            if upstream.status_code in RETRY_CODES:
                body = await upstream.aread()
                await upstream.aclose()
                code = _error_code(body)
                if code == RETRY_CODES[upstream.status_code]:
                    self._ended(node, model)
                    self.metrics.failover(node.name, model, FAILOVER_REASON[code])
                    last = (upstream, body, node)
                    continue
                return self._whole(upstream, body, node, model, started, metered)
            if upstream.status_code >= 400:
                body = await upstream.aread()
                await upstream.aclose()
                return self._whole(upstream, body, node, model, started, metered)
            if not upstream.headers.get("content-type", "").startswith("text/event-stream"):
                # A whole answer comes from the node in one piece when it is done: relaying it
                # as a stream would cost a task per request and gain no time.
                try:
                    body = await upstream.aread()
                except asyncio.CancelledError:
                    self._finish(node, model, CLIENT_CLOSED, started, metered)
                    raise
                except httpx.HTTPError as exc:
                    self._ended(node, model)
                    self._down(node, _transport_reason(exc))
                    raise _NodeFailed(node.name, exc) from None
                finally:
                    await upstream.aclose()
                return self._whole(upstream, body, node, model, started, metered)
            return self._relay(upstream, node, model, started, metered)
        if last is not None:
            # Every replica said "not now": the last one's answer (429 or 503) is the truth.
            upstream, body, node = last
            self._refused(metered, body)
            self.metrics.answered(node.name, model, upstream.status_code, time.monotonic() - started, metered.key)
            return Response(content=body, status_code=upstream.status_code, headers=_passed(upstream, node))
        raise self.directory.unavailable(model)

    def _refused(self, metered: Metered, body: bytes) -> None:
        """A node's refusal (queue_full, model_unavailable...) in the key's refusals, as a
        gateway counts its own."""
        code = _error_code(body)
        if metered.key is not None and code in REJECT_REASONS:
            self.metrics.keys.rejected(metered.key, code)
            self.access.rejected(metered.key, code)

    def _ended(self, node: NodeState, model: str) -> None:
        self.directory.finished(node, model)
        self.metrics.ended(node.name, model)

    def _finish(self, node: NodeState, model: str, status: int, started: float, metered: Metered) -> None:
        self._ended(node, model)
        self.metrics.answered(node.name, model, status, time.monotonic() - started, metered.key, metered.usage)

    def _whole(self, upstream: httpx.Response, body: bytes, node: NodeState, model: str, started: float, metered: Metered) -> Response:
        metered.whole(upstream.status_code, body)
        if upstream.status_code in RETRY_CODES:
            self._refused(metered, body)
        self._finish(node, model, upstream.status_code, started, metered)
        headers = {**_passed(upstream, node), **metered.ticket.headers()}
        return Response(content=body, status_code=upstream.status_code, headers=headers)

    def _relay(self, upstream: httpx.Response, node: NodeState, model: str, started: float, metered: Metered) -> Stream:
        sse = upstream.headers.get("content-type", "").startswith("text/event-stream")

        async def chunks() -> AsyncIterator[bytes]:
            # A client that goes away is recorded as 499 (nginx's "client closed request");
            # closing the upstream answer then stops the generation on the node.
            status = CLIENT_CLOSED
            try:
                # Decoded as it arrives (a node does not compress; if one did, the client gets
                # plain bytes and no content-encoding).
                async for chunk in metered.relay(upstream.aiter_bytes(), model):
                    yield chunk
                status = upstream.status_code
            except httpx.HTTPError as exc:
                # The node died mid-answer: the headers are gone, so say it in-band as the
                # gateway does, then end the stream.
                status = 502
                self._down(node, _transport_reason(exc))
                if sse:
                    yield b"data: " + msgspec.json.encode(error_body(f"node {node.name} failed mid-answer: {_transport_reason(exc)}", "server_error")) + b"\n\n"
                    yield SSE_DONE
            finally:
                await upstream.aclose()
                self._finish(node, model, status, started, metered)
                metered.ticket.release()

        headers = {**_passed(upstream, node), **metered.ticket.headers()}
        return Stream(chunks(), status_code=upstream.status_code, headers=headers)


class _NodeFailed(UpstreamError):
    """A node broke the connection after the request reached it (not retried: it may run)."""

    def __init__(self, node: str, exc: Exception) -> None:
        super().__init__(f"node {node} failed: {_transport_reason(exc)}")


def _transport_reason(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _error_code(body: bytes) -> str | None:
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    err = doc.get("error") if isinstance(doc, dict) else None
    return err.get("code") if isinstance(err, dict) and isinstance(err.get("code"), str) else None


def _passed(upstream: httpx.Response, node: NodeState) -> dict[str, str]:
    headers = {k: upstream.headers[k] for k in PASSED_HEADERS if k in upstream.headers}
    headers[NODE_HEADER] = node.name
    return headers


# ---------------------------------------------------------------- routes


async def refuse_routed(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """The router-wide guard: a request another router (or this one) sent is refused."""
    if ROUTED_HEADER in connection.headers:
        raise RoutingLoopError(
            "this is a router, not a node's gateway: a router's [[nodes]] url points here "
            "(point each node's url at that node's gateway)"
        )


async def _forward(request: Request, router: NamedDependency[Router]) -> Response | Stream:
    return await router.forward(request, request.url.path, request_key(request))


async def list_models(request: Request, router: NamedDependency[Router]) -> dict[str, Any]:
    """The models the key may use (all of them for an unscoped key or a router without keys)."""
    d = router.directory
    return {"object": "list", "data": [d.describe(m) for m in router.access.visible_names(request_key(request))]}


async def get_model(request: Request, model_id: FromPath[str], router: NamedDependency[Router]) -> dict[str, Any]:
    d = router.directory
    return d.describe(router.access.permit(request_key(request), model_id.lstrip("/")))


async def health(router: NamedDependency[Router]) -> Response:
    status, serving, nodes = router.directory.health()
    return Response(content={"status": status, "nodes": nodes}, status_code=200 if serving else 503)


async def admin_reload(router: NamedDependency[Router], config_file: NamedDependency[ConfigFile]) -> Response:
    """Re-read the cluster config and apply it (gateway.router.reload); 422 with every problem
    when it is refused, and nothing changed then."""
    result = await reload_router(router, config_file)
    return Response(content=result.as_dict(), status_code=200 if result.reloaded else 422)


async def metrics_endpoint(request: Request, router: NamedDependency[Router]) -> Response:
    body, content_type = router.metrics.render(request.headers.get("accept"))
    return Response(content=body, media_type=content_type)


def _error_handlers(router: Router) -> Handlers:
    """The gateway's mapping of the exception tree (gateway.http.errors), recorded in the
    router's own series: node "" (the router answered itself)."""

    def finish(request: Request, response: Response, reason: str | None) -> Response:
        state: State = request.state
        model = state.get("model") or ""
        # Set once a handler ran; a request refused before (a key, a size) took no time here.
        started = state.get("started") or time.monotonic()
        key = request_key(request)  # set by the guard when it found the key
        name = key.name if key is not None else None
        if reason is not None:
            router.metrics.keys.rejected(name, reason)
            router.access.rejected(name, reason)
        router.metrics.answered(NO_NODE, model, response.status_code, time.monotonic() - started, name)
        return response

    return mapped_handlers(finish)


def create_router_app(
    config: Config,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], float] = time.monotonic,
    key_clock: Clock = time.monotonic,
    config_path: Path | None = None,
    reload_token: str | None = None,
) -> Litestar:
    """The router for a cluster config (its [[nodes]] and [[models]]; no model is loaded here).
    ``key_clock`` drives the keys' limits (as ``create_app``'s). ``config_path``: the file
    ``POST /admin/reload`` reads again (gateway.router.reload); ``reload_token``: what the server
    process sends when it forwards a SIGHUP (gateway.http.server)."""
    directory = Directory(config, clock)
    metrics = RouterMetrics(lambda: {n.name: n.up for n in directory.nodes.values()})
    # The keys ([[keys]] and plain api_keys) as a gateway has them: one Access, one Auth, both
    # reading the config in force (a reload replaces router.config).
    router = Router(config, directory, metrics, key_clock=key_clock)
    router.access.ring()  # the keys' series exist from the first scrape
    auth = Auth(lambda: router.config.gateway, reload_token, keyring=router.access.ring)
    config_file = ConfigFile(config_path)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with router.running(transport):
            yield

    api = [auth.guard("api")]
    openai = [
        post(path, guards=api, status_code=200, operation_id=op)(_forward)
        for path, op in (
            ("/v1/chat/completions", "createChatCompletion"),
            ("/v1/completions", "createCompletion"),
            (RESPONSES_PATH, "createResponse"),
            ("/v1/embeddings", "createEmbedding"),
        )
    ]
    app = Litestar(
        route_handlers=[
            *openai,
            get("/v1/models", guards=api, operation_id="listModels")(list_models),
            get("/v1/models/{model_id:path}", guards=api, operation_id="retrieveModel")(get_model),
            get("/health", guards=[auth.guard("health")], operation_id="health")(health),
            get("/metrics", guards=[auth.guard("metrics")], operation_id="metrics")(metrics_endpoint),
            post("/admin/reload", guards=[auth.guard("admin")], status_code=200, operation_id="reload")(admin_reload),
        ],
        dependencies={
            "router": Provide(lambda: router, use_cache=True, sync_to_thread=False),
            "config_file": Provide(lambda: config_file, use_cache=True, sync_to_thread=False),
        },
        # The gateway's checks of Host, Origin and content type (gateway.http.network): a router
        # without keys on loopback is as open to a web page (DNS rebinding) as a gateway.
        guards=[refuse_routed, BrowserGuard(lambda: router.config.gateway, auth.keys_required)],
        exception_handlers=_error_handlers(router),
        lifespan=[lifespan],
        openapi_config=None,
        request_max_body_size=config.gateway.max_body_bytes,
        # Logging is set up once, in our format (gateway.router.asgi), as for a gateway.
        logging_config=None,
        debug=False,
    )
    # [gateway] allowed_origins as a gateway has it, read per request (a reload replaces router.config).
    return cross_origin(app, lambda: router.config.gateway)
