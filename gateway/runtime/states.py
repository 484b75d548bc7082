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


TRANSITIONS: dict[ModelState, frozenset[ModelState]] = {
    ModelState.STOPPED: frozenset({ModelState.STARTING}),
    ModelState.STARTING: frozenset({ModelState.READY, ModelState.FAILED, ModelState.STOPPING}),
    ModelState.READY: frozenset({ModelState.STOPPING, ModelState.FAILED}),
    ModelState.STOPPING: frozenset({ModelState.STOPPED}),
    ModelState.FAILED: frozenset({ModelState.STARTING, ModelState.STOPPED}),
}

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
