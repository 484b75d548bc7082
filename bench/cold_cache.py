"""The greedy pass's numpy calls with cold and warm CPU caches (issue 24, item 3).

Inside the decode loop the greedy pass cost several times what the same calls took in a loop of
their own. The cause: llama_decode's working set (KV cells, mask, weights, compute buffers)
evicts the loop's code and data from the CPU caches, so the calls right after each decode run
cold. This reproduces it without llama.cpp: before each timed call a copy of ``--evict`` bytes
(default 8 MB, this machine's L3) stands in for the decode; the same call right after, on the
same data, is the warm figure. Times are the calling thread's CPU time (``time.thread_time_ns``),
per call, for [rows, vocabulary] float32 logits with one lowered token a row (the bench's
end-of-generation suppression):

- ``bias pass``: the logit biases added with fancy indexing, argmax, biases put back
  (``sampling.greedy_rows``, the loop's pass before issue 24 item 3's second part);
- ``raw argmax``: ``sampling.GreedyRows.pick`` with biases that only lower tokens: one argmax
  over the raw logits and a check of each row's pick.

`.venv/bin/python bench/cold_cache.py`
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from gateway.engine.sampling import Greedy, GreedyRows, bias_index, greedy_rows  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=268, help="the tiny model's vocabulary")
    parser.add_argument("--evict", type=int, default=8_000_000, help="bytes copied before each cold call (0: none)")
    parser.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(1)
    logits = rng.normal(size=(args.rows, args.vocab)).astype(np.float32)
    rows = list(range(args.rows))
    pickers = [Greedy({args.vocab - 1: -100.0}) for _ in rows]
    at_rows = np.asarray(rows, dtype=np.int64)
    index = bias_index(rows, pickers)
    loop_pass = GreedyRows()

    def bias_pass() -> list[int]:
        return greedy_rows(logits, at_rows, pickers, index).tolist()

    def raw_argmax() -> list[int]:
        return loop_pass.pick(logits, rows, pickers)

    if bias_pass() != raw_argmax():
        raise SystemExit("the two passes disagree")
    big = np.ones(max(args.evict // 8, 1))
    scratch = np.empty_like(big)
    clock = time.thread_time_ns
    print(f"{args.rows} rows x {args.vocab} logits, {args.evict:,} bytes copied before each cold call, {args.repeat} calls")
    print("| pass | cold us/call | warm us/call |\n|---|---|---|")
    for name, fn in (("bias pass", bias_pass), ("raw argmax", raw_argmax)):
        cold = warm = 0
        for _ in range(args.repeat):
            if args.evict:
                np.copyto(scratch, big)
            t0 = clock()
            fn()
            t1 = clock()
            fn()
            t2 = clock()
            cold += t1 - t0
            warm += t2 - t1
        print(f"| {name} | {cold / args.repeat / 1000:.1f} | {warm / args.repeat / 1000:.1f} |")


if __name__ == "__main__":
    main()
