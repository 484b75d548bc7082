"""The memory model against the real llama.cpp (llama-cpp-python, CPU build).

Each case loads a real GGUF in a fresh process with verbose logging, parses llama.cpp's
buffer-size lines and compares them with our prediction for the same settings:
weights (CPU_Mapped), the repacked copy (CPU_REPACK) and the KV cache must match to the MiB;
the compute buffer within 2% or 3 MiB, whichever is larger (tiny models' buffers are a few MiB,
where graph details the model leaves out weigh more; at GPU scale the 2% holds).
"""

import json
import subprocess
import sys

import pytest

from gguf import GGMLQuantizationType

from planner.gguf_reader import read_model_info
from planner.llama_log import parse_buffer_lines
from planner.memory import RunSettings, estimate_memory, kv_type
from tests.ggufmaker import write_tiny_llama

pytestmark = pytest.mark.llama

MIB = 1024 * 1024

LOADER = """
import json, sys, llama_cpp
kw = json.loads(sys.argv[2])
llama_cpp.Llama(model_path=sys.argv[1], verbose=True, **kw)
"""


def _llama_buffers(path, settings: RunSettings):
    kw = {
        "n_ctx": settings.n_ctx,
        "n_batch": max(512, settings.n_ubatch),
        "n_ubatch": settings.n_ubatch,
        "flash_attn": settings.flash_attn,
        "swa_full": settings.swa_full,
        "type_k": int(kv_type(settings.type_k)),
        "type_v": int(kv_type(settings.type_v)),
        "n_gpu_layers": 0,
    }
    proc = subprocess.run(
        [sys.executable, "-c", LOADER, str(path), json.dumps(kw)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return parse_buffer_lines(proc.stderr.splitlines())


def _check(path, settings):
    info = read_model_info(path)
    predicted = estimate_memory(info, settings, [None] * (info.n_layers + 1), 0).host
    actual = _llama_buffers(path, settings)
    assert predicted.mapped_bytes / MIB == pytest.approx(actual.model.get("CPU_Mapped", 0.0), abs=0.01)
    assert predicted.repack_bytes / MIB == pytest.approx(actual.model.get("CPU_REPACK", 0.0), abs=0.01)
    assert predicted.kv_bytes / MIB == pytest.approx(actual.kv.get("CPU", 0.0), abs=0.01)
    assert predicted.kv_bytes / MIB == pytest.approx(actual.kv_size_mib, abs=0.02)
    compute = actual.compute["CPU"]
    assert predicted.compute_bytes / MIB == pytest.approx(compute, abs=max(0.02 * compute, 3.0))
    assert predicted.output_bytes / MIB == pytest.approx(actual.output["CPU"], abs=0.01)


GEMMA_CASES = [
    RunSettings(n_ctx=4096, swa_full=False),
    RunSettings(n_ctx=4096, swa_full=True),
    RunSettings(n_ctx=32768, swa_full=False),
    RunSettings(n_ctx=32768, swa_full=True),
    RunSettings(n_ctx=8192, flash_attn=True, type_k="q8_0", type_v="q8_0"),
    RunSettings(n_ctx=3000, flash_attn=True, type_k="q8_0", type_v="f16", swa_full=True),
    RunSettings(n_ctx=2048, n_ubatch=256),
]


@pytest.mark.parametrize("settings", GEMMA_CASES, ids=lambda s: f"ctx{s.n_ctx}-{s.type_k}-{s.type_v}-swafull{int(s.swa_full)}-ub{s.n_ubatch}")
def test_gemma3_270m_prediction_matches_llama_cpp_buffers(gemma_path, settings):
    _check(gemma_path, settings)


TINY_CASES = [
    ("llama", "f32", RunSettings(n_ctx=512)),
    ("llama", "f16", RunSettings(n_ctx=1000, flash_attn=True, type_k="q8_0", type_v="q8_0")),
    ("llama", "q8_0", RunSettings(n_ctx=2048)),
    ("gemma3", "f16", RunSettings(n_ctx=2048, swa_full=False)),
    ("gemma3", "q8_0", RunSettings(n_ctx=2048, swa_full=True, type_k="q8_0", type_v="q8_0", flash_attn=True)),
]


@pytest.mark.parametrize(
    "arch,weights,settings", TINY_CASES, ids=lambda x: x if isinstance(x, str) else f"ctx{x.n_ctx}-{x.type_k}-swafull{int(x.swa_full)}"
)
def test_tiny_model_prediction_matches_llama_cpp_buffers(tmp_path, arch, weights, settings):
    extra = {"sliding_window": 128} if arch == "gemma3" else {}
    path = write_tiny_llama(
        tmp_path / f"tiny-{arch}-{weights}.gguf", arch=arch, ggml_type=GGMLQuantizationType[weights.upper()], n_layers=6, n_embd=128, **extra
    )
    _check(path, settings)
