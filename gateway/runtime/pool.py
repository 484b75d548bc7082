"""The model pool: the one owner of every model's life.

Only the pool starts, stops, restarts (with backoff), loads on demand, evicts and reloads models,
and only it changes a ``ModelEntry``. It is driven by calls (``acquire``, ``load``, ``unload``,
``reload``, ``stop``) and by its workers' events; every change of one model runs under that
model's lock, and every decision about free memory under the placement lock, so no caller ever
checks a state and then acts on it. A worker is replaced, never restarted in place: an event of a
worker that is no longer its model's current one is ignored.

The HTTP layer asks for a model and gets a ``Lease`` (a run slot on a ready worker) or a typed
error; it never touches model state.

On-demand models load on their first request (every request that arrives meanwhile waits for
the same load). They are placed against what is in use *now*: NVML's free memory, or for a
declared inventory the declared memory minus what the running models were planned to use. When
a model does not fit, idle on-demand models are evicted, and only as many as needed; eager models
and models with requests running or waiting are never evicted. planner.eviction chooses which:
the cheapest in expected waiting per byte freed (each model's measured load time times how often
it is asked for, which the pool records per request), lower priorities first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.config.names import ModelNames
from gateway.config.schema import Config, ModelConfig
from gateway.engine.protocol import Op
from gateway.errors import ConflictError, InvalidRequestError, ModelUnavailableError
from gateway.placement.facts import ModelFacts, model_card
from gateway.placement.launch import ModelLaunch, launch_from_placement, launches_from_plan
from gateway.nvml import read_nvml_devices
from gateway.placement.planning import inventory, model_request, plan_policy, read_models
from gateway.runtime.admission import Admission
from gateway.runtime.requests import RequestStream
from gateway.runtime.states import ModelState
from gateway.runtime.transport import SubprocessTransport, WorkerTransport
from gateway.runtime.worker_process import WorkerProcess
from planner.devices import Device
from planner.eviction import EvictionCandidate, RequestRate, choose_evictions
from planner.plan import ModelRequest, Plan, plan, share_load
from planner.units import GIB

log = logging.getLogger("gateway")

RESTART_BACKOFF_MAX_S = 30.0
# A failed load of an eager model is tried again after restart_backoff_s, doubling up to
# RESTART_BACKOFF_MAX_S, for as long as it fails; never sooner than this (restart_backoff_s = 0).
LOAD_RETRY_MIN_S = 0.05
WORKER_STOP_TIMEOUT_S = 10.0
REAP_INTERVAL_S = 1.0
DRAIN_POLL_S = 0.05

Events = Callable[[str, dict[str, Any]], None]


@dataclass
class ModelEntry:
    """One configured model. Read by anyone; changed by the pool alone."""

    config: ModelConfig
    admission: Admission
    created: int
    launch: ModelLaunch | None = None  # None: not placed (on demand and not loaded, or refused)
    worker: WorkerProcess | None = None
    unplaced_reason: str | None = None
    last_used: float = 0.0  # monotonic time of the last request's end
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    loading: asyncio.Task | None = None  # the one on-demand load that waiting requests share
    restart: asyncio.Task | None = None  # a restart after a crash, or a retry after a failed load
    crashes: list[float] = field(default_factory=list)
    load_failures: int = 0  # failed loads in a row (an eager model's retries back off by it)
    evicting: bool = False
    removed: bool = False  # replaced or removed by a reload: nothing may start it again
    # What eviction weighs (planner.eviction), kept across unloads: how often it is asked for
    # and how long its last load took.
    requests: RequestRate = field(default_factory=RequestRate)
    load_seconds: float | None = None
    # Why the last on-demand load failed (the planner's explanation when it could not be
    # placed); None once a load succeeds. The entry stays "stopped" and may load again.
    last_error: str | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def on_demand(self) -> bool:
        return self.config.load == "on_demand"

    @property
    def state(self) -> ModelState:
        if self.worker is not None:
            return self.worker.state
        # An on-demand model that is not loaded is simply stopped; an eager one without a
        # worker was refused by the planner.
        return ModelState.STOPPED if self.on_demand and self.unplaced_reason is None else ModelState.FAILED

    @property
    def reason(self) -> str | None:
        return self.worker.reason if self.worker is not None else self.unplaced_reason

    @property
    def busy(self) -> bool:
        """Requests running or waiting (a busy model is never evicted)."""
        return bool(self.admission.running or self.admission.waiting)

    @property
    def servable(self) -> bool:
        """Could a request be served: ready now, or an on-demand model that would load."""
        return self.state is ModelState.READY or (
            self.on_demand and self.state is ModelState.STOPPED and self.unplaced_reason is None
        )


class Lease:
    """One request's hold on a model: a run slot and the ready worker it runs on."""

    def __init__(self, entry: ModelEntry, worker: WorkerProcess, stack: contextlib.AsyncExitStack) -> None:
        self.name = entry.name
        self.config = entry.config
        self._worker = worker
        self._stack = stack

    def request(self, op: Op, params: dict[str, Any], *, stream: bool) -> RequestStream:
        return self._worker.request(op, params, stream=stream)

    async def release(self) -> None:
        await self._stack.aclose()

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


@dataclass
class ReloadResult:
    reloaded: bool
    problems: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)  # unchanged, but failed: started again

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def diff_models(old: Config, new: Config) -> tuple[list[str], list[str], list[str], list[str]]:
    """(unchanged, removed, changed, added) model names between two configs.

    Aliases only change routing: a model whose other settings are equal keeps its worker.
    """

    def settings(model: ModelConfig) -> dict[str, Any]:
        return model.model_dump(exclude={"aliases"})

    before = {m.name: m for m in old.models}
    after = {m.name: m for m in new.models}
    unchanged = [n for n in after if n in before and settings(before[n]) == settings(after[n])]
    changed = [n for n in after if n in before and n not in unchanged]
    added = [n for n in after if n not in before]
    removed = [n for n in before if n not in after]
    return unchanged, removed, changed, added


def free_devices(devices: Sequence[Device], entries: Iterable[ModelEntry], declared: bool, leaving: set[str]) -> list[Device]:
    """Each GPU's free memory for a model about to start.

    NVML's free memory already excludes every running model; the models about to stop will give
    theirs back. A declared inventory is static: take away what the models that stay use.
    """
    adjust: dict[int, int] = {}
    for entry in entries:
        if entry.launch is None or entry.worker is None or entry.state not in (ModelState.READY, ModelState.STARTING):
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


def running_load(entries: Iterable[ModelEntry], leaving: set[str]) -> dict[int, float]:
    """The expected load on each GPU from the models that stay (``packing = "spread"`` places a
    new model beside the lightest): each one's ``weight``, else its planned GiB (planner.plan's
    default counts weights and KV only: close, not equal), shared over its GPUs by their bytes."""
    load: dict[int, float] = {}
    for entry in entries:
        if entry.launch is None or entry.worker is None or entry.name in leaving:
            continue
        if entry.state not in (ModelState.READY, ModelState.STARTING) or not entry.launch.devices:
            continue
        bytes_on = {d.gpu: d.total_bytes for d in entry.launch.devices}
        weight = entry.config.weight if entry.config.weight is not None else sum(bytes_on.values()) / GIB
        share_load(load, bytes_on, weight)
    return load


class ModelPool:
    """Every configured model, its worker and its waiting room."""

    def __init__(
        self,
        config: Config,
        launches: dict[str, ModelLaunch],
        *,
        base_env: dict[str, str],
        transport: WorkerTransport | None = None,
        unplaced: dict[str, str] | None = None,
        on_event: Events | None = None,
        read_nvml: Callable[[], list[Device]] = read_nvml_devices,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._base_env = base_env
        self._transport = transport or SubprocessTransport()
        self._on_event = on_event or (lambda name, event: None)
        self._read_nvml = read_nvml
        self._clock = clock
        self._placement = asyncio.Lock()  # one decision about free memory at a time
        self._reloading = False
        self._stopping = False
        self.draining = False
        self._tasks: set[asyncio.Task] = set()
        self.entries: dict[str, ModelEntry] = {}
        for model in config.models:
            launch = launches.get(model.name)
            refused = None
            if launch is None and (model.load == "eager" or (unplaced or {}).get(model.name)):
                refused = (unplaced or {}).get(model.name) or "not placed by the planner"
            self.entries[model.name] = self._new_entry(model, launch, refused)
        self._index()

    # ------------------------------------------------------------------ views

    @property
    def config(self) -> Config:
        """The config in force (the one the last successful reload installed)."""
        return self._config

    def _new_entry(self, model: ModelConfig, launch: ModelLaunch | None, refused: str | None = None) -> ModelEntry:
        entry = ModelEntry(
            config=model,
            admission=Admission(model.name, model.max_concurrency, model.queue_size),
            created=int(time.time()),
            unplaced_reason=refused,
        )
        if launch is not None:
            self._install(entry, launch)
        return entry

    def _install(self, entry: ModelEntry, launch: ModelLaunch) -> WorkerProcess:
        worker = WorkerProcess(launch.worker_spec(entry.config), launch.worker_env(self._base_env), self._transport, self._worker_event)
        entry.launch, entry.worker, entry.unplaced_reason = launch, worker, None
        return worker

    def _index(self) -> None:
        self._names = ModelNames(self._config)

    def resolve(self, requested: Any) -> ModelEntry:
        """The entry for a request's ``model`` field (gateway.config.names: name, alias, or
        absent for default_model or the only model; never a guess)."""
        return self.entries[self._names.resolve(requested)]

    def health(self) -> tuple[str, bool, dict[str, dict[str, Any]]]:
        """(status, serving, per-model states): serving when a request could be served now,
        by a ready model or by an on-demand model that would load for it."""
        states = {e.name: {"state": e.state.value, "reason": e.reason} for e in self.entries.values()}
        if self.draining:
            return "draining", False, states
        servable = sum(1 for e in self.entries.values() if e.servable)
        if servable == 0:
            return "unavailable", False, states
        return ("ok" if servable == len(states) else "degraded"), True, states

    def failed(self) -> dict[str, str]:
        return {e.name: e.reason or "failed" for e in self.entries.values() if e.state is ModelState.FAILED}

    def in_flight(self) -> int:
        return sum(e.admission.running + e.admission.waiting for e in self.entries.values())

    def describe(self, entry: ModelEntry, facts: ModelFacts | None = None) -> dict[str, Any]:
        """A /v1/models entry: OpenAI's fields plus state, what a client chooses a model by (its
        contexts, capabilities and file: ``facts``, its header's, None when unread or unreadable)
        and planned vs allocated memory."""
        w = entry.worker
        return {
            "id": entry.name,
            "object": "model",
            "created": entry.created,
            "owned_by": "vram-gateway",
            "aliases": list(entry.config.aliases),
            "state": entry.state.value,
            **model_card(entry.config, facts),
            "reason": entry.reason,
            "progress": w.progress if w is not None else 0,
            "load_seconds": w.load_seconds if w is not None else None,
            "pid": w.pid if w is not None and entry.state is ModelState.READY else None,
            "planned": entry.launch.planned_json() if entry.launch is not None else None,
            "allocated": w.allocated if w is not None else {},
            "gpu_used_bytes": w.gpu_used_bytes if w is not None else {},
            "queue": {
                "running": entry.admission.running,
                "waiting": entry.admission.waiting,
                "max_concurrency": entry.admission.max_concurrency,
                "queue_size": entry.admission.queue_size,
            },
        }

    def devices(self) -> list[Device]:
        """The GPUs of the config in force (NVML, or the declared inventory)."""
        return inventory(self._config, self._read_nvml)

    # ------------------------------------------------------------------ events

    def _emit(self, name: str, event: dict[str, Any]) -> None:
        self._on_event(name, event)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _worker_event(self, worker: WorkerProcess, name: str, data: dict[str, Any]) -> None:
        self._emit(name, {"model": worker.name, **data})
        entry = self.entries.get(worker.name)
        if entry is None or entry.worker is not worker:
            return  # a worker that was replaced or removed: its news changes nothing
        if name == "ready":
            entry.load_failures = 0
        if self._stopping or entry.removed:
            return
        if name == "crashed":
            entry.restart = self._spawn(self._restart(entry, worker), f"restart-{entry.name}")
        elif name == "failed" and data.get("loading") and not entry.on_demand and entry.launch is not None:
            # An eager model has no request to load it again: the pool tries again itself.
            entry.restart = self._spawn(self._retry_load(entry, worker), f"retry-{entry.name}")

    async def _restart(self, entry: ModelEntry, crashed: WorkerProcess) -> None:
        """Restart a crashed worker with exponential backoff, or give up and leave it failed."""
        settings = self._config.gateway
        now = self._clock()
        entry.crashes = [t for t in entry.crashes if now - t < settings.restart_window_s] + [now]
        if len(entry.crashes) > settings.restart_max_failures:
            crashed.give_up(
                f"gave up after {len(entry.crashes)} crashes within {settings.restart_window_s:g} s; last: {crashed.reason}"
            )
            return
        delay = min(RESTART_BACKOFF_MAX_S, settings.restart_backoff_s * 2 ** (len(entry.crashes) - 1))
        log.warning("model %s: worker crashed (%s); restarting in %.1f s", entry.name, crashed.reason, delay)
        await self._start_again(entry, crashed, delay, len(entry.crashes))

    async def _retry_load(self, entry: ModelEntry, failed: WorkerProcess) -> None:
        """Load a failed eager model again, with exponential backoff, until it loads (a model
        file truncated and then restored, a GPU that had no room for a while)."""
        entry.load_failures += 1
        base = max(self._config.gateway.restart_backoff_s, LOAD_RETRY_MIN_S)
        delay = min(RESTART_BACKOFF_MAX_S, base * 2 ** (entry.load_failures - 1))
        log.warning("model %s: load failed (%s); trying again in %.1f s", entry.name, failed.reason, delay)
        await self._start_again(entry, failed, delay, entry.load_failures)

    async def _start_again(self, entry: ModelEntry, previous: WorkerProcess, delay: float, attempt: int) -> None:
        await asyncio.sleep(delay)
        async with entry.lock:
            # The world may have moved on while we slept: a reload replaced or removed the
            # model, an eviction, an on-demand or admin load installed another worker, or we stop.
            if self._stopping or entry.removed or entry.worker is not previous or entry.launch is None:
                return
            worker = self._install(entry, entry.launch)
            self._emit("restarting", {"model": entry.name, "attempt": attempt})
            self._emit("loading", {"model": entry.name, "reason": "restart"})
            await worker.start()
        await worker.wait_ready()

    # ------------------------------------------------------------------ start and stop

    async def start(self, timeout: float | None = None) -> None:
        """Start every placed model's worker at once; wait until each is ready or failed."""
        workers = [e.worker for e in self.entries.values() if e.worker is not None]
        for w in workers:
            self._emit("loading", {"model": w.name, "reason": "startup"})
            await w.start()
        await asyncio.gather(*(w.wait_ready(timeout) for w in workers))
        now = self._clock()
        for e in self.entries.values():
            e.last_used = now

    async def drain(self, grace: float) -> None:
        """Stop taking requests; wait until none is running or waiting, or ``grace`` passes."""
        self.draining = True
        deadline = self._clock() + grace
        while self.in_flight() and self._clock() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)

    async def stop(self, timeout: float = WORKER_STOP_TIMEOUT_S) -> None:
        """Stop every worker (SIGTERM during a load included); nothing starts afterwards."""
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        for entry in self.entries.values():
            if entry.loading is not None:
                entry.loading.cancel()
        await asyncio.gather(
            *(e.worker.stop(timeout) for e in self.entries.values() if e.worker is not None), return_exceptions=True
        )

    def kill_now(self) -> None:
        for e in self.entries.values():
            if e.worker is not None:
                e.worker.kill_now()

    # ------------------------------------------------------------------ requests

    async def acquire(self, requested: Any, timeout: float | None = None) -> Lease:
        """A run slot on a ready worker of the requested model, loading it first if on demand.

        Raises ModelNotFoundError, InvalidRequestError, QueueFullError, QueueTimeoutError or
        ModelUnavailableError; never hands out a model other than the one asked for.
        """
        entry = requested if isinstance(requested, ModelEntry) else self.resolve(requested)
        if self.draining:
            raise ModelUnavailableError("the gateway is shutting down")
        entry.requests = entry.requests.observe(self._clock())
        if not entry.on_demand and entry.state is ModelState.FAILED:
            raise self._unavailable(entry)  # a failed eager model answers at once, without queueing
        stack = contextlib.AsyncExitStack()
        # The slot comes first: a model with a request waiting or running is never evicted.
        await stack.enter_async_context(entry.admission.slot(timeout or self._config.gateway.request_timeout_s))
        stack.callback(self._touch, entry)
        try:
            worker = await self._ready_worker(entry)
        except BaseException:
            await stack.aclose()
            raise
        return Lease(entry, worker, stack)

    def _touch(self, entry: ModelEntry) -> None:
        entry.last_used = self._clock()

    @staticmethod
    def _unavailable(entry: ModelEntry) -> ModelUnavailableError:
        why = f" ({entry.reason})" if entry.reason else ""
        return ModelUnavailableError(f"model {entry.name!r} is {entry.state.value}{why}")

    async def _ready_worker(self, entry: ModelEntry) -> WorkerProcess:
        w = entry.worker
        if w is not None and w.state is ModelState.READY and not entry.evicting:
            return w
        if entry.removed:
            raise self._unavailable(entry)
        if not entry.on_demand:
            # An eager model that is loading (a reload changed it, a restart or retry): wait
            # for it as for an on-demand load, up to load_timeout_s.
            if w is not None:
                await self._await_worker(entry, w)
            w = entry.worker
            if w is None or w.state is not ModelState.READY:
                raise self._unavailable(entry)
            return w
        await self._await_load(entry)
        w = entry.worker
        if w is None or w.state is not ModelState.READY:
            raise self._unavailable(entry)
        return w

    async def _await_worker(self, entry: ModelEntry, worker: WorkerProcess) -> None:
        """Wait until a loading worker is ready, failed or stopped, up to load_timeout_s."""
        timeout = self._config.gateway.load_timeout_s
        started = self._clock()
        try:
            state = await worker.wait_ready(timeout)
        finally:
            self._emit("load_wait", {"model": entry.name, "seconds": self._clock() - started})
        if state is ModelState.STARTING:
            raise ModelUnavailableError(f"model {entry.name!r} did not load within {timeout:g} s")

    async def _await_load(self, entry: ModelEntry, reason: str = "on_demand") -> None:
        if entry.loading is None or entry.loading.done():
            entry.loading = self._spawn(self._load(entry, reason), f"load-{entry.name}")
        timeout = self._config.gateway.load_timeout_s
        started = self._clock()
        try:
            await asyncio.wait_for(asyncio.shield(entry.loading), timeout)
        except TimeoutError:
            raise ModelUnavailableError(f"model {entry.name!r} did not load within {timeout:g} s") from None
        except asyncio.CancelledError:
            if self._stopping:
                raise ModelUnavailableError("the gateway is shutting down") from None
            raise
        finally:
            self._emit("load_wait", {"model": entry.name, "seconds": self._clock() - started})

    # ------------------------------------------------------------------ on demand

    async def load(self, requested: Any) -> ModelEntry:
        """Load a model now (the admin API); a loaded model is left as it is. An eager model
        that failed is placed and started again at once (its pending retry is dropped); one
        that is loading is waited for."""
        entry = self.resolve(requested)
        if not entry.on_demand:
            w = entry.worker
            if w is not None and w.state is ModelState.STARTING:
                await self._await_worker(entry, w)
            elif entry.state is not ModelState.READY:
                await self._await_load(entry, "restart")
            if entry.state is not ModelState.READY:
                raise self._unavailable(entry)
            return entry
        if entry.state is not ModelState.READY or entry.evicting:
            await self._await_load(entry)
        return entry

    async def unload(self, requested: Any, reason: str = "admin") -> ModelEntry:
        """Unload an idle on-demand model (the admin API); it loads again on its next request."""
        entry = self.resolve(requested)
        if not entry.on_demand:
            raise InvalidRequestError(f"model {entry.name!r} is an eager model: only on-demand models unload")
        async with self._placement:
            if entry.busy:
                raise ConflictError(f"model {entry.name!r} has requests running or waiting; retry when it is idle")
            await self._evict(entry, reason)
        return entry

    def _cpu_models_running(self, leaving: set[str]) -> int:
        """Models computing on the CPU that keep running: new CPU models share the cores with them."""
        return sum(
            1
            for e in self.entries.values()
            if e.name not in leaving
            and e.launch is not None
            and e.launch.computes_on_cpu
            and e.state in (ModelState.STARTING, ModelState.READY)
        )

    def _plan_one(self, request: ModelRequest, devices: list[Device], leaving: set[str]) -> Plan:
        config = self._config
        free = free_devices(devices, self.entries.values(), config.planner.gpus is not None, leaving)
        return plan([request], free, plan_policy(config), load=running_load(self.entries.values(), leaving))

    async def _load(self, entry: ModelEntry, reason: str) -> None:
        try:
            await self._place_and_start(entry, reason)
        except ModelUnavailableError as exc:
            entry.last_error = str(exc)
            raise
        entry.last_error = None

    async def _place_and_start(self, entry: ModelEntry, reason: str) -> None:
        async with self._placement:
            if entry.worker is not None and entry.worker.state is ModelState.READY and not entry.evicting:
                return
            if entry.removed or self._stopping:
                raise self._unavailable(entry)
            config = self._config
            model = entry.config
            files = read_models(config.model_copy(update={"models": [model]}))
            if files.problems:
                raise ModelUnavailableError(f"model {entry.name!r}: " + "; ".join(files.problems))
            request = model_request(model, files.infos[model.name])
            devices = inventory(config, self._read_nvml)
            result = self._plan_one(request, devices, set())
            victims: list[ModelEntry] = []
            if not result.fits:
                victims, result = self._choose_evictions(entry, request, devices)
            for victim in victims:
                victim.evicting = True  # chosen and marked with no await between: nobody takes it
            for victim in victims:
                await self._evict(victim, "make_room", for_model=entry.name)
            running = self._cpu_models_running(leaving={v.name for v in victims} | {entry.name})
            launch = launch_from_placement(result.placements[0], str(files.paths[model.name]), cpu_models_running=running)
            async with entry.lock:
                if entry.restart is not None:
                    entry.restart.cancel()  # a retry waiting for its backoff: this load replaces it
                if entry.worker is not None:
                    await entry.worker.stop(WORKER_STOP_TIMEOUT_S)  # a failed earlier attempt
                worker = self._install(entry, launch)
                self._emit("loading", {"model": entry.name, "reason": reason})
                started = self._clock()
                await worker.start()
            state = await worker.wait_ready(config.gateway.load_timeout_s)
            entry.last_used = self._clock()
            if state is ModelState.READY:
                entry.load_seconds = entry.last_used - started
            else:
                raise ModelUnavailableError(f"model {entry.name!r} failed to load: {worker.reason}")

    def _choose_evictions(self, entry: ModelEntry, request: ModelRequest, devices: list[Device]) -> tuple[list[ModelEntry], Plan]:
        needed = set(entry.config.gpus) if entry.config.gpus is not None else {d.index for d in devices}
        candidates = {
            e.name: e
            for e in self.entries.values()
            if e.on_demand and e is not entry and e.state is ModelState.READY and not e.busy and not e.evicting and e.launch is not None
        }
        attempts: dict[frozenset[str], Plan] = {}

        def fits(names: frozenset[str]) -> bool:
            attempts[names] = self._plan_one(request, devices, set(names))
            return attempts[names].fits

        chosen = choose_evictions([self._candidate(e, needed) for e in candidates.values()], fits, now=self._clock())
        if chosen is None:
            explanation = "; ".join(attempts[max(attempts, key=len)].problems) if attempts else ""
            raise ModelUnavailableError(
                f"model {entry.name!r} cannot be placed even after evicting every idle on-demand model: {explanation}"
            )
        return [candidates[n] for n in chosen], attempts[frozenset(chosen)]

    def _candidate(self, e: ModelEntry, needed: set[int]) -> EvictionCandidate:
        launch = e.launch
        freed = sum(d.total_bytes for d in launch.devices if d.gpu in needed) if launch is not None else 0
        return EvictionCandidate(
            name=e.name,
            freed_bytes=freed,
            priority=e.config.priority,
            last_used=e.last_used,
            load_seconds=e.load_seconds if e.load_seconds is not None else (e.worker.load_seconds if e.worker else None),
            requests=e.requests,
        )

    async def _evict(self, entry: ModelEntry, reason: str, for_model: str | None = None) -> None:
        """Stop a model's worker; it becomes "stopped" and loads again on its next request."""
        entry.evicting = True
        try:
            async with entry.lock:
                if entry.restart is not None:
                    entry.restart.cancel()
                if entry.worker is not None:
                    await entry.worker.stop(WORKER_STOP_TIMEOUT_S)
                entry.launch, entry.worker = None, None
            log.info("model %s: unloaded (%s%s)", entry.name, reason, f" for {for_model}" if for_model else "")
            self._emit("evicted", {"model": entry.name, "reason": reason})
        finally:
            entry.evicting = False

    async def reap_idle(self) -> None:
        """Unload on-demand models idle for longer than their idle_ttl_s (runs until cancelled)."""
        while True:
            await asyncio.sleep(REAP_INTERVAL_S)
            for entry in list(self.entries.values()):
                ttl = entry.config.idle_ttl_s
                if not entry.on_demand or ttl is None or entry.state is not ModelState.READY or entry.busy:
                    continue
                if self._clock() - entry.last_used < ttl:
                    continue
                async with self._placement:
                    idle = self._clock() - entry.last_used >= ttl
                    if entry.state is ModelState.READY and not entry.busy and not entry.removed and idle:
                        await self._evict(entry, "idle_ttl")

    # ------------------------------------------------------------------ reload

    async def reload(self, new: Config) -> ReloadResult:
        """Apply a new config: unchanged models keep serving (an alias change applies at once),
        removed ones stop after draining, changed and new eager ones are planned against the
        memory free now (plus what the leaving ones free) and started. A plan that does not fit
        or an unreadable model refuses the whole reload; nothing changes then."""
        if self._reloading:
            raise ConflictError("a reload is already running")
        self._reloading = True
        try:
            async with self._placement:
                return await self._reload(new)
        finally:
            self._reloading = False

    async def _reload(self, new: Config) -> ReloadResult:
        unchanged, removed, changed, added = diff_models(self._config, new)
        # An unchanged eager model that failed (its file was broken and is mended now, say) is
        # started again like a changed one: a reload is how an operator says "try again".
        restarted = [n for n in unchanged if not self.entries[n].on_demand and self.entries[n].state is ModelState.FAILED]
        unchanged = [n for n in unchanged if n not in restarted]
        result = ReloadResult(False, unchanged=unchanged, removed=removed, changed=changed, added=added, restarted=restarted)
        # On-demand models are only planned when a request asks for them.
        starting = [m for m in new.models if m.name in set(changed) | set(added) | set(restarted) and m.load == "eager"]
        launches: dict[str, ModelLaunch] = {}
        leaving = set(removed) | set(changed) | set(restarted)
        if starting:
            files = read_models(new.model_copy(update={"models": starting}))
            if files.problems:
                result.problems = files.problems
                return result
            devices = free_devices(inventory(new, self._read_nvml), self.entries.values(), new.planner.gpus is not None, leaving)
            placed = plan([model_request(m, files.infos[m.name]) for m in starting], devices, plan_policy(new))
            if not placed.fits:
                result.problems = [f"plan: {p}" for p in placed.problems]
                return result
            launches = launches_from_plan(
                placed, {n: str(p) for n, p in files.paths.items()}, cpu_models_running=self._cpu_models_running(leaving)
            )

        outgoing = [self.entries[n] for n in leaving]
        for entry in outgoing:
            entry.removed = True  # no restart, load or eviction may start it again
            if entry.restart is not None:
                entry.restart.cancel()
        deadline = self._clock() + new.gateway.shutdown_grace_s
        while any(e.busy for e in outgoing) and self._clock() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        await asyncio.gather(*(self._stop_entry(e) for e in outgoing), return_exceptions=True)

        entries: dict[str, ModelEntry] = {}
        for model in new.models:
            kept = self.entries.get(model.name)
            if kept is not None and model.name not in leaving:
                kept.config = model
                entries[model.name] = kept
            else:
                launch = launches.get(model.name)
                entries[model.name] = self._new_entry(model, launch, None if launch or model.load == "on_demand" else "not placed by the planner")
                self._emit("added", {"model": model.name})
        self.entries = entries
        self._config = new
        self._index()
        fresh = [entries[n].worker for n in launches if entries[n].worker is not None]
        for w in fresh:
            self._emit("loading", {"model": w.name, "reason": "reload"})  # type: ignore[union-attr]
            await w.start()  # type: ignore[union-attr]
        await asyncio.gather(*(w.wait_ready(new.gateway.load_timeout_s) for w in fresh))  # type: ignore[union-attr]
        result.reloaded = True
        return result

    async def _stop_entry(self, entry: ModelEntry) -> None:
        async with entry.lock:
            if entry.worker is not None:
                await entry.worker.stop(WORKER_STOP_TIMEOUT_S)
