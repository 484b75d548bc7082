"""The decode loop's own cost, by part, on a model whose llama_decode is cheap (issue 24, item 1).

On a GPU a decode step is ~20x shorter than on the CPU, so the Python around it weighs far
more there. A tiny model (testkit/ggufmaker.py's write_tiny_llama: 2 layers, n_embd 64, a
byte-level vocabulary of a few hundred tokens) makes llama_decode cheap on the CPU too: what is
left is the engine's own time per step, the proxy for a GPU.

Per stream count (default 1, 16, 64, 128), every stream the same greedy request with every
end-of-generation token suppressed (so each generates exactly --tokens tokens):

- engine: gateway.engine.batching.BatchEngine driven in this process (every request submitted
  before its loop starts, so all prompts wait at the first step as for the batch API) with a StepProfiler
  (gateway.engine.step_profile), each stream a streamed completion whose chunks are encoded as
  the worker encodes them (gateway.engine.completion.ChunkSink), queued and written to a buffered
  /dev/null in one write a step, as the worker writes its stdout. The profiler splits every step's time:
  schedule (new jobs, admission, stats), batch (building the batch, slot bookkeeping), decode
  (llama_decode), sample (sampler chains), text (end of generation, detokenizing, stop strings),
  send (stream chunks made, encoded, written; the step's flush);
- gateway: the whole gateway (`gateway serve`, max_concurrency = streams), streamed over HTTP
  with bench/lean_http.py's client, no profiler;
- batch API alone: bench/concurrency.py's llama.cpp batch path (every prompt in one batch, then
  one decode a step, greedy argmax in numpy), with its own time in and outside llama_decode.

Tokens/s is streams x tokens over the wall time from the first request to the last token. The
step profile reads the wall clock, or with ``--clock thread`` the decode loop thread's CPU time
(steadier on a shared machine: a part is not charged for the time the thread waited for a core).
Prints a Markdown table (docs/benchmarks.md keeps the measured one). A smoke run:
`.venv/bin/python bench/engine_parts.py --streams 1 --tokens 4`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "bench"))  # concurrency, lean_http
if __name__ == "__main__":
    # This process loads the model: llama.cpp's native library before numpy (gateway/engine/native.py).
    from gateway.engine import native  # noqa: E402

    native.load_first()

import concurrency  # noqa: E402
from gateway.cpus import available_cpus  # noqa: E402
from gateway.engine.decode_thread import PIPELINE_MIN_TOKENS, overlap_threshold  # noqa: E402
from gateway.engine.step_profile import BATCH, DECODE, PARTS, SAMPLE, SCHEDULE, SEND, TEXT, StepProfiler, StepReport  # noqa: E402
from testkit.ggufmaker import write_tiny_llama  # noqa: E402

PATHS = ("engine", "gateway", "batch")


@dataclass(frozen=True)
class EngineRun:
    report: StepReport | None  # None: run without a profiler
    tokens: int
    seconds: float

    @property
    def tokens_s(self) -> float:
        return self.tokens / self.seconds


CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


def engine_run(
    model: Path,
    streams: int,
    tokens: int,
    n_ctx: int,
    threads: int,
    bias: dict[str, float],
    profile: bool,
    clock: str = "wall",
    pipeline_min_tokens: int | None = PIPELINE_MIN_TOKENS,
) -> EngineRun:
    """``streams`` streamed completions through an in-process BatchEngine, with a StepProfiler
    when ``profile`` (reading ``clock``: CLOCKS); ``pipeline_min_tokens``: the engine's (None:
    every step's text taken before the next decode)."""
    from llama_cpp import llama_cpp as capi

    from gateway.engine import loading
    from gateway.engine.batching import BatchEngine
    from gateway.engine.completion import CompletionOptions, Completions
    from gateway.engine.jobs import RequestScope
    from gateway.engine.protocol import WorkerSpec
    from gateway.engine.vocab import Vocab

    spec = WorkerSpec(
        name="tiny", model_path=str(model), n_ctx=n_ctx, flash_attn=True, n_threads=threads, n_threads_batch=threads, slots=streams
    )
    loaded = loading.load(spec)
    vocab = Vocab(loaded.model)
    out = open(os.devnull, "wb")  # buffered, as the worker's protocol stream
    out_lock = threading.Lock()
    step_lines: list[bytes] = []

    def flush() -> None:  # Worker.flush: the step's chunks in one write
        with out_lock:
            if step_lines:
                out.write(b"".join(step_lines))
                step_lines.clear()
            out.flush()

    def options(i: int, n_tokens: int) -> CompletionOptions:
        prompt = concurrency.PROMPTS[i % len(concurrency.PROMPTS)]
        return CompletionOptions.of({"prompt": prompt, "max_tokens": n_tokens, "temperature": 0, "logit_bias": bias, "stream": True})

    def serve(engine: BatchEngine, n: int, n_tokens: int) -> tuple[int, float]:
        """Completion tokens and seconds of ``n`` streams at once: every request is submitted
        before the loop starts, so all of them wait at its first step, as every prompt does for
        the batch API alone (submitted while the loop runs, their arrival spread over the first
        steps on a busy machine, and the steps counted that spread)."""
        completions = Completions(engine, loaded, vocab)
        started_at = time.perf_counter()
        started = []
        for i in range(n):

            def send_line(line: bytes) -> None:  # Worker.queue_line
                with out_lock:
                    step_lines.append(line)

            started.append(completions.start(RequestScope(i), options(i, n_tokens), on_line=send_line, request_id=i))
        engine.start()
        done = sum(s.reader.wait().completion_tokens for s in started)
        return done, time.perf_counter() - started_at

    try:
        # A warm-up on an engine of its own, so that the measured engine's profile is the run's alone.
        warm = BatchEngine(loaded, vocab, after_step=flush)
        serve(warm, 1, 2)
        warm.stop()
        capi.llama_memory_clear(capi.llama_get_memory(loaded.ctx), True)
        profiler = StepProfiler(clock=CLOCKS[clock], wall_clock=clock == "wall") if profile else None
        engine = BatchEngine(loaded, vocab, after_step=flush, profiler=profiler, pipeline_min_tokens=pipeline_min_tokens)
        done, seconds = serve(engine, streams, tokens)
        engine.stop()  # the loop's last pass ends before the profile is read
        return EngineRun(profiler.report() if profiler is not None else None, done, seconds)
    finally:
        out.close()
        loaded.close()


def gateway_tokens_s(model: Path, tmp: Path, streams: int, tokens: int, n_ctx: int, threads: int, bias: dict[str, float]) -> float:
    proc, base = concurrency.start_gateway(model, tmp, slots=streams, n_ctx=n_ctx, threads=threads)
    try:
        concurrency.http_clients(base, "gemma", 1, 2, bias)  # warm up
        started = time.perf_counter()
        concurrency.http_clients(base, "gemma", streams, tokens, bias)
        return streams * tokens / (time.perf_counter() - started)
    finally:
        concurrency.bench_gateway._stop(proc)


def header() -> str:
    parts = " | ".join(f"{p} ms" for p in PARTS if p != DECODE)
    return (
        f"| streams | steps | sampled tokens/step | llama_decode ms/step | {parts} | outside decode ms/step | outside / decode "
        "| engine tok/s (in-process: profiler off, on) | gateway tok/s (HTTP) | batch API alone tok/s | gateway / batch alone "
        "| batch alone: decode ms/step, outside ms/step |\n"
        "|" + "---|" * (11 + len(PARTS) - 1)
    )


def row(
    streams: int, plain: EngineRun | None, engine: EngineRun | None, gateway: float | None, batch: concurrency.Run | None, tokens: int
) -> str:
    def num(value: float | None, fmt: str = "{:.3f}") -> str:
        return "-" if value is None else fmt.format(value)

    cells = [str(streams)]
    if engine is not None and engine.report is not None:
        r = engine.report
        decode = r.per_step_ms(DECODE)
        outside = 1000.0 * r.outside_decode_s / r.steps if r.steps else 0.0
        cells += [str(r.steps), num(engine.tokens / r.steps if r.steps else None, "{:.1f}"), num(decode)]
        cells += [num(r.per_step_ms(p)) for p in (SCHEDULE, BATCH, SAMPLE, TEXT, SEND)]
        cells += [num(outside), num(outside / decode if decode else None, "{:.0%}")]
    else:
        cells += ["-"] * (4 + len(PARTS))  # steps, tokens/step, decode, the other parts, outside, ratio
    cells.append(f"{num(plain.tokens_s if plain else None, '{:.0f}')}, {num(engine.tokens_s if engine else None, '{:.0f}')}")
    batch_s = None if batch is None else streams * tokens / (batch.ended - batch.started)
    cells += [num(gateway, "{:.0f}"), num(batch_s, "{:.0f}"), num(gateway / batch_s if gateway and batch_s else None, "{:.2f}")]
    if batch is not None and batch.steps:
        outside = (batch.ended - batch.started - batch.decode_s) / batch.steps
        cells.append(f"{1000 * batch.decode_s / batch.steps:.3f}, {1000 * outside:.3f}")
    else:
        cells.append("-")
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", default="1,16,64,128", help="stream counts, comma-separated")
    parser.add_argument("--tokens", type=int, default=32, help="tokens each stream generates")
    parser.add_argument("--n-ctx", type=int, default=256, help="context per stream (slot)")
    # One thread: the tiny model gains nothing from more, and llama.cpp's threads wait for each
    # other at every graph node, so on a busy machine one preempted thread stalls the step (2
    # threads: 132 ms of llama_decode a 16-stream step in a first run, 1 thread: 12 ms).
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads (default 1)")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"some of {', '.join(PATHS)}")
    # On a shared machine the wall time of a part counts the time the loop's thread waited for a
    # core; its CPU time does not (llama_decode runs on that thread with --threads 1).
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="wall", help="the step profile's clock: wall time, or the loop thread's CPU time (default wall)"
    )
    parser.add_argument(
        "--pipeline-min-tokens",
        default="auto",
        help="text beside the next decode from that many greedy tokens a step, 'off', or 'auto' (the worker's rule: "
        f"{PIPELINE_MIN_TOKENS} when --threads leaves a core free, else off; the default)",
    )
    args = parser.parse_args(argv)
    if args.pipeline_min_tokens == "auto":
        pipeline_min: int | None = overlap_threshold(args.threads, available_cpus())
    elif args.pipeline_min_tokens == "off":
        pipeline_min = None
    elif args.pipeline_min_tokens.isdigit():
        pipeline_min = int(args.pipeline_min_tokens)
    else:
        parser.error(f"--pipeline-min-tokens: {args.pipeline_min_tokens!r} (a whole number, 'off' or 'auto')")
    counts = [int(c) for c in args.streams.split(",") if c]
    paths = [p for p in args.paths.split(",") if p]
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        parser.error(f"--paths: unknown {', '.join(unknown)} (allowed: {', '.join(PATHS)})")

    import llama_cpp

    # llama.cpp's log (every load prints ~300 lines) goes nowhere; C holds only a pointer to the callback.
    quiet = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
    llama_cpp.llama_log_set(quiet, None)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = write_tiny_llama(tmp / "tiny.gguf", ctx=args.n_ctx)
        bias = concurrency.eog_bias(model)
        print(
            f"tiny llama (testkit/ggufmaker.py: 2 layers, n_embd 64, {model.stat().st_size // 1024} KiB), n_ctx {args.n_ctx} per stream, "
            f"flash attention, {args.threads} threads; {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
            f"{args.tokens} greedy tokens per stream, EOS suppressed; {datetime.date.today()}"
        )
        print(
            "ms columns: per step of the in-process engine (the parts outside llama_decode add up to 'outside decode', less the "
            f"text and sending that ran beside the next decode on the wall clock), {args.clock} clock, "
            f"text beside the next decode: {'off' if pipeline_min is None else f'from {pipeline_min} greedy tokens a step'}\n"
        )
        print(header(), flush=True)
        for streams in counts:
            same = (model, streams, args.tokens, args.n_ctx, args.threads, bias)
            plain = engine_run(*same, profile=False, pipeline_min_tokens=pipeline_min) if "engine" in paths else None
            engine = engine_run(*same, profile=True, clock=args.clock, pipeline_min_tokens=pipeline_min) if "engine" in paths else None
            gateway = gateway_tokens_s(model, tmp, streams, args.tokens, args.n_ctx, args.threads, bias) if "gateway" in paths else None
            batch = None
            if "batch" in paths:
                batch = concurrency.run_child("llama_batch", model, streams, args.tokens, args.n_ctx, args.threads, bias, 1)
            print(row(streams, plain, engine, gateway, batch, args.tokens), flush=True)


if __name__ == "__main__":
    main()
