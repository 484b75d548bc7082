"""Overload: 200 concurrent clients against one model with one engine and a queue of 4.

The real server on loopback (gateway serve -> granian -> Litestar -> one worker). Ten rounds of
200 simultaneous requests, 2,000 in all: what does not fit in the engine and the queue gets 429
with Retry-After at once, the queue never holds more than its size, nothing else goes wrong, and
the app process's memory after 2,000 requests is within 10% of what it was after the first 200.
The figures (429 share, latencies, RSS) are printed; docs/reliability.md records them.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from testkit.ggufmaker import write_tiny_llama
from testkit.serving import HANG_S, free_port, running_gateway

pytestmark = pytest.mark.llama

CLIENTS = 200
ROUNDS = int(os.environ.get("LOAD_ROUNDS", "10"))  # LOAD_ROUNDS=50: 10,000 requests
QUEUE_SIZE = 4
# logit_bias makes the tiny model emit plain "a"s, so every accepted request makes 8 tokens;
# half the clients ask for a stream.
BODY = {"model": "tiny", "prompt": "a", "max_tokens": 8, "logit_bias": {"97": 50}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("load")
    tiny = write_tiny_llama(tmp / "tiny.gguf", n_layers=2, n_embd=64, ctx=512)
    port = free_port()
    cfg = tmp / "models.toml"
    cfg.write_text(
        f'[gateway]\nport = {port}\nlog_level = "warning"\n\n'
        f'[[models]]\nname = "tiny"\npath = "{tiny}"\nn_ctx = 256\nmax_concurrency = 1\nqueue_size = {QUEUE_SIZE}\n'
    )
    with running_gateway(cfg, port, tmp / "serve.log") as gw:
        yield {"base": gw.base, "proc": gw.proc}


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _app_pid(base: str) -> int:
    """The process that runs the Litestar app: the parent of the model's worker."""
    worker = httpx.get(base + "/v1/models/tiny", timeout=5).json()["pid"]
    for line in Path(f"/proc/{worker}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError("no PPid")


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def _round(
    clients: list[httpx.AsyncClient], watcher_client: httpx.AsyncClient, base: str,
    statuses: Counter, ok_s: list[float], busy_s: list[float],
) -> int:
    """One request from every client at once; returns the most requests seen waiting in the queue."""
    start = asyncio.Event()
    most_waiting = 0

    async def one(client: httpx.AsyncClient, stream: bool) -> None:
        await start.wait()
        t0 = time.perf_counter()
        r = await client.post(base + "/v1/completions", json={**BODY, "stream": stream})
        elapsed = time.perf_counter() - t0
        statuses[r.status_code] += 1
        if r.status_code == 200:
            if stream:
                assert r.text.count('"text":"a"') == 8 and r.text.endswith("data: [DONE]\n\n")
            else:
                assert r.json()["usage"]["completion_tokens"] == 8
            ok_s.append(elapsed)
        elif r.status_code == 429:
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "queue_full"
            busy_s.append(elapsed)

    async def watch() -> None:
        nonlocal most_waiting
        while not all_done.done():
            queue = (await watcher_client.get(base + "/v1/models/tiny")).json()["queue"]
            most_waiting = max(most_waiting, queue["waiting"])
            await asyncio.sleep(0.005)

    # Half the clients stream: a streamed answer holds its slot until the last event is sent.
    tasks = [asyncio.create_task(one(client, i % 2 == 1)) for i, client in enumerate(clients)]
    all_done = asyncio.gather(*tasks)
    watcher = asyncio.create_task(watch())
    start.set()
    await all_done
    await watcher
    return most_waiting


def test_200_clients_get_429s_from_a_bounded_queue_and_memory_stays_flat(server):
    base = server["base"]
    app_pid = _app_pid(base)
    statuses: Counter[int] = Counter()
    ok_s: list[float] = []
    busy_s: list[float] = []
    rss: dict[int, int] = {}
    most_waiting = 0

    async def main() -> float:
        nonlocal most_waiting
        # A client each, with its own connection: one httpx pool shared by 200 tasks would make
        # the pool, not the gateway, the bottleneck (it costs ~20x the time here).
        clients = [httpx.AsyncClient(timeout=HANG_S) for _ in range(CLIENTS)]
        try:
            async with httpx.AsyncClient(timeout=HANG_S) as watcher_client:
                t0 = time.perf_counter()
                for i in range(ROUNDS):
                    waiting = await _round(clients, watcher_client, base, statuses, ok_s, busy_s)
                    most_waiting = max(most_waiting, waiting)
                    rss[(i + 1) * CLIENTS] = _rss_kib(app_pid)
                return time.perf_counter() - t0
        finally:
            await asyncio.gather(*(c.aclose() for c in clients))

    # The same request from one client at a time, for scale.
    alone: list[float] = []
    with httpx.Client(timeout=HANG_S) as c:
        for _ in range(50):
            t0 = time.perf_counter()
            assert c.post(base + "/v1/completions", json=BODY).status_code == 200
            alone.append(time.perf_counter() - t0)
    rss_before = _rss_kib(app_pid)
    elapsed = asyncio.run(main())
    total = sum(statuses.values())
    growth = rss[10 * CLIENTS] / rss[CLIENTS] - 1  # after 2,000 vs after 200
    print(
        f"\nload: {total} requests from {CLIENTS} concurrent clients in {elapsed:.1f} s "
        f"({total / elapsed:.0f} req/s); statuses {dict(sorted(statuses.items()))}; "
        f"{statuses[429] / total:.0%} got 429; most waiting in the queue: {most_waiting} (queue_size {QUEUE_SIZE})\n"
        f"one client alone: p50 {_percentile(alone, 50) * 1000:.1f} ms, p99 {_percentile(alone, 99) * 1000:.1f} ms\n"
        f"accepted: p50 {_percentile(ok_s, 50) * 1000:.0f} ms, p99 {_percentile(ok_s, 99) * 1000:.0f} ms, "
        f"max {max(ok_s) * 1000:.0f} ms; 429s: p50 {_percentile(busy_s, 50) * 1000:.0f} ms, "
        f"p99 {_percentile(busy_s, 99) * 1000:.0f} ms\n"
        f"app process RSS: {rss_before / 1024:.1f} MiB before, {rss[CLIENTS] / 1024:.1f} MiB after {CLIENTS}, "
        f"{rss[10 * CLIENTS] / 1024:.1f} MiB after {10 * CLIENTS} ({growth:+.1%}); "
        + ", ".join(f"{n}: {kib / 1024:.1f}" for n, kib in sorted(rss.items()))
    )
    assert total == CLIENTS * ROUNDS
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[429] > 0 and statuses[200] >= ROUNDS * (1 + QUEUE_SIZE)
    assert most_waiting <= QUEUE_SIZE
    assert abs(growth) <= 0.10, rss
    # No latency bound: on a busy CI machine any wall-clock figure is a guess. Nothing hung (every
    # request answered within the clients' timeout, counted above); the figures printed are for
    # docs/reliability.md.
    # The model still answers at once afterwards.
    r = httpx.post(base + "/v1/completions", json=BODY, timeout=HANG_S)
    assert r.status_code == 200
