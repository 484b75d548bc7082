"""Prometheus metrics: what happened (counters, histograms) and what is (read at scrape time).

``GatewayMetrics`` owns its own ``CollectorRegistry``, so several apps in one process (tests)
never clash on the global default registry. Two kinds of series:

- **Events**, recorded by the app as they happen: ``request_finished``, ``rejected``,
  ``worker_restarted``, ``model_loaded``. Worker processes report their observations (token
  usage, load time, allocated buffers) over the IPC protocol, so every series is recorded in
  the gateway process and one ``/metrics`` serves them all; there is no per-worker target.
- **State**, evaluated on every scrape from two callables given to the constructor: the
  models (state, queue, planned and allocated memory) and the GPUs (NVML, or a declared
  inventory's static figures). Nothing is cached between scrapes, so a scrape never shows a
  stale queue or a GPU's memory from minutes ago.

Labels. Every per-model series has ``model``: the configured name, never the alias a client
used, and ``""`` for a request that never reached a model (a 400 before routing, a 404 for an
unknown name), so client input can never create series. Every per-GPU series has ``gpu`` (the
NVML index, which is also the planner's index) and ``gpu_uuid`` (NVML's UUID; ``declared-N``
for a declared inventory; ``""`` when the inventory of that scrape does not list the GPU).
Dashboards group and join on ``gpu``; ``gpu_uuid`` tells which physical card it was when
indices move (a GPU removed, a different host).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

if TYPE_CHECKING:
    from gateway.engine.protocol import Stats
from prometheus_client.registry import Collector

from gateway.observability.activity import RecentActivity
from gateway.runtime.states import STATE_LABELS, ModelState
from planner.devices import Device

log = logging.getLogger("gateway.observability.metrics")

PREFIX = "vram_gateway_"

# The states under the names the dashboard uses (gateway.runtime.states: "starting" is "loading").
MODEL_STATES: tuple[str, ...] = STATE_LABELS

REJECT_REASONS: tuple[str, ...] = ("queue_full", "queue_timeout", "model_unavailable", "scope", "rate", "concurrency")
# A key's refusals (gateway.access): a model outside its scope (403), its requests or tokens per
# minute, its max_concurrency (429). Series by key *name*, never the key.
KEY_REJECT_REASONS: tuple[str, ...] = ("scope", "rate", "concurrency")

# LLM requests range from a 50 ms embedding to a 10-minute generation (request_timeout_s
# defaults to 600), so the buckets are roughly logarithmic over that whole range.
DURATION_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
# Time to first token: prefill of a short prompt on a GPU is tens of ms; a long prompt on the
# CPU, or a queue, takes up to a minute.
TTFT_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60)
# Decode speed: a 70B model on the CPU makes ~1 token/s, a 270M model on an H100 several hundred.
TOKENS_PER_SECOND_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 15, 20, 30, 40, 50, 75, 100, 150, 200, 300, 500, 750, 1000)

# Tokens per decode step: 1 for one stream, up to n_batch (512 by default) with prompt chunks.
BATCH_TOKENS_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)

NO_MODEL = ""



@dataclass(frozen=True)
class ModelSnapshot:
    """One configured model as it is at scrape time.

    ``state`` is the ModelState value (``starting|ready|failed|stopping|stopped``); it is
    exported under its ``ModelState.label``. Byte maps are keyed by NVML GPU index:

    - ``planned_bytes``: the planner's per-GPU prediction (weights, KV, compute, CUDA context
      and growth), i.e. ``PlannedDevice.total_bytes``;
    - ``allocated_bytes``: the buffers llama.cpp reported (weights, KV, output, compute; no
      CUDA context), see ``planner.llama_log.llama_buffers_per_gpu``;
    - ``process_used_bytes``: what NVML says the worker process holds on that GPU (CUDA
      context included, so directly comparable with ``planned_bytes``); empty where NVML
      cannot match the process (no driver, a container without the host's PID namespace);
    - ``measured_bytes``: what its last load needed, counted as ``planned_bytes`` is
      (gateway.placement.learning.measure), and ``plan_error_bytes`` that less the plan;
    - ``learned_bytes``: what its next placement plans per GPU beyond the planner's estimate.

    ``max_concurrency`` and ``queue_size`` are the limits of the model's waiting room; ``None``
    leaves their series out.
    """

    name: str
    state: str
    waiting: int = 0
    running: int = 0
    max_concurrency: int | None = None
    queue_size: int | None = None
    planned_bytes: Mapping[int, int] = field(default_factory=dict)
    allocated_bytes: Mapping[int, int] = field(default_factory=dict)
    process_used_bytes: Mapping[int, int] = field(default_factory=dict)
    measured_bytes: Mapping[int, int] = field(default_factory=dict)
    plan_error_bytes: Mapping[int, int] = field(default_factory=dict)
    learned_bytes: int = 0
    # The batching engine's sequence slots (its last "stats" message); None: not running.
    slots: int | None = None
    busy_slots: int | None = None


class _StateCollector(Collector):
    """The series that describe *now*: evaluated from the two callables on every scrape."""

    def __init__(
        self,
        snapshot: Callable[[], Iterable[ModelSnapshot]],
        read_gpus: Callable[[], Iterable[Device]],
        collect_errors: Counter,
    ) -> None:
        self._snapshot = snapshot
        self._read_gpus = read_gpus
        self._errors = collect_errors

    def describe(self) -> Iterable[Metric]:
        # Nothing up front: the series come from the callables, which may only work once the
        # app has started, and the registry would otherwise call collect() to learn the names.
        return []

    def _read(self, source: str, read: Callable[[], Iterable[Any]]) -> list[Any]:
        # A failing NVML call or a registry mid-reload must not turn the whole /metrics into a
        # 500: the other series still matter. The failure is counted and logged instead.
        try:
            return list(read())
        except Exception:
            log.exception("metrics: reading %s failed", source)
            self._errors.labels(source=source).inc()
            return []

    def collect(self) -> Iterator[Metric]:
        gpus = self._read("gpus", self._read_gpus)
        models = self._read("models", self._snapshot)
        uuids = {d.index: d.uuid for d in gpus}

        info = GaugeMetricFamily(PREFIX + "gpu_info", "GPUs in the inventory read at this scrape (value 1).", labels=["gpu", "gpu_uuid", "name"])
        total = GaugeMetricFamily(PREFIX + "gpu_memory_total_bytes", "Total memory of the GPU.", labels=["gpu", "gpu_uuid"])
        free = GaugeMetricFamily(PREFIX + "gpu_memory_free_bytes", "Free memory of the GPU, read from NVML at scrape time (static for a declared inventory).", labels=["gpu", "gpu_uuid"])
        used = GaugeMetricFamily(PREFIX + "gpu_memory_used_bytes", "Used memory of the GPU (total - free), by every process on it.", labels=["gpu", "gpu_uuid"])
        for d in gpus:
            gpu = [str(d.index), d.uuid]
            info.add_metric([*gpu, d.name], 1)
            total.add_metric(gpu, d.total_bytes)
            free.add_metric(gpu, d.free_bytes)
            used.add_metric(gpu, d.total_bytes - d.free_bytes)
        yield from (info, total, free, used)

        state = GaugeMetricFamily(PREFIX + "model_state", "1 for the model's current state, 0 for the others.", labels=["model", "state"])
        waiting = GaugeMetricFamily(PREFIX + "queue_depth", "Requests waiting for a free slot of the model.", labels=["model"])
        running = GaugeMetricFamily(PREFIX + "requests_in_flight", "Requests the model is running now.", labels=["model"])
        concurrency = GaugeMetricFamily(PREFIX + "max_concurrency", "Requests the model may run at once (max_concurrency).", labels=["model"])
        capacity = GaugeMetricFamily(PREFIX + "queue_capacity", "Requests that may wait for the model (queue_size).", labels=["model"])
        slots = GaugeMetricFamily(PREFIX + "engine_slots", "Sequence slots of the model's batching engine (one per concurrent sequence).", labels=["model"])
        busy = GaugeMetricFamily(PREFIX + "engine_slots_busy", "Slots decoding or reading a prompt now, as the engine last reported.", labels=["model"])
        mem_labels = ["model", "gpu", "gpu_uuid"]
        planned = GaugeMetricFamily(PREFIX + "model_planned_bytes", "GPU memory the planner predicted for the model (weights, KV cache, compute buffers, CUDA context, growth).", labels=mem_labels)
        allocated = GaugeMetricFamily(PREFIX + "model_allocated_bytes", "GPU buffers llama.cpp reported allocating for the model (weights, KV cache, output, compute; no CUDA context).", labels=mem_labels)
        process = GaugeMetricFamily(PREFIX + "model_process_used_bytes", "GPU memory NVML reports for the model's worker process (CUDA context included).", labels=mem_labels)
        measured = GaugeMetricFamily(PREFIX + "model_measured_bytes", "GPU memory the model's last load needed, counted as planned is: llama.cpp's buffers plus CUDA context and growth, or NVML's figure where larger.", labels=mem_labels)
        plan_error = GaugeMetricFamily(PREFIX + "model_plan_error_bytes", "Measured less planned GPU memory at the model's last load (positive: it needed more than its plan gave it).", labels=mem_labels)
        learned = GaugeMetricFamily(PREFIX + "model_learned_bytes", "GPU memory the model's next placement plans on each of its GPUs beyond the estimate, learned from a load that needed more.", labels=["model"])
        for m in models:
            current = ModelState(m.state).label if m.state in set(ModelState) else m.state
            # An unknown state is shown as itself rather than dropped, so a new
            # state shows up on the dashboard instead of the model vanishing from it.
            for name in MODEL_STATES if current in MODEL_STATES else (*MODEL_STATES, current):
                state.add_metric([m.name, name], 1 if name == current else 0)
            waiting.add_metric([m.name], m.waiting)
            running.add_metric([m.name], m.running)
            if m.max_concurrency is not None:
                concurrency.add_metric([m.name], m.max_concurrency)
            if m.queue_size is not None:
                capacity.add_metric([m.name], m.queue_size)
            if m.slots is not None:
                slots.add_metric([m.name], m.slots)
                busy.add_metric([m.name], m.busy_slots or 0)
            learned.add_metric([m.name], m.learned_bytes)
            for family, per_gpu in (
                (planned, m.planned_bytes),
                (allocated, m.allocated_bytes),
                (process, m.process_used_bytes),
                (measured, m.measured_bytes),
                (plan_error, m.plan_error_bytes),
            ):
                for gpu, value in sorted(per_gpu.items()):
                    family.add_metric([m.name, str(gpu), uuids.get(gpu, "")], value)
        yield from (state, waiting, running, concurrency, capacity, slots, busy, planned, allocated, process, measured, plan_error, learned)


class KeyMetrics:
    """The per-key series (by key *name*), in the registry of the app that checks the keys: a
    gateway (GatewayMetrics) or the router (gateway.router.metrics), under the same names."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self._requests = Counter(
            PREFIX + "key_requests", "Requests answered, by API key name and HTTP status.", ["key", "status"], registry=r
        )
        self._prompt_tokens = Counter(PREFIX + "key_prompt_tokens", "Prompt tokens, by API key name.", ["key"], registry=r)
        self._completion_tokens = Counter(
            PREFIX + "key_completion_tokens", "Completion tokens, by API key name.", ["key"], registry=r
        )
        self._rejected = Counter(
            PREFIX + "key_requests_rejected",
            "A key's requests refused: scope (403), rate or concurrency (429), and the model's own refusals.",
            ["key", "reason"],
            registry=r,
        )

    def add_keys(self, names: Iterable[str]) -> None:
        """Create the keys' counters at zero (the keys in force; called again after a reload)."""
        for key in names:
            for reason in KEY_REJECT_REASONS:
                self._rejected.labels(key=key, reason=reason)
            self._prompt_tokens.labels(key=key)
            self._completion_tokens.labels(key=key)

    def answered(self, key: str | None, status_code: int, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        """One answered request of ``key`` (None: a gateway without keys, nothing counted)."""
        if key is None:
            return
        self._requests.labels(key=key, status=str(status_code)).inc()
        if prompt_tokens:
            self._prompt_tokens.labels(key=key).inc(prompt_tokens)
        if completion_tokens:
            self._completion_tokens.labels(key=key).inc(completion_tokens)

    def rejected(self, key: str | None, reason: str) -> None:
        if key is not None:
            self._rejected.labels(key=key, reason=reason).inc()


class GatewayMetrics:
    """Every series ``GET /metrics`` serves, in a registry of its own.

    ``snapshot`` returns one ``ModelSnapshot`` per configured model; ``read_gpus`` returns the
    GPU inventory (``gateway.nvml.read_nvml_devices`` or a declared one). Both are called once
    per scrape, possibly from a thread other than the event loop's (see ``render``).
    """

    def __init__(
        self,
        snapshot: Callable[[], Iterable[ModelSnapshot]],
        read_gpus: Callable[[], Iterable[Device]],
        recent: RecentActivity | None = None,
    ) -> None:
        # The last minute per model, for the web page (Prometheus keeps the long history).
        self.recent = recent if recent is not None else RecentActivity()
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self._collect_errors = Counter(
            PREFIX + "metrics_collect_errors",
            "Scrapes where reading a source of state (models, gpus) raised; its series were left out.",
            ["source"],
            registry=None,
        )
        # The state collector goes first so the error counter it may bump is current in the
        # same scrape.
        r.register(_StateCollector(snapshot, read_gpus, self._collect_errors))
        r.register(self._collect_errors)

        self._requests = Counter(
            PREFIX + "requests", "Requests answered, by model, endpoint and HTTP status.", ["model", "endpoint", "status"], registry=r
        )
        self._duration = Histogram(
            PREFIX + "request_duration_seconds",
            "Time from receiving a successful (2xx) request to its last byte, queueing included.",
            ["model", "endpoint"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._ttft = Histogram(
            PREFIX + "time_to_first_token_seconds",
            "Time from receiving a successful request to its first generated token, queueing included.",
            ["model", "endpoint"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self._prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prompt tokens processed.", ["model"], registry=r)
        self._completion_tokens = Counter(PREFIX + "completion_tokens", "Completion tokens generated.", ["model"], registry=r)
        self._speed = Histogram(
            PREFIX + "generation_tokens_per_second",
            "Decode speed of one request: tokens after the first / time after the first token.",
            ["model"],
            buckets=TOKENS_PER_SECOND_BUCKETS,
            registry=r,
        )
        self._rejected = Counter(
            PREFIX + "requests_rejected",
            "Requests refused without running: queue_full (429), queue_timeout and model_unavailable (503); "
            "a key's scope (403), rate and concurrency (429).",
            ["model", "reason"],
            registry=r,
        )
        self.keys = KeyMetrics(r)
        self._restarts = Counter(PREFIX + "worker_restarts", "Times a model's worker process was restarted.", ["model"], registry=r)
        self._load = Gauge(
            PREFIX + "model_load_duration_seconds", "Seconds the model's last successful load took.", ["model"], registry=r
        )
        self._loads = Counter(
            PREFIX + "model_loads", "Model loads by reason (startup, on_demand, restart, reload).", ["model", "reason"], registry=r
        )
        self._evictions = Counter(
            PREFIX + "model_evictions", "Model unloads by reason (make_room, idle_ttl, admin, restart).", ["model", "reason"], registry=r
        )
        self._load_wait = Histogram(
            PREFIX + "load_wait_seconds",
            "Seconds requests waited for their on-demand model to load.",
            ["model"],
            buckets=TTFT_BUCKETS + (120, 300),
            registry=r,
        )

        self._batch = Histogram(
            PREFIX + "engine_batch_tokens",
            "Tokens in one decode step of the batching engine (generating slots plus prompt chunks).",
            ["model"],
            buckets=BATCH_TOKENS_BUCKETS,
            registry=r,
        )
        self._cached_prompt = Counter(
            PREFIX + "prompt_cache_tokens",
            "Prompt tokens served from a slot's prompt cache instead of being decoded again.",
            ["model"],
            registry=r,
        )

    def add_model(self, model: str) -> None:
        """Create the model's counters at zero, so ``rate()`` and ``increase()`` see the first event.

        A counter series that first appears with value 1 has no earlier sample to compare with,
        so Prometheus would never count that first rejection or restart.
        """
        for reason in REJECT_REASONS:
            self._rejected.labels(model=model, reason=reason)
        self._restarts.labels(model=model)
        self._prompt_tokens.labels(model=model)
        self._completion_tokens.labels(model=model)
        self._cached_prompt.labels(model=model)

    def add_keys(self, names: Iterable[str]) -> None:
        """Create the keys' counters at zero (the keys in force; called again after a reload)."""
        self.keys.add_keys(names)

    def request_finished(
        self,
        model: str | None,
        endpoint: str,
        status_code: int,
        duration_s: float,
        ttft_s: float | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        key: str | None = None,
    ) -> None:
        """Record one answered request (once, when its last byte is sent or it failed).

        ``model`` is the configured name, or ``None`` when the request never reached a model.
        ``endpoint`` is the route (``/v1/chat/completions``), never the raw path. Durations
        and time to first token are observed for 2xx answers only, so fast refusals do not
        pull the latency percentiles down; every answer is counted in ``requests_total``.
        """
        name = NO_MODEL if model is None else model
        self._requests.labels(model=name, endpoint=endpoint, status=str(status_code)).inc()
        if prompt_tokens:
            self._prompt_tokens.labels(model=name).inc(prompt_tokens)
        if completion_tokens:
            self._completion_tokens.labels(model=name).inc(completion_tokens)
        self.keys.answered(key, status_code, prompt_tokens, completion_tokens)
        if not 200 <= status_code < 300:
            return
        if _finite_non_negative(duration_s):
            self._duration.labels(model=name, endpoint=endpoint).observe(duration_s)
        if ttft_s is not None and _finite_non_negative(ttft_s):
            self._ttft.labels(model=name, endpoint=endpoint).observe(ttft_s)
        speed = generation_speed(duration_s, ttft_s, completion_tokens)
        if speed is not None:
            self._speed.labels(model=name).observe(speed)

    def engine_stats(self, model: str, stats: Stats) -> None:
        """A worker's "stats" message: decode-step sizes and prompt-cache hits since its last one."""
        for size, count in stats.batch_sizes.items():
            for _ in range(count):
                self._batch.labels(model=model).observe(size)
        if stats.cached_prompt_tokens > 0:
            self._cached_prompt.labels(model=model).inc(stats.cached_prompt_tokens)

    def rejected(self, model: str | None, reason: str, key: str | None = None) -> None:
        """Count a request refused before it ran; ``reason`` is one of ``REJECT_REASONS``.

        The app records the answer itself with ``request_finished`` as well (its 429/503).
        ``key`` is the name of the request's API key, if it had one.
        """
        if reason not in REJECT_REASONS:
            # Call sites pass constants: an unknown reason is a bug that would mint new series.
            raise ValueError(f"unknown rejection reason {reason!r} (one of {', '.join(REJECT_REASONS)})")
        self._rejected.labels(model=NO_MODEL if model is None else model, reason=reason).inc()
        self.keys.rejected(key, reason)

    def worker_restarted(self, model: str) -> None:
        """Count one restart of the model's worker process."""
        self._restarts.labels(model=model).inc()

    def model_load_started(self, model: str, reason: str) -> None:
        """Count a load: ``startup``, ``on_demand``, ``restart`` or ``reload``."""
        self._loads.labels(model=model, reason=reason).inc()

    def model_evicted(self, model: str, reason: str) -> None:
        """Count an unload: ``make_room`` (another model needed the memory), ``idle_ttl``,
        ``admin`` (``gateway unload``) or ``restart`` (``gateway restart``)."""
        self._evictions.labels(model=model, reason=reason).inc()

    def load_waited(self, model: str, seconds: float) -> None:
        """Time a request spent waiting for its on-demand model to load."""
        if _finite_non_negative(seconds):
            self._load_wait.labels(model=model).observe(seconds)

    def model_loaded(self, model: str, seconds: float) -> None:
        """Record how long the model's latest successful load took."""
        self._load.labels(model=model).set(seconds)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition body and its content type.

        ``accept`` is the scrape's Accept header: OpenMetrics when Prometheus asks for it, the
        text format otherwise. This calls both state callables and may read NVML (a few ms
        per GPU), so an async handler should run it in a thread (``asyncio.to_thread``).
        """
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def generation_speed(duration_s: float, ttft_s: float | None, completion_tokens: int | None) -> float | None:
    """Decode tokens per second of one request, or ``None`` where it means nothing.

    The first token arrives at ``ttft_s`` (prefill); the other ``completion_tokens - 1`` arrive
    over ``duration_s - ttft_s``. Counting the first token too would inflate short answers'
    speed, and dividing by the whole duration would mix prefill time into decode speed.
    """
    if ttft_s is None or completion_tokens is None or completion_tokens < 2:
        return None
    if not (_finite_non_negative(duration_s) and _finite_non_negative(ttft_s)):
        return None
    decode_s = duration_s - ttft_s
    if decode_s <= 0:
        return None
    return (completion_tokens - 1) / decode_s


def _finite_non_negative(value: float) -> bool:
    return math.isfinite(value) and value >= 0
