"""Where a model goes in a running gateway: pure decisions over the pool's facts.

The pool (gateway.runtime.pool) keeps every model's life and does the I/O (the inventory, the
model's header); before it starts a model it hands this module what it knows as data, one
``Resident`` per placed model, and acts on the answer: ``Place`` (the plan, and the models to
evict first) or ``Refuse`` (why it cannot be placed). Nothing here reads NVML, a file or the
clock, and nothing here changes a model.

Memory in use is counted from the models that hold it (``Resident.holds_memory``, which the pool
takes from ``gateway.runtime.states.HOLDS_MEMORY``): NVML's free memory already excludes them, and
a declared inventory is static, so it is what they were planned to use that is taken away. A model
still loading (``Resident.allocating``) has not allocated all of its memory yet, so NVML's figure
is too high by up to its plan: its whole plan is taken away too (what it allocated so far counts
twice until it is ready; the pool places again then, rather than refuse: gateway.runtime.pool).
Which idle models to evict is planner.eviction's choice; this module asks the planner, for each
set it considers, whether the new model fits once that set is gone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from planner.devices import Device
from planner.eviction import EvictionCandidate, RequestRate, choose_evictions
from planner.plan import ModelRequest, Placement, Plan, PlanPolicy, plan, share_load
from planner.units import GIB


@dataclass(frozen=True)
class Resident:
    """A placed model as placement sees it: where it holds memory and what evicting it costs."""

    name: str
    planned_bytes: Mapping[int, int]  # by GPU index: what the plan gave it (PlannedDevice.total_bytes)
    holds_memory: bool  # its worker is in a state that holds its planned memory
    computes_on_cpu: bool  # some of its layers run on the CPU: it shares the cores
    weight: float | None  # its configured load weight (``packing = "spread"``); None: its planned GiB
    allocating: bool = False  # its worker is loading: NVML does not show all of its memory yet
    # An on-demand model, ready and idle, that no eviction has chosen yet: it may be evicted.
    evictable: bool = False
    priority: int = 0
    last_used: float = 0.0
    load_seconds: float | None = None  # its last measured load (start to ready)
    requests: RequestRate | None = None


@dataclass(frozen=True)
class Place:
    """Start the model as ``placement`` says, once the models in ``evict`` are gone."""

    placement: Placement
    evict: tuple[str, ...] = ()


@dataclass(frozen=True)
class Refuse:
    """The model cannot be placed, even after evicting every idle on-demand model."""

    problems: tuple[str, ...]


def free_devices(devices: Sequence[Device], residents: Iterable[Resident], declared: bool, leaving: Collection[str]) -> list[Device]:
    """Each GPU's free memory for a model about to start.

    NVML's free memory already excludes every model that holds memory, except what a loading one
    has yet to allocate (its whole plan is taken away: the safe side); the models about to stop
    (``leaving``) will give theirs back. A declared inventory is static: take away what the
    models that stay hold.
    """
    adjust: dict[int, int] = {}
    for r in residents:
        if not r.holds_memory:
            continue
        stays = r.name not in leaving
        for gpu, planned in r.planned_bytes.items():
            if (declared or r.allocating) and stays:
                adjust[gpu] = adjust.get(gpu, 0) - planned
            elif not declared and not stays:
                adjust[gpu] = adjust.get(gpu, 0) + planned
    return [
        dataclasses.replace(d, free_bytes=max(0, min(d.total_bytes, d.free_bytes + adjust.get(d.index, 0))))
        for d in devices
    ]


def running_load(residents: Iterable[Resident], leaving: Collection[str]) -> dict[int, float]:
    """The expected load on each GPU from the models that stay (``packing = "spread"`` places a
    new model beside the lightest): each one's ``weight``, else its planned GiB (planner.plan's
    default counts weights and KV only: close, not equal), shared over its GPUs by their bytes."""
    load: dict[int, float] = {}
    for r in residents:
        if not r.holds_memory or r.name in leaving or not r.planned_bytes:
            continue
        weight = r.weight if r.weight is not None else sum(r.planned_bytes.values()) / GIB
        share_load(load, r.planned_bytes, weight)
    return load


def cpu_models_running(residents: Iterable[Resident], leaving: Collection[str]) -> int:
    """Models computing on the CPU that keep running: new CPU models share the cores with them."""
    return sum(1 for r in residents if r.holds_memory and r.computes_on_cpu and r.name not in leaving)


def plan_beside(
    request: ModelRequest,
    devices: Sequence[Device],
    residents: Sequence[Resident],
    policy: PlanPolicy,
    *,
    declared: bool,
    leaving: Collection[str] = frozenset(),
) -> Plan:
    """The new model planned beside the models that hold memory and stay."""
    free = free_devices(devices, residents, declared, leaving)
    return plan([request], free, policy, load=running_load(residents, leaving))


def place(
    request: ModelRequest,
    devices: Sequence[Device],
    residents: Sequence[Resident],
    policy: PlanPolicy,
    *,
    declared: bool,
    gpus: Sequence[int] | None,
    now: float,
) -> Place | Refuse:
    """Where the model of ``request`` goes: beside the others if it fits, else after evicting
    the idle on-demand models planner.eviction chooses (cheapest in expected waiting per byte
    freed on the GPUs the model may use: its ``gpus``, else all)."""
    first = plan_beside(request, devices, residents, policy, declared=declared)
    if first.fits:
        return Place(first.placements[0])
    needed = set(gpus) if gpus is not None else {d.index for d in devices}
    candidates = [_candidate(r, needed) for r in residents if r.evictable and r.name != request.name]
    attempts: dict[frozenset[str], Plan] = {frozenset(): first}

    def fits(names: frozenset[str]) -> bool:
        if names not in attempts:
            attempts[names] = plan_beside(request, devices, residents, policy, declared=declared, leaving=names)
        return attempts[names].fits

    chosen = choose_evictions(candidates, fits, now=now)
    if chosen is None:
        return Refuse(tuple(attempts[max(attempts, key=len)].problems))
    return Place(attempts[frozenset(chosen)].placements[0], tuple(chosen))


def _candidate(r: Resident, needed: set[int]) -> EvictionCandidate:
    return EvictionCandidate(
        name=r.name,
        freed_bytes=sum(b for gpu, b in r.planned_bytes.items() if gpu in needed),
        priority=r.priority,
        last_used=r.last_used,
        load_seconds=r.load_seconds,
        requests=r.requests,
    )


def gate_room(
    devices: Sequence[Device], residents: Iterable[Resident], *, declared: bool, leaving: Collection[str], reserve_bytes: int
) -> dict[int, int]:
    """By GPU index: what a model about to start may use (the planner's budget: free less the
    reserve), for the load gate (gateway.placement.gate)."""
    return {d.index: max(0, d.free_bytes - reserve_bytes) for d in free_devices(devices, residents, declared, leaving)}


def less_room(devices: Sequence[Device], excess: Mapping[int, int]) -> list[Device]:
    """The inventory with each GPU's free memory lowered by what the load gate measured beyond the
    plan there: placing again on it plans the model with llama.cpp's figure, not the estimate."""
    return [dataclasses.replace(d, free_bytes=max(0, d.free_bytes - excess.get(d.index, 0))) for d in devices]
