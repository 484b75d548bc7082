"""Run the gateway under granian: one server process, one app worker."""

from __future__ import annotations

import errno
import logging
import os
import secrets
import socket
import tempfile
import threading
import time
from http import HTTPStatus
from pathlib import Path
from typing import Any

import msgspec
from granian import Granian
from granian._granian import SocketHolder
from granian.constants import Interfaces
from granian.log import LogLevels

from gateway.access.keyring import keys_required
from gateway.http.auth import RELOAD_TOKEN_HEADER
from gateway.http.asgi import STATE_ENV
from gateway.http.network import exposure_problem, is_loopback
from gateway.config.loading import dump_config
from gateway.config.schema import Config
from gateway.errors import ConfigError, GatewayError
from gateway.placement.launch import ModelLaunch, encode_launches
from gateway.observability.logs import configure_logging, granian_log_config

log = logging.getLogger("gateway")

# How often a SIGHUP that came during start-up asks again whether the app answers.
RELOAD_RETRY_S = 0.2


def write_state(
    config: Config,
    launches: dict[str, ModelLaunch],
    *,
    strict: bool,
    config_path: Path | None = None,
    reload_token: str | None = None,
    directory: Path | None = None,
) -> Path:
    """The state file ``gateway.http.asgi.app_from_state`` reads: the config and the plan."""
    state = {
        "config": dump_config(config),
        "launches": msgspec.json.decode(encode_launches(launches)),
        "strict": strict,
        "config_path": str(config_path.resolve()) if config_path is not None else None,
        "reload_token": reload_token,
    }
    fd, path = tempfile.mkstemp(prefix="vram-gateway-", suffix=".json", dir=directory)
    with os.fdopen(fd, "wb") as f:
        f.write(msgspec.json.encode(state))
    return Path(path)


def bind_listener(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket that no other process shares: without SO_REUSEPORT, a second
    gateway (or anything else) on the same address and port fails here with "address in use"
    instead of splitting the connections with the first."""
    try:
        (family, kind, proto, _, address), *_ = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise GatewayError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        # SO_REUSEADDR only lets a restart bind while old connections sit in TIME_WAIT; on
        # Linux it never lets two listeners share a port (SO_REUSEPORT would).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and host in ("::", ""):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise GatewayError(f"cannot listen on {host}:{port}: address in use (is another gateway running there?)") from None
        raise GatewayError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


class _ExclusiveSocket:
    """Mixed into a granian server class: the server process binds the one listening socket
    itself (``bind_listener``) and hands it to its worker, as granian does on other systems.
    granian's own Linux path has each worker bind with SO_REUSEPORT, which lets a second server
    on a busy port start and take half of its connections."""

    bind_addr: str
    bind_port: int
    backlog: int
    bind_uds: Any

    def _init_shared_socket(self) -> None:
        if self.bind_uds:
            super()._init_shared_socket()  # type: ignore[misc]
            return
        sock = bind_listener(self.bind_addr, self.bind_port, self.backlog)
        self._ssp = None
        self._shd = SocketHolder(sock.fileno(), False, self.backlog)
        self._sfd = sock.fileno()
        self._sso = sock  # closed by granian's _drop_shared_socket


class _Server(Granian):  # type: ignore[misc, valid-type]
    """granian's server, with SIGHUP meaning "reload models.toml" (the router: its cluster
    config) instead of "respawn the app", and SIGTERM/SIGINT draining the app before granian
    stops listening (``drain_url``; without one, granian's own stop).

    Respawning would reload every model; our reload keeps unchanged models serving. The app
    process does the work (``POST /admin/reload``); this process only forwards the signal. A
    SIGHUP that comes while the app is still starting (loading its models) is kept, and sent
    once the app answers; SIGHUPs meanwhile join it. One that comes while the app is already
    working on a reload (which read the file before this SIGHUP's edit, perhaps) is sent again
    once that reload answers; several meanwhile make one more reload.

    granian stops accepting connections as soon as it is told to stop, so during the drain a
    load balancer's health check would be refused rather than told. So the first SIGTERM (or
    SIGINT) asks the app to drain first (``POST /admin/drain``: new requests and /health get
    503 "draining", requests in flight get ``shutdown_grace_s``), and only then stops granian.
    A second one stops at once; an app that does not answer (still starting) stops at once too.
    """

    reload_url: str = ""
    drain_url: str = ""
    reload_token: str = ""
    drain_timeout_s: float = 0.0
    _stopping: bool = False
    # The reload thread's state, shared with the main loop's _reload (under _reload_lock): a
    # thread is forwarding (_reload_running), and a SIGHUP came after its last POST was sent
    # (_reload_again: the app may have read the file before that SIGHUP's edit).
    _reload_running: bool = False
    _reload_again: bool = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reload_lock = threading.Lock()

    def _reload(self, spawn_target, target_loader):  # noqa: ANN001
        self.reload_signal = False
        self.main_loop_interrupt.clear()
        with self._reload_lock:
            if self._reload_running:
                self._reload_again = True
                log.info("SIGHUP: a reload is under way; the file is read again once it answers")
                return
            self._reload_running = True
        threading.Thread(target=self._post_reload, name="reload", daemon=True).start()

    def _post_reload(self) -> None:
        while True:
            self._post_one_reload()
            with self._reload_lock:
                if not self._reload_again or self._stopping:
                    self._reload_running = False
                    return

    def _post_one_reload(self) -> None:
        import urllib.error

        waited = False
        while True:
            with self._reload_lock:
                # This POST reads the file as it is now: the SIGHUPs so far are answered by it.
                self._reload_again = False
            try:
                body = self._post(self.reload_url, timeout=3600)
            except urllib.error.HTTPError as exc:
                if exc.code == HTTPStatus.CONFLICT and not self._stopping:
                    # Another reload is running (`gateway reload`, the page's): it may have read
                    # the file before this SIGHUP's edit, so this one runs once that one is done.
                    if not waited:
                        log.info("SIGHUP: another reload is running; this one runs once it is done")
                        waited = True
                    time.sleep(RELOAD_RETRY_S)
                    continue
                log.error("SIGHUP: reload refused (%s): %s", exc.code, exc.read().decode(errors="replace"))
                return
            except OSError as exc:
                # Nothing listens yet: the app is starting. Keep the reload until it answers.
                if self._stopping:
                    log.error("SIGHUP: not reloaded, the gateway is stopping: %s", exc)
                    return
                if not waited:
                    log.info("SIGHUP: the app is still starting; the reload runs once it answers")
                    waited = True
                time.sleep(RELOAD_RETRY_S)
                continue
            log.info("SIGHUP: %s", body)
            return

    def signal_handler_interrupt(self, *args, **kwargs):  # noqa: ANN002, ANN003
        if self._stopping or not self.drain_url:
            super().signal_handler_interrupt(*args, **kwargs)  # a second signal: stop now
            return
        self._stopping = True
        threading.Thread(target=self._drain_then_stop, name="drain", daemon=True).start()

    def _drain_then_stop(self) -> None:
        import urllib.error

        try:
            log.info("draining: new requests get 503; waiting for the requests in flight")
            log.info("drained: %s", self._post(self.drain_url, timeout=self.drain_timeout_s))
        except urllib.error.HTTPError as exc:
            log.error("drain refused (%s): %s", exc.code, exc.read().decode(errors="replace"))
        except OSError as exc:
            log.info("stopping without a drain (the app does not answer: %s)", exc)
        finally:
            super().signal_handler_interrupt()

    def _post(self, url: str, timeout: float) -> str:
        import urllib.request

        req = urllib.request.Request(url, method="POST", headers={RELOAD_TOKEN_HEADER: self.reload_token})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read().decode(errors="replace")


def granian_server(cls: type[Granian], factory: str, config: Config, *, kill_after_grace_s: int) -> Granian:
    """One granian server process with one app worker (``factory`` builds the app), on the
    config's address, logging in our format, on a socket no other process shares.

    Refused (ConfigError) when it would listen beyond loopback without API keys and the config
    does not say ``allow_unauthenticated_network = true``; said in the log when it does.

    This process logs in the app's format too (its own lines: the listening warning, the
    SIGHUP and drain forwarding); granian's log config covers only granian's loggers.
    """
    configure_logging(config.gateway.log_level, config.gateway.log_format == "json")
    required = keys_required(config)
    problem = exposure_problem(config, required)
    if problem is not None:
        raise ConfigError([problem])
    if not required and not is_loopback(config.gateway.host):
        log.warning(
            "listening on %s:%d WITHOUT API keys (allow_unauthenticated_network = true): anyone who can "
            "reach this address may use every model",
            config.gateway.host, config.gateway.port,
        )
    exclusive = type(cls.__name__, (_ExclusiveSocket, cls), {})
    return exclusive(
        factory,
        factory=True,
        interface=Interfaces.ASGI,
        address=config.gateway.host,
        port=config.gateway.port,
        workers=1,
        log_level=LogLevels(config.gateway.log_level),
        log_dictconfig=granian_log_config(config.gateway.log_level, config.gateway.log_format == "json"),
        workers_kill_timeout=int(config.gateway.shutdown_grace_s) + kill_after_grace_s,
    )


def _loopback_url(host: str, port: int, path: str) -> str:
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


def run_server(
    config: Config, launches: dict[str, ModelLaunch], *, strict: bool = False, config_path: Path | None = None
) -> None:
    """Serve until SIGINT/SIGTERM; workers are stopped by the app's lifespan."""
    token = new_reload_token()
    state = write_state(config, launches, strict=strict, config_path=config_path, reload_token=token)
    os.environ[STATE_ENV] = str(state)
    try:
        # The lifespan drains requests and stops the model workers: give it the grace period
        # plus time to SIGTERM/SIGKILL them before granian kills the app process.
        forwarding_server("gateway.http.asgi:app_from_state", config, kill_after_grace_s=15, reload_token=token, drain=True).serve()
    finally:
        state.unlink(missing_ok=True)


def new_reload_token() -> str:
    """The secret the server process proves itself with when it forwards a SIGHUP (one per start)."""
    return secrets.token_urlsafe(32)


def forwarding_server(factory: str, config: Config, *, kill_after_grace_s: int, reload_token: str, drain: bool) -> Granian:
    """``granian_server`` whose SIGHUP is the app's ``POST /admin/reload`` (sent with
    ``reload_token``; the app's Auth takes it as an admin's), for a gateway and for the router;
    with ``drain``, SIGTERM/SIGINT first ``POST /admin/drain`` (an app that has that route)."""
    server = granian_server(_Server, factory, config, kill_after_grace_s=kill_after_grace_s)
    server.reload_url = _loopback_url(config.gateway.host, config.gateway.port, "/admin/reload")
    server.reload_token = reload_token
    if drain:
        server.drain_url = _loopback_url(config.gateway.host, config.gateway.port, "/admin/drain")
        server.drain_timeout_s = config.gateway.shutdown_grace_s + 5
    return server
