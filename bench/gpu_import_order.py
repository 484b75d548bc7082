"""Which import order lets llama.cpp load a model: each variant in a fresh process, on this build.

    python bench/gpu_import_order.py --out DIR [--shape qwen2-7b|tiny]

On the H200, a process that imported numpy before llama-cpp-python's native library crashed
(SIGSEGV) in ``llama_model_load_from_file`` (gateway/engine/native.py). Each variant below loads
the same sparse model with llama.cpp's default parameters (every layer on the GPU) in its own
``python -X faulthandler`` process and reports its exit code; the crashing variants are run again
under ``LD_DEBUG=files`` to record which shared objects were opened, in which order:

- ``llama first``: llama_cpp's native library, then numpy (what our processes do now);
- ``numpy first``: numpy, then llama_cpp (what crashed);
- ``numpy first, one BLAS thread``: the same with OPENBLAS_NUM_THREADS=1 (numpy's OpenBLAS
  starts no threads);
- ``numpy's libraries only``: each shared object numpy's wheel bundles (numpy.libs) opened with
  ctypes, without importing numpy, then llama_cpp: which library matters, if any;
- ``numpy first, llama.cpp's libraries in LD_PRELOAD`` (the libraries' load order alone), and
  ``numpy first, no GPU visible``.

A crashing ``numpy first`` is also run under cuda-gdb (or gdb) for its native stack.

Writes import-order.json under --out and prints one line per variant.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LOAD = """
import sys, time
from llama_cpp import llama_cpp as capi
capi.llama_backend_init()
p = capi.llama_model_default_params()
p.n_gpu_layers = -1
t0 = time.monotonic()
m = capi.llama_model_load_from_file(sys.argv[1].encode(), p)
print("LOADED" if m else "LOAD FAILED", f"{time.monotonic() - t0:.2f} s", flush=True)
"""


def numpy_libs() -> list[Path]:
    spec = importlib.util.find_spec("numpy")
    if spec is None or spec.origin is None:
        return []
    folder = Path(spec.origin).parent.parent / "numpy.libs"
    return sorted(folder.glob("*.so*")) if folder.is_dir() else []


def variants() -> dict[str, tuple[str, dict[str, str]]]:
    out = {
        "llama first": ("from llama_cpp import llama_cpp\nimport numpy\n" + LOAD, {}),
        "numpy first": ("import numpy\n" + LOAD, {}),
        "numpy first, one BLAS thread": ("import numpy\n" + LOAD, {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}),
    }
    for lib in numpy_libs():
        out[f"only {lib.name} (ctypes, no numpy)"] = (f"import ctypes\nctypes.CDLL({str(lib)!r})\n" + LOAD, {})
    libs = native_libs()
    if libs:
        out["numpy first, llama.cpp's libraries in LD_PRELOAD"] = ("import numpy\n" + LOAD, {"LD_PRELOAD": ":".join(map(str, libs))})
    out["numpy first, no GPU visible"] = ("import numpy\n" + LOAD, {"CUDA_VISIBLE_DEVICES": ""})
    return out


def native_libs() -> list[Path]:
    """llama-cpp-python's shared objects, dependencies first (without importing it)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return []
    folder = Path(spec.origin).parent / "lib"
    order = ["libggml-base", "libggml-cpu", "libggml-cuda", "libggml", "libllama"]
    return [p for name in order for p in sorted(folder.glob(name + ".so")) if p.exists()]


def native_backtrace(code: str, model: Path, tmp: Path) -> list[str]:
    """The native stack of a crashing variant, where cuda-gdb is installed (it debugs host code
    too; the CUDA image has no plain gdb)."""
    gdb = next(filter(None, map(shutil.which, ("/usr/local/cuda/bin/cuda-gdb", "cuda-gdb", "gdb"))), None)
    if gdb is None:
        return ["no cuda-gdb or gdb here"]
    script = tmp / "crash.py"
    script.write_text(code)
    try:
        proc = subprocess.run([gdb, "-q", "-batch", "-ex", "run", "-ex", "bt 12", "--args", sys.executable, str(script), str(model)],
                              capture_output=True, timeout=120, cwd=ROOT)  # fmt: skip
    except subprocess.TimeoutExpired:
        return ["timed out"]
    lines = proc.stdout.decode(errors="replace").splitlines()
    start = next((i for i, line in enumerate(lines) if "SIGSEGV" in line or "received signal" in line), None)
    return lines[start : start + 16] if start is not None else lines[-10:]


def run(code: str, model: Path, env: dict[str, str], *, ld_debug: Path | None = None, timeout: float = 180) -> dict:
    full_env = {**os.environ, **env}
    if ld_debug is not None:
        full_env.update(LD_DEBUG="files", LD_DEBUG_OUTPUT=str(ld_debug))
    try:
        proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code, str(model)], capture_output=True, env=full_env, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"code": None, "note": f"timed out after {timeout:g} s"}
    err = [line for line in proc.stderr.decode(errors="replace").splitlines() if line.strip()]
    fault = next((i for i, line in enumerate(err) if line.startswith("Fatal Python error")), None)
    return {
        "code": proc.returncode,
        "stdout": proc.stdout.decode(errors="replace").strip()[-300:],
        "fault": err[max(0, fault - 4) : fault + 12] if fault is not None else [],
        "stderr_tail": err[-6:],
    }


def opened_order(prefix: Path) -> list[str]:
    """The shared objects the loader initialised, in order (LD_DEBUG=files 'calling init')."""
    names: list[str] = []
    for f in sorted(prefix.parent.glob(prefix.name + ".*")):
        for line in f.read_text(errors="replace").splitlines():
            if "calling init:" in line:
                names.append(line.split("calling init:")[1].strip())
    return names


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--shape", choices=("qwen2-7b", "tiny"), default="qwen2-7b")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"python": sys.version.split()[0], "numpy_libs": [p.name for p in numpy_libs()], "variants": {}}
    with tempfile.TemporaryDirectory(prefix="import-order-") as d:
        tmp = Path(d)
        # The model is written in a child so that this process never loads llama.cpp or numpy.
        model = tmp / "model.gguf"
        writer = "qwen2-7b" if args.shape == "qwen2-7b" else "tiny"
        subprocess.run(
            [sys.executable, str(ROOT / "bench" / "gpu_serve.py"), "--write-model-only", str(model), "--shape", writer],
            check=True, cwd=ROOT,
        )  # fmt: skip
        for name, (code, env) in variants().items():
            result = run(code, model, env)
            if result["code"] not in (0, None) and name in ("numpy first", "llama first"):
                prefix = tmp / ("ld-" + name.replace(" ", "-"))
                again = run(code, model, env, ld_debug=prefix)
                result["ld_debug_code"] = again["code"]
                result["init_order"] = opened_order(prefix)
                result["native_backtrace"] = native_backtrace(code, model, tmp)
                for line in result["native_backtrace"][:6]:
                    print(f"    gdb: {line}", flush=True)
            report["variants"][name] = result
            print(f"{name:<55} exit {result['code']}  {result.get('stdout', '')[:60]}", flush=True)
            for line in result.get("fault", [])[:8]:
                print(f"    {line}", flush=True)
        # The order the working variant initialises in, for the record.
        prefix = tmp / "ld-llama-first-ok"
        run(variants()["llama first"][0], model, {}, ld_debug=prefix)
        report["init_order_llama_first"] = opened_order(prefix)
    (out / "import-order.json").write_text(json.dumps(report, indent=1))
    crashed = [n for n, r in report["variants"].items() if r["code"] not in (0,)]
    print("crashed: " + (", ".join(crashed) if crashed else "none"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
