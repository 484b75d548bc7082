"""On-demand loading and eviction by memory, not by model count.

An on-demand model loads on its first request (every request that arrives meanwhile waits for
the same load). It is placed against what is in use *now*: NVML's free memory, or for a declared
inventory the declared memory minus what the running models were planned to use. When it does
not fit, idle on-demand models are evicted, chosen by the memory they free on the GPUs the new
model may use, then lowest priority, then least recently used, and only as many as needed.
Eager models and models with requests running or waiting are never evicted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from gateway.errors import ModelUnavailableError
from gateway.placement.launch import launch_from_placement
from gateway.placement.planning import inventory, model_request, plan_policy, read_models
from gateway.runtime.registry import ModelEntry, Registry
from gateway.runtime.worker_process import ModelState, WorkerHandle
from planner.devices import Device
from planner.eviction import EvictionCandidate, choose_evictions
from gateway.placement.nvml import read_nvml_devices
from planner.plan import Plan, plan

log = logging.getLogger("gateway")

REAP_INTERVAL_S = 1.0


def free_devices(devices: Sequence[Device], entries: Iterable[ModelEntry], declared: bool, leaving: set[str]) -> list[Device]:
    """Each GPU's free memory for a model about to start.

    NVML's free memory already excludes every running model; the models about to stop will give
    theirs back. A declared inventory is static: take away what the models that stay use.
    """
    adjust: dict[int, int] = {}
    for entry in entries:
        if entry.launch is None or entry.handle is None or entry.state not in ("ready", "starting"):
            continue
        stays = entry.name not in leaving
        for d in entry.launch.devices:
            if declared and stays:
                adjust[d.gpu] = adjust.get(d.gpu, 0) - d.total_bytes
            elif not declared and not stays:
                adjust[d.gpu] = adjust.get(d.gpu, 0) + d.total_bytes
    return [
        dataclasses.replace(d, free_bytes=max(0, min(d.total_bytes, d.free_bytes + adjust.get(d.index, 0))))
        for d in devices
    ]


class OnDemand:
    """The single owner of on-demand placement decisions for one registry."""

    def __init__(
        self,
        registry: Registry,
        *,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        read_nvml: Callable[[], list[Device]] = read_nvml_devices,
    ) -> None:
        self.registry = registry
        self._on_event = on_event or (lambda name, event: None)
        self._read_nvml = read_nvml
        self._lock = asyncio.Lock()  # one placement decision at a time

    async def acquire(self, entry: ModelEntry) -> WorkerHandle:
        """The model's worker, loading it first when it is an on-demand model that is not loaded."""
        h = entry.handle
        if h is not None and h.state == ModelState.READY and not entry.evicting:
            return h
        if not entry.on_demand:
            return entry.ready_handle()
        if entry.loading is None or entry.loading.done():
            entry.loading = asyncio.create_task(self._load(entry), name=f"load-{entry.name}")
        timeout = self.registry.config.gateway.load_timeout_s
        started = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.shield(entry.loading), timeout)
        except TimeoutError:
            raise ModelUnavailableError(f"model {entry.name!r} did not load within {timeout:g} s") from None
        finally:
            self._on_event("load_wait", {"model": entry.name, "seconds": time.monotonic() - started})
        return entry.ready_handle()

    def _attempt(self, request, devices: list[Device], leaving: set[str]) -> Plan:  # noqa: ANN001
        config = self.registry.config
        free = free_devices(devices, self.registry.entries.values(), config.planner.gpus is not None, leaving)
        return plan([request], free, plan_policy(config))

    async def _load(self, entry: ModelEntry) -> None:
        async with self._lock:
            if entry.handle is not None and entry.handle.state == ModelState.READY and not entry.evicting:
                return
            config = self.registry.config
            model = entry.config
            files = read_models(config.model_copy(update={"models": [model]}))
            if files.problems:
                raise ModelUnavailableError(f"model {entry.name!r}: " + "; ".join(files.problems))
            request = model_request(model, files.infos[model.name])
            devices = inventory(config, self._read_nvml)
            result = self._attempt(request, devices, set())
            evict: list[ModelEntry] = []
            if not result.fits:
                evict, result = self._choose_evictions(entry, request, devices)
            for victim in evict:
                await self._unload(victim, "make_room", for_model=entry.name)
            launch = launch_from_placement(result.placements[0], str(files.paths[model.name]))
            handle = self.registry.install(entry, launch)
            self._on_event("loading", {"model": entry.name, "reason": "on_demand"})
            await handle.start()
            state = await handle.wait_ready(config.gateway.load_timeout_s)
            entry.last_used = time.monotonic()
            if state != ModelState.READY:
                raise ModelUnavailableError(f"model {entry.name!r} failed to load: {handle.reason}")

    def _choose_evictions(self, entry: ModelEntry, request, devices: list[Device]) -> tuple[list[ModelEntry], Plan]:  # noqa: ANN001
        needed = set(entry.config.gpus) if entry.config.gpus is not None else {d.index for d in devices}
        candidates = {
            e.name: e
            for e in self.registry.entries.values()
            if e.on_demand and e is not entry and e.state == "ready" and not e.busy and not e.evicting and e.launch is not None
        }
        attempts: dict[frozenset[str], Plan] = {}

        def fits(names: frozenset[str]) -> bool:
            attempts[names] = self._attempt(request, devices, set(names))
            return attempts[names].fits

        chosen = choose_evictions(
            [
                EvictionCandidate(
                    name=e.name,
                    freed_bytes=sum(d.total_bytes for d in e.launch.devices if d.gpu in needed),  # type: ignore[union-attr]
                    priority=e.config.priority,
                    last_used=e.last_used,
                )
                for e in candidates.values()
            ],
            fits,
        )
        if chosen is None:
            explanation = "; ".join(attempts[max(attempts, key=len)].problems) if attempts else ""
            raise ModelUnavailableError(
                f"model {entry.name!r} cannot be placed even after evicting every idle on-demand model: {explanation}"
            )
        return [candidates[n] for n in chosen], attempts[frozenset(chosen)]

    async def _unload(self, entry: ModelEntry, reason: str, for_model: str | None = None) -> None:
        """Stop a model's worker; it becomes "stopped" and loads again on its next request."""
        entry.evicting = True
        try:
            if entry.busy:
                # A request slipped in since it was chosen: it keeps its model.
                raise ModelUnavailableError(f"model {entry.name!r} became busy while being evicted; retry")
            handle = entry.handle
            if handle is not None:
                await handle.stop(10.0)
            self.registry.uninstall(entry)
            log.info("model %s: unloaded (%s%s)", entry.name, reason, f" for {for_model}" if for_model else "")
            self._on_event("evicted", {"model": entry.name, "reason": reason})
        finally:
            entry.evicting = False

    async def reap_idle(self) -> None:
        """Unload on-demand models idle for longer than their idle_ttl_s (runs until cancelled)."""
        while True:
            await asyncio.sleep(REAP_INTERVAL_S)
            now = time.monotonic()
            for entry in list(self.registry.entries.values()):
                ttl = entry.config.idle_ttl_s
                if not entry.on_demand or ttl is None or entry.state != "ready" or entry.busy:
                    continue
                if now - entry.last_used < ttl or (entry.loading is not None and not entry.loading.done()):
                    continue
                async with self._lock:
                    if entry.state == "ready" and not entry.busy and time.monotonic() - entry.last_used >= ttl:
                        try:
                            await self._unload(entry, "idle_ttl")
                        except ModelUnavailableError:
                            pass
