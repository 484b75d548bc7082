"""The served models: names and aliases, their workers and their waiting rooms."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.runtime.admission import Admission
from gateway.config.schema import Config, ModelConfig
from gateway.errors import InvalidRequestError, ModelNotFoundError, ModelUnavailableError
from gateway.placement.launch import ModelLaunch
from gateway.runtime.worker_process import ModelState, WorkerHandle

log = logging.getLogger("gateway")

RESTART_BACKOFF_MAX_S = 30.0


@dataclass
class ModelEntry:
    config: ModelConfig
    launch: ModelLaunch | None  # None: the plan could not place it
    handle: WorkerHandle | None
    admission: Admission
    created: int
    unplaced_reason: str | None = None
    last_used: float = 0.0  # monotonic time of the last request's end (on-demand idling)
    loading: asyncio.Task | None = None  # the one load every waiting request shares
    evicting: bool = False  # being stopped to make room: requests must not take its worker

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def on_demand(self) -> bool:
        return self.config.load == "on_demand"

    @property
    def state(self) -> str:
        if self.handle is None:
            # An on-demand model that is not loaded is simply stopped; an eager one without a
            # worker was refused by the planner.
            return ModelState.STOPPED.value if self.on_demand and self.unplaced_reason is None else ModelState.FAILED.value
        return self.handle.state.value

    def touch(self) -> None:
        self.last_used = time.monotonic()

    @property
    def busy(self) -> bool:
        """Requests running or waiting (a model that is busy is never evicted)."""
        return bool(self.admission.running or self.admission.waiting)

    @property
    def reason(self) -> str | None:
        return self.unplaced_reason if self.handle is None else self.handle.reason

    def ready_handle(self) -> WorkerHandle:
        """The worker, if it can take a request now; else a 503-mapped error."""
        if self.handle is None or self.handle.state != ModelState.READY:
            why = f" ({self.reason})" if self.reason else ""
            raise ModelUnavailableError(f"model {self.name!r} is {self.state}{why}")
        return self.handle


class Registry:
    """Routes model names to entries and owns every worker's life."""

    def __init__(
        self,
        config: Config,
        launches: dict[str, ModelLaunch],
        base_env: dict[str, str],
        unplaced: dict[str, str] | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = config
        self._on_event = on_event or (lambda name, event: None)
        self._crashes: dict[str, list[float]] = {}
        self._restart_tasks: set[asyncio.Task] = set()
        self._stopping = False
        self._base_env = base_env
        self.entries: dict[str, ModelEntry] = {}
        self._lookup: dict[str, str] = {}
        for model in config.models:
            self.entries[model.name] = self._new_entry(model, launches.get(model.name), (unplaced or {}).get(model.name))
        self._index()

    def _new_entry(self, model: ModelConfig, launch: ModelLaunch | None, unplaced: str | None = None) -> ModelEntry:
        handle = (
            WorkerHandle(launch.worker_spec(model), launch.worker_env(self._base_env), on_event=self._handle_event)
            if launch is not None
            else None
        )
        return ModelEntry(
            config=model,
            launch=launch,
            handle=handle,
            admission=Admission(model.name, model.max_concurrency, model.queue_size),
            created=int(time.time()),
            unplaced_reason=None
            if launch is not None or (model.load == "on_demand" and unplaced is None)
            else (unplaced or "not placed by the planner"),
        )

    def install(self, entry: ModelEntry, launch: ModelLaunch) -> WorkerHandle:
        """Give an entry a (new) placement and an unstarted worker for it."""
        handle = WorkerHandle(launch.worker_spec(entry.config), launch.worker_env(self._base_env), on_event=self._handle_event)
        entry.launch, entry.handle, entry.unplaced_reason = launch, handle, None
        return handle

    def uninstall(self, entry: ModelEntry) -> None:
        """Forget an entry's (stopped) worker: an on-demand model is then simply not loaded."""
        entry.launch, entry.handle = None, None

    def _index(self) -> None:
        lookup: dict[str, str] = {}
        for name, entry in self.entries.items():
            lookup[name] = name
            for alias in entry.config.aliases:
                lookup[alias] = name
        self._lookup = lookup

    async def replace(
        self,
        config: Config,
        remove: set[str],
        start: dict[str, ModelLaunch],
        grace: float,
        load_timeout: float | None = None,
    ) -> None:
        """Apply a reload: drain and stop ``remove``, start ``start``, keep every other model.

        Models that are kept only take their new config entry (aliases), without a restart.
        """
        leaving = [self.entries[n] for n in remove if n in self.entries]
        deadline = time.monotonic() + grace
        while any(e.admission.running + e.admission.waiting for e in leaving) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.gather(*(e.handle.stop(10.0) for e in leaving if e.handle is not None), return_exceptions=True)
        models = {m.name: m for m in config.models}
        entries: dict[str, ModelEntry] = {}
        for name, model in models.items():
            if name in start:
                entries[name] = self._new_entry(model, start[name])
            elif name in self.entries and name not in remove:
                kept = self.entries[name]
                kept.config = model
                entries[name] = kept
            else:
                entries[name] = self._new_entry(model, None)  # an on-demand model, not loaded yet
        self.entries = entries
        self.config = config
        self._index()
        fresh = [entries[n].handle for n in start if entries[n].handle is not None]
        for h in fresh:
            self._on_event("loading", {"model": h.spec.name, "reason": "reload"})
            await h.start()
        await asyncio.gather(*(h.wait_ready(load_timeout) for h in fresh))

    def _handle_event(self, name: str, event: dict[str, Any]) -> None:
        self._on_event(name, event)
        if name == "crashed" and not self._stopping:
            task = asyncio.get_running_loop().create_task(self._restart(event["model"]))
            self._restart_tasks.add(task)
            task.add_done_callback(self._restart_tasks.discard)

    async def _restart(self, name: str) -> None:
        """Restart a crashed worker with exponential backoff, or give up and leave it failed."""
        settings = self.config.gateway
        entry = self.entries[name]
        handle = entry.handle
        if handle is None:
            return
        now = time.monotonic()
        recent = [t for t in self._crashes.get(name, []) if now - t < settings.restart_window_s]
        recent.append(now)
        self._crashes[name] = recent
        if len(recent) > settings.restart_max_failures:
            handle.give_up(
                f"gave up after {len(recent)} crashes within {settings.restart_window_s:g} s; last: {handle.reason}"
            )
            return
        delay = min(RESTART_BACKOFF_MAX_S, settings.restart_backoff_s * 2 ** (len(recent) - 1))
        log.warning("model %s: worker crashed (%s); restarting in %.1f s", name, handle.reason, delay)
        await asyncio.sleep(delay)
        if self._stopping:
            return
        self._on_event("restarting", {"model": name, "attempt": len(recent)})
        self._on_event("loading", {"model": name, "reason": "restart"})
        await handle.start()
        await handle.wait_ready()

    def resolve(self, requested: Any) -> ModelEntry:
        """The entry for a request's ``model`` field: a name, an alias, or absent.

        Absent goes to ``default_model``, else to the only model; never to a guess.
        """
        if requested is None or requested == "":
            default = self.config.gateway.default_model
            if default is not None:
                return self.entries[self._lookup[default]]
            if len(self.entries) == 1:
                return next(iter(self.entries.values()))
            raise InvalidRequestError(
                f"'model' is required: this gateway serves {len(self.entries)} models ({', '.join(self.entries)})",
                param="model",
            )
        if not isinstance(requested, str):
            raise InvalidRequestError(f"'model' must be a string, not {type(requested).__name__}", param="model")
        name = self._lookup.get(requested)
        if name is None:
            raise ModelNotFoundError(requested, sorted(self._lookup))
        return self.entries[name]

    async def start_all(self, timeout: float | None = None) -> None:
        """Start every placed model's worker at once and wait until each is ready or failed."""
        handles = [e.handle for e in self.entries.values() if e.handle is not None]
        for h in handles:
            self._on_event("loading", {"model": h.spec.name, "reason": "startup"})
            await h.start()
        await asyncio.gather(*(h.wait_ready(timeout) for h in handles))
        now = time.monotonic()
        for e in self.entries.values():
            e.last_used = now

    def in_flight(self) -> int:
        return sum(e.admission.running + e.admission.waiting for e in self.entries.values())

    async def drain(self, grace: float) -> None:
        """Wait until no request is running or waiting, or ``grace`` seconds pass."""
        deadline = time.monotonic() + grace
        while self.in_flight() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def stop_all(self, timeout: float = 10.0) -> None:
        self._stopping = True
        for task in list(self._restart_tasks):
            task.cancel()
        handles = [e.handle for e in self.entries.values() if e.handle is not None]
        await asyncio.gather(*(h.stop(timeout) for h in handles), return_exceptions=True)

    def kill_all_now(self) -> None:
        for e in self.entries.values():
            if e.handle is not None:
                e.handle.kill_now()

    def failed(self) -> dict[str, str]:
        return {e.name: e.reason or "failed" for e in self.entries.values() if e.state == ModelState.FAILED.value}

    def describe(self, entry: ModelEntry) -> dict[str, Any]:
        """A /v1/models entry: OpenAI's fields plus state and planned vs allocated memory."""
        h = entry.handle
        return {
            "id": entry.name,
            "object": "model",
            "created": entry.created,
            "owned_by": "vram-gateway",
            "aliases": list(entry.config.aliases),
            "state": entry.state,
            "reason": entry.reason,
            "progress": h.progress if h is not None else 0,
            "load_seconds": h.load_seconds if h is not None else None,
            "pid": h.pid if h is not None and entry.state == "ready" else None,
            "planned": entry.launch.planned_json() if entry.launch is not None else None,
            "allocated": h.allocated if h is not None else {},
            "gpu_used_bytes": h.gpu_used_bytes if h is not None else {},
            "queue": {
                "running": entry.admission.running,
                "waiting": entry.admission.waiting,
                "max_concurrency": entry.admission.max_concurrency,
                "queue_size": entry.admission.queue_size,
            },
        }
