"""The one list of model events: what the pool and its workers report to the pool's ``on_event``.

Each event is a frozen dataclass naming its model; a consumer dispatches on the type
(gateway.observability.events), so an event that does not exist cannot be emitted or handled
(a misspelt class is a NameError, not a branch that never runs). ``MODEL_EVENTS`` lists every
type; adding one means adding it here and a case for it where events are consumed (a test feeds
one of each to the console and metrics).

From a worker (gateway.runtime.worker_process), as its state changes:
``Starting``, ``Progress``, ``Ready``, ``Failed``, ``Crashed``, ``Stopped``, and ``Stats`` (its
engine's statistics). From the pool (gateway.runtime.pool), about a model's life:
``Loading``, ``Restarting``, ``Evicted``, ``LoadWaited``, ``Added``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gateway.engine import protocol

LoadReason = Literal["startup", "on_demand", "restart", "reload"]
EvictReason = Literal["make_room", "idle_ttl", "admin", "restart"]


@dataclass(frozen=True)
class ModelEvent:
    model: str


# ---------------------------------------------------------------- from a worker


@dataclass(frozen=True)
class Starting(ModelEvent):
    """The worker process was spawned."""

    pid: int | None


@dataclass(frozen=True)
class Progress(ModelEvent):
    """The load went on (percent of the weights read)."""

    percent: int


@dataclass(frozen=True)
class Ready(ModelEvent):
    """The model loaded; it takes requests."""

    load_seconds: float | None


@dataclass(frozen=True)
class Failed(ModelEvent):
    """The worker failed: while loading (``loading``), or it died while ready (a ``Crashed``
    follows)."""

    reason: str
    loading: bool


@dataclass(frozen=True)
class Crashed(ModelEvent):
    """It died while ready, or broke the protocol and was killed; the pool decides whether to
    restart it."""

    reason: str
    code: int


@dataclass(frozen=True)
class Stopped(ModelEvent):
    """It exited after a stop (``code`` None: it was stopped before its process ran)."""

    code: int | None


@dataclass(frozen=True)
class Stats(ModelEvent):
    """The worker's engine statistics (its "stats" message: slots, decode-step sizes,
    prompt-cache hits)."""

    stats: protocol.Stats


# ---------------------------------------------------------------- from the pool


@dataclass(frozen=True)
class Loading(ModelEvent):
    """The pool started a load."""

    reason: LoadReason


@dataclass(frozen=True)
class Restarting(ModelEvent):
    """The pool starts a crashed (or failed eager) model again: its ``attempt``-th try."""

    attempt: int


@dataclass(frozen=True)
class Evicted(ModelEvent):
    """The pool unloaded it (make_room: another model needed the memory)."""

    reason: EvictReason


@dataclass(frozen=True)
class LoadWaited(ModelEvent):
    """A request waited ``seconds`` for the model to load."""

    seconds: float


@dataclass(frozen=True)
class Added(ModelEvent):
    """A reload added the model (or replaced it with a changed one)."""


MODEL_EVENTS: tuple[type[ModelEvent], ...] = (
    Starting,
    Progress,
    Ready,
    Failed,
    Crashed,
    Stopped,
    Stats,
    Loading,
    Restarting,
    Evicted,
    LoadWaited,
    Added,
)

EventSink = Callable[[ModelEvent], None]
