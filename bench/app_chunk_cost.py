"""CPU a streamed chunk costs each process of the gateway: the app's side of a stream (issue 24, item 3).

The gateway on bench/engine_parts.py's tiny model (llama_decode cheap, so the Python around a
chunk shows), ``--streams`` streams at once through bench/lean_http.py's client, ``--runs``
times; then each process of the gateway's tree (granian's server, the app, the model's worker)
with its CPU time (utime + stime from /proc) over those runs, per streamed chunk that carried
text (requests' own costs included). CPU time, unlike tokens/s, holds up on a machine others
load: compare two trees back to back with ``--tree``.

Run: `.venv/bin/python bench/app_chunk_cost.py [--streams 64] [--tokens 32] [--runs 3] [--tree DIR]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32, help="tokens each stream generates")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tree", default=str(Path(__file__).resolve().parent.parent), help="the checkout whose gateway runs")
    args = parser.parse_args()
    root = Path(args.tree).resolve()
    sys.path.insert(0, str(root))
    sys.path.insert(1, str(root / "bench"))
    from gateway.engine import native

    native.load_first()  # llama.cpp's native library before numpy (gateway/engine/native.py)
    import concurrency
    from testkit.ggufmaker import write_tiny_llama

    def cpu(pid: int) -> dict[int, tuple[float, str]]:
        out, children, stack = {}, concurrency._children(), [pid]
        while stack:
            p = stack.pop()
            stack.extend(children.get(p, []))
            try:
                fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
                cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            out[p] = ((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), cmd)
        return out

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = write_tiny_llama(tmp / "tiny.gguf", ctx=256)
        bias = concurrency.eog_bias(model)
        proc, base = concurrency.start_gateway(model, tmp, slots=args.streams, n_ctx=256, threads=1)
        try:
            concurrency.http_clients(base, "gemma", 1, 2, bias)
            concurrency.http_clients(base, "gemma", args.streams, args.tokens, bias)  # warm up
            before, chunks, rates = cpu(proc.pid), 0, []
            for _ in range(args.runs):
                started = time.perf_counter()
                streams = concurrency.http_clients(base, "gemma", args.streams, args.tokens, bias)
                n = sum(len(s.arrivals) for s in streams)
                rates.append(n / (time.perf_counter() - started))
                chunks += n
            after = cpu(proc.pid)
        finally:
            concurrency.bench_gateway._stop(proc)
    print(f"{root}: {args.streams} streams x {args.tokens} tokens, {args.runs} runs, {chunks} text chunks; load average {os.getloadavg()}")
    for pid, (seconds, cmd) in after.items():
        used = seconds - before.get(pid, (0.0, ""))[0]
        role = "worker" if "gateway.engine.worker" in cmd else ("server" if pid == proc.pid else "app")
        print(f"  {role:<7} CPU {used:.2f} s, {1000 * used / chunks:.3f} ms a chunk")
    print("  tokens/s per run: " + ", ".join(f"{r:.0f}" for r in rates))


if __name__ == "__main__":
    main()
