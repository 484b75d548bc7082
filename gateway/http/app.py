"""The OpenAI-compatible HTTP app (Litestar).

``create_app(config, launches)`` takes everything explicitly and builds one ``ModelPool`` (the
owner of every model's life), one ``GatewayMetrics`` and the routes. Handlers receive the pool,
the metrics, the config in force and the config file through Litestar's dependency injection;
none of them keeps a copy of the config, so a reload reaches every reader at once. The lifespan
starts the pool's workers, waits for them to load, and on shutdown drains and stops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from litestar import Litestar, Request
from litestar.di import Provide

from gateway.config.schema import Config
from gateway.config.source import ConfigFile
from gateway.errors import EngineError, PlanError
from gateway.access.gate import Access
from gateway.access.limits import Clock
from gateway.http.auth import Auth, provide_key, request_key
from gateway.http.cors import cross_origin
from gateway.http.errors import exception_handlers
from gateway.http.network import BrowserGuard
from gateway.http.openapi import openapi_config
from gateway.http.routes import handlers
from gateway.http.routes.openai import Call
from gateway.observability.events import EventLog
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.telemetry import model_snapshots
from gateway.placement.launch import ModelLaunch, launches_from_plan
from gateway.placement.facts import ModelFactsReader
from gateway.placement.planning import inventory, plan_startup, read_models
from gateway.placement.learning import LearnedMemory
from gateway.runtime.pool import ModelPool
from gateway.runtime.transport import WorkerTransport

log = logging.getLogger("gateway")

ORPHAN_POLL_S = 0.5


async def _exit_when_orphaned(pool: ModelPool) -> None:
    """If the process that started us dies (kill -9 of `gateway serve`), take the workers down.

    granian runs this app in a child process; nothing else would notice that the server process
    is gone, and the model workers (who die with *their* parent, this process) would live on.
    """
    parent = os.getppid()
    while True:
        await asyncio.sleep(ORPHAN_POLL_S)
        if os.getppid() != parent:
            log.error("the gateway's server process is gone: stopping every model worker")
            pool.kill_now()
            os._exit(70)


def plan_now(config: Config, learned: LearnedMemory | None = None) -> dict[str, ModelLaunch]:
    """Plan in-process (when ``create_app`` is called without launches, as tests do)."""
    files = read_models(config)
    plan = plan_startup(config, files.infos, inventory(config), learned.for_config(config) if learned is not None else None)
    if not plan.fits:
        raise PlanError(list(plan.problems))
    return launches_from_plan(plan, {n: str(p) for n, p in files.paths.items()})


def create_app(
    config: Config,
    launches: dict[str, ModelLaunch] | None = None,
    *,
    strict: bool = False,
    load_timeout_s: float | None = None,
    base_env: dict[str, str] | None = None,
    config_path: Path | None = None,
    reload_token: str | None = None,
    transport: WorkerTransport | None = None,
    key_clock: Clock = time.monotonic,
    learned: LearnedMemory | None = None,
) -> Litestar:
    """The gateway app for one config; ``launches`` (from ``gateway serve``'s plan) or plan now.
    ``learned``: the figures earlier loads measured beyond the estimates, and where they are kept
    (``gateway serve`` passes its file; None keeps them in memory only)."""
    planned = launches if launches is not None else plan_now(config, learned)
    unplaced = {m.name: "not placed by the planner" for m in config.models if m.name not in planned and m.load == "eager"}
    holder: dict[str, ModelPool] = {}  # the metrics read the pool at scrape time
    metrics = GatewayMetrics(
        lambda: model_snapshots(holder["pool"]) if "pool" in holder else [],
        lambda: holder["pool"].devices() if "pool" in holder else [],
    )
    for m in config.models:
        metrics.add_model(m.name)
    pool = holder["pool"] = ModelPool(
        config,
        planned,
        base_env=dict(os.environ if base_env is None else base_env),
        transport=transport,
        unplaced=unplaced,
        on_event=EventLog(metrics),
        learned=learned,
    )
    # The keys follow the config in force like everything else; key_clock drives their limits.
    access = Access(lambda: pool.config, clock=key_clock, on_keys=metrics.add_keys)
    auth = Auth(lambda: pool.config.gateway, reload_token, keyring=access.ring)

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        orphan_watch = asyncio.create_task(_exit_when_orphaned(pool))
        reaper = asyncio.create_task(pool.reap_idle())
        try:
            await pool.start(load_timeout_s)
            failed = pool.failed()
            if strict and failed:
                raise EngineError("--strict: " + "; ".join(f"{n}: {r}" for n, r in failed.items()))
            yield
            # SIGTERM: the server stops accepting; requests in flight get the grace period.
            await pool.drain(pool.config.gateway.shutdown_grace_s)
        finally:
            orphan_watch.cancel()
            reaper.cancel()
            await pool.stop()

    def provide_call(request: Request) -> Call:
        return Call(pool, metrics, access, request_key(request))

    config_file = ConfigFile(config_path)
    model_facts = ModelFactsReader()  # the models' header facts for /v1/models
    app = Litestar(
        route_handlers=handlers(auth),
        guards=[BrowserGuard(lambda: pool.config.gateway, auth.keys_required)],
        dependencies={
            "pool": Provide(lambda: pool, use_cache=True, sync_to_thread=False),
            "metrics": Provide(lambda: metrics, use_cache=True, sync_to_thread=False),
            "config": Provide(lambda: pool.config, sync_to_thread=False),
            "config_file": Provide(lambda: config_file, use_cache=True, sync_to_thread=False),
            "access": Provide(lambda: access, use_cache=True, sync_to_thread=False),
            "model_facts": Provide(lambda: model_facts, use_cache=True, sync_to_thread=False),
            "key": Provide(provide_key, sync_to_thread=False),
            "call": Provide(provide_call, sync_to_thread=False),
        },
        exception_handlers=exception_handlers(metrics, access.rejected),
        lifespan=[lifespan],
        openapi_config=openapi_config(lambda: pool.config),
        request_max_body_size=config.gateway.max_body_bytes,
        # Logging is set up once, in our format (gateway.observability.logs.configure_logging);
        # Litestar's default config would replace the root handler with its own format.
        # Unhandled errors are logged by the catch-all in gateway.http.errors.
        logging_config=None,
        debug=False,
    )
    return cross_origin(app, lambda: pool.config.gateway)
