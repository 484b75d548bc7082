"""What the gateway starts for each model: the planned placement turned into a worker spec.

A ``ModelLaunch`` is plain data (JSON-serialisable) so the CLI can plan in its own process and
hand the result to the server process that granian starts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import msgspec

from gateway.config.schema import Config, ModelConfig
from gateway.engine.protocol import WorkerSpec
from planner.plan import Placement, Plan


@dataclass(frozen=True)
class PlannedDevice:
    gpu: int
    layers: int
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    overhead_bytes: int
    total_bytes: int


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
    notes: list[str] = field(default_factory=list)

    def worker_spec(self, model: ModelConfig) -> WorkerSpec:
        return WorkerSpec(
            name=model.name,
            model_path=self.model_path,
            n_ctx=model.n_ctx,
            n_batch=model.n_batch,
            n_ubatch=model.n_ubatch,
            n_gpu_layers=self.n_gpu_layers,
            split_mode=self.split_mode,
            tensor_split=self.tensor_split,
            flash_attn=model.flash_attn,
            type_k=model.type_k,
            type_v=model.type_v,
            swa_full=model.swa_full,
            use_mmap=model.use_mmap,
            use_mlock=model.use_mlock,
            chat_format=model.chat_format,
            embedding=model.embedding,
            pooling=model.pooling,
            n_threads=model.n_threads,
            replicas=model.max_concurrency,
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


def launch_from_placement(p: Placement, model_path: str) -> ModelLaunch:
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
            )
            for slot, (g, m) in enumerate(zip(p.gpus, p.memory.devices))
        ],
        host_bytes=p.memory.host.total_bytes,
        notes=list(p.notes),
    )


def launches_from_plan(plan: Plan, paths: dict[str, str]) -> dict[str, ModelLaunch]:
    return {p.name: launch_from_placement(p, paths[p.name]) for p in plan.placements}


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
