"""Planner speed: 20 models of mixed shapes on 8 declared GPUs (target: under 100 ms), and the
cluster planner: 500 models on 64 nodes of 8 GPUs (target: under a second), planned from scratch
and again from its own previous plan (what `gateway render k8s` does on every re-render).

Prints a table; run with `make bench` or `.venv/bin/python bench/plan.py`.
"""

from __future__ import annotations

import platform
import statistics
import time


from planner.devices import declared_devices  # noqa: E402
from planner.memory import RunSettings  # noqa: E402
from planner.cluster import ClusterModel, Node, plan_cluster  # noqa: E402
from planner.plan import ModelRequest, PlanPolicy, plan  # noqa: E402
from testkit.factories import model_info  # noqa: E402

GPUS = ["80GiB", "80GiB", "48GiB", "48GiB", "24GiB", "24GiB", "24GiB", "12GiB"]


def models() -> list[ModelRequest]:
    out = []
    for i in range(20):
        n_layers = (28, 32, 40, 48, 64, 80)[i % 6]
        layer_mib = (60, 120, 250, 400, 700)[i % 5]
        out.append(
            ModelRequest(
                name=f"model-{i:02d}",
                info=model_info(n_layers=n_layers, layer_mib=layer_mib, name=f"model-{i:02d}"),
                # Every 7th model serves two requests at once (two slots of its context).
                settings=RunSettings(n_ctx=(4096, 8192, 32768)[i % 3], flash_attn=bool(i % 2), slots=1 + (i % 7 == 0)),
                priority=i % 3,
                allow_cpu_offload=i % 4 == 0,
            )
        )
    return out


CLUSTER_NODES = 64
CLUSTER_GPUS = ["80GiB"] * 8
CLUSTER_MODELS = 500


def cluster_models() -> list[ClusterModel]:
    out = []
    for i in range(CLUSTER_MODELS):
        n_layers = (28, 32, 40, 48, 64, 80)[i % 6]
        layer_mib = (60, 120, 250, 400, 700)[i % 5]
        request = ModelRequest(
            name=f"model-{i:03d}",
            info=model_info(n_layers=n_layers, layer_mib=layer_mib, name=f"model-{i:03d}"),
            settings=RunSettings(n_ctx=(4096, 8192, 32768)[i % 3], flash_attn=bool(i % 2)),
            priority=i % 3,
            allow_cpu_offload=i % 4 == 0,
        )
        # Every 7th model has two replicas, every 10th loads on demand.
        out.append(ClusterModel(request, replicas=1 + (i % 7 == 0), on_demand=i % 10 == 9))
    return out


def cluster_rows() -> list[tuple[str, float, float, int, int, int]]:
    nodes = [Node(f"node-{k:02d}", tuple(declared_devices(CLUSTER_GPUS))) for k in range(CLUSTER_NODES)]
    reqs = cluster_models()
    rows = []
    previous = None
    for label in ("from scratch", "from previous"):
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            result = plan_cluster(reqs, nodes, PlanPolicy(), previous)
            times.append(time.perf_counter() - t0)
        placed = sum(len(n.models) for n in result.nodes)
        rows.append((label, statistics.median(times) * 1000, max(times) * 1000, placed, len(result.moves), len(result.problems)))
        previous = result.assignment()
    return rows


def main() -> None:
    devices = declared_devices(GPUS)
    reqs = models()
    rows = []
    for packing in ("best_fit", "first_fit"):
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            result = plan(reqs, devices, PlanPolicy(packing=packing))
            times.append(time.perf_counter() - t0)
        on_gpu = sum(1 for p in result.placements if p.gpus)
        rows.append((packing, statistics.median(times) * 1000, max(times) * 1000, len(result.placements), on_gpu, len(result.problems)))
    print(f"planner: 20 models on 8 GPUs ({', '.join(GPUS)}); python {platform.python_version()} on {platform.machine()}")
    print(f"{'packing':<10} {'median ms':>10} {'max ms':>8} {'placed':>7} {'on GPU':>7} {'refused':>8}")
    for name, med, worst, placed, on_gpu, refused in rows:
        print(f"{name:<10} {med:>10.1f} {worst:>8.1f} {placed:>7} {on_gpu:>7} {refused:>8}")
    print("target: under 100 ms")
    print()
    print(f"cluster planner: {CLUSTER_MODELS} models on {CLUSTER_NODES} nodes x {len(CLUSTER_GPUS)} GPUs ({CLUSTER_GPUS[0]} each)")
    print(f"{'plan':<14} {'median ms':>10} {'max ms':>8} {'replicas':>9} {'moves':>6} {'refused':>8}")
    for name, med, worst, placed, moves, refused in cluster_rows():
        print(f"{name:<14} {med:>10.1f} {worst:>8.1f} {placed:>9} {moves:>6} {refused:>8}")
    print("target: under 1 s")


if __name__ == "__main__":
    main()
