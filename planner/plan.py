"""The global planner: place every model of a config on the GPUs at once.

``plan(models, devices, policy) -> Plan`` is a pure function: deterministic, no I/O, no logging.

Rules, in order:
- models are placed by priority (higher first), then size (larger first), then config order;
- a model's offloaded layers go to its GPUs as contiguous ranges in device order, the output
  layer on the last one (llama.cpp's rule, see planner.split);
- fewer GPUs per model is better: each extra GPU costs a CUDA context (~530 MiB on the H200,
  docs/calibration.md#cuda-context);
  among the sets of the smallest size that fit, ``spread`` (the default) takes the one whose GPUs
  carry the least expected load so far (each placed model adds its ``weight``, by default its
  size in GiB, shared over its GPUs by their bytes; ties go to the most memory left, as Ollama
  does), so that models share compute and bandwidth only when they must; ``best_fit`` takes the
  set that leaves the least memory unused on it (keeping big holes for later models),
  ``first_fit`` the first in device order (the PoC's behaviour, docs/poc-reference.md#other-poc-notes);
- ``spread`` never places fewer models than ``best_fit``: where spreading leaves a model out
  that packing would place, the plan is the packed one, and says so;
- each GPU keeps its reserve; each model stays within its ``gpus`` and ``max_vram_mib``;
- partial CPU offload (the last layers on GPUs, the rest on the CPU, as llama.cpp offloads) only
  where ``allow_cpu_offload`` says so; a machine without any GPU runs every model on the CPU.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from planner.devices import Device, DevicePolicy, SkippedDevice, UsableDevice, select_devices
from planner.memory import (
    CudaCosts,
    MemoryEstimate,
    RunSettings,
    estimate_memory,
    gpu_compute_bytes,
    kv_layer_bytes,
    kv_type_problems,
)
from planner.model_info import ModelInfo
from planner.split import assign_layers, layer_counts, resolve_n_gpu_layers, tensor_split_for_counts
from planner.units import GIB, MIB

Packing = Literal["spread", "best_fit", "first_fit"]


@dataclass(frozen=True)
class ModelRequest:
    """One model to place: its header facts and the config settings that matter for memory."""

    name: str
    info: ModelInfo
    settings: RunSettings = RunSettings()
    n_gpu_layers: int = -1
    split_mode: str = "layer"
    tensor_split: tuple[float, ...] | None = None
    gpus: tuple[int, ...] | None = None
    max_vram_bytes: int | None = None
    priority: int = 0
    allow_cpu_offload: bool = False
    weight: float | None = None  # expected share of traffic, for spread; None: its size in GiB
    # Bytes per GPU it was measured to need beyond the estimate at an earlier load (the shell
    # learns and keeps it: gateway.placement.learning); planned on each GPU that holds its layers.
    learned_bytes: int = 0


@dataclass(frozen=True)
class PlanPolicy:
    devices: DevicePolicy = DevicePolicy()
    costs: CudaCosts = CudaCosts()
    packing: Packing = "spread"


@dataclass(frozen=True)
class Placement:
    """Where one model goes and what it costs there."""

    name: str
    gpus: tuple[int, ...]  # inventory indices, in the model's CUDA_VISIBLE_DEVICES order
    layer_counts: tuple[int, ...]  # offloaded layers per GPU (the output layer included)
    n_gpu_layers: int  # what to pass to llama.cpp: -1 all, 0 none
    tensor_split: tuple[float, ...] | None
    split_mode: str
    memory: MemoryEstimate
    notes: tuple[str, ...] = ()
    settings: RunSettings = RunSettings()  # the context it was sized for (slots, pool)

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(str(g) for g in self.gpus)

    @property
    def vram_bytes(self) -> int:
        return sum(d.total_bytes for d in self.memory.devices)


@dataclass(frozen=True)
class Shortfall:
    """Where a model that does not fit came closest, as data (``Plan.problems`` says it in words).

    The closest attempt fills the model's GPUs in device order (one for ``split_mode = "none"``).
    ``gpu`` is the GPU where filling stopped: there the model's share needs ``need_bytes`` and
    ``room_bytes`` were left (after the models placed before it), so it is short by
    ``short_bytes``; ``placed_layers`` of its ``gpu_layers`` GPU layers fit on the GPUs before it
    in ``tried_gpus`` (the GPUs of the attempt, in device order). ``gpu`` is None when every GPU held its share but the whole is over
    ``max_vram_mib``: then ``need_bytes`` is the total and ``room_bytes`` the cap.
    """

    model: str
    gpu: int | None
    short_bytes: int
    need_bytes: int
    room_bytes: int
    placed_layers: int
    gpu_layers: int
    tried_gpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class Plan:
    gpus: tuple[UsableDevice, ...]  # usable GPUs in device order
    skipped: tuple[SkippedDevice, ...]
    placements: tuple[Placement, ...]  # in the order the models were given; placed ones only
    problems: tuple[str, ...] = ()  # one line per model that does not fit
    # The models that do not fit for want of memory (not a refused KV type, a manual split or
    # no usable GPU), in the order they were given: where each came closest, and by how much.
    shortfalls: tuple[Shortfall, ...] = ()

    @property
    def fits(self) -> bool:
        return not self.problems

    def placement(self, name: str) -> Placement | None:
        return next((p for p in self.placements if p.name == name), None)

    def used_bytes(self, gpu: int) -> list[tuple[str, int]]:
        """(model, bytes) on one inventory GPU."""
        out = []
        for p in self.placements:
            for slot, idx in enumerate(p.gpus):
                if idx == gpu:
                    out.append((p.name, p.memory.devices[slot].total_bytes))
        return out


@dataclass
class _Fit:
    gpus: tuple[int, ...]
    counts: tuple[int, ...]
    memory: MemoryEstimate
    slack: int


@dataclass
class _Shortfall:
    gpu: int
    short_bytes: int
    placed_layers: int


class _Costs:
    """O(1) per-device costs for contiguous layer ranges, from the same formulas as estimate_memory."""

    def __init__(self, req: ModelRequest, costs: CudaCosts) -> None:
        info, s = req.info, req.settings
        self.req, self.info, self.settings = req, info, s
        self.n = info.n_layers
        kv = kv_layer_bytes(info, s) if s.offload_kqv else [0] * self.n
        self.prefix = [0]
        # Per kind of layer (sliding window or not): how many lie before each index, and one
        # of them. A device's compute buffer depends only on which kinds it holds.
        self.prefix_swa = [0]
        for il in range(self.n):
            self.prefix.append(self.prefix[-1] + info.layer_bytes[il] + kv[il])
            self.prefix_swa.append(self.prefix_swa[-1] + info.swa_layers[il])
        self.example = {is_swa: info.swa_layers.index(is_swa) for is_swa in set(info.swa_layers)}
        self.overhead = costs.overhead_bytes
        self.growth = costs.growth_for(s)
        self.learned = req.learned_bytes
        self._compute: dict[tuple, int] = {}

    def _compute_bytes(self, kinds: tuple[bool, ...], holds_output: bool, input_from_elsewhere: bool, pipeline: bool) -> int:
        # Only a handful of distinct cases per model: memoised, this keeps packing under 100 ms.
        key = (kinds, holds_output, input_from_elsewhere, pipeline)
        got = self._compute.get(key)
        if got is None:
            got = self._compute[key] = gpu_compute_bytes(
                self.info,
                self.settings,
                [self.example[k] for k in kinds],
                holds_output=holds_output,
                input_from_elsewhere=input_from_elsewhere,
                pipeline_parallel=pipeline,
            )
        return got

    def lower_bound(self, m: int, k: int) -> int:
        """Bytes that ``m`` offloaded layers need at least on ``k`` GPUs (no compute buffers)."""
        n = self.n
        start = n + 1 - m
        layers = self.prefix[n] - self.prefix[min(start, n)]
        return layers + self.info.output_layer_bytes + k * self.overhead

    def device_cost(self, a: int, b: int, *, pipeline: bool) -> int:
        """Bytes on one GPU holding layers a..b-1 (b == n + 1 includes the output layer)."""
        reps = self.n
        last = min(b, reps)
        holds_output = b == reps + 1
        weights_kv = self.prefix[last] - self.prefix[a] if last > a else 0
        if holds_output:
            weights_kv += self.info.output_layer_bytes + self.info.other_bytes
        kinds: tuple[bool, ...] = ()
        if last > a:
            n_swa = self.prefix_swa[last] - self.prefix_swa[a]
            kinds = ((False,) if n_swa < last - a else ()) + ((True,) if n_swa else ())
        compute = self._compute_bytes(kinds, holds_output, a > 0, pipeline)
        return weights_kv + compute + self.growth + self.overhead + self.learned


def _fill(costs: _Costs, gpus: Sequence[int], budgets: dict[int, int], m: int) -> tuple[list[int] | None, _Shortfall | None]:
    """Greedily give each GPU as many of the last ``m`` layers as fit; the last GPU must take the rest.

    Returns per-GPU layer counts, or the shortfall on the GPU where filling stopped.
    """
    n = costs.n
    start = n + 1 - m
    pipeline = len(gpus) > 1 and m == n + 1 and costs.settings.offload_kqv
    counts: list[int] = []
    a = start
    for j, g in enumerate(gpus):
        budget = budgets[g]
        need = costs.device_cost(a, n + 1, pipeline=pipeline)
        if need <= budget or j == len(gpus) - 1:
            # The rest, output layer included, goes here: it fits, or this is the last GPU.
            if need > budget:
                return None, _Shortfall(g, need - budget, a - start)
            counts.append(n + 1 - a)
            return counts, None
        # The largest b with cost(a, b) <= budget, leaving the output layer to later GPUs.
        lo, hi = a, n
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if costs.device_cost(a, mid, pipeline=pipeline) <= budget:
                lo = mid
            else:
                hi = mid - 1
        if lo == a:
            return None, _Shortfall(g, costs.device_cost(a, a + 1, pipeline=pipeline) - budget, a - start)
        counts.append(lo - a)
        a = lo
    return None, None


def _assignment(n: int, m: int, counts: Sequence[int]) -> list[int | None]:
    out: list[int | None] = [None] * (n + 1 - m)
    for slot, c in enumerate(counts):
        out.extend([slot] * c)
    return out


def _try_sets(
    req: ModelRequest,
    costs: _Costs,
    allowed: Sequence[int],
    budgets: dict[int, int],
    m: int,
    packing: Packing,
    policy: PlanPolicy,
    load: Mapping[int, float] | None = None,
) -> _Fit | None:
    max_k = 1 if req.split_mode == "none" else len(allowed)
    by_room = sorted((budgets[g] for g in allowed), reverse=True)
    # The estimate depends on the layer counts only, not on which GPUs hold them: sets of the
    # same size often fill alike (every single GPU holds the whole model), so compute each once.
    estimates: dict[tuple[int, ...], MemoryEstimate] = {}
    for k in range(1, max_k + 1):
        need = costs.lower_bound(m, k)
        if sum(by_room[:k]) < need:
            continue  # not even the k roomiest GPUs together hold the weights
        best: _Fit | None = None
        for combo in itertools.combinations(allowed, k):
            if sum(budgets[g] for g in combo) < need:
                continue
            counts, _ = _fill(costs, combo, budgets, m)
            if counts is None or len(counts) < k:
                continue  # a subset of this set holds the model: tried with fewer GPUs
            memory = estimates.get(tuple(counts))
            if memory is None:
                memory = estimates[tuple(counts)] = estimate_memory(
                    req.info, req.settings, _assignment(costs.n, m, counts), k, policy.costs, learned_bytes=req.learned_bytes
                )
            totals = [d.total_bytes for d in memory.devices]
            if any(t > budgets[g] for t, g in zip(totals, combo)):
                continue
            if req.max_vram_bytes is not None and sum(totals) > req.max_vram_bytes:
                continue
            slack = sum(budgets[g] - t for t, g in zip(totals, combo))
            fit = _Fit(tuple(combo), tuple(counts), memory, slack)
            if packing == "first_fit":
                return fit
            if best is None or _better(fit, best, packing, load or {}):
                best = fit
        if best is not None:
            return best
    return None


def _better(fit: _Fit, best: _Fit, packing: Packing, load: Mapping[int, float]) -> bool:
    """Whether ``fit`` beats ``best`` (strictly: the earlier set in device order wins ties)."""
    if packing == "spread":
        def key(f: _Fit) -> tuple[float, int]:
            return (sum(load.get(g, 0.0) for g in f.gpus), -f.slack)

        return key(fit) < key(best)
    return fit.slack < best.slack


def _max_offload(
    req: ModelRequest,
    costs: _Costs,
    allowed: Sequence[int],
    budgets: dict[int, int],
    m_max: int,
    policy: PlanPolicy,
    load: Mapping[int, float] | None = None,
) -> _Fit | None:
    """The placement with the most layers on GPUs, by bisection on the layer count."""
    lo, hi, best = 1, m_max - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        fit = _try_sets(req, costs, allowed, budgets, mid, policy.packing, policy, load)
        if fit is not None:
            best, lo = (fit, mid), mid + 1
        else:
            hi = mid - 1
    return best[0] if best else None


def _placement(req: ModelRequest, fit: _Fit, m: int, notes: tuple[str, ...]) -> Placement:
    n = req.info.n_layers
    split = tensor_split_for_counts(fit.counts) if len(fit.gpus) > 1 else None
    return Placement(
        name=req.name,
        gpus=fit.gpus,
        layer_counts=fit.counts,
        n_gpu_layers=-1 if m == n + 1 else m,
        tensor_split=tuple(split) if split else None,
        split_mode=req.split_mode,
        memory=fit.memory,
        notes=notes,
        settings=req.settings,
    )


def _cpu_placement(req: ModelRequest, policy: PlanPolicy, note: str) -> Placement:
    memory = estimate_memory(req.info, req.settings, [None] * (req.info.n_layers + 1), 0, policy.costs, learned_bytes=req.learned_bytes)
    return Placement(req.name, (), (), 0, None, req.split_mode, memory, (note,), req.settings)


def _mib(b: int) -> str:
    return f"{(b + MIB - 1) // MIB:,} MiB"


def _manual(req: ModelRequest, allowed: Sequence[int], budgets: dict[int, int], policy: PlanPolicy) -> tuple[Placement | None, str | None]:
    """Honour a manual tensor_split (the PoC's ``--tensor-split``) and check that it fits."""
    split = req.tensor_split or ()
    n = req.info.n_layers
    if len(split) > len(allowed):
        return None, (
            f"model {req.name!r}: tensor_split has {len(split)} entries but only {len(allowed)} GPU(s) "
            f"are usable for it ({', '.join(map(str, allowed)) or 'none'})"
        )
    devs = list(allowed[: len(split)])
    assignment = assign_layers(split, len(devs), n, req.n_gpu_layers)
    counts = layer_counts(assignment, len(devs))
    # A zero-weight device gets no layers but would still get a CUDA context: leave it out.
    # Dropping it leaves every cumulative fraction, and so every layer, where it was.
    keep = [i for i, c in enumerate(counts) if c > 0]
    remap = {old: new for new, old in enumerate(keep)}
    assignment = [None if d is None else remap[d] for d in assignment]
    gpus = tuple(devs[i] for i in keep)
    weights = tuple(float(split[i]) for i in keep)
    memory = estimate_memory(req.info, req.settings, assignment, len(gpus), policy.costs, learned_bytes=req.learned_bytes)
    problems = []
    for slot, g in enumerate(gpus):
        need = memory.devices[slot].total_bytes
        if need > budgets[g]:
            problems.append(f"GPU {g} needs {_mib(need)} with {_mib(max(budgets[g], 0))} left (short by {_mib(need - budgets[g])})")
    if req.max_vram_bytes is not None and sum(d.total_bytes for d in memory.devices) > req.max_vram_bytes:
        total = sum(d.total_bytes for d in memory.devices)
        problems.append(f"{_mib(total)} exceeds max_vram_mib = {req.max_vram_bytes // MIB:,}")
    if problems:
        return None, f"model {req.name!r}: the manual tensor_split {list(split)} does not fit: " + "; ".join(problems)
    m = sum(1 for d in assignment if d is not None)
    return (
        Placement(
            name=req.name,
            gpus=gpus,
            layer_counts=tuple(counts[i] for i in keep),
            n_gpu_layers=-1 if m == n + 1 else m,
            tensor_split=weights if len(gpus) > 1 else None,
            split_mode=req.split_mode,
            memory=memory,
            notes=("manual tensor_split",),
            settings=req.settings,
        ),
        None,
    )


def _shortfall(req: ModelRequest, allowed: Sequence[int], budgets: dict[int, int], policy: PlanPolicy) -> Shortfall | None:
    """Where ``req``'s closest attempt to fit in ``budgets`` stops, and by how much; None where
    no single GPU or cap is to blame."""
    costs = _Costs(req, policy.costs)
    m = resolve_n_gpu_layers(req.n_gpu_layers, costs.n)
    # The closest attempt: all allowed GPUs in device order (one for split_mode none).
    attempt = list(allowed[:1] if req.split_mode == "none" else allowed)
    counts, short = _fill(costs, attempt, budgets, m)
    if short is not None:
        room = max(budgets[short.gpu], 0)
        return Shortfall(req.name, short.gpu, short.short_bytes, room + short.short_bytes, room, short.placed_layers, m, tuple(attempt))
    if counts is not None and req.max_vram_bytes is not None:
        assignment = _assignment(costs.n, m, counts)
        est = estimate_memory(req.info, req.settings, assignment, len(counts), policy.costs, learned_bytes=req.learned_bytes)
        total = sum(d.total_bytes for d in est.devices)
        return Shortfall(req.name, None, total - req.max_vram_bytes, total, req.max_vram_bytes, m, m, tuple(attempt))
    return None


def _where(short: Shortfall | None, devices: dict[int, Device]) -> str:
    """Which GPU, by how many MiB: why a model does not fit, in words."""
    if short is None:
        return "no set of its GPUs holds it"
    if short.gpu is None:
        return f"it needs {_mib(short.need_bytes)}, over its max_vram_mib = {short.room_bytes // MIB:,} by {_mib(short.short_bytes)}"
    dev = devices[short.gpu]
    where = f"on GPU {short.gpu} ({dev.name}, {_mib(short.room_bytes)} left) it is short by {_mib(short.short_bytes)}"
    if len(short.tried_gpus) > 1:
        filled = short.tried_gpus[: short.tried_gpus.index(short.gpu)]
        where += (
            f" for the last {short.gpu_layers - short.placed_layers} of its {short.gpu_layers} GPU layers, "
            f"after filling GPUs {','.join(map(str, filled))}"
        )
    return where


@dataclass(frozen=True)
class _Fix:
    text: str
    request: ModelRequest


def _fix_families(req: ModelRequest) -> list[list[_Fix]]:
    """The settings that could make ``req`` fit, each family mildest first (a stronger value
    fits whenever a milder one does): a smaller context, fewer slots, a q8_0 KV cache."""
    s = req.settings
    families = []
    contexts = []
    n_ctx = s.n_ctx // 2
    while n_ctx >= 256:
        # An explicit shared pool shrinks with the context it must hold.
        pool = s.kv_pool_tokens * n_ctx // s.n_ctx if s.kv_pool_tokens is not None else None
        text = f"n_ctx = {n_ctx}" + (f" (kv_pool_tokens = {pool})" if pool is not None else "")
        contexts.append(_Fix(text, replace(req, settings=replace(s, n_ctx=n_ctx, kv_pool_tokens=pool))))
        n_ctx //= 2
    families.append(contexts)
    if s.slots > 1 and s.kv_pool_tokens is None:
        families.append([_Fix(f"max_concurrency = {k}", replace(req, settings=replace(s, slots=k))) for k in range(s.slots - 1, 0, -1)])
    if (s.type_k, s.type_v) != ("q8_0", "q8_0"):
        q8 = replace(s, type_k="q8_0", type_v="q8_0", flash_attn=True)
        families.append([_Fix('type_k = type_v = "q8_0" (with flash_attn = true)', replace(req, settings=q8))])
    return families


def _mildest(family: Sequence[_Fix], fits: Callable[[ModelRequest], bool]) -> _Fix | None:
    """The mildest fix of a family that fits, by bisection (the family is monotone)."""
    lo, hi, found = 0, len(family) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(family[mid].request):
            found, hi = family[mid], mid - 1
        else:
            lo = mid + 1
    return found


def _hint(fixes: Sequence[str]) -> str:
    return "; would fit with " + ", or ".join(fixes) if fixes else "; it needs more free GPU memory or fewer models"


def _explain(req: ModelRequest, allowed: Sequence[int], budgets: dict[int, int], policy: PlanPolicy, devices: dict[int, Device]) -> str:
    """Which GPU, by how many MiB, and what would make the model fit in ``budgets`` (what is
    left after the models placed before it; ``plan`` checks its hints against the whole plan)."""
    if not allowed:
        return f"model {req.name!r}: no usable GPU for it" + (f" (gpus = {list(req.gpus)})" if req.gpus is not None else "")
    costs = _Costs(req, policy.costs)
    m = resolve_n_gpu_layers(req.n_gpu_layers, costs.n)

    def fits_with(changed: ModelRequest) -> bool:
        return _try_sets(changed, _Costs(changed, policy.costs), allowed, budgets, m, policy.packing, policy) is not None

    fixes = [fix.text for family in _fix_families(req) if (fix := _mildest(family, fits_with)) is not None]
    if not req.allow_cpu_offload:
        fit = _max_offload(req, costs, allowed, budgets, m, policy)
        if fit is not None:
            fixes.append(f"allow_cpu_offload = true ({sum(fit.counts)} of {costs.n + 1} layers on GPU)")
        else:
            fixes.append("allow_cpu_offload = true with n_gpu_layers = 0 (CPU only)")
    return f"model {req.name!r} does not fit: {_where(_shortfall(req, allowed, budgets, policy), devices)}{_hint(fixes)}"


def place_model(
    req: ModelRequest,
    allowed: Sequence[int],
    budgets: dict[int, int],
    policy: PlanPolicy,
    devices: dict[int, Device],
    *,
    no_gpu_at_all: bool = False,
    load: Mapping[int, float] | None = None,
) -> tuple[Placement | None, str | None]:
    """One step of ``plan``: place one model on the GPUs ``allowed`` (device order) given the
    bytes still free on each in ``budgets``; returns the placement, or why it does not fit.

    ``budgets`` is not changed: ``take`` subtracts a placement once the caller keeps it.
    ``load`` is the expected load already on each GPU (``spread`` places by it; none: all idle).
    ``planner.cluster`` packs each node's GPUs with this same step, so a node's packing is
    exactly what ``plan`` gives for that node's models.
    """
    refused = kv_type_problems(req.info, req.settings)
    if refused:
        return None, f"model {req.name!r}: " + "; ".join(refused)
    if no_gpu_at_all or req.n_gpu_layers == 0:
        why = "no GPU on this machine: runs on the CPU" if no_gpu_at_all else "n_gpu_layers = 0: runs on the CPU"
        return _cpu_placement(req, policy, why), None
    if req.tensor_split is not None:
        return _manual(req, allowed, budgets, policy)
    costs = _Costs(req, policy.costs)
    m = resolve_n_gpu_layers(req.n_gpu_layers, costs.n)
    fit = _try_sets(req, costs, allowed, budgets, m, policy.packing, policy, load) if allowed else None
    if fit is not None:
        notes = () if m == costs.n + 1 else (f"n_gpu_layers = {req.n_gpu_layers}: {m} of {costs.n + 1} layers on GPU",)
        return _placement(req, fit, m, notes + _why(fit, policy.packing, allowed, load)), None
    if req.allow_cpu_offload:
        fit = _max_offload(req, costs, allowed, budgets, m, policy, load) if allowed else None
        if fit is not None:
            m_fit = sum(fit.counts)
            notes = (f"partial CPU offload: {m_fit} of {costs.n + 1} layers on GPU",) + _why(fit, policy.packing, allowed, load)
            return _placement(req, fit, m_fit, notes), None
        return _cpu_placement(req, policy, "allow_cpu_offload: no GPU has room, runs on the CPU"), None
    return None, _explain(req, allowed, budgets, policy, devices)


def _why(fit: _Fit, packing: Packing, allowed: Sequence[int], load: Mapping[int, float] | None) -> tuple[str, ...]:
    """Why the model went where it did, for ``plan``'s output and the /ui."""
    if len(allowed) < 2:
        return ()
    gpus = ", ".join(f"GPU {g}" for g in fit.gpus)
    if packing == "spread":
        before = sum((load or {}).get(g, 0.0) for g in fit.gpus)
        return (f"packing spread: {gpus} had the least expected load among the GPUs with room ({before:,.1f} before it)",)
    if packing == "best_fit":
        return (f"packing best_fit: {gpus} left the least memory unused",)
    return (f"packing first_fit: {gpus} came first in device order",)


def model_weight(req: ModelRequest) -> float:
    """A model's expected share of the load for ``spread``: its ``weight``, else its size in GiB
    (weights and KV cache), so that a bigger model counts as busier."""
    if req.weight is not None:
        return req.weight
    return (req.info.total_bytes + sum(kv_layer_bytes(req.info, req.settings))) / GIB


def add_load(load: dict[int, float], p: Placement, weight: float) -> None:
    """Share a placed model's weight over its GPUs by the bytes it has on each."""
    share_load(load, {g: p.memory.devices[slot].total_bytes for slot, g in enumerate(p.gpus)}, weight)


def share_load(load: dict[int, float], bytes_on: Mapping[int, int], weight: float) -> None:
    """Add ``weight`` to ``load``, shared over the GPUs of ``bytes_on`` by a model's bytes on each."""
    total = sum(bytes_on.values())
    for g, b in bytes_on.items():
        load[g] = load.get(g, 0.0) + weight * (b / total if total else 1 / len(bytes_on))


def take(budgets: dict[int, int], p: Placement, sign: int = 1) -> None:
    """Subtract a kept placement's bytes from ``budgets`` (``sign = -1`` gives them back)."""
    for slot, g in enumerate(p.gpus):
        budgets[g] -= sign * p.memory.devices[slot].total_bytes


def rank_key(req: ModelRequest, index: int) -> tuple[int, int, int]:
    """The order ``plan`` places models in: higher priority, then larger, then given order."""
    return (-req.priority, -(req.info.total_bytes + sum(kv_layer_bytes(req.info, req.settings))), index)


def allowed_gpus(req: ModelRequest, order: Sequence[int]) -> list[int]:
    """The usable GPUs (in device order) that a model may use."""
    return [g for g in order if req.gpus is None or g in req.gpus]


def plan(
    models: Sequence[ModelRequest],
    devices: Sequence[Device],
    policy: PlanPolicy = PlanPolicy(),
    load: Mapping[int, float] | None = None,
) -> Plan:
    """Place all models on the GPUs together; see the module docstring for the rules.

    ``load``: the expected load already on each GPU (models running beside these, for
    ``spread``); none: every GPU idle. A model that does not fit gets hints that come true:
    each is checked by planning the whole config again with it, and kept only where that plan
    places the model and every model placed without it."""
    result, unplaced = _packed(models, devices, policy, load)
    if not unplaced:
        return result
    problems = {i: message for i, message, _ in unplaced}
    for i, _, where in unplaced:
        if where is not None:
            fixes = _checked_fixes(i, models, devices, policy, load, {p.name for p in result.placements})
            problems[i] = f"model {models[i].name!r} does not fit: {where}{_hint(fixes)}"
    return replace(result, problems=tuple(problems[i] for i in sorted(problems)))


def _checked_fixes(
    i: int, models: Sequence[ModelRequest], devices: Sequence[Device], policy: PlanPolicy, load: Mapping[int, float] | None, placed: set[str]
) -> list[str]:
    """The mildest setting of each kind that makes model ``i`` fit in a whole new plan that
    still places every model in ``placed``."""
    req = models[i]

    def replan(changed: ModelRequest) -> Placement | None:
        trial = [changed if j == i else r for j, r in enumerate(models)]
        again, _ = _packed(trial, devices, policy, load)
        names = {p.name for p in again.placements}
        return again.placement(changed.name) if placed <= names else None

    fixes = [fix.text for family in _fix_families(req) if (fix := _mildest(family, lambda r: replan(r) is not None)) is not None]
    if not req.allow_cpu_offload:
        p = replan(replace(req, allow_cpu_offload=True))
        if p is not None and p.gpus:
            fixes.append(f"allow_cpu_offload = true ({sum(p.layer_counts)} of {req.info.n_layers + 1} layers on GPU)")
        elif p is not None:
            fixes.append("allow_cpu_offload = true (it then runs on the CPU)")
    return fixes


def _packed(
    models: Sequence[ModelRequest], devices: Sequence[Device], policy: PlanPolicy, load: Mapping[int, float] | None
) -> tuple[Plan, list[tuple[int, str, str | None]]]:
    """The plan under ``policy.packing``, best_fit's where spread would leave more models out;
    and each unplaced model's index, message and shortfall (None: refused for another reason)."""
    result, unplaced = _plan(models, devices, policy, load)
    if policy.packing != "spread" or not unplaced:
        return result, unplaced
    packed, packed_unplaced = _plan(models, devices, replace(policy, packing="best_fit"), load)
    if len(packed.placements) <= len(result.placements):
        return result, unplaced
    left_out = len(packed.placements) - len(result.placements)
    note = f"packing best_fit instead of spread: spreading would leave {left_out} more model(s) out"
    return replace(packed, placements=tuple(replace(p, notes=p.notes + (note,)) for p in packed.placements)), packed_unplaced


def _plan(
    models: Sequence[ModelRequest], devices: Sequence[Device], policy: PlanPolicy, load: Mapping[int, float] | None
) -> tuple[Plan, list[tuple[int, str, str | None]]]:
    usable, skipped = select_devices(devices, policy.devices)
    order = [u.index for u in usable]
    by_index = {d.index: d for d in devices}
    budgets = {u.index: u.budget_bytes for u in usable}
    no_gpu_at_all = not devices

    ranked = sorted(range(len(models)), key=lambda i: rank_key(models[i], i))
    placed: dict[int, Placement] = {}
    unplaced: list[tuple[int, str, str | None]] = []
    shortfalls: dict[int, Shortfall] = {}
    gpu_load = dict(load or {})
    for i in ranked:
        req = models[i]
        allowed = allowed_gpus(req, order)
        p, problem = place_model(req, allowed, budgets, policy, by_index, no_gpu_at_all=no_gpu_at_all, load=gpu_load)
        if p is None:
            # A shortfall whose hints plan() can check (not a refused KV type, a GPU-less model
            # or a manual split).
            checkable = allowed and req.tensor_split is None and not kv_type_problems(req.info, req.settings)
            where = None
            if checkable:
                short = _shortfall(req, allowed, budgets, policy)
                where = _where(short, by_index)
                if short is not None:
                    shortfalls[i] = short
            unplaced.append((i, problem or f"model {req.name!r} does not fit", where))
            continue
        take(budgets, p)
        add_load(gpu_load, p, model_weight(req))
        placed[i] = p
    unplaced.sort()
    result = Plan(
        gpus=tuple(usable),
        skipped=tuple(skipped),
        placements=tuple(placed[i] for i in range(len(models)) if i in placed),
        problems=tuple(message for _, message, _ in unplaced),
        shortfalls=tuple(shortfalls[i] for i in sorted(shortfalls)),
    )
    return result, unplaced
