"""The one list of a model's states, and the table of the transitions between them.

A model's worker moves only along ``TRANSITIONS``; anything else raises
``IllegalTransition`` (a bug in the caller, never a condition to handle). The same names are
used everywhere: ``/v1/models``, ``/health``, ``gateway status`` and the console; metrics and
the dashboard show ``STARTING`` as "loading" (``ModelState.label``), the word a user expects
while the weights are read.

    stopped ──start──> starting ──ready──> ready ──stop──> stopping ──exit──> stopped
                          │  └──stop──> stopping                ^
                          └──fail──> failed <──crash── ready     │
                                       └──start (restart) / stop ┘
"""

from __future__ import annotations

from enum import StrEnum

from gateway.errors import GatewayError


class ModelState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"

    @property
    def label(self) -> str:
        """The name metrics and the dashboard show."""
        return "loading" if self is ModelState.STARTING else self.value

    @property
    def holds_memory(self) -> bool:
        """Whether a model's worker in this state holds (or is about to hold) its planned memory
        (``HOLDS_MEMORY``)."""
        return self in HOLDS_MEMORY


TRANSITIONS: dict[ModelState, frozenset[ModelState]] = {
    ModelState.STOPPED: frozenset({ModelState.STARTING}),
    ModelState.STARTING: frozenset({ModelState.READY, ModelState.FAILED, ModelState.STOPPING}),
    ModelState.READY: frozenset({ModelState.STOPPING, ModelState.FAILED}),
    ModelState.STOPPING: frozenset({ModelState.STOPPED}),
    ModelState.FAILED: frozenset({ModelState.STARTING, ModelState.STOPPED}),
}

# The states in which a model's worker holds its planned memory, the one answer for placement
# (free memory, the load on each GPU, CPU models sharing the cores) and for the /ui memory map.
# STARTING: it is allocating. STOPPING: it still holds its memory until its process has exited
# (the pool's placement lock means no placement decision sees one, except a plan preview, which
# counts it as leaving anyway). FAILED: its process has exited (or is exiting by itself after a
# failed load); STOPPED: it has no process.
HOLDS_MEMORY: frozenset[ModelState] = frozenset({ModelState.STARTING, ModelState.READY, ModelState.STOPPING})

# The labels in the order metrics export them (one series per label and model).
STATE_LABELS: tuple[str, ...] = tuple(s.label for s in ModelState)


class IllegalTransition(GatewayError):
    """A transition the table does not allow: a programming error in the runtime."""

    def __init__(self, model: str, old: ModelState, new: ModelState) -> None:
        super().__init__(f"model {model!r}: illegal state change {old.value} -> {new.value}")
        self.old, self.new = old, new


def check_transition(model: str, old: ModelState, new: ModelState) -> None:
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(model, old, new)
