"""What API keys cost a request with 1,000 keys configured (target: under 0.2 ms added).

Two measurements:

1. The key path alone, as a request runs it (gateway.access): find the key by the sha256 of the
   presented key among 1,000, check its scope (globs), admit it against its requests, tokens
   and concurrency limits, charge a stream's tokens one by one and settle the usage, build the
   x-ratelimit headers, release. Beside it, the plain ``api_keys`` check as it was before
   (every key compared in constant time, one by one) for 1,000 keys.
2. The whole app in-process (Litestar, fake workers: no model, no network): the median time
   of a non-streamed /v1/completions without keys and with 1,000 keys, and the difference.
   This one includes the HTTP stack's own noise; (1) is the figure to judge.

Prints a table; run with `.venv/bin/python bench/keys.py` on a quiet machine.
"""

from __future__ import annotations

import hmac
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


import tomli_w  # noqa: E402
from litestar.testing import TestClient  # noqa: E402

from gateway.access.gate import Access  # noqa: E402
from gateway.config.keys import key_digest  # noqa: E402
from gateway.config.loading import load_config, parse_config  # noqa: E402
from gateway.http.app import create_app  # noqa: E402
from gateway.runtime.fake import FakeScript, FakeTransport  # noqa: E402
from testkit.ggufmaker import write_tiny_llama  # noqa: E402

N_KEYS = 1000
MODELS = ["chat-7b", "chat-13b", "embed-small", "embed-large", "code-3b"]
STREAM_TOKENS = 64


def keys_table(n: int) -> list[dict]:
    return [
        {
            "name": f"team-{i:04d}",
            "key_sha256": key_digest(f"sk-key-{i:04d}"),
            "models": ["chat-*", "embed-small"],
            "requests_per_minute": 10**9,
            "tokens_per_minute": 10**12,
            "max_concurrency": 64,
        }
        for i in range(n)
    ]


def config_doc(tiny: Path | str, keys: list[dict]) -> dict:
    return {
        "gateway": {"shutdown_grace_s": 0.5},
        "planner": {"gpus": ["80GiB"], "reserve_mib": 0, "min_budget_mib": 0},
        "models": [{"name": m, "path": str(tiny), "n_ctx": 256, "queue_size": 64} for m in MODELS],
        **({"keys": keys} if keys else {}),
    }


class _Entry:
    def __init__(self, name: str) -> None:
        self.name = name
        self.config = type("C", (), {"aliases": []})()


class _Pool:
    """Just what Access.resolve asks of the pool: a name lookup."""

    def __init__(self) -> None:
        self.entries = {m: _Entry(m) for m in MODELS}

    def resolve(self, requested: str) -> _Entry:
        return self.entries[requested]


def bench_key_path(iterations: int, stream_tokens: int) -> float:
    """Microseconds per request for the whole key path (1,000 keys, the last one presented),
    with a stream of ``stream_tokens`` counted token by token (0: a whole response)."""
    config = parse_config(tomli_w.dumps(config_doc("/m/x.gguf", keys_table(N_KEYS))), environ={})
    access = Access(lambda: config)
    pool = _Pool()
    token = f"sk-key-{N_KEYS - 1:04d}"
    access.ring()  # built once per config, not per request

    def one() -> None:
        key = access.ring().find(token)
        access.resolve(pool, key, "chat-7b")  # type: ignore[arg-type]
        ticket = access.admit(key)
        for _ in range(stream_tokens):
            ticket.take(1)
        ticket.settle({"prompt_tokens": 20, "completion_tokens": max(stream_tokens, 16)})
        ticket.headers()
        ticket.release()

    for _ in range(200):
        one()
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(iterations):
            one()
        samples.append((time.perf_counter() - start) / iterations * 1e6)
    return statistics.median(samples)


def bench_old_plain_keys(iterations: int) -> float:
    """The check before named keys: every plain key compared in constant time."""
    keys = [f"sk-key-{i:04d}" for i in range(N_KEYS)]
    token = keys[-1]

    def one() -> bool:
        matched = False
        for key in keys:
            matched |= hmac.compare_digest(token.encode(), key.encode())
        return matched

    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(iterations):
            one()
        samples.append((time.perf_counter() - start) / iterations * 1e6)
    return statistics.median(samples)


def bench_app(tmp: Path, with_keys: bool, requests: int) -> float:
    """Median milliseconds of one non-streamed /v1/completions through the in-process app."""
    tiny = write_tiny_llama(tmp / "tiny.gguf", n_layers=2, n_embd=64, ctx=512)
    cfg = tmp / f"models-{with_keys}.toml"
    cfg.write_text(tomli_w.dumps(config_doc(tiny, keys_table(N_KEYS) if with_keys else [])))
    app = create_app(load_config(cfg, environ={}), config_path=cfg, transport=FakeTransport(FakeScript(tokens=4)))
    headers = {"Authorization": f"Bearer sk-key-{N_KEYS - 1:04d}"} if with_keys else {}
    times = []
    with TestClient(app) as client:
        for i in range(requests + 50):
            start = time.perf_counter()
            r = client.post("/v1/completions", json={"model": "chat-7b", "prompt": "a"}, headers=headers)
            elapsed = time.perf_counter() - start
            if r.status_code != 200:
                raise SystemExit(f"request failed: {r.status_code} {r.text}")
            if i >= 50:  # warm-up
                times.append(elapsed * 1000)
    return statistics.median(times)


def main() -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {load}; "
        f"{platform.python_implementation()} {platform.python_version()}"
    )
    whole = bench_key_path(2000, 0)
    path = bench_key_path(2000, STREAM_TOKENS)
    old = bench_old_plain_keys(2000)
    print()
    print(f"| per request, {N_KEYS:,} keys configured | microseconds |")
    print("|---|---|")
    print(f"| key path, whole response: lookup + scope + limits + usage + headers | {whole:.1f} |")
    print(f"| key path, a {STREAM_TOKENS}-token stream counted token by token | {path:.1f} |")
    print(f"| before: {N_KEYS:,} plain api_keys compared one by one | {old:.1f} |")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        plain = bench_app(tmp, False, 400)
        keyed = bench_app(tmp, True, 400)
    print()
    print("| in-process app, non-streamed /v1/completions (fake worker) | median ms |")
    print("|---|---|")
    print(f"| no keys | {plain:.3f} |")
    print(f"| {N_KEYS:,} keys, scoped and limited | {keyed:.3f} |")
    print(f"| difference | {keyed - plain:+.3f} |")
    target = 200.0
    print()
    print(f"key path: {path:.1f} us per request (target < {target:.0f} us): {'OK' if path < target else 'OVER'}")


if __name__ == "__main__":
    main()
