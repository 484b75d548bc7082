"""On-demand loading: the gateway's eviction rule (expected reload cost) vs its previous rule
(memory first) and count-based and memory-based LRU.

Replays one deterministic, seeded request trace over more models than fit on a declared box and
prints, for each policy: hits (requests served without waiting for a load), loads, evictions and
the time requests spent waiting for loads. Run with `.venv/bin/python bench/ondemand.py`
(`--seed`, `--requests`, `--box` to change the scenario); the header of every table repeats the
parameters, so a printed table can be reproduced. `--sweep N` replays seeds 1..N on every box and
prints one line per trace: each policy's loads and mean wait, and whether ours has fewer loads and
a lower mean wait than every baseline. All of it is simulated time: the figures are the same on
any machine, however loaded.

The simulation is a small discrete-event simulation, as the gateway behaves (gateway/runtime/):

- requests arrive at their trace times; a request for a loaded model starts at once (no limit on
  concurrent requests per model: the wait reported is the wait for loads only);
- a request for a model that is not loaded waits for its load; a request that arrives while its
  model is already queued or loading waits for that same load ("joined"), as in the gateway;
- loads happen one at a time (the gateway holds one lock across placement and load); a load takes
  ``start_s + model bytes / disk_gb_per_s`` (1.5 s process start + 2 GB/s disk/PCIe by default);
- a model is busy while it loads or has requests running, and busy models are never evicted;
  when the next load cannot be placed even after evicting every idle model, it waits until a
  request ends and is tried again (a client retrying the gateway's 503);
- free memory is the declared memory minus the planned bytes of every loaded or loading model
  (gateway.placement.decisions.free_devices for a declared inventory), and the new model is placed by the
  real planner (``planner.plan.plan``) against it, with the default PlanPolicy (1 GiB reserve per
  GPU, best_fit).

Policies:

- ``expected-cost``: the gateway's rule, ``planner.eviction.choose_evictions`` over the idle
  models, asking the real planner: cheapest expected reload cost per byte freed first (last
  measured load time x decayed request rate, ``planner.eviction.RequestRate``), then the unneeded
  given back. The simulation keeps per model what the gateway keeps (``Usage``): the rate,
  updated on every request's arrival (loaded or not), and the load time measured at each load
  (start to ready; loads queued behind others do not count their queueing).
- ``memory-first``: the gateway's previous rule, as a baseline: by memory freed (most first),
  then least recently used, then the unneeded given back.
- ``count-LRU K=k``: at most K models loaded (OLLAMA_MAX_LOADED_MODELS / llama-swap style), K = how
  many of the catalog's *average* model (mean planned bytes, each placed alone) fit the box's
  usable memory. It evicts the least recently used idle model while K are loaded; when the new
  model then still does not fit the memory, it evicts more in LRU order until the real planner
  places it. ``count-OOM`` counts the loads where evicting by the count alone would have placed
  the model over the memory (an out-of-memory load in a count-only gateway). Rows for K-1 and
  K+1 show how much K matters.
- ``memory-LRU``: no count limit, LRU victims until the planner places the model: a reference row
  that separates "memory-aware" from "which victim".
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import math
import random
import statistics
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from planner.devices import Device, declared_devices  # noqa: E402
from planner.eviction import EvictionCandidate, RequestRate, choose_evictions  # noqa: E402
from planner.memory import RunSettings  # noqa: E402
from planner.plan import ModelRequest, Placement, PlanPolicy, plan  # noqa: E402
from planner.units import GIB, MIB  # noqa: E402
from testkit.factories import model_info  # noqa: E402

# --- Model shapes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """A real model's Q4_K_M shape: header dimensions and per-layer weight size."""

    label: str
    source: str
    n_layers: int
    layer_mib: float
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    token_embd_mib: float
    output_mib: float | None  # None: tied embeddings


# Layer sizes: (Q4_K_M file size - token_embd - output) / n_layers, from the published Q4_K_M files
# (token_embd Q6_K when tied, else Q4_K; output Q6_K).
SHAPES: dict[str, Shape] = {
    s.label: s
    for s in (
        Shape("1B", "Llama 3.2 1B Q4_K_M (0.81 GB)", 16, 35.5, 2048, 32, 8, 64, 8192, 128256, 205.5, None),
        Shape("3B", "Llama 3.2 3B Q4_K_M (2.02 GB)", 28, 58.0, 3072, 24, 8, 128, 8192, 128256, 308.0, None),
        Shape("8B", "Llama 3.1 8B Q4_K_M (4.92 GB)", 32, 125.0, 4096, 32, 8, 128, 14336, 128256, 281.8, 411.0),
        Shape("14B", "Qwen2.5 14B Q4_K_M (8.99 GB)", 48, 157.0, 5120, 40, 8, 128, 13824, 152064, 417.7, 609.0),
        Shape("32B", "Qwen2.5 32B Q4_K_M (19.85 GB)", 64, 280.0, 5120, 40, 8, 128, 27648, 152064, 417.7, 609.0),
        Shape("70B", "Llama 3.1 70B Q4_K_M (42.52 GB)", 80, 489.5, 8192, 64, 8, 128, 28672, 128256, 563.6, 822.0),
    )
}

SETTINGS = RunSettings(n_ctx=8192, flash_attn=True)
DEFAULT_POLICY = PlanPolicy()  # 1 GiB reserve per GPU, best_fit: the gateway's defaults


def model_request(name: str, shape: Shape, settings: RunSettings = SETTINGS) -> ModelRequest:
    info = model_info(
        n_layers=shape.n_layers,
        layer_mib=shape.layer_mib,
        n_embd=shape.n_embd,
        n_head=shape.n_head,
        n_head_kv=shape.n_head_kv,
        head_dim=shape.head_dim,
        n_vocab=shape.n_vocab,
        n_ff=shape.n_ff,
        token_embd_mib=shape.token_embd_mib,
        output_mib=shape.output_mib,
        name=name,
    )
    return ModelRequest(name=name, info=info, settings=settings)


@dataclass(frozen=True)
class Box:
    name: str
    gpus: tuple[str, ...]
    catalog: tuple[tuple[str, int], ...]  # (shape label, how many distinct models of that shape)

    def models(self) -> list[ModelRequest]:
        out = []
        for label, count in self.catalog:
            for i in range(count):
                out.append(model_request(f"{label.lower()}-{chr(ord('a') + i)}", SHAPES[label]))
        return out


BOXES: dict[str, Box] = {
    "A": Box("A", ("24GiB", "24GiB", "12GiB"), (("1B", 4), ("3B", 4), ("8B", 4), ("14B", 2), ("32B", 2))),
    "B": Box("B", ("80GiB", "80GiB"), (("1B", 4), ("3B", 4), ("8B", 4), ("14B", 3), ("32B", 3), ("70B", 3))),
}


# --- Trace ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceParams:
    seed: int = 7
    n_requests: int = 3000
    zipf_s: float = 1.0  # popularity of rank r ~ 1 / r**s over a seeded shuffle of the catalog
    session_gap_s: float = 12.0  # mean gap between session starts (Poisson)
    session_requests: float = 4.0  # mean requests per interactive session (geometric)
    think_s: float = 25.0  # mean gap between requests in a session (exponential)
    burst_prob: float = 0.05  # share of sessions that are bursts (batch job / agent loop)
    burst_requests: tuple[int, int] = (20, 60)
    burst_gap_s: float = 1.0  # mean gap between a burst's requests
    tokens_median: float = 250.0  # generated tokens per request: log-normal, sigma 0.8, 16..2048
    decode_gb_per_s: float = 500.0  # decode speed = this / model bytes (tokens/s), at most 150
    prefill_s: float = 0.3


@dataclass(frozen=True)
class LoadParams:
    disk_gb_per_s: float = 2.0  # disk / PCIe rate for the weights
    start_s: float = 1.5  # process start, CUDA context, graph reservation

    def load_s(self, req: ModelRequest) -> float:
        return self.start_s + req.info.total_bytes / (self.disk_gb_per_s * 1e9)


DEFAULT_LOAD = LoadParams()


@dataclass(frozen=True)
class Request:
    t: float
    model: str
    duration_s: float


def popularity(names: Sequence[str], params: TraceParams) -> dict[str, float]:
    """Zipf weights over a seeded shuffle of the catalog (so popularity is not tied to size)."""
    order = list(names)
    random.Random(params.seed * 7919 + 1).shuffle(order)
    raw = {n: 1.0 / (rank + 1) ** params.zipf_s for rank, n in enumerate(order)}
    total = sum(raw.values())
    return {n: raw[n] / total for n in names}


def make_trace(models: Sequence[ModelRequest], params: TraceParams) -> list[Request]:
    """Sessions arriving as a Poisson process, each on one model picked by Zipf popularity."""
    rng = random.Random(params.seed)
    by_name = {m.name: m for m in models}
    pop = popularity(list(by_name), params)
    names, weights = list(pop), list(pop.values())
    out: list[Request] = []
    t = 0.0
    while len(out) < params.n_requests:
        t += rng.expovariate(1.0 / params.session_gap_s)
        name = rng.choices(names, weights)[0]
        if rng.random() < params.burst_prob:
            count, gap = rng.randint(*params.burst_requests), params.burst_gap_s
        else:
            count = 1
            while rng.random() > 1.0 / params.session_requests:
                count += 1
            gap = params.think_s
        bytes_ = by_name[name].info.total_bytes
        tokens_per_s = min(150.0, params.decode_gb_per_s * 1e9 / bytes_)
        at = t
        for _ in range(count):
            tokens = min(2048.0, max(16.0, rng.lognormvariate(math.log(params.tokens_median), 0.8)))
            out.append(Request(at, name, params.prefill_s + tokens / tokens_per_s))
            at += rng.expovariate(1.0 / gap)
    out.sort(key=lambda r: (r.t, r.model))
    return out[: params.n_requests]


# --- Memory and policies --------------------------------------------------------------------------


@dataclass
class Resident:
    """A loaded (or loading) model: where it is and what it was planned to use."""

    name: str
    per_gpu: tuple[tuple[int, int], ...]  # (inventory GPU, planned bytes)
    last_used: float
    ready: bool = False
    running: int = 0

    @property
    def bytes(self) -> int:
        return sum(b for _, b in self.per_gpu)


def used_bytes(residents: dict[str, Resident], leaving: frozenset[str] = frozenset()) -> dict[int, int]:
    used: dict[int, int] = {}
    for r in residents.values():
        if r.name in leaving:
            continue
        for g, b in r.per_gpu:
            used[g] = used.get(g, 0) + b
    return used


def free_devices(devices: Sequence[Device], residents: dict[str, Resident], leaving: frozenset[str] = frozenset()) -> list[Device]:
    """The declared memory minus what the models that stay were planned to use (as the gateway)."""
    used = used_bytes(residents, leaving)
    return [
        dataclasses.replace(d, free_bytes=max(0, min(d.total_bytes, d.free_bytes - used.get(d.index, 0))))
        for d in devices
    ]


def budgets(devices: Sequence[Device], policy: PlanPolicy) -> dict[int, int]:
    """What the planner may use on each GPU of the empty box (declared free minus reserve)."""
    return {d.index: d.free_bytes - policy.devices.reserve_mib * MIB for d in devices}


@dataclass
class Usage:
    """What the gateway records per model, across its unloads: its requests and last load time."""

    requests: RequestRate = RequestRate()
    load_s: float | None = None  # last measured load (start to ready)


@dataclass(frozen=True)
class Decision:
    victims: tuple[str, ...]
    placement: Placement
    count_oom: bool = False  # count-LRU: evicting by count alone would have left it over memory


# A policy: (model, devices, residents, idle residents, plan policy, now, usage per model) ->
# Decision, or None to wait.
PolicyFn = Callable[
    [ModelRequest, Sequence[Device], dict[str, Resident], list[Resident], PlanPolicy, float, dict[str, Usage]],
    Decision | None,
]


def _place(req: ModelRequest, devices, residents, leaving: frozenset[str], policy: PlanPolicy):
    return plan([req], free_devices(devices, residents, leaving), policy)


def _planner_fits(req, devices, residents, policy):
    attempts: dict[frozenset[str], Placement] = {}

    def fits(names: frozenset[str]) -> bool:
        result = _place(req, devices, residents, names, policy)
        if result.fits:
            attempts[names] = result.placements[0]
        return result.fits

    return fits, attempts


def expected_cost(req, devices, residents, idle, policy, now, usage) -> Decision | None:
    """The gateway's policy: choose_evictions over the idle models with their load times and
    request rates, the real planner deciding fit."""
    fits, attempts = _planner_fits(req, devices, residents, policy)
    chosen = choose_evictions(
        [
            EvictionCandidate(
                r.name,
                r.bytes,  # the model may use every GPU
                0,
                r.last_used,
                load_seconds=usage[r.name].load_s,
                requests=usage[r.name].requests,
            )
            for r in idle
        ],
        fits,
        now=now,
    )
    if chosen is None:
        return None
    return Decision(tuple(chosen), attempts[frozenset(chosen)])


def memory_first(req, devices, residents, idle, policy, now, usage) -> Decision | None:
    """The gateway's previous rule, kept as a baseline: idle models by memory freed (most first),
    then least recently used, taken until the planner places the new model; then every early
    choice the final set does not need is given back."""
    fits, attempts = _planner_fits(req, devices, residents, policy)
    if fits(frozenset()):
        return Decision((), attempts[frozenset()])
    chosen: list[str] = []
    for r in sorted(idle, key=lambda r: (-r.bytes, r.last_used, r.name)):
        chosen.append(r.name)
        if fits(frozenset(chosen)):
            break
    else:
        return None
    for name in list(reversed(chosen[:-1])):
        trial = [n for n in chosen if n != name]
        if fits(frozenset(trial)):
            chosen = trial
    return Decision(tuple(chosen), attempts[frozenset(chosen)])


def count_lru(k: int | None) -> PolicyFn:
    """At most ``k`` models loaded, LRU victims; then more LRU victims until the planner places it.

    ``k`` None: no count limit (LRU by memory only).
    """

    def choose(req, devices, residents, idle, policy, now, usage) -> Decision | None:
        order = sorted(idle, key=lambda r: (r.last_used, r.name))
        victims: list[str] = []
        while k is not None and len(residents) - len(victims) >= k:
            if not order:
                return None  # K models loaded and all busy: wait
            victims.append(order.pop(0).name)
        result = _place(req, devices, residents, frozenset(victims), policy)
        count_oom = not result.fits
        while not result.fits:
            if not order:
                return None
            victims.append(order.pop(0).name)
            result = _place(req, devices, residents, frozenset(victims), policy)
        return Decision(tuple(victims), result.placements[0], count_oom)

    return choose


def average_model_k(models: Sequence[ModelRequest], devices: Sequence[Device], policy: PlanPolicy) -> tuple[int, float]:
    """K: how many of the catalog's average model (mean planned bytes, each alone) fit the box."""
    sizes = []
    for m in models:
        p = plan([m], devices, policy)
        if not p.fits:
            raise ValueError(f"catalog model {m.name!r} does not fit the empty box: {p.problems}")
        sizes.append(p.placements[0].vram_bytes)
    mean = statistics.fmean(sizes)
    return max(1, int(sum(budgets(devices, policy).values()) // mean)), mean


# --- Simulation -----------------------------------------------------------------------------------


@dataclass
class Result:
    policy: str
    requests: int = 0
    hits: int = 0  # served without waiting for a load
    joined: int = 0  # waited for a load already queued or running for its model
    triggered: int = 0  # requests that queued a new load
    loads: int = 0
    evictions: int = 0
    count_oom: int = 0
    blocked: int = 0  # loads that had to wait for busy models before they could be placed
    resident_end: int = 0
    waits: list[float] = field(default_factory=list, repr=False)
    peak_used: dict[int, int] = field(default_factory=dict)
    over_budget_steps: int = 0
    end_s: float = 0.0
    usage: dict[str, Usage] = field(default_factory=dict, repr=False)  # per model, at the end

    @property
    def hit_rate(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def mean_wait(self) -> float:
        return statistics.fmean(self.waits) if self.waits else 0.0

    def wait_quantile(self, q: float) -> float:
        if not self.waits:
            return 0.0
        s = sorted(self.waits)
        return s[min(len(s) - 1, int(q * len(s)))]


def simulate(
    trace: Sequence[Request],
    models: Sequence[ModelRequest],
    devices: Sequence[Device],
    policy_fn: PolicyFn,
    *,
    name: str,
    plan_policy: PlanPolicy = DEFAULT_POLICY,
    load: LoadParams = DEFAULT_LOAD,
    on_step: Callable[[float, dict[str, Resident]], None] | None = None,
) -> Result:
    """Replay ``trace``; ``on_step(now, residents)`` runs after every change of the loaded set."""
    by_name = {m.name: m for m in models}
    limit = budgets(devices, plan_policy)
    res = Result(name, requests=len(trace))
    res.waits = [0.0] * len(trace)
    residents: dict[str, Resident] = {}
    usage = res.usage = {m.name: Usage() for m in models}  # kept across unloads, as the gateway keeps it
    load_started: dict[str, float] = {}
    waiting: dict[str, list[int]] = {}
    queue: deque[str] = deque()
    loading: list[str | None] = [None]
    blocked_head: list[str | None] = [None]
    events: list[tuple[float, int, str, object]] = []
    seq = [0]

    def push(t: float, kind: str, payload: object) -> None:
        seq[0] += 1
        heapq.heappush(events, (t, seq[0], kind, payload))

    def step(now: float) -> None:
        used = used_bytes(residents)
        for g, b in used.items():
            res.peak_used[g] = max(res.peak_used.get(g, 0), b)
            if b > limit[g]:
                res.over_budget_steps += 1
        if on_step is not None:
            on_step(now, residents)

    def start(i: int, now: float) -> None:
        r = residents[trace[i].model]
        r.running += 1
        r.last_used = now
        res.waits[i] = now - trace[i].t
        push(now + trace[i].duration_s, "done", trace[i].model)

    def try_load(now: float) -> None:
        if loading[0] is not None or not queue:
            return
        m = queue[0]
        idle = [r for r in residents.values() if r.ready and r.running == 0]
        decision = policy_fn(by_name[m], devices, residents, idle, plan_policy, now, usage)
        if decision is None:
            if blocked_head[0] != m:
                blocked_head[0] = m
                res.blocked += 1
            return  # tried again when a request ends
        blocked_head[0] = None
        queue.popleft()
        for v in decision.victims:
            del residents[v]
            res.evictions += 1
        p = decision.placement
        residents[m] = Resident(m, tuple((g, d.total_bytes) for g, d in zip(p.gpus, p.memory.devices)), now)
        res.loads += 1
        res.count_oom += decision.count_oom
        loading[0] = m
        load_started[m] = now
        step(now)
        push(now + load.load_s(by_name[m]), "loaded", m)

    for i, r in enumerate(trace):
        push(r.t, "arrive", i)
    now = 0.0
    while events:
        now, _, kind, payload = heapq.heappop(events)
        if kind == "arrive":
            i = payload  # type: ignore[assignment]
            m = trace[i].model
            usage[m].requests = usage[m].requests.observe(now)  # every request, loaded or not
            r = residents.get(m)
            if r is not None and r.ready:
                res.hits += 1
                start(i, now)
            else:
                if m in waiting:
                    res.joined += 1
                else:
                    res.triggered += 1
                    waiting[m] = []
                    queue.append(m)
                waiting[m].append(i)
                try_load(now)
        elif kind == "loaded":
            m = payload  # type: ignore[assignment]
            residents[m].ready = True
            usage[m].load_s = now - load_started.pop(m)
            loading[0] = None
            for i in waiting.pop(m):
                start(i, now)
            try_load(now)
        else:  # done
            residents[payload].running -= 1  # type: ignore[index]
            residents[payload].last_used = now  # type: ignore[index]
            try_load(now)
    if queue or loading[0] is not None:
        raise RuntimeError(f"{name}: simulation ended with loads pending: {list(queue)}")
    res.resident_end = len(residents)
    res.end_s = now
    return res


def policies(k: int) -> list[tuple[str, PolicyFn]]:
    return [
        ("expected-cost (ours)", expected_cost),
        ("memory-first (old)", memory_first),
        (f"count-LRU K={k}", count_lru(k)),
        (f"count-LRU K={k - 1}", count_lru(k - 1)) if k > 2 else None,
        (f"count-LRU K={k + 1}", count_lru(k + 1)),
        ("memory-LRU (no K)", count_lru(None)),
    ]


def beats_every_baseline(results: Sequence[Result]) -> tuple[bool, bool]:
    """Whether the first policy (ours) has strictly fewer loads, and a strictly lower mean wait,
    than every other one."""
    ours, baselines = results[0], results[1:]
    return (all(ours.loads < b.loads for b in baselines), all(ours.mean_wait < b.mean_wait for b in baselines))


def run_box(box: Box, params: TraceParams, load: LoadParams = DEFAULT_LOAD, plan_policy: PlanPolicy = DEFAULT_POLICY) -> tuple[list[Result], dict]:
    devices = declared_devices(box.gpus)
    models = box.models()
    trace = make_trace(models, params)
    k, mean_bytes = average_model_k(models, devices, plan_policy)
    results = []
    for entry in policies(k):
        if entry is None:
            continue
        label, fn = entry
        results.append(simulate(trace, models, devices, fn, name=label, plan_policy=plan_policy, load=load))
    info = {"devices": devices, "models": models, "trace": trace, "k": k, "mean_bytes": mean_bytes}
    return results, info


# --- Report ---------------------------------------------------------------------------------------


def _gib(b: float) -> str:
    return f"{b / GIB:.1f}"


def print_box(box: Box, params: TraceParams, load: LoadParams, plan_policy: PlanPolicy) -> None:
    t0 = time.perf_counter()
    results, info = run_box(box, params, load, plan_policy)
    elapsed = time.perf_counter() - t0
    devices, models, trace = info["devices"], info["models"], info["trace"]
    limit = budgets(devices, plan_policy)
    pop = popularity([m.name for m in models], params)
    counts: dict[str, int] = {}
    for r in trace:
        counts[r.model] = counts.get(r.model, 0) + 1
    total_planned = 0
    print(f"== box {box.name}: GPUs {','.join(box.gpus)}; usable {_gib(sum(limit.values()))} GiB after the "
          f"{plan_policy.devices.reserve_mib} MiB reserve per GPU; packing {plan_policy.packing}")
    print(f"seed {params.seed}, {len(trace)} requests over {trace[-1].t / 3600:.2f} h; n_ctx {SETTINGS.n_ctx}, "
          f"flash_attn {SETTINGS.flash_attn}, f16 KV; load = {load.start_s} s + bytes / {load.disk_gb_per_s} GB/s")
    print(f"trace: Zipf s={params.zipf_s} over a seeded shuffle; sessions every {params.session_gap_s} s "
          f"(Poisson), {params.session_requests} requests each (geometric), think {params.think_s} s; "
          f"{params.burst_prob:.0%} bursts of {params.burst_requests[0]}-{params.burst_requests[1]} requests "
          f"{params.burst_gap_s} s apart; {params.tokens_median:.0f} tokens median at min(150, "
          f"{params.decode_gb_per_s:.0f} GB/s / bytes) tok/s + {params.prefill_s} s prefill")
    print()
    print(f"{'model':<7} {'shape':<32} {'planned GiB':>11} {'GPUs':>5} {'load s':>7} {'Zipf %':>7} {'requests':>9}")
    for m in models:
        p = plan([m], devices, plan_policy).placements[0]
        total_planned += p.vram_bytes
        shape = SHAPES[m.name.split("-")[0].upper()]
        print(f"{m.name:<7} {shape.source:<32} {_gib(p.vram_bytes):>11} {len(p.gpus):>5} {load.load_s(m):>7.1f} "
              f"{pop[m.name] * 100:>7.1f} {counts.get(m.name, 0):>9}")
    print(f"catalog: {len(models)} models, {_gib(total_planned)} GiB planned in all vs {_gib(sum(limit.values()))} GiB "
          f"usable; average model {_gib(info['mean_bytes'])} GiB -> K = {info['k']}")
    print()
    head = (f"{'policy':<20} {'hits':>5} {'hit %':>6} {'joined':>6} {'loads':>5} {'evict':>5} {'cnt-OOM':>10} "
            f"{'blocked':>7} {'mean wait s':>11} {'p95 s':>6} {'max s':>6} {'peak GiB/GPU':>16}")
    print(head)
    for r in results:
        peak = "/".join(_gib(r.peak_used.get(d.index, 0)) for d in devices)
        oom = f"{r.count_oom} ({r.count_oom / max(1, r.loads):.0%})" if r.policy.startswith("count") else "-"
        print(f"{r.policy:<20} {r.hits:>5} {r.hit_rate * 100:>6.1f} {r.joined:>6} {r.loads:>5} {r.evictions:>5} "
              f"{oom:>10} {r.blocked:>7} {r.mean_wait:>11.3f} {r.wait_quantile(0.95):>6.1f} {max(r.waits):>6.1f} {peak:>16}")
    fewer, lower = beats_every_baseline(results)
    print(f"{results[0].policy} vs every other row: fewer loads {'yes' if fewer else 'NO'}, "
          f"lower mean wait {'yes' if lower else 'NO'}")
    over = sum(r.over_budget_steps for r in results)
    print(f"budget per GPU {'/'.join(_gib(limit[d.index]) for d in devices)} GiB; steps over budget: {over}; "
          f"simulated in {elapsed:.1f} s")
    print()


def print_sweep(seeds: Sequence[int], n_requests: int, load: LoadParams, plan_policy: PlanPolicy) -> None:
    """One line per (box, seed): every policy's loads / mean wait, and whether ours beats all."""
    wins, lines = 0, 0
    for key, box in BOXES.items():
        for seed in seeds:
            results, _ = run_box(box, TraceParams(seed=seed, n_requests=n_requests), load, plan_policy)
            if seed == seeds[0]:
                print(f"box {key}: {'seed':>4}  " + "  ".join(f"{r.policy:>20}" for r in results) + "  ours ahead on both")
            fewer, lower = beats_every_baseline(results)
            wins += fewer and lower
            lines += 1
            cells = "  ".join(f"{f'{r.loads} / {r.mean_wait:.3f} s':>20}" for r in results)
            missing = [what for what, ok in (("loads", fewer), ("wait", lower)) if not ok]
            verdict = f"no ({', '.join(missing)})" if missing else "yes"
            print(f"       {seed:>4}  {cells}  {verdict}")
    print(f"ours has fewer loads and a lower mean wait than every baseline on {wins} of {lines} traces "
          f"(cells: loads / mean wait; {n_requests} requests each)")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=TraceParams.seed)
    ap.add_argument("--requests", type=int, default=TraceParams.n_requests)
    ap.add_argument("--box", choices=[*BOXES, "all"], default="all")
    ap.add_argument("--sweep", type=int, metavar="N", help="replay seeds 1..N on every box, one line each")
    args = ap.parse_args(argv)
    params = TraceParams(seed=args.seed, n_requests=args.requests)
    load, plan_policy = DEFAULT_LOAD, DEFAULT_POLICY
    print("On-demand eviction benchmark: discrete-event replay, loads one at a time, busy models never evicted.")
    print("hits: served without a load; joined: waited on a load already queued for its model; loads = "
          "requests - hits - joined;\ncnt-OOM: loads where evicting by count alone would not have fit; "
          "blocked: loads that waited for busy models.\n")
    if args.sweep:
        print_sweep(range(1, args.sweep + 1), args.requests, load, plan_policy)
        return
    for key in (BOXES if args.box == "all" else [args.box]):
        print_box(BOXES[key], params, load, plan_policy)


if __name__ == "__main__":
    main()
