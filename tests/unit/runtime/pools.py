"""A pool on fake workers for the runtime's tests: configs on a declared inventory, the pool, a wait."""

from __future__ import annotations

import asyncio
from pathlib import Path

import tomli_w

from gateway.config.loading import parse_config
from gateway.config.schema import Config
from gateway.http.app import plan_now
from gateway.runtime.events import ModelEvent
from gateway.runtime.fake import FakeTransport
from gateway.runtime.pool import ModelPool

FAST = {"restart_backoff_s": 0.05, "load_timeout_s": 5.0, "shutdown_grace_s": 1.0, "request_timeout_s": 5.0}


def make_config(tiny: Path, models: list[dict], *, gpus: list[str] | None = None, planner_packing: str | None = None, **gateway) -> Config:
    planner = {"gpus": gpus or ["64GiB"], "reserve_mib": 0, "min_budget_mib": 0}
    if planner_packing is not None:
        planner["packing"] = planner_packing
    doc = {
        "gateway": {**FAST, **gateway},
        "planner": planner,
        "models": [{"path": str(tiny), "n_ctx": 256, **m} for m in models],
    }
    return parse_config(tomli_w.dumps(doc), environ={})


def make_pool(config: Config, transport: FakeTransport, events: list | None = None) -> ModelPool:
    def on_event(event: ModelEvent) -> None:
        if events is not None:
            events.append(event)

    return ModelPool(config, plan_now(config), base_env={}, transport=transport, on_event=on_event)


async def wait_for(predicate, timeout: float = 120.0) -> None:  # the timeout only guards against a hang
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)
