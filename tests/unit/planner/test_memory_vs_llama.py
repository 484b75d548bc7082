"""The memory model against the real llama.cpp (llama-cpp-python, CPU build).

Each case creates one llama.cpp context on a real GGUF in a fresh process with llama.cpp's log
captured, parses its buffer-size lines and compares them with our prediction for the same
settings: weights (CPU_Mapped), the repacked copy (CPU_REPACK), the KV cache and the output
buffer must match to the MiB; the compute buffer within 2% or 3 MiB, whichever is larger (tiny
models' buffers are a few MiB, where graph details the model leaves out weigh more; at GPU scale
the 2% holds).

The context is built the way the worker builds its one context for ``slots`` sequences, through
llama-cpp-python's low-level API (Llama() passes neither n_seq_max nor kv_unified): n_ctx is the
whole KV cache (``RunSettings.kv_cells``), n_seq_max the slots.
"""

import json
import subprocess
import sys

import pytest

from gguf import GGMLQuantizationType

from planner.gguf_reader import read_model_info
from planner.llama_log import parse_buffer_lines
from planner.memory import RunSettings, estimate_memory, kv_type
from planner.units import MIB
from testkit.ggufmaker import write_tiny_llama

pytestmark = pytest.mark.llama

LOADER = """
import ctypes, json, sys
from llama_cpp import llama_cpp as capi

lines = []
def on_log(level, text, user_data):
    lines.append(text.decode("utf-8", "replace"))
callback = capi.llama_log_callback(on_log)  # kept referenced: C holds only a pointer
capi.llama_log_set(callback, ctypes.c_void_p(0))
path, kw = sys.argv[1], json.loads(sys.argv[2])
capi.llama_backend_init()
mp = capi.llama_model_default_params()
mp.n_gpu_layers = 0
model = capi.llama_model_load_from_file(path.encode(), mp)
cp = capi.llama_context_default_params()
flash = kw.pop("flash_attn")
cp.flash_attn_type = capi.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash else capi.LLAMA_FLASH_ATTN_TYPE_DISABLED
for key, value in kw.items():
    setattr(cp, key, value)
ok = bool(model) and bool(capi.llama_init_from_model(model, cp))
sys.stdout.write(json.dumps({"ok": ok, "lines": "".join(lines).splitlines()}))
"""


def _llama_buffers(path, settings: RunSettings):
    kw = {
        "n_ctx": settings.kv_cells,
        "n_batch": min(settings.n_ctx, settings.n_batch),  # as the worker caps it
        "n_ubatch": settings.n_ubatch,
        "n_seq_max": settings.slots,
        "kv_unified": settings.kv_unified,
        "flash_attn": settings.flash_attn,
        "swa_full": settings.swa_full,
        "type_k": int(kv_type(settings.type_k)),
        "type_v": int(kv_type(settings.type_v)),
        "embeddings": settings.embedding,
        "n_threads": 1,
        "n_threads_batch": 1,
    }
    proc = subprocess.run(
        [sys.executable, "-c", LOADER, str(path), json.dumps(kw)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["ok"], "\n".join(doc["lines"][-20:])
    return parse_buffer_lines(doc["lines"])


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


def _case_id(s: RunSettings) -> str:
    slots = f"-slots{s.slots}" + ("u" if s.kv_unified else "") + (f"-pool{s.kv_pool_tokens}" if s.kv_pool_tokens else "")
    return f"ctx{s.n_ctx}-{s.type_k}-{s.type_v}-swafull{int(s.swa_full)}-fa{int(s.flash_attn)}-ub{s.n_ubatch}{slots}"


GEMMA_CASES = [
    RunSettings(n_ctx=4096, swa_full=False),
    RunSettings(n_ctx=4096, swa_full=True),
    RunSettings(n_ctx=32768, swa_full=False),
    RunSettings(n_ctx=32768, swa_full=True),
    RunSettings(n_ctx=8192, flash_attn=True, type_k="q8_0", type_v="q8_0"),
    RunSettings(n_ctx=3000, flash_attn=True, type_k="q8_0", type_v="f16", swa_full=True),
    RunSettings(n_ctx=2048, n_ubatch=256),
    # One context, several sequences: a stream of n_ctx cells each (sliding-window layers one
    # window each), or one shared pool (the windows of all sequences in it).
    RunSettings(n_ctx=4096, slots=1, kv_unified=True),
    RunSettings(n_ctx=4096, slots=4),
    RunSettings(n_ctx=4096, slots=4, kv_unified=True),
    RunSettings(n_ctx=4096, slots=8),
    RunSettings(n_ctx=4096, slots=8, kv_unified=True),
    RunSettings(n_ctx=8192, slots=8, kv_unified=True, kv_pool_tokens=16384, flash_attn=True, type_k="q8_0", type_v="q8_0"),
    RunSettings(n_ctx=2048, slots=4, swa_full=True),
]


@pytest.mark.parametrize("settings", GEMMA_CASES, ids=_case_id)
def test_gemma3_270m_prediction_matches_llama_cpp_buffers(gemma_path, settings):
    _check(gemma_path, settings)


TINY_CASES = [
    ("llama", "f32", RunSettings(n_ctx=512)),
    ("llama", "f16", RunSettings(n_ctx=1000, flash_attn=True, type_k="q8_0", type_v="q8_0")),
    ("llama", "q8_0", RunSettings(n_ctx=2048)),
    ("gemma3", "f16", RunSettings(n_ctx=2048, swa_full=False)),
    ("gemma3", "q8_0", RunSettings(n_ctx=2048, swa_full=True, type_k="q8_0", type_v="q8_0", flash_attn=True)),
    # Slots on models small enough that attention, not the logits, sets the compute buffer:
    # it follows the cells one sequence attends to (its stream, or the whole shared pool).
    ("llama", "f16", RunSettings(n_ctx=2048, slots=4)),
    ("llama", "f16", RunSettings(n_ctx=2048, slots=4, kv_unified=True)),
    ("llama", "f16", RunSettings(n_ctx=2048, slots=8)),
    ("llama", "f16", RunSettings(n_ctx=2048, slots=8, kv_unified=True, flash_attn=True)),
    ("llama", "f32", RunSettings(n_ctx=1000, slots=3)),
    ("gemma3", "f16", RunSettings(n_ctx=2048, slots=4)),
    ("gemma3", "f16", RunSettings(n_ctx=2048, slots=4, kv_unified=True)),
    ("gemma3", "f16", RunSettings(n_ctx=2048, slots=8, kv_unified=True, flash_attn=True)),
    ("gemma3", "f16", RunSettings(n_ctx=2048, slots=4, swa_full=True)),
    ("gemma3", "f16", RunSettings(n_ctx=8192, swa_full=True)),
    ("gemma3", "f16", RunSettings(n_ctx=1000, slots=3, kv_unified=True, kv_pool_tokens=2000)),
]


@pytest.mark.parametrize("arch,weights,settings", TINY_CASES, ids=lambda x: x if isinstance(x, str) else _case_id(x))
def test_tiny_model_prediction_matches_llama_cpp_buffers(tmp_path, arch, weights, settings):
    extra = {"sliding_window": 128} if arch == "gemma3" else {}
    path = write_tiny_llama(
        tmp_path / f"tiny-{arch}-{weights}.gguf", arch=arch, ggml_type=GGMLQuantizationType[weights.upper()], n_layers=6, n_embd=128, **extra
    )
    _check(path, settings)
