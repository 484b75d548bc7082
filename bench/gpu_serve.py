"""`gateway serve` with a sparse 7B on the GPU: real streaming clients, the plan against NVML.

    python bench/gpu_serve.py --out DIR                      # on a CUDA machine (bench/gpu/validate.sh)
    python bench/gpu_serve.py --out DIR --shape tiny         # the same steps with a small model (CPU)

Writes a DeepSeek-R1-Distill-Qwen-7B-shaped Q4_K_M model (the real header's shapes, zero weights in
a sparse file) with a byte-level tokenizer, so that any text tokenizes, and a chat template; a
models.toml serving it with ``max_concurrency`` slots; starts ``python -m gateway.cli serve`` as a
user would and waits for /health. Then:

- one streamed completion and one streamed chat through the openai client (where installed);
- for each of ``--clients``: that many concurrent streamed completions over httpx, each asked for
  ``--tokens`` tokens with every end-of-generation token banned; every stream must deliver all of
  them (zero weights generate the same token over and over, which is fine);
- the model's planned bytes (/v1/models) against NVML's "used" delta of its GPU after the streams.

Prints what it saw and writes ``serve.json`` (and the server's log) under ``--out``. Exit 0 when
every stream delivered, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent

from gateway.nvml import device_used_bytes, read_nvml_devices  # noqa: E402
from testkit.ggufmaker import tiny_tokenizer, write_header_only_model, write_qwen2_7b_q4_k_m  # noqa: E402

MIB = 1024 * 1024
MODEL = "ds7b"


def n_vocab_of(shape: str) -> int:
    return 152064 if shape == "qwen2-7b" else 1024


def write_model(shape: str, path: Path) -> Path:
    if shape == "qwen2-7b":
        return write_qwen2_7b_q4_k_m(path, byte_tokenizer=True)
    # A small model with the same tokenizer: the script's steps on a CPU in seconds.
    return write_header_only_model(
        path, arch="qwen2", n_layers=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_vocab=n_vocab_of(shape),
        attn_bias=True, context_length=8192, byte_tokenizer=True, name="tiny qwen2 (zero weights)",
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(config: Path, port: int, log_path: Path, timeout: float) -> tuple[subprocess.Popen, str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
        stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway serve exited with code {proc.returncode} (log: {log_path})")
        try:
            models = httpx.get(base + "/health", timeout=5).json().get("models", {})
            state = (models.get(MODEL) or {}).get("state")
            if state == "ready":
                return proc, base, time.monotonic() - t0
            if state == "failed":
                raise RuntimeError(f"model failed: {json.dumps(models.get(MODEL))}")
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"not ready after {timeout:g} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def stream_completion(base: str, prompt: str, tokens: int, bias: dict[str, float]) -> dict[str, Any]:
    sent = time.perf_counter()
    arrivals: list[float] = []
    usage = None
    body = {"model": MODEL, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
            "logit_bias": bias, "stream_options": {"include_usage": True}}  # fmt: skip
    with httpx.stream("POST", base + "/v1/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            doc = json.loads(line[6:])
            if doc.get("usage"):
                usage = doc["usage"]
            if any(c.get("text") for c in doc.get("choices", [])):
                arrivals.append(time.perf_counter())
    return {"sent": sent, "arrivals": arrivals, "usage": usage}


def concurrent_streams(base: str, clients: int, tokens: int, bias: dict[str, float]) -> dict[str, Any]:
    results: list[dict[str, Any] | Exception] = [RuntimeError("not run")] * clients

    def one(i: int) -> None:
        try:
            results[i] = stream_completion(base, f"Request {i}: the quick brown fox jumps over the lazy dog.", tokens, bias)
        except Exception as exc:  # noqa: BLE001 - counted below
            results[i] = exc

    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if isinstance(r, dict)]
    completion = [(r["usage"] or {}).get("completion_tokens", 0) for r in ok]
    ttft = sorted(r["arrivals"][0] - r["sent"] for r in ok if r["arrivals"])
    return {
        "clients": clients,
        "errors": [repr(r) for r in results if not isinstance(r, dict)],
        "complete": sum(1 for c in completion if c == tokens),
        "completion_tokens": sum(completion),
        "wall_s": round(wall, 3),
        "tokens_s": round(sum(completion) / wall, 1) if wall else None,
        "ttft_p50_ms": round(ttft[len(ttft) // 2] * 1000, 1) if ttft else None,
    }


def openai_streams(base: str, bias: dict[str, float]) -> dict[str, Any]:
    try:
        import openai
    except Exception as exc:  # noqa: BLE001 - not installed, or its dependencies are not
        return {"skipped": f"the openai client does not import: {exc!r}"}
    client = openai.OpenAI(base_url=base + "/v1", api_key="none")
    text = "".join(
        c.choices[0].text
        for c in client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=16, temperature=0, stream=True, logit_bias=bias)
    )
    chat = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=16, temperature=0, stream=True, logit_bias=bias
        )
        if c.choices
    )
    return {"openai": openai.__version__, "completion_chars": len(text), "chat_chars": len(chat)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out")
    ap.add_argument("--shape", choices=("qwen2-7b", "tiny"), default="qwen2-7b")
    ap.add_argument("--write-model-only", metavar="PATH", help="only write the model to PATH (bench/gpu_import_order.py)")
    ap.add_argument("--clients", default="1,16,64")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--n-ctx", type=int, default=1024, help="context per slot")
    ap.add_argument("--load-timeout", type=float, default=300)
    args = ap.parse_args()
    if args.write_model_only:
        write_model(args.shape, Path(args.write_model_only))
        return 0
    if not args.out:
        ap.error("--out is required")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    counts = [int(c) for c in args.clients.split(",") if c]
    slots = max(counts)
    report: dict[str, Any] = {"shape": args.shape, "slots": slots, "n_ctx_per_slot": args.n_ctx}
    with tempfile.TemporaryDirectory(prefix="gpu-serve-") as d:
        tmp = Path(d)
        path = write_model(args.shape, tmp / f"{args.shape}.gguf")
        config, port = tmp / "models.toml", free_port()
        config.write_text(
            f'[gateway]\nport = {port}\nlog_level = "info"\nrequest_timeout_s = 600\n\n'
            f'[[models]]\nname = "{MODEL}"\npath = "{path}"\nn_ctx = {args.n_ctx}\nflash_attn = true\n'
            f"max_concurrency = {slots}\nqueue_size = {slots * 2}\n"
        )
        report["config"] = config.read_text()
        gpus = [d.index for d in read_nvml_devices()]
        before = device_used_bytes(gpus) if gpus else {}
        proc, base, load_s = start(config, port, out / "serve.log", args.load_timeout)
        try:
            report["ready_after_s"] = round(load_s, 1)
            model = next(m for m in httpx.get(base + "/v1/models", timeout=10).json()["data"] if m["id"] == MODEL)
            report["v1_models"] = model
            # Ban the tokenizer's special tokens (BOS, EOS): every stream then runs to --tokens.
            _, _, _, bos, eos = tiny_tokenizer(n_vocab_of(args.shape))
            bias = {str(bos): -100, str(eos): -100}
            try:
                report["openai"] = openai_streams(base, bias)
            except Exception as exc:  # noqa: BLE001 - reported; the HTTP streams below still run
                report["openai"] = {"error": repr(exc)}
            print(f"openai client: {report['openai']}", flush=True)
            report["streams"] = []
            for n in counts:
                row = concurrent_streams(base, n, args.tokens, bias)
                report["streams"].append(row)
                print(f"{n:>3} streams: {row['complete']}/{n} complete, {row['tokens_s']} tokens/s, TTFT p50 {row['ttft_p50_ms']} ms, errors {len(row['errors'])}", flush=True)
            after = device_used_bytes(gpus) if gpus else {}
            report["nvml_used_delta_mib"] = {str(g): round((after[g] - before[g]) / MIB, 1) for g in gpus if g in after and g in before}
            report["health"] = httpx.get(base + "/health", timeout=10).json()
        finally:
            stop(proc)
    planned = report["v1_models"].get("planned") or {}
    report["planned_mib"] = {str(d["gpu"]): round(int(d["total_bytes"]) / MIB, 1) for d in planned.get("devices", [])}
    print(f"ready after {report['ready_after_s']} s; planned per GPU {report['planned_mib']} MiB; NVML used delta {report.get('nvml_used_delta_mib')} MiB", flush=True)
    (out / "serve.json").write_text(json.dumps(report, indent=1, default=str))
    ok = all(r["complete"] == r["clients"] and not r["errors"] for r in report["streams"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
