"""One model as everyone outside the pool sees it: ``ModelView``, built once per look
(``ModelEntry.view``) from the entry, its worker and its waiting room.

It feeds every outward view of a model: ``/v1/models`` (``openai``, which ``gateway status``
prints), the scrape-time metrics (gateway.observability.telemetry) and the /ui page's rows and
memory map (gateway.http.routes.ui). A field a client, a metric or the page needs is added here
once; each of them formats it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.config.schema import ModelConfig
from gateway.placement.facts import ModelFacts, model_card
from gateway.placement.launch import ModelLaunch
from gateway.runtime.states import ModelState


@dataclass(frozen=True)
class ModelView:
    """A model now: its config, state, placement, what its worker reported and its queue."""

    config: ModelConfig
    created: int  # Unix time its entry was made (OpenAI's ``created``)
    state: ModelState
    reason: str | None  # a failed worker's reason, or why the planner refused it
    last_error: str | None  # why the last on-demand load failed; None once one succeeds
    launch: ModelLaunch | None  # where it was placed; None: not placed
    progress: int  # load percent (0 without a worker)
    load_seconds: float | None
    pid: int | None  # its worker's process, while ready
    allocated: Mapping[str, Any]  # the buffers llama.cpp reported at load ({} without a worker)
    gpu_used_bytes: Mapping[str, int]  # what NVML says its process holds, by GPU index (str)
    # What its load needed, by GPU index (gateway.placement.learning.measure: llama.cpp's buffers
    # plus the CUDA context and growth, or NVML's figure where larger); {} when nothing was measured.
    measured_bytes: Mapping[int, int]
    learned_bytes: int  # what its next placement plans on each of its GPUs beyond the estimate
    # Its last placement's planned total (GPUs and host), kept after an unload; None: never placed.
    last_planned_bytes: int | None
    slots: int | None  # the engine's last "stats": its slots and how many are busy
    busy_slots: int | None
    running: int
    waiting: int
    max_concurrency: int
    queue_size: int
    idle_ttl_s: float | None  # an on-demand model's idle TTL
    unload_in_s: float | None  # seconds until the idle-TTL reaper unloads it; None: it would not

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def live(self) -> bool:
        """Ready: what its worker reports is current."""
        return self.state is ModelState.READY

    @property
    def holds_memory(self) -> bool:
        """Placed, and its worker holds its planned memory (gateway.runtime.states.HOLDS_MEMORY)."""
        return self.launch is not None and self.state.holds_memory

    @property
    def gpus(self) -> list[int]:
        return [d.gpu for d in self.launch.devices] if self.launch is not None else []

    @property
    def planned_bytes(self) -> dict[int, int]:
        """The planner's bytes per GPU index."""
        return {d.gpu: d.total_bytes for d in self.launch.devices} if self.launch is not None else {}

    @property
    def planned_total_bytes(self) -> int | None:
        """The planner's bytes on every GPU and in host memory together; None: not placed."""
        return self.launch.planned_total_bytes if self.launch is not None else None

    @property
    def plan_error_bytes(self) -> dict[int, int]:
        """Measured less planned, by GPU (positive: the load needed more than its plan gave it)."""
        planned = self.planned_bytes
        return {gpu: used - planned[gpu] for gpu, used in self.measured_bytes.items() if gpu in planned}

    def memory_json(self) -> dict[str, Any]:
        """Predicted vs measured bytes per GPU, and the figure learned from earlier loads."""
        devices = self.launch.devices if self.launch is not None else []
        measured, error = self.measured_bytes, self.plan_error_bytes
        return {
            "devices": [
                {
                    "gpu": d.gpu,
                    "planned_bytes": d.total_bytes,
                    "estimate_bytes": d.estimate_bytes,
                    "measured_bytes": measured.get(d.gpu),
                    "plan_error_bytes": error.get(d.gpu),
                }
                for d in devices
            ],
            "learned_bytes": self.learned_bytes,
        }

    def openai(self, facts: ModelFacts | None = None) -> dict[str, Any]:
        """A /v1/models entry: OpenAI's fields plus state, what a client chooses a model by (its
        contexts, capabilities and file: ``facts``, its header's, None when unread or unreadable)
        and planned vs allocated memory."""
        return {
            "id": self.name,
            "object": "model",
            "created": self.created,
            "owned_by": "vram-gateway",
            "aliases": list(self.config.aliases),
            "state": self.state.value,
            **model_card(self.config, facts),
            "reason": self.reason or self.last_error,  # a refused load (the planner, the load gate) says why
            "progress": self.progress,
            "load_seconds": self.load_seconds,
            "pid": self.pid,
            "planned": self.launch.planned_json() if self.launch is not None else None,
            "allocated": dict(self.allocated),
            "gpu_used_bytes": dict(self.gpu_used_bytes),
            "memory": self.memory_json(),
            "queue": {
                "running": self.running,
                "waiting": self.waiting,
                "max_concurrency": self.max_concurrency,
                "queue_size": self.queue_size,
            },
            "idle_ttl_s": self.idle_ttl_s,
            "unload_in_s": self.unload_in_s,
        }
