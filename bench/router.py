"""The router's added latency: the same request straight to a node and through the router.

One node (`gateway serve` on a declared one-GPU inventory, a tiny test model on the CPU, so the
model's own time is a millisecond or two) and `gateway serve --router` in front of it, both on
loopback. Requests alternate between the two paths in one run, so drift on the machine hits
both alike:

- a short completion (max_tokens 1), whole and streamed (time to the first event);
- GET /v1/models through the router is the merged list (no forwarding), so it is not compared.

Also printed: the router's own CPU time per request (its process group, from /proc), which
does not depend on what else the machine runs. Target: the router adds under 2 ms at p50. Run: `.venv/bin/python bench/router.py [--rounds N]`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import tomli_w


from testkit.ggufmaker import write_tiny_llama  # noqa: E402
from testkit.serving import free_port, kill_group, spawn, wait_until_answering  # noqa: E402

KEY = "bench-internal"
BODY = {"model": "tiny", "prompt": "a", "max_tokens": 1, "temperature": 0, "seed": 1}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _whole(client: httpx.Client, url: str) -> float:
    t0 = time.perf_counter()
    r = client.post(url, json=BODY)
    r.raise_for_status()
    return time.perf_counter() - t0


def _first_event(client: httpx.Client, url: str) -> float:
    t0 = time.perf_counter()
    took = None
    with client.stream("POST", url, json={**BODY, "stream": True}) as r:
        r.raise_for_status()
        for line in r.iter_lines():  # read to the end, so the connection is reused
            if took is None and line.startswith("data: "):
                took = time.perf_counter() - t0
    if took is None:
        raise RuntimeError("no event in the stream")
    return took


def _group_cpu_s(pgid: int) -> float | None:
    """User + system CPU seconds of every process in a process group (Linux /proc), else None."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total, found = 0, False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command: state, ppid, pgrp, ..., utime (14th field) and stime (15th).
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
            found = True
    return total / tick if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300, help="requests per path and kind (default 300)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-router-") as tmp_name:
        tmp = Path(tmp_name)
        tiny = write_tiny_llama(tmp / "tiny.gguf", n_layers=2, n_embd=64, ctx=256)
        node_port, router_port = free_port(), free_port()
        node_cfg = tmp / "node.toml"
        node_cfg.write_text(tomli_w.dumps({
            "gateway": {"port": node_port, "api_keys": [KEY]},
            "planner": {"gpus": ["2GiB"], "reserve_mib": 0, "min_budget_mib": 0},
            "models": [{"name": "tiny", "path": str(tiny), "n_ctx": 256}],
        }))
        router_cfg = tmp / "cluster.toml"
        router_cfg.write_text(tomli_w.dumps({
            "gateway": {"port": router_port, "internal_api_key": KEY},
            "nodes": [{"name": "node", "gpus": ["2GiB"], "url": f"http://127.0.0.1:{node_port}"}],
            "models": [{"name": "tiny", "path": str(tiny)}],
        }))
        node = spawn(["serve", "--config", str(node_cfg)], tmp / "node.log")
        router = spawn(["serve", "--router", str(router_cfg)], tmp / "router.log")
        try:
            direct_base, router_base = f"http://127.0.0.1:{node_port}", f"http://127.0.0.1:{router_port}"
            wait_until_answering(direct_base, node, tmp / "node.log", timeout=120)
            wait_until_answering(router_base, router, tmp / "router.log", timeout=60)
            direct = httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
            routed = httpx.Client(timeout=30)
            results: dict[str, dict[str, list[float]]] = {"whole": {"direct": [], "router": []}, "first event": {"direct": [], "router": []}}
            cpu: dict[str, float | None] = {}
            for kind, call in (("whole", _whole), ("first event", _first_event)):
                for _ in range(20):  # warm both paths' connections and the engine
                    call(direct, direct_base + "/v1/completions")
                    call(routed, router_base + "/v1/completions")
                before = _group_cpu_s(router.pid)
                for _ in range(args.rounds):
                    results[kind]["direct"].append(call(direct, direct_base + "/v1/completions"))
                    results[kind]["router"].append(call(routed, router_base + "/v1/completions"))
                after = _group_cpu_s(router.pid)
                # The router also polls the node meanwhile (1 per second): included, it is small.
                cpu[kind] = (after - before) / args.rounds if before is not None and after is not None else None
        finally:
            kill_group(router)
            kill_group(node)
    print(f"router overhead: {args.rounds} requests per path, alternating; tiny model on the CPU; "
          f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{'request':<13} {'path':<8} {'p50 ms':>8} {'p90 ms':>8} {'mean ms':>8}")
    for kind, paths in results.items():
        for path, times in paths.items():
            print(f"{kind:<13} {path:<8} {_pct(times, 0.5) * 1e3:>8.2f} {_pct(times, 0.9) * 1e3:>8.2f} {statistics.mean(times) * 1e3:>8.2f}")
        added = (_pct(paths["router"], 0.5) - _pct(paths["direct"], 0.5)) * 1e3
        print(f"{kind:<13} {'added':<8} {added:>8.2f}")
        if cpu.get(kind) is not None:
            print(f"{kind:<13} {'router CPU per request':<26} {cpu[kind] * 1e3:.2f} ms")
    print("target: the router adds under 2 ms at p50")


if __name__ == "__main__":
    main()
