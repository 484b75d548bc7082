"""``gateway plan`` on a models.toml's text, for the web page's plan preview.

Nothing here touches what runs: the text is parsed (every problem with its dotted path), the
models' headers are read and the plan is made against the inventory ``read_devices`` gives for
the new config, or against a declared one. The problems are those ``gateway validate-config``
reports: the config's, the model files', the eager models' fit together, and each on-demand
model's fit on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config.loading import parse_config
from gateway.config.schema import Config
from gateway.errors import ConfigError, DeviceError
from gateway.placement.launch import ModelLaunch, launches_from_plan
from gateway.placement.planning import on_demand_problems, plan_startup, read_models
from planner.devices import Device, declared_devices
from planner.plan import Plan, Shortfall


@dataclass(frozen=True)
class Preview:
    problems: list[str]
    config: Config | None = None
    plan: Plan | None = None
    launches: dict[str, ModelLaunch] = field(default_factory=dict)
    declared: bool = False  # planned against a declared inventory (the request's or the config's)

    @property
    def valid(self) -> bool:
        """The text parsed and every model's file was read (the plan may still not fit)."""
        return self.plan is not None

    @property
    def fits(self) -> bool:
        return self.plan is not None and not self.problems

    @property
    def shortfalls(self) -> tuple[Shortfall, ...]:
        """The eager models that do not fit for want of memory: where each came closest, and by
        how much (the same facts as their ``plan:`` problems, as data)."""
        return self.plan.shortfalls if self.plan is not None else ()

    @property
    def on_demand(self) -> list[str]:
        return [m.name for m in self.config.models if m.load == "on_demand"] if self.config is not None else []


def preview_config(
    text: str,
    *,
    base_dir: Path,
    read_devices: Callable[[Config], list[Device]],
    gpus: Sequence[str] | None = None,
) -> Preview:
    """Parse, read and plan ``text``; every problem found, all at once.

    ``gpus`` (sizes such as ``"24GiB"``) replaces the inventory; otherwise ``read_devices(config)``
    gives it. Relative model paths are taken from ``base_dir``. GATEWAY_* variables are not
    applied: they only change ``[gateway]``, which the plan does not read.
    """
    problems: list[str] = []
    config: Config | None = None
    try:
        config = parse_config(text, base_dir=base_dir, environ={})
    except ConfigError as exc:
        problems += exc.problems
    devices: list[Device] | None = None
    if gpus is not None:
        try:
            devices = declared_devices(list(gpus))
        except DeviceError as exc:
            problems.append(str(exc))
    if config is None or problems:
        return Preview(problems, config)
    files = read_models(config)
    if files.problems:
        return Preview(files.problems, config)
    declared = devices is not None or config.planner.gpus is not None
    if devices is None:
        devices = read_devices(config)
    plan = plan_startup(config, files.infos, devices)
    problems += [f"plan: {p}" for p in plan.problems]
    problems += [f"plan: {p}" for p in on_demand_problems(config, files.infos, devices)]
    launches = launches_from_plan(plan, {n: str(p) for n, p in files.paths.items()})
    return Preview(problems, config, plan, launches, declared)
