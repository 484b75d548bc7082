"""What the gateway starts for each model: the planned placement turned into a worker spec.

A ``ModelLaunch`` is plain data (JSON-serialisable) so the CLI can plan in its own process and
hand the result to the server process that granian starts. It carries the threads chosen for
the model when it was launched (``gateway.placement.threads``): they depend on which models were
started with it, which the worker cannot know.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import msgspec

from gateway.config.schema import Config, ModelConfig
from gateway.cpus import available_cpus
from gateway.engine.protocol import WorkerSpec
from gateway.placement.mapping import run_settings, worker_context
from gateway.placement.threads import Threads, computes_on_cpu, configured_threads, default_threads
from planner.plan import Placement, Plan


@dataclass(frozen=True)
class PlannedDevice:
    gpu: int
    layers: int
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    overhead_bytes: int  # the CUDA context and the growth after the first requests
    total_bytes: int
    learned_bytes: int = 0  # measured beyond the estimate at an earlier load (in total_bytes)

    @property
    def estimate_bytes(self) -> int:
        """The planner's estimate alone, without what was learned."""
        return self.total_bytes - self.learned_bytes


@dataclass(frozen=True)
class ModelLaunch:
    """One model's worker: where it runs, how llama.cpp is told, and what the plan predicted."""

    name: str
    model_path: str
    cuda_visible_devices: str  # "" hides every GPU: a CPU model must not get a CUDA context
    n_gpu_layers: int
    tensor_split: list[float] | None
    split_mode: str
    devices: list[PlannedDevice] = field(default_factory=list)
    host_bytes: int = 0
    # The host's share of the KV cache and compute buffer (the load gate measures a build that
    # offloads nothing against them: gateway.placement.gate).
    host_kv_bytes: int = 0
    host_compute_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    # The threads chosen at launch when the config sets none (gateway.placement.threads).
    n_threads: int = 1
    n_threads_batch: int = 1

    @property
    def planned_total_bytes(self) -> int:
        """The planner's bytes on every GPU and in host memory together."""
        return sum(d.total_bytes for d in self.devices) + self.host_bytes

    @property
    def computes_on_cpu(self) -> bool:
        """Whether some of its layers run on the CPU (it then shares the cores)."""
        return computes_on_cpu(len(self.devices), self.n_gpu_layers)

    def worker_spec(self, model: ModelConfig) -> WorkerSpec:
        """The worker for ``model`` as planned: the planner's context settings, this placement,
        the launch's threads (the config's where set) and the keys only the worker reads."""
        threads = configured_threads(Threads(self.n_threads, self.n_threads_batch), model.n_threads, model.n_threads_batch)
        return WorkerSpec(
            name=model.name,
            model_path=self.model_path,
            **worker_context(run_settings(model)),
            n_gpu_layers=self.n_gpu_layers,
            split_mode=self.split_mode,
            tensor_split=self.tensor_split,
            use_mlock=model.use_mlock,
            chat_format=model.chat_format,
            pooling=model.pooling,
            n_threads=threads.n_threads,
            n_threads_batch=threads.n_threads_batch,
            gpu_indices=[d.gpu for d in self.devices],
        )

    def worker_env(self, base: dict[str, str]) -> dict[str, str]:
        env = dict(base)
        # NVML numbers GPUs in PCI order; make CUDA agree so our indices mean the same GPUs.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = self.cuda_visible_devices
        return env

    def planned_json(self) -> dict:
        return {
            "cuda_visible_devices": self.cuda_visible_devices,
            "n_gpu_layers": self.n_gpu_layers,
            "tensor_split": self.tensor_split,
            "devices": [asdict(d) for d in self.devices],
            "host_bytes": self.host_bytes,
            "notes": list(self.notes),
        }


def launch_from_placement(
    p: Placement, model_path: str, *, cpu_count: int | None = None, cpu_models_running: int = 0
) -> ModelLaunch:
    """One model started on its own, beside ``cpu_models_running`` CPU models already running."""
    return _launch(p, model_path, _threads([p], cpu_count, cpu_models_running)[p.name])


def launches_from_plan(
    plan: Plan, paths: dict[str, str], *, cpu_count: int | None = None, cpu_models_running: int = 0
) -> dict[str, ModelLaunch]:
    """Every placed model, started together; ``cpu_count`` defaults to this process's CPUs, read now."""
    threads = _threads(plan.placements, cpu_count, cpu_models_running)
    return {p.name: _launch(p, paths[p.name], threads[p.name]) for p in plan.placements}


def _threads(placements: Sequence[Placement], cpu_count: int | None, cpu_models_running: int) -> dict[str, Threads]:
    return default_threads(
        placements, available_cpus() if cpu_count is None else cpu_count, cpu_models_running=cpu_models_running
    )


def _launch(p: Placement, model_path: str, threads: Threads) -> ModelLaunch:
    return ModelLaunch(
        name=p.name,
        model_path=model_path,
        cuda_visible_devices=p.cuda_visible_devices,
        n_gpu_layers=p.n_gpu_layers,
        tensor_split=list(p.tensor_split) if p.tensor_split is not None else None,
        split_mode=p.split_mode,
        devices=[
            PlannedDevice(
                gpu=g,
                layers=p.layer_counts[slot],
                weights_bytes=m.weights_bytes,
                kv_bytes=m.kv_bytes,
                compute_bytes=m.compute_bytes,
                overhead_bytes=m.overhead_bytes + m.growth_bytes,
                total_bytes=m.total_bytes,
                learned_bytes=m.learned_bytes,
            )
            for slot, (g, m) in enumerate(zip(p.gpus, p.memory.devices))
        ],
        host_bytes=p.memory.host.total_bytes,
        host_kv_bytes=p.memory.host.kv_bytes,
        host_compute_bytes=p.memory.host.compute_bytes,
        notes=list(p.notes),
        n_threads=threads.n_threads,
        n_threads_batch=threads.n_threads_batch,
    )


def encode_launches(launches: dict[str, ModelLaunch]) -> bytes:
    return msgspec.json.encode({name: asdict(l) for name, l in launches.items()})


def decode_launches(data: bytes) -> dict[str, ModelLaunch]:
    raw = msgspec.json.decode(data)
    out = {}
    for name, item in raw.items():
        item["devices"] = [PlannedDevice(**d) for d in item.get("devices", [])]
        out[name] = ModelLaunch(**item)
    return out


def config_models(config: Config) -> dict[str, ModelConfig]:
    return {m.name: m for m in config.models}
