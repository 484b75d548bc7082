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

Where a model goes is decided by gateway.placement.decisions, a pure function of the facts the
pool hands it (``ModelPool.residents``: what each placed model holds, and what evicting it would
cost); the pool reads the inventory and the header, acts on the decision and keeps the lifecycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.config.model_files import resolve_model_path
from gateway.config.names import ModelNames
from gateway.config.schema import Config, ModelConfig
from gateway.engine.protocol import Op
from gateway.errors import ConflictError, ModelUnavailableError
from gateway.placement.facts import ModelFacts
from gateway.placement.decisions import Resident, cpu_models_running, free_devices
from gateway.placement.gate import Pass
from gateway.placement.gated import LoadGate, promised_to_others
from gateway.placement.learning import LearnedMemory, Measurement, measure
from gateway.placement.launch import ModelLaunch, launch_from_placement, launches_from_plan
from gateway.nvml import read_nvml_devices
from gateway.placement.planning import inventory, model_request, plan_policy, read_models
from gateway.runtime.admission import Admission
from gateway.runtime.events import Added, Crashed, Evicted, EventSink, EvictReason, Failed, Loading, LoadReason, LoadWaited, ModelEvent, Ready, Restarting
from gateway.runtime.states import ModelState
from gateway.runtime.transport import SubprocessTransport, WorkerTransport
from gateway.runtime.view import ModelView
from gateway.runtime.requests import RequestStream
from gateway.runtime.worker_process import WorkerProcess
from planner.devices import Device
from planner.errors import ModelFileError
from planner.eviction import RequestRate
from planner.plan import ModelRequest, plan
from planner.units import MIB

log = logging.getLogger("gateway")

RESTART_BACKOFF_MAX_S = 30.0
# A failed load of an eager model is tried again after restart_backoff_s, doubling up to
# RESTART_BACKOFF_MAX_S, for as long as it fails; never sooner than this (restart_backoff_s = 0).
LOAD_RETRY_MIN_S = 0.05
WORKER_STOP_TIMEOUT_S = 10.0
REAP_INTERVAL_S = 1.0
DRAIN_POLL_S = 0.05

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
    # An eager model an operator unloaded: "stopped" (not failed), and nothing starts it again
    # until an admin load, restart or a reload installs a worker.
    held_down: bool = False
    # Its worker's load compared with its plan (gateway.placement.learning); None until the
    # current worker is ready, or where nothing was measured on its GPUs.
    measurement: Measurement | None = None
    # Its last placement's planned total (GPUs and host), kept after an unload: what loading it
    # again would need (the /ui row shows it); None: never placed.
    last_planned_bytes: int | None = None

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
        # An on-demand model that is not loaded is simply stopped, and so is an eager one an
        # operator unloaded; any other eager one without a worker was refused by the planner.
        stopped = self.on_demand or self.held_down
        return ModelState.STOPPED if stopped and self.unplaced_reason is None else ModelState.FAILED

    @property
    def reason(self) -> str | None:
        if self.worker is not None:
            return self.worker.reason
        if self.held_down and self.unplaced_reason is None:
            return "unloaded by an operator; an admin load or a reload starts it"
        return self.unplaced_reason

    @property
    def busy(self) -> bool:
        """Requests running or waiting (a busy model is never evicted)."""
        return bool(self.admission.running or self.admission.waiting)

    @property
    def evictable(self) -> bool:
        """An on-demand model, ready and idle, that no eviction has chosen yet."""
        return self.on_demand and self.state is ModelState.READY and not self.busy and not self.evicting

    def resident(self) -> Resident | None:
        """What placement needs to know of it (None: not placed, or no worker)."""
        launch, worker = self.launch, self.worker
        if launch is None or worker is None:
            return None
        # A worker that crashed (or failed to load) and waits for its restart keeps its place: the
        # restart starts it there again, so no other model may take that memory meanwhile.
        restarting = self.restart is not None and not self.restart.done() and not worker.state.holds_memory
        return Resident(
            name=self.name,
            planned_bytes={d.gpu: d.total_bytes for d in launch.devices},
            holds_memory=worker.state.holds_memory or restarting,
            allocating=worker.state is ModelState.STARTING or restarting,
            computes_on_cpu=launch.computes_on_cpu,
            weight=self.config.weight,
            evictable=self.evictable,
            priority=self.config.priority,
            last_used=self.last_used,
            load_seconds=self.load_seconds if self.load_seconds is not None else worker.load_seconds,
            requests=self.requests,
        )

    def unload_in(self, now: float) -> float | None:
        """Seconds until the idle-TTL reaper unloads this model; None when it would not (not
        on demand, no TTL, not ready, or busy: the countdown starts when its last request ends)."""
        ttl = self.config.idle_ttl_s
        if not self.on_demand or ttl is None or self.state is not ModelState.READY or self.busy:
            return None
        return round(max(0.0, ttl - (now - self.last_used)), 1)

    def view(self, now: float, learned_bytes: int = 0) -> ModelView:
        """The model as everyone outside the pool sees it at ``now`` (the pool's clock), with the
        figure its next placement will plan beyond the estimate (``learned_bytes``)."""
        w, a = self.worker, self.admission
        return ModelView(
            config=self.config,
            created=self.created,
            state=self.state,
            reason=self.reason,
            last_error=self.last_error,
            launch=self.launch,
            progress=w.progress if w is not None else 0,
            load_seconds=w.load_seconds if w is not None else None,
            pid=w.pid if w is not None and self.state is ModelState.READY else None,
            allocated=w.allocated if w is not None else {},
            gpu_used_bytes=w.gpu_used_bytes if w is not None else {},
            measured_bytes=dict(self.measurement.measured) if self.measurement is not None else {},
            learned_bytes=learned_bytes,
            last_planned_bytes=self.launch.planned_total_bytes if self.launch is not None else self.last_planned_bytes,
            slots=w.slots if w is not None else None,
            busy_slots=w.busy_slots if w is not None else None,
            running=a.running,
            waiting=a.waiting,
            max_concurrency=a.max_concurrency,
            queue_size=a.queue_size,
            idle_ttl_s=self.config.idle_ttl_s if self.on_demand else None,
            unload_in_s=self.unload_in(now),
        )

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
    # New values of settings read only at start (gateway.config.start_only), until a restart.
    not_applied: list[str] = field(default_factory=list)

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
        on_event: EventSink | None = None,
        read_nvml: Callable[[], list[Device]] = read_nvml_devices,
        clock: Callable[[], float] = time.monotonic,
        learned: LearnedMemory | None = None,
    ) -> None:
        self._config = config
        # What loads measured beyond the estimates (gateway.placement.learning): every placement
        # plans with it; None keeps it in memory only.
        self._learned = learned if learned is not None else LearnedMemory()
        self._base_env = base_env
        self._transport = transport or SubprocessTransport()
        self._on_event = on_event or (lambda event: None)
        self._read_nvml = read_nvml
        self._clock = clock
        self._gate = LoadGate(self._transport.dry_run, read_nvml, clock, base_env)
        self._placement = asyncio.Lock()  # one decision about free memory at a time
        # By model: the planner's estimate for a model never placed, with the settings and file
        # version it was made for (``estimate_bytes``).
        self._estimates: dict[str, tuple[tuple[str, int, int], int | None]] = {}
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
        entry.launch, entry.worker, entry.unplaced_reason, entry.held_down = launch, worker, None, False
        entry.last_planned_bytes = launch.planned_total_bytes
        entry.measurement = None
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
        """A /v1/models entry (``ModelView.openai``)."""
        return self.view(entry).openai(facts)

    def view(self, entry: ModelEntry) -> ModelView:
        """One model as it is now."""
        return entry.view(self._clock(), self._learned.bytes_for(entry.config))

    def estimate_bytes(self, entry: ModelEntry) -> int | None:
        """What the planner estimates loading a model never placed would need (GPUs and host
        together), planned on its own on the inventory; None where its header cannot be read or
        it fits nowhere. Reads its header (file I/O: call it in a thread), once per file version
        and settings."""
        model = entry.config
        try:
            st = os.stat(resolve_model_path(model.path))
        except (ModelFileError, OSError):
            return None
        key = (model.model_dump_json(), st.st_size, st.st_mtime_ns)
        cached = self._estimates.get(model.name)
        if cached is not None and cached[0] == key:
            return cached[1]
        config = self._config
        files = read_models(config.model_copy(update={"models": [model]}))
        estimate = None
        if not files.problems:
            request = model_request(model, files.infos[model.name], learned_bytes=self._learned.bytes_for(model))
            alone = plan([request], inventory(config, self._read_nvml), plan_policy(config))
            if alone.fits:
                estimate = launch_from_placement(alone.placements[0], str(files.paths[model.name])).planned_total_bytes
        self._estimates[model.name] = (key, estimate)
        return estimate

    def views(self) -> list[ModelView]:
        """Every configured model as it is now."""
        return [self.view(e) for e in self.entries.values()]

    def devices(self) -> list[Device]:
        """The GPUs of the config in force (NVML, or the declared inventory)."""
        return inventory(self._config, self._read_nvml)

    # ------------------------------------------------------------------ events

    def _emit(self, event: ModelEvent) -> None:
        self._on_event(event)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _worker_event(self, worker: WorkerProcess, event: ModelEvent) -> None:
        self._emit(event)
        entry = self.entries.get(worker.name)
        if entry is None or entry.worker is not worker:
            return  # a worker that was replaced or removed: its news changes nothing
        if isinstance(event, Ready):
            entry.load_failures = 0
            self._learn(entry, worker)
        if self._stopping or entry.removed:
            return
        if isinstance(event, Crashed):
            entry.restart = self._spawn(self._restart(entry, worker), f"restart-{entry.name}")
        elif isinstance(event, Failed) and event.loading and not entry.on_demand and entry.launch is not None:
            # An eager model has no request to load it again: the pool tries again itself.
            entry.restart = self._spawn(self._retry_load(entry, worker), f"retry-{entry.name}")

    def _learn(self, entry: ModelEntry, worker: WorkerProcess) -> None:
        """Compare the load with its plan; a model that needed more is planned with the measured
        figure from its next placement on (gateway.placement.learning)."""
        if entry.launch is None:
            return
        entry.measurement = measure(entry.launch, worker.allocated, worker.gpu_used_bytes)
        if entry.measurement is not None:
            self._learned.record(entry.config, entry.measurement)

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
            self._emit(Restarting(entry.name, attempt))
            self._emit(Loading(entry.name, "restart"))
            await worker.start()
        await worker.wait_ready()

    # ------------------------------------------------------------------ start and stop

    async def start(self, timeout: float | None = None) -> None:
        """Start every placed model's worker at once; wait until each is ready or failed. With
        ``[planner] load_gate``, each eager model's placement passes the load gate first."""
        if self._config.planner.load_gate:
            async with self._placement:
                await self._gate_startup()
        workers = [e.worker for e in self.entries.values() if e.worker is not None]
        for w in workers:
            self._emit(Loading(w.name, "startup"))
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
    def _busy(entry: ModelEntry) -> ConflictError:
        return ConflictError(f"model {entry.name!r} has requests running or waiting; retry when it is idle")

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
            # An eager model that is loading (a reload changed it, an admin restart or load, a
            # retry): wait for it as for an on-demand load, up to load_timeout_s.
            if entry.loading is not None and not entry.loading.done():
                await self._await_load(entry)  # an admin restart or load: it installs the worker
            elif w is not None:
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
            self._emit(LoadWaited(entry.name, self._clock() - started))
        if state is ModelState.STARTING:
            raise ModelUnavailableError(f"model {entry.name!r} did not load within {timeout:g} s")

    async def _await_load(self, entry: ModelEntry, reason: LoadReason = "on_demand") -> None:
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
            self._emit(LoadWaited(entry.name, self._clock() - started))

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

    async def unload(self, requested: Any, reason: EvictReason = "admin") -> ModelEntry:
        """Unload an idle model (the admin API). An on-demand model loads again on its next
        request; an eager one stays down ("stopped", no restart or retry) until ``load``,
        ``restart`` or a reload starts it."""
        entry = self.resolve(requested)
        async with self._placement:
            if entry.busy:
                raise self._busy(entry)
            await self._evict(entry, reason)
            entry.held_down = not entry.on_demand
        return entry

    def residents(self) -> list[Resident]:
        """Every placed model with a worker, as placement sees it (gateway.placement.decisions)."""
        return [r for r in (e.resident() for e in self.entries.values()) if r is not None]

    async def restart(self, requested: Any) -> ModelEntry:
        """Stop an idle model's worker and load it again, placed anew (the admin API). The load is
        under way before the old worker stops, so a request that comes meanwhile waits for the
        new worker (up to load_timeout_s) instead of finding the model stopped."""
        entry = self.resolve(requested)
        async with self._placement:
            if entry.busy:
                raise self._busy(entry)
            if entry.loading is None or entry.loading.done():
                # It waits for the placement lock, so it places the model once the old worker is gone.
                entry.loading = self._spawn(self._load(entry, "restart"), f"load-{entry.name}")
            await self._evict(entry, "restart")
        await self._await_load(entry, "restart")
        if entry.state is not ModelState.READY:
            raise self._unavailable(entry)
        return entry

    async def _load(self, entry: ModelEntry, reason: LoadReason) -> None:
        try:
            await self._place_and_start(entry, reason)
        except ModelUnavailableError as exc:
            entry.last_error = str(exc)
            raise
        entry.last_error = None

    async def _place_and_start(self, entry: ModelEntry, reason: LoadReason) -> None:
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
            request = model_request(model, files.infos[model.name], learned_bytes=self._learned.bytes_for(model))
            decision = await self._gate.place(entry.name, model, request, str(files.paths[model.name]), config, self.residents)
            victims = [self.entries[n] for n in decision.evict]
            for victim in victims:
                victim.evicting = True  # chosen and marked with no await between: nobody takes it
            for victim in victims:
                await self._evict(victim, "make_room", for_model=entry.name)
            running = cpu_models_running(self.residents(), leaving=set(decision.evict) | {entry.name})
            launch = launch_from_placement(decision.placement, str(files.paths[model.name]), cpu_models_running=running)
            async with entry.lock:
                if entry.restart is not None:
                    entry.restart.cancel()  # a retry waiting for its backoff: this load replaces it
                if entry.worker is not None:
                    await entry.worker.stop(WORKER_STOP_TIMEOUT_S)  # a failed earlier attempt
                worker = self._install(entry, launch)
                self._emit(Loading(entry.name, reason))
                started = self._clock()
                await worker.start()
            state = await worker.wait_ready(config.gateway.load_timeout_s)
            entry.last_used = self._clock()
            if state is ModelState.READY:
                entry.load_seconds = entry.last_used - started
            else:
                raise ModelUnavailableError(f"model {entry.name!r} failed to load: {worker.reason}")

    async def _gate_startup(self) -> None:
        """Before any eager model starts, the dry run of each one's planned launch must fit in the
        memory free now less what the other eager models were planned to take (none holds it yet).
        One that does not is placed again with the measured figures (gateway.placement.gated); one
        that cannot be is left unplaced with the gate's reason, and the others still start."""
        config = self._config
        pending = {e.name: e for e in self.entries.values() if not e.on_demand and e.launch is not None and e.worker is not None}
        launches = {name: e.launch for name, e in pending.items() if e.launch is not None}
        for entry in pending.values():
            launch = entry.launch
            if launch is None or not launch.devices:
                continue
            taken = promised_to_others(launches, entry.name)
            try:
                verdict = await self._gate.check(entry.name, entry.config, launch, config, self.residents(), taken=taken)
                if isinstance(verdict, Pass):
                    continue
                files = read_models(config.model_copy(update={"models": [entry.config]}))
                if files.problems:
                    raise ModelUnavailableError("; ".join(files.problems))
                request = model_request(entry.config, files.infos[entry.name], learned_bytes=self._learned.bytes_for(entry.config))
                entry.launch, entry.worker = None, None  # never started: nothing to stop
                path = str(files.paths[entry.name])
                decision = await self._gate.place(
                    entry.name, entry.config, request, path, config, self.residents, taken=taken, excess=verdict.excess, reason=verdict.reason
                )
            except ModelUnavailableError as exc:
                log.error("model %s: not started: %s", entry.name, exc)
                entry.launch, entry.worker, entry.unplaced_reason = None, None, str(exc)
                continue
            running = cpu_models_running(self.residents(), leaving=())
            self._install(entry, launch_from_placement(decision.placement, path, cpu_models_running=running))

    async def _evict(self, entry: ModelEntry, reason: EvictReason, for_model: str | None = None) -> None:
        """Stop a model's worker; it becomes "stopped" and loads again on its next request."""
        entry.evicting = True
        try:
            async with entry.lock:
                if entry.restart is not None:
                    entry.restart.cancel()
                if entry.worker is not None:
                    await entry.worker.stop(WORKER_STOP_TIMEOUT_S)
                entry.launch, entry.worker, entry.measurement = None, None, None
            log.info("model %s: unloaded (%s%s)", entry.name, reason, f" for {for_model}" if for_model else "")
            self._emit(Evicted(entry.name, reason))
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
        # So is one an operator unloaded (held down: "stopped").
        restarted = [
            n for n in unchanged if not self.entries[n].on_demand and self.entries[n].state in (ModelState.FAILED, ModelState.STOPPED)
        ]
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
            devices = free_devices(inventory(new, self._read_nvml), self.residents(), new.planner.gpus is not None, leaving)
            requests = [model_request(m, files.infos[m.name], learned_bytes=self._learned.bytes_for(m)) for m in starting]
            placed = plan(requests, devices, plan_policy(new))
            if not placed.fits:
                result.problems = [f"plan: {p}" for p in placed.problems]
                return result
            launches = launches_from_plan(
                placed, {n: str(p) for n, p in files.paths.items()}, cpu_models_running=cpu_models_running(self.residents(), leaving)
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
                self._emit(Added(model.name))
        self.entries = entries
        self._config = new
        self._index()
        fresh = [entries[n].worker for n in launches if entries[n].worker is not None]
        for w in fresh:
            self._emit(Loading(w.name, "reload"))  # type: ignore[union-attr]
            await w.start()  # type: ignore[union-attr]
        await asyncio.gather(*(w.wait_ready(new.gateway.load_timeout_s) for w in fresh))  # type: ignore[union-attr]
        result.reloaded = True
        return result

    async def _stop_entry(self, entry: ModelEntry) -> None:
        async with entry.lock:
            if entry.worker is not None:
                await entry.worker.stop(WORKER_STOP_TIMEOUT_S)
