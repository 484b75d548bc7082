"""Failure timings for docs/reliability.md: a worker killed under traffic, and shutdown.

Starts the real server (gateway serve -> granian -> Litestar -> workers) on loopback with two tiny
models written by testkit/ggufmaker.py, at the config defaults that matter (restart_backoff_s = 1,
shutdown_grace_s = 30), and measures:

- kill -9 of one model's worker while 4 clients send requests to it and 4 to the other model:
  how long the requests in flight took to get their answer, how many 503s the model gave while
  it was down, and how long from the kill until it answered 200 again (the 1 s backoff plus the
  load); what the other model's clients saw meanwhile;
- SIGTERM of the server with a 200-token stream in flight: whether the stream finished, and how
  long the server took to exit;
- kill -9 of the server process alone: how long until no worker process was left.

Run with `.venv/bin/python bench/reliability.py` (`--runs N` kills it N times in a row).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx


from testkit.ggufmaker import write_tiny_llama

BODY = {"prompt": "a", "max_tokens": 8, "logit_bias": {"97": 50}}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp: Path, tiny: Path) -> tuple[subprocess.Popen, str]:
    port = _port()
    cfg = tmp / f"models-{port}.toml"
    cfg.write_text(
        f'[gateway]\nport = {port}\nlog_level = "warning"\n\n'
        f'[[models]]\nname = "victim"\npath = "{tiny}"\nn_ctx = 512\nqueue_size = 64\n\n'
        f'[[models]]\nname = "bystander"\npath = "{tiny}"\nn_ctx = 512\nqueue_size = 64\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg)],
        stdout=open(tmp / f"serve-{port}.log", "wb"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/health", timeout=1).json()["status"] == "ok":
                return proc, base
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"server not ready: {(tmp / f'serve-{port}.log').read_text()[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def _pid(base: str, model: str) -> int | None:
    return httpx.get(f"{base}/v1/models/{model}", timeout=5).json()["pid"]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_worker(base: str) -> dict[str, float | int | dict]:
    """One kill -9 of the victim's worker under traffic."""
    log: list[tuple[str, float, float, int]] = []  # model, start, end, status
    lock = threading.Lock()
    stop = threading.Event()

    def client(model: str) -> None:
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    status = c.post(base + "/v1/completions", json={**BODY, "model": model}).status_code
                except httpx.TimeoutException:
                    status = -1
                with lock:
                    log.append((model, t0, time.monotonic(), status))

    threads = [threading.Thread(target=client, args=(m,)) for m in ("victim", "bystander") * 4]
    for t in threads:
        t.start()
    time.sleep(1.0)
    pid = _pid(base, "victim")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    back = None
    while time.monotonic() - killed < 30:
        with lock:
            ok = [end for m, start, end, s in log if m == "victim" and start > killed and s == 200]
        if ok:
            back = min(ok) - killed
            break
        time.sleep(0.01)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(30)
    in_flight = [end - killed for m, start, end, s in log if m == "victim" and start <= killed < end]
    after = [s for m, start, end, s in log if m == "victim" and start > killed and (back is None or end <= killed + back)]
    bystander = Counter(s for m, start, end, s in log if m == "bystander" and end > killed and start < killed + (back or 0))
    return {
        "in_flight_answered_s": max(in_flight) if in_flight else 0.0,
        "in_flight": len(in_flight),
        "recovered_s": back if back is not None else float("nan"),
        "victim_while_down": dict(Counter(after)),
        "bystander_while_down": dict(bystander),
    }


def sigterm_with_stream(tmp: Path, tiny: Path) -> dict[str, float | bool]:
    proc, base = _start(tmp, tiny)
    result: dict[str, object] = {}

    def stream() -> None:
        r = httpx.post(
            base + "/v1/completions",
            json={**BODY, "model": "victim", "max_tokens": 200, "stream": True},
            timeout=60,
        )
        result["done"] = r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
        result["tokens"] = r.text.count('"text":"a"')

    t = threading.Thread(target=stream)
    t.start()
    time.sleep(0.3)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    exited = time.monotonic() - sent
    t.join(30)
    _stop(proc)
    return {"stream_finished": bool(result.get("done")), "tokens": result.get("tokens", 0), "exit_s": exited}


def sigkill_server(tmp: Path, tiny: Path) -> dict[str, float]:
    proc, base = _start(tmp, tiny)
    workers = [p for p in (_pid(base, "victim"), _pid(base, "bystander")) if p]
    proc.send_signal(signal.SIGKILL)  # the server process only, not its group
    killed = time.monotonic()
    proc.wait(10)
    while any(_alive(p) for p in workers) and time.monotonic() - killed < 30:
        time.sleep(0.01)
    gone = time.monotonic() - killed
    _stop(proc)
    return {"workers_gone_s": gone, "left": sum(_alive(p) for p in workers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        tiny = write_tiny_llama(tmp / "tiny.gguf", n_layers=2, n_embd=64, ctx=512)
        proc, base = _start(tmp, tiny)
        try:
            runs = []
            for i in range(args.runs):
                # Wait for the victim to serve again (and its restart budget to allow another kill).
                while _pid(base, "victim") is None:
                    time.sleep(0.1)
                runs.append(kill_worker(base))
                print(f"kill -9 of a worker, run {i + 1}: {runs[-1]}")
        finally:
            _stop(proc)
        print(
            f"kill -9 of a worker ({args.runs} kills in a row): in-flight requests answered (503) after "
            f"{statistics.median(r['in_flight_answered_s'] for r in runs) * 1000:.0f} ms (median); "
            "serving again after " + ", ".join(f"{r['recovered_s']:.2f} s" for r in runs)
            + " (the backoff doubles with each crash in restart_window_s: 1, 2, 4 s)"
        )
        print(f"SIGTERM with a stream in flight: {sigterm_with_stream(tmp, tiny)}")
        print(f"kill -9 of the server process: {sigkill_server(tmp, tiny)}")


if __name__ == "__main__":
    main()
