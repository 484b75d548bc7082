"""/admin/*: reload the config (the work behind SIGHUP and `gateway reload`), load and unload an
on-demand model, and preview the plan of a models.toml (the web page's admin actions)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar import Request, Response, get, post
from litestar.handlers import HTTPRouteHandler

from gateway.access.keyring import keys_required
from gateway.config.schema import Config
from gateway.config.start_only import keep_start_only
from gateway.errors import ConfigError
from gateway.http.admin_params import plan_preview_request
from gateway.http.auth import Auth
from gateway.http.memory_map import plan_map
from gateway.http.network import exposure_problem
from gateway.placement.decisions import free_devices
from gateway.placement.facts import ModelFactsReader
from gateway.placement.host_memory import read_host_memory
from gateway.placement.planning import inventory
from gateway.placement.preview import preview_config
from gateway.runtime.pool import ModelPool, ReloadResult
from gateway.config.source import ConfigFile
from planner.devices import Device

log = logging.getLogger("gateway")


async def admin_reload(pool: NamedDependency[ModelPool], config_file: NamedDependency[ConfigFile]) -> Response:
    """Re-read models.toml and apply it; 422 with every problem when it is refused."""
    try:
        # Off the event loop: a big keys file takes seconds to parse, and requests go on meanwhile.
        new = await asyncio.to_thread(config_file.read)
    except ConfigError as exc:
        result = ReloadResult(False, problems=list(exc.problems))
    else:
        # The settings read at start keep their running values (the config in force says what
        # runs); so the address checked is the one bound at start, whatever the file says now,
        # and a reload may not drop the keys it needs.
        applied, not_applied = keep_start_only(pool.config, new, "gateway")
        exposed = exposure_problem(applied, keys_required(applied))
        if exposed is not None:
            result = ReloadResult(False, problems=[exposed])
        else:
            result = await pool.reload(applied)
            if result.reloaded:
                result.not_applied = not_applied
    if result.reloaded:
        log.info(
            "reloaded %s: unchanged %s, removed %s, changed %s, added %s, restarted %s",
            config_file.path, result.unchanged, result.removed, result.changed, result.added, result.restarted,
        )
        for line in result.not_applied:
            log.warning("reload: not applied until the gateway restarts: %s", line)
    else:
        log.error("reload of %s refused, nothing changed:\n  %s", config_file.path, "\n  ".join(result.problems))
    return Response(content=result.as_dict(), status_code=200 if result.reloaded else 422)


async def admin_drain(pool: NamedDependency[ModelPool]) -> dict[str, Any]:
    """Stop taking requests and wait for those in flight, up to ``shutdown_grace_s``: what the
    server does first on SIGTERM (gateway.http.server), so that /health says "draining" (503)
    instead of refusing connections. There is no undo: the gateway is on its way out."""
    await pool.drain(pool.config.gateway.shutdown_grace_s)
    return {"draining": True, "in_flight": pool.in_flight()}


MODEL_ACTIONS = ("load", "unload", "restart")
MODEL_VIEWS = ("logs",)


def _model_target(method: str, target: str, allowed: tuple[str, ...]) -> tuple[str, str]:
    """(model name, action) of ``/admin/models/{name}/{action}``; 404 for anything else."""
    name, _, action = target.strip("/").rpartition("/")
    if not name or action not in allowed:
        uses = " or ".join(f".../{a}" for a in allowed)
        raise NotFoundException(f"no such admin action: {method} /admin/models/{target.strip('/')} (use {uses})")
    return name, action


async def admin_model_action(
    pool: NamedDependency[ModelPool], model_facts: NamedDependency[ModelFactsReader], target: FromPath[str]
) -> dict[str, Any]:
    """POST /admin/models/{name}/load, /unload and /restart; the model as /v1/models shows it
    afterwards. Unload keeps an eager model down until load, restart or a reload.

    One route takes the whole rest of the path, so that a model name with a "/" in it (allowed,
    as in /v1/models/{id}) needs no escaping; the documented paths are in gateway.http.openapi.
    """
    name, action = _model_target("POST", target, MODEL_ACTIONS)
    act = {"load": pool.load, "unload": pool.unload, "restart": pool.restart}[action]
    entry = await act(name)
    facts = await model_facts.facts([entry.config.path])
    return pool.describe(entry, facts[entry.config.path])


async def admin_model_view(pool: NamedDependency[ModelPool], target: FromPath[str]) -> dict[str, Any]:
    """GET /admin/models/{name}/logs: the last lines its worker wrote to stderr (llama.cpp's
    log; the current worker's, or the failed one's while it stays failed; none once unloaded)."""
    name, _ = _model_target("GET", target, MODEL_VIEWS)
    entry = pool.resolve(name)
    worker = entry.worker
    return {
        "id": entry.name,
        "state": entry.state.value,
        "pid": worker.pid if worker is not None else None,
        "lines": worker.log_tail() if worker is not None else [],
    }


async def admin_plan(
    request: Request, pool: NamedDependency[ModelPool], config_file: NamedDependency[ConfigFile]
) -> dict[str, Any]:
    """The plan a models.toml would get on this machine (or a declared inventory); runs nothing.

    This machine's GPUs are taken as if the new config replaced the running one: NVML's free
    memory plus what this gateway's own models were planned to use.
    """
    body = plan_preview_request(await request.body())
    residents = pool.residents()
    names = set(pool.entries)

    def read_devices(config: Config) -> list[Device]:
        return free_devices(inventory(config), residents, config.planner.gpus is not None, names)

    base_dir = config_file.path.parent if config_file.path is not None else Path.cwd()

    def work() -> dict[str, Any]:
        # Reads model headers (and NVML): off the event loop.
        preview = preview_config(body.config, base_dir=base_dir, read_devices=read_devices, gpus=body.gpus)
        host = read_host_memory()
        return {
            "valid": preview.valid,
            "fits": preview.fits,
            "problems": preview.problems,
            "inventory": "declared" if preview.declared else "nvml",
            "on_demand": preview.on_demand,
            "map": plan_map(preview.config, preview.plan, preview.launches, host)
            if preview.plan is not None and preview.config is not None
            else None,
        }

    return await asyncio.to_thread(work)


def handlers(auth: Auth) -> list[HTTPRouteHandler]:
    admin = [auth.guard("admin")]
    return [
        post("/admin/reload", status_code=200, guards=admin, operation_id="reload")(admin_reload),
        post("/admin/plan", status_code=200, guards=admin, operation_id="planPreview")(admin_plan),
        post("/admin/drain", status_code=200, guards=admin, operation_id="drain")(admin_drain),
        post("/admin/models/{target:path}", status_code=200, guards=admin, include_in_schema=False)(admin_model_action),
        get("/admin/models/{target:path}", guards=admin, include_in_schema=False)(admin_model_view),
    ]
