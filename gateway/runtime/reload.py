"""Config reload (SIGHUP, ``gateway reload``, ``POST /admin/reload``).

The file is re-read and validated first; an invalid file, an unreadable model or a plan that does
not fit is refused with its problems and the running set is left untouched. Otherwise models whose
settings did not change keep serving without interruption (an alias change applies at once),
removed ones stop after draining, and changed and new ones are planned against the memory that
is free now (plus what the models about to stop will free) and started.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config.schema import Config, ModelConfig, load_config
from gateway.errors import ConfigError
from gateway.placement.launch import ModelLaunch, launches_from_plan
from gateway.runtime.ondemand import free_devices
from gateway.placement.planning import inventory, model_request, plan_policy, read_models
from gateway.runtime.registry import Registry
from planner.devices import Device
from gateway.placement.nvml import read_nvml_devices
from planner.plan import plan


@dataclass
class ReloadResult:
    reloaded: bool
    problems: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _settings(model: ModelConfig) -> dict:
    # Aliases only change routing: a model whose other settings are equal keeps its worker.
    return model.model_dump(exclude={"aliases"})


def diff_models(old: Config, new: Config) -> tuple[list[str], list[str], list[str], list[str]]:
    """(unchanged, removed, changed, added) model names between two configs."""
    before = {m.name: m for m in old.models}
    after = {m.name: m for m in new.models}
    unchanged = [n for n in after if n in before and _settings(before[n]) == _settings(after[n])]
    changed = [n for n in after if n in before and n not in unchanged]
    added = [n for n in after if n not in before]
    removed = [n for n in before if n not in after]
    return unchanged, removed, changed, added


async def reload_registry(
    registry: Registry,
    config_path: Path,
    *,
    read_nvml: Callable[[], list[Device]] = read_nvml_devices,
) -> tuple[ReloadResult, Config | None]:
    """Re-read ``config_path`` and apply it to the running registry, or refuse with reasons."""
    try:
        new = load_config(config_path)
    except ConfigError as exc:
        return ReloadResult(False, problems=list(exc.problems)), None
    unchanged, removed, changed, added = diff_models(registry.config, new)
    result = ReloadResult(False, unchanged=unchanged, removed=removed, changed=changed, added=added)
    # On-demand models are only planned when a request asks for them.
    eager = {m.name for m in new.models if m.load == "eager"}
    starting = (set(changed) | set(added)) & eager
    subset = new.model_copy(update={"models": [m for m in new.models if m.name in starting]}) if starting else None
    launches: dict[str, ModelLaunch] = {}
    if subset is not None:
        files = read_models(subset)
        if files.problems:
            result.problems = files.problems
            return result, None
        devices = free_devices(
            inventory(new, read_nvml),
            registry.entries.values(),
            declared=new.planner.gpus is not None,
            leaving=set(removed) | set(changed),
        )
        requests = [model_request(m, files.infos[m.name]) for m in subset.models]
        placed = plan(requests, devices, plan_policy(new))
        if not placed.fits:
            result.problems = [f"plan: {p}" for p in placed.problems]
            return result, None
        launches = launches_from_plan(placed, {n: str(p) for n, p in files.paths.items()})
    await registry.replace(new, set(removed) | set(changed), launches, new.gateway.shutdown_grace_s)
    result.reloaded = True
    return result, new
