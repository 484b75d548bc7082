"""The memory map's figures: what the page draws for each GPU, for host memory and each model."""

from __future__ import annotations

import tomli_w

from gateway.config.loading import parse_config
from gateway.http.memory_map import HeldModel, live_map, plan_map
from gateway.placement.host_memory import HostMemory
from gateway.placement.launch import launches_from_plan
from gateway.placement.planning import plan_policy
from planner.devices import Device
from planner.plan import ModelRequest, plan
from planner.memory import RunSettings
from testkit.factories import GIB, MIB, model_info

HOST = HostMemory(total_bytes=64 * GIB, available_bytes=40 * GIB)


def config(**planner):
    return parse_config(tomli_w.dumps({"planner": planner, "models": [{"name": "m", "path": "/m.gguf"}]}), environ={})


def planned(gpu: int, total_mib: int, host_mib: int = 0) -> dict:
    return {
        "devices": [
            {
                "gpu": gpu,
                "layers": 33,
                "weights_bytes": (total_mib - 600) * MIB,
                "kv_bytes": 64 * MIB,
                "compute_bytes": 16 * MIB,
                "overhead_bytes": 520 * MIB,
                "total_bytes": total_mib * MIB,
            }
        ],
        "host_bytes": host_mib * MIB,
    }


def test_on_a_declared_inventory_free_memory_is_what_the_models_were_not_planned_to_use():
    cfg = config(gpus=["24GiB/20GiB"], reserve_mib=1024)
    gpus = [Device(0, "declared GPU 0", 24 * GIB, 20 * GIB)]
    held = [HeldModel("a", "ready", planned(0, 5000, host_mib=300)), HeldModel("b", "starting", planned(0, 3000))]
    m = live_map(cfg, gpus, HOST, held)
    (gpu,) = m["gpus"]
    assert gpu["free_bytes"] == 20 * GIB - 8000 * MIB
    assert gpu["other_bytes"] == 4 * GIB  # declared as not free: someone else's
    assert gpu["reserve_bytes"] == 1024 * MIB
    assert [(b["model"], b["gpu"], b["planned_bytes"]) for b in m["blocks"]] == [
        ("a", 0, 5000 * MIB), ("a", None, 300 * MIB), ("b", 0, 3000 * MIB)
    ]
    assert m["host"] == {"total_bytes": 64 * GIB, "free_bytes": 40 * GIB, "other_bytes": 24 * GIB - 300 * MIB}


def test_with_nvml_other_processes_are_what_is_used_beyond_the_models_processes():
    cfg = config()
    gpus = [Device(0, "H200", 140 * GIB, 100 * GIB, "GPU-x")]
    allocated = {"model_mib": {"CUDA0": 4000.0, "CPU_Mapped": 100.0}, "kv_mib": {"CUDA0": 64.0}, "compute_mib": {"CUDA0": 16.0, "CUDA_Host": 8.0}}
    held = [HeldModel("a", "ready", planned(0, 5000), allocated, {"0": 4700 * MIB})]
    m = live_map(cfg, gpus, None, held)
    (gpu,) = m["gpus"]
    assert gpu["free_bytes"] == 100 * GIB
    assert gpu["other_bytes"] == 40 * GIB - 4700 * MIB
    (block,) = m["blocks"]
    assert block["allocated_bytes"] == 4080 * MIB and block["process_bytes"] == 4700 * MIB
    assert m["host"] is None


def test_a_gpu_outside_planner_devices_says_so():
    cfg = config(devices=[1])
    m = live_map(cfg, [Device(0, "g0", 8 * GIB, 8 * GIB), Device(1, "g1", 8 * GIB, 8 * GIB)], HOST, [])
    assert [g["note"] for g in m["gpus"]] == ["not in [planner] devices", None]


def test_the_preview_map_has_the_plans_blocks_and_the_skipped_gpus():
    cfg = config(gpus=["24GiB", "512MiB"], reserve_mib=0, min_budget_mib=1024)
    devices = [Device(0, "declared GPU 0", 24 * GIB, 24 * GIB), Device(1, "declared GPU 1", 512 * MIB, 512 * MIB)]
    request = ModelRequest(name="m", info=model_info(n_layers=8), settings=RunSettings(n_ctx=2048))
    result = plan([request], devices, plan_policy(cfg))
    assert result.fits
    launches = launches_from_plan(result, {"m": "/m.gguf"})
    m = plan_map(cfg, result, launches, HOST)
    assert [g["index"] for g in m["gpus"]] == [0, 1]
    assert m["gpus"][1]["note"]  # skipped: below min_budget_mib
    gpu_blocks = [b for b in m["blocks"] if b["gpu"] == 0]
    assert [b["planned_bytes"] for b in gpu_blocks] == [d.total_bytes for d in launches["m"].devices]
    assert m["gpus"][0]["free_bytes"] == 24 * GIB - gpu_blocks[0]["planned_bytes"]
    assert m["host"]["free_bytes"] == HOST.available_bytes - launches["m"].host_bytes
