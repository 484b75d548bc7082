"""Placing a model through the load gate: place, ask llama.cpp's dry run, place again.

gateway.placement.decisions decides where a model goes from the planner's prediction, and
gateway.placement.gate judges one dry run of that placement against the memory free now; this
module runs the loop between them for the pool (gateway.runtime.pool), which keeps every model's
life and the placement lock. The dry run itself and the inventory are injected (the pool's
transport and NVML reader), so the loop is tested with fakes of both.

With ``[planner] load_gate`` a placement on GPUs starts only when exactly that placement's dry run
fits; where it does not, the measured excess is taken off those GPUs and the model placed again
(another GPU, or evictions), as many times as there are GPUs; then the load is refused with the
gate's reason. A placement that was learned nothing new from is not tried twice.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.config.schema import Config, ModelConfig
from gateway.engine.dry_run import DryRun
from gateway.errors import ModelUnavailableError
from gateway.placement.decisions import Place, Refuse, Resident, gate_room, less_room, place
from gateway.placement.gate import Exceeds, Pass, check_load
from gateway.placement.launch import ModelLaunch, launch_from_placement
from gateway.placement.planning import inventory, plan_policy
from planner.devices import Device
from planner.plan import ModelRequest
from planner.units import MIB

log = logging.getLogger("gateway")

DryRunner = Callable[[Any, dict[str, str]], Awaitable[DryRun]]  # (worker spec, environment) -> its dry run


@dataclass(frozen=True)
class LoadGate:
    """The pool's means to place through the gate: its transport's dry run, its NVML reader,
    its clock (for eviction costs) and the environment its workers start with."""

    dry_run: DryRunner
    read_nvml: Callable[[], Any] | None
    clock: Callable[[], float]
    base_env: Mapping[str, str]

    async def check(
        self,
        name: str,
        model: ModelConfig,
        launch: ModelLaunch,
        config: Config,
        residents: Sequence[Resident],
        *,
        taken: Mapping[int, int] | None = None,
        leaving: set[str] | frozenset[str] = frozenset(),
        devices: list[Device] | None = None,
    ) -> Pass | Exceeds:
        """Does ``launch``'s dry run fit in the memory free now, less ``taken`` (by GPU: memory
        promised to models about to start), with ``leaving``'s models gone? ``devices``: that
        inventory as the caller read it already (else it is read here). A failed dry run
        refuses the load (ModelUnavailableError)."""
        if devices is None:
            devices = less_room(inventory(config, self.read_nvml), dict(taken or {}))
        run = await self.dry_run(launch.worker_spec(model), launch.worker_env(dict(self.base_env)))
        if not run.ok:
            raise ModelUnavailableError(f"model {name!r}: the load gate's dry run failed: {run.error}")
        room = gate_room(
            devices,
            list(residents),
            declared=config.planner.gpus is not None,
            leaving=leaving,
            reserve_bytes=config.planner.reserve_mib * MIB,
        )
        verdict = check_load(launch, run.buffers, room)
        if isinstance(verdict, Pass):
            log.info("model %s: load gate passed in %.2f s (GPUs %s)", name, run.seconds, launch.cuda_visible_devices)
        else:
            log.warning("model %s: %s; placing it again with the measured figures", name, verdict.reason)
        return verdict

    async def place(
        self,
        name: str,
        model: ModelConfig,
        request: ModelRequest,
        path: str,
        config: Config,
        residents: Callable[[], list[Resident]],
        *,
        taken: Mapping[int, int] | None = None,
        excess: Mapping[int, int] | None = None,
        reason: str = "",
    ) -> Place:
        """Place the model (gateway.placement.decisions.place), then, with ``[planner] load_gate``,
        have the gate check exactly that placement; where it does not fit, place again with the
        measured excess taken off those GPUs. ``residents``: the placed models now (read again
        after each dry run: a worker may have gone meanwhile); ``taken``: memory promised to
        models about to start; ``excess`` and ``reason``: what an earlier gate of this model
        measured and said."""
        devices = less_room(inventory(config, self.read_nvml), dict(taken or {}))
        excess = dict(excess or {})
        for _attempt in range(len(devices) + 1):
            decision = place(
                request,
                less_room(devices, excess),
                residents(),
                plan_policy(config),
                declared=config.planner.gpus is not None,
                gpus=model.gpus,
                now=self.clock(),
            )
            if isinstance(decision, Refuse):
                what = "after the load gate's measurement" if excess else "even after evicting every idle on-demand model"
                raise ModelUnavailableError(f"model {name!r} cannot be placed {what}: " + "; ".join(decision.problems))
            if not config.planner.load_gate or not decision.placement.gpus:
                return decision
            launch = launch_from_placement(decision.placement, path)
            # The inventory this placement was planned on, not a second NVML read.
            verdict = await self.check(name, model, launch, config, residents(), leaving=set(decision.evict), devices=devices)
            if isinstance(verdict, Pass):
                return decision
            reason = verdict.reason
            if all(excess.get(g, 0) >= b for g, b in verdict.excess.items()) and any(verdict.excess.values()):
                break  # nothing new was learned: placing again would give the same answer
            for gpu, extra in verdict.excess.items():
                excess[gpu] = max(excess.get(gpu, 0), extra)
            if not any(verdict.excess.values()):
                break  # the plan itself is right and the memory is not free: nothing to learn
        raise ModelUnavailableError(f"model {name!r} refused by the load gate: {reason}")


def promised_to_others(launches: Mapping[str, ModelLaunch], name: str) -> dict[int, int]:
    """By GPU, the memory the other models of ``launches`` were planned to take (eager models at
    startup: none holds it yet, each is gated as if the others did)."""
    taken: dict[int, int] = {}
    for other, launch in launches.items():
        if other != name:
            for d in launch.devices:
                taken[d.gpu] = taken.get(d.gpu, 0) + d.total_bytes
    return taken
