"""The CPU part of the GPU check (bench/gpu_check.py), ``plan --verify`` and ``--use-fit-params``.

No GPU here: the sparse models are written and read back, the table and verdict run on
recorded figures (the H200 calibration figures of docs/calibration.md#h200-measurements,
labelled as such: they are not a run of this check), and ``--verify`` / ``--use-fit-params``
fail with their messages. Where llama.cpp itself can answer on the CPU (a ``no_alloc`` dry run
reads our headers), it does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config.loading import parse_config
from gateway.cli.fit_params import (
    MISSING_MESSAGE,
    FitParamsError,
    FitParamsMissing,
    FitResult,
    apply_fit,
    apply_fits,
    find_fit_params,
    fit_plan,
    fit_report,
    parse_fit_output,
    require_fit_params,
    run_fit_params,
)
from gateway.placement.launch import launches_from_plan
from gateway.placement.planning import plan_config, read_models
from gateway.engine.protocol import Op, Result, WorkerSpec
from gateway.engine.dry_run import DryRun, dry_run_params
from gateway.errors import VerifyError
from gateway.placement.verify import (
    CudaStatus,
    compare_dry_run,
    cuda_status,
    dry_run,
    format_verify_table,
    unavailable_message,
    verify_plan,
)
from planner.devices import declared_devices
from planner.gguf_reader import read_model_info
from planner.memory import CudaCosts, RunSettings, estimate_memory
from planner.split import assign_layers
from testkit.ggufmaker import (
    model_tensor_specs,
    q4_k_m_types,
    write_qwen2_7b_q4_k_m,
    write_tiny_llama,
)
from tests.h200_measurements import H200_ROWS

ROOT = Path(__file__).resolve().parents[3]
MIB = 1024 * 1024
GIB = 1024 * MIB
REFERENCE = "docs/calibration.md#h200-measurements"


def _load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


gc = _load_gpu_check()


@pytest.fixture(scope="module")
def no_cuda() -> CudaStatus:
    status = cuda_status()
    if status.available:
        pytest.skip("this machine has a CUDA build and a GPU: the off-GPU messages do not apply")
    return status


# --------------------------------------------------------------------------------------------
# Sparse models
# --------------------------------------------------------------------------------------------


def _expected_bytes(**shape) -> int:
    return sum(s.nbytes for s in model_tensor_specs(**shape))


def test_dense_8b_is_written_sparse_and_reads_back_with_its_shape(tmp_path):
    path = gc.write_dense_8b(tmp_path / "dense-8b.gguf")
    info = read_model_info(path)
    assert (info.architecture, info.n_layers, info.n_embd, info.n_head, info.n_vocab, info.n_ff) == ("llama", 32, 4096, 32, 128256, 14336)
    assert set(info.n_head_kv) == {8} and info.sliding_window == 0
    expected = _expected_bytes(n_layers=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=128256, tensor_types=q4_k_m_types(32))
    assert info.total_bytes == expected
    assert 4.85e9 < info.total_bytes < 4.95e9  # Llama 3.1 8B Q4_K_M is 4.92 GB
    assert os.stat(path).st_size > info.total_bytes  # the file is as large as the real one...
    assert gc.disk_bytes(path) < 16 * MIB  # ...but its tensor data is a hole


def test_gemma3_4b_like_is_sliding_window_with_tied_embeddings(tmp_path):
    path = gc.write_gemma3_4b_like(tmp_path / "gemma3-4b.gguf")
    info = read_model_info(path)
    assert (info.architecture, info.n_layers, info.n_embd, info.key_length, info.n_vocab) == ("gemma3", 34, 2560, 256, 262144)
    assert info.sliding_window == 1024
    assert info.output_bytes is None  # tied: llama.cpp copies token_embd to the output layer's GPU
    # llama.cpp's gemma3 rule: every 6th layer is global, the other 5 slide.
    assert info.swa_layers == tuple(il % 6 != 5 for il in range(34))
    assert 2.4e9 < info.total_bytes < 2.55e9  # Gemma 3 4B Q4_K_M (text) is ~2.49 GB
    assert gc.disk_bytes(path) < 16 * MIB


def test_offload_model_of_70b_layers_is_sized_past_the_gpu(tmp_path):
    layer = gc.llama70b_layer_bytes()
    assert 480 * MIB < layer < 500 * MIB
    # A real 70B (80 layers) is the least; bigger GPUs get more layers of the same shape.
    assert gc.offload_layers(20 * GIB, layer, 4 * GIB) == 80
    n = gc.offload_layers(139 * GIB, layer, 4 * GIB)
    assert n * layer >= 143 * GIB and (n - 1) * layer < 143 * GIB
    path = gc.write_offload_model(tmp_path / "offload.gguf", 80)
    info = read_model_info(path)
    assert (info.n_layers, info.n_embd, info.n_head, info.n_head_kv[0], info.n_ff) == (80, 8192, 64, 8, 28672)
    assert 42.3e9 < info.total_bytes < 42.6e9  # Llama 3.1 70B Q4_K_M is 42.5 GB
    assert gc.disk_bytes(path) < 16 * MIB


def test_dry_run_writes_reads_back_and_plans_every_model():
    proc = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--dry-run", "--gpus", "24GiB", "--check-load"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for key in ("dense-8b", "dense-8b-nofa", "gemma3-4b-swa", "offload-70b-layers"):
        assert f"{key}: " in out
    assert "80 layers, n_embd 8192" in out and "(partial offload)" in out
    # llama.cpp (this CPU build) reads every header we wrote.
    assert out.count("llama.cpp (CPU, no_alloc) reads it") == 4
    assert "nothing was measured" in out


def test_the_check_off_a_gpu_exits_2_with_its_message(no_cuda):
    proc = subprocess.run(
        [sys.executable, "bench/gpu_check.py"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip() == (
        "error: the GPU check needs llama-cpp-python built with CUDA and an NVIDIA GPU; this machine has "
        "neither (llama_supports_gpu_offload() is False, NVML found no GPU): nothing was measured. "
        "Run it on a CUDA machine (docs/gpu-validation.md); --dry-run runs the CPU part here."
    )


# --------------------------------------------------------------------------------------------
# Table and verdict on recorded figures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen7b(tmp_path_factory):
    return read_model_info(write_qwen2_7b_q4_k_m(tmp_path_factory.mktemp("gpu-check") / "qwen2-7b.gguf"))


def _reference_measurements(info) -> list:
    """The H200 calibration rows: our estimator's prediction beside the NVML delta measured
    there. These are the reference figures of docs/calibration.md#h200-measurements, not a
    run of bench/gpu_check.py."""
    out = []
    for ngl, n_ctx, fa, ubatch, model, kv, compute, nvml in H200_ROWS:
        settings = RunSettings(n_ctx=n_ctx, flash_attn=fa, n_batch=max(512, ubatch), n_ubatch=ubatch)
        dev = estimate_memory(info, settings, assign_layers([1.0], 1, info.n_layers, ngl), 1, CudaCosts()).devices[0]
        out.append(
            gc.Measurement(
                model=f"H200 ref qwen2-7b ngl{ngl} ctx{n_ctx} fa{int(fa)} ub{ubatch}",
                gpu=0,
                predicted_bytes=dev.total_bytes,
                measured_bytes=round(nvml * MIB),
                buffers={"CUDA0 model": model, "CUDA0 KV": kv, "CUDA0 compute": compute},
                source=f"reference: {REFERENCE}",
            )
        )
    return out


REFERENCE_META = {"figures": f"H200 calibration reference ({REFERENCE}), not a run of this check"}


def test_reference_h200_figures_pass_the_verdict(qwen7b):
    rows = _reference_measurements(qwen7b)
    verdict = gc.judge(rows)
    assert verdict.ok, verdict.failures
    table = gc.render_table(rows, REFERENCE_META)
    assert table.splitlines()[0].startswith("gpu-check: figures H200 calibration reference")
    assert "PASS: 8 of 8 within tolerance" in table
    # llama.cpp's own buffer lines are shown as recorded.
    assert "CUDA0 model 4,168.09, CUDA0 KV 224.00, CUDA0 compute 304.00" in table
    for row in rows:
        assert f"{row.error_pct:+.2f}%" in table


def _synthetic(predicted_mib: float, measured_mib: float | None):
    return gc.Measurement("synthetic", 0, round(predicted_mib * MIB), None if measured_mib is None else round(measured_mib * MIB))


@pytest.mark.parametrize(
    ("predicted", "measured", "ok", "why"),
    [
        (1029.0, 1000.0, True, ""),  # 2.9% over
        (995.0, 1000.0, True, ""),  # 0.5% under
        (1040.0, 1000.0, False, "error +4.00% (tolerance 3%)"),
        (970.0, 1000.0, False, "predicted -3.00% under measured"),
        (985.0, 1000.0, False, "predicted -1.50% under measured (at most 1% under allowed)"),
        (1000.0, None, False, "not measured"),
    ],
)
def test_verdict_on_synthetic_figures(predicted, measured, ok, why):
    verdict = gc.judge([_synthetic(predicted, measured)])
    assert verdict.ok is ok
    if not ok:
        assert len(verdict.failures) == 1 and why in verdict.failures[0]
        assert "FAIL: 1 problem(s)" in gc.render_table([_synthetic(predicted, measured)])


def test_record_round_trip_and_from_mode(tmp_path, qwen7b, capsys):
    good = tmp_path / "reference.json"
    gc.save_record(good, REFERENCE_META, _reference_measurements(qwen7b))
    meta, rows = gc.load_record(good)
    assert meta == REFERENCE_META and rows == _reference_measurements(qwen7b)
    assert gc.main(["--from", str(good)]) == 0
    assert "PASS: 8 of 8" in capsys.readouterr().out

    bad = tmp_path / "failing.json"
    gc.save_record(bad, {"figures": "synthetic failing case"}, [_synthetic(1040, 1000), _synthetic(985, 1000)])
    assert json.loads(bad.read_text())["format"] == gc.RECORD_FORMAT
    assert gc.main(["--from", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "FAIL: 2 problem(s)" in out


def test_buffers_for_a_slot_come_from_the_workers_ready_message():
    allocated = {
        "model_mib": {"CUDA0": 2172.17, "CUDA1": 1996.0, "CPU_Mapped": 292.36},
        "kv_mib": {"CUDA0": 104.0, "CUDA1": 120.0},
        "compute_mib": {"CUDA0": 311.0, "CUDA_Host": 18.01},
    }
    assert gc.buffers_for_slot(allocated, 0) == {"CUDA0 model": 2172.17, "CUDA0 KV": 104.0, "CUDA0 compute": 311.0}
    assert gc.buffers_for_slot(allocated, 1) == {"CUDA1 model": 1996.0, "CUDA1 KV": 120.0}


def test_requests_run_to_max_tokens_through_the_real_worker_on_a_zero_weight_model(tmp_path):
    """The GPU run's requests, here on the CPU: a header-only (zero-weight) model with the fake
    vocabulary loads in the gateway's worker, a token-id prompt is accepted, and EOS is banned so
    every request generates max_tokens."""
    import asyncio

    from gateway.runtime.states import ModelState
    from gateway.runtime.worker_process import WorkerProcess
    from testkit.ggufmaker import write_header_only_model

    path = write_header_only_model(
        tmp_path / "small.gguf", arch="llama", n_layers=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=512,
        n_vocab=1000, tensor_types=q4_k_m_types(2), n_merges=gc.N_MERGES,
    )  # fmt: skip

    async def run():
        spec = WorkerSpec(name="small", model_path=str(path), n_ctx=1024, flash_attn=True)
        handle = WorkerProcess(spec, {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)})
        await handle.start()
        try:
            assert await handle.wait_ready(120) == ModelState.READY, handle.reason
            msgs = [m async for m in handle.request(Op.COMPLETION, gc.request_params(1000, 16), stream=False)]
        finally:
            await handle.stop()
        return msgs

    msgs = asyncio.run(run())
    assert isinstance(msgs[-1], Result), msgs
    assert msgs[-1].data["usage"]["prompt_tokens"] == gc.PROMPT_TOKENS
    assert msgs[-1].data["usage"]["completion_tokens"] == 16


# --------------------------------------------------------------------------------------------
# plan --verify
# --------------------------------------------------------------------------------------------

NEITHER = (
    "plan --verify needs llama-cpp-python built with CUDA and an NVIDIA GPU; this machine has neither "
    "(llama_supports_gpu_offload() is False, NVML found no GPU): the plan is not verified"
)


def _config(path, **model):
    keys = "".join(f"{k} = {json.dumps(v)}\n" for k, v in model.items())
    return parse_config(f'[[models]]\nname = "m"\npath = "{path}"\n{keys}', environ={})


def test_verify_off_a_gpu_raises_with_the_exact_message(no_cuda, qwen7b):
    config = _config(qwen7b.paths[0], n_ctx=4096, flash_attn=True)
    files = read_models(config)
    plan = plan_config(config, files.infos, declared_devices(["80GiB"]))
    with pytest.raises(VerifyError) as exc:
        verify_plan(config, plan, files.paths)
    assert str(exc.value) == NEITHER


def test_unavailable_message_names_what_is_missing():
    assert unavailable_message(CudaStatus(False, 0)) == NEITHER
    assert unavailable_message(CudaStatus(False, 2)) == (
        "plan --verify needs llama-cpp-python built with CUDA and an NVIDIA GPU; this machine has an NVIDIA GPU "
        "but no CUDA build of llama-cpp-python (llama_supports_gpu_offload() is False; NVML found 2 GPU(s)): "
        "the plan is not verified"
    )
    assert unavailable_message(CudaStatus(True, 0)) == (
        "plan --verify needs llama-cpp-python built with CUDA and an NVIDIA GPU; this machine has a CUDA build "
        "but no NVIDIA GPU (llama_supports_gpu_offload() is True, NVML found no GPU): the plan is not verified"
    )


# The buffer lines a CUDA dry run of the reference's full-offload, n_ctx 4096, flash-attention
# row prints, with the figures of docs/calibration.md#h200-measurements (a dry run prints
# the compute buffers and the KV "size =" line as a real load; buffer lines print 0.00).
H200_DRY_RUN_LINES = (
    "load_tensors: offloaded 29/29 layers to GPU",
    "load_tensors:        CUDA0 model buffer size =     0.00 MiB",
    "load_tensors:   CPU_Mapped model buffer size =     0.00 MiB",
    "llama_kv_cache:      CUDA0 KV buffer size =     0.00 MiB",
    "llama_kv_cache: size =  224.00 MiB (  4096 cells,  28 layers,  1/1 seqs), K (f16):  112.00 MiB, V (f16):  112.00 MiB",
    "sched_reserve:      CUDA0 compute buffer size =   304.00 MiB",
    "sched_reserve:  CUDA_Host compute buffer size =    18.01 MiB",
)


def _gpu_plan(qwen7b, **model):
    config = _config(qwen7b.paths[0], **model)
    files = read_models(config)
    return config, files, plan_config(config, files.infos, declared_devices(["143771MiB"]))


def test_verify_compares_the_workers_dry_run_with_the_plan(qwen7b):
    config, files, plan = _gpu_plan(qwen7b, n_ctx=4096, flash_attn=True)
    seen = []

    def runner(spec, env):
        seen.append((spec, env))
        return DryRun(ok=True, lines=H200_DRY_RUN_LINES, seconds=0.53)

    rows = verify_plan(config, plan, files.paths, runner=runner, environ={"PATH": "/usr/bin"})
    # The dry run got exactly what the worker gets: the launch's spec and environment.
    launch = launches_from_plan(plan, {"m": str(files.paths["m"])})["m"]
    assert seen == [(launch.worker_spec(config.models[0]), launch.worker_env({"PATH": "/usr/bin"}))]
    assert seen[0][1]["CUDA_VISIBLE_DEVICES"] == "0" and seen[0][0].n_gpu_layers == -1
    assert [(r.device, r.what) for r in rows] == [
        ("GPU 0 (CUDA0)", "compute"), ("host (CUDA_Host)", "compute"), ("all devices", "KV"), ("all GPUs", "layers"),
    ]  # fmt: skip
    assert all(r.ok for r in rows), rows
    table = format_verify_table(rows)
    assert "all 4 figures match llama.cpp's dry run" in table


def test_verify_reports_a_difference(qwen7b):
    _, _, plan = _gpu_plan(qwen7b, n_ctx=4096, flash_attn=True)
    lines = tuple(line.replace("304.00", "400.00") for line in H200_DRY_RUN_LINES)
    rows = compare_dry_run(plan.placements[0], DryRun(ok=True, lines=lines))
    bad = [r for r in rows if not r.ok]
    assert [(r.device, r.what) for r in bad] == [("GPU 0 (CUDA0)", "compute")]
    assert bad[0].diff == round(304.0 * MIB) - round(400.0 * MIB)
    table = format_verify_table(rows)
    assert "DIFFERS" in table and "1 of 4 figures differ" in table

    failed = compare_dry_run(plan.placements[0], DryRun(ok=False, error="RuntimeError: llama_model_load_from_file failed"))
    assert not failed[0].ok and "FAILED: RuntimeError" in format_verify_table(failed)


@pytest.mark.llama
def test_a_real_no_alloc_dry_run_matches_the_planner_on_the_cpu(tmp_path):
    """The dry-run child process for real, on this CPU build: llama.cpp reads the 8B header
    without allocating, and its host compute buffer and KV size equal the planner's."""
    path = gc.write_dense_8b(tmp_path / "dense-8b.gguf")
    config = _config(path, n_ctx=4096, flash_attn=True)
    files = read_models(config)
    plan = plan_config(config, files.infos, [])  # no GPU: a CPU placement
    launch = launches_from_plan(plan, {"m": str(path)})["m"]
    run = dry_run(launch.worker_spec(config.models[0]), launch.worker_env(dict(os.environ)))
    assert run.ok, run.error
    assert any("llama_kv_cache: size =  512.00 MiB" in line for line in run.lines)
    rows = compare_dry_run(plan.placements[0], run)
    assert [(r.device, r.what) for r in rows] == [("host (CPU)", "compute"), ("all devices", "KV")]
    assert all(r.ok for r in rows), format_verify_table(rows)


def _llama_kwargs(spec: WorkerSpec) -> dict:
    """The Llama() keyword arguments the engine-per-request worker passed for a spec."""
    from llama_cpp import llama_cpp as capi

    from planner.memory import kv_type

    kwargs = {
        "model_path": spec.model_path, "n_ctx": spec.n_ctx, "n_batch": spec.n_batch, "n_ubatch": spec.n_ubatch,
        "n_gpu_layers": spec.n_gpu_layers, "split_mode": {"none": 0, "layer": 1, "row": 2}[spec.split_mode],
        "flash_attn": spec.flash_attn, "type_k": int(kv_type(spec.type_k)), "type_v": int(kv_type(spec.type_v)),
        "swa_full": spec.swa_full, "use_mmap": spec.use_mmap, "use_mlock": spec.use_mlock, "embedding": spec.embedding,
        "n_threads": spec.n_threads, "n_threads_batch": spec.n_threads_batch, "verbose": False,
    }
    if spec.tensor_split is not None:
        kwargs["tensor_split"] = list(spec.tensor_split)
    if spec.pooling is not None:
        kwargs["pooling_type"] = {"none": capi.LLAMA_POOLING_TYPE_NONE, "mean": capi.LLAMA_POOLING_TYPE_MEAN}[spec.pooling]
    return kwargs


def _fields(struct) -> dict:
    import llama_cpp

    out = {}
    for name, _ in struct._fields_:
        value = getattr(struct, name)
        if name == "tensor_split":
            value = [value[i] for i in range(llama_cpp.LLAMA_MAX_DEVICES)] if value else None
        elif not isinstance(value, (int, float, bool, bytes, type(None))):
            value = bool(value)  # pointers and callbacks: set or not
        out[name] = value
    return out


@pytest.mark.llama
@pytest.mark.parametrize(
    "spec_kw",
    [
        {"n_ctx": 512, "n_batch": 256, "n_ubatch": 128, "n_gpu_layers": -1, "tensor_split": [0.5, 0.5],
         "flash_attn": True, "type_k": "bf16", "type_v": "f16", "use_mmap": False, "n_threads": 1},
        {"n_ctx": 512, "embedding": True, "pooling": "mean", "use_mlock": False, "swa_full": True},
    ],
    ids=["gpu-split", "embedding"],
)  # fmt: skip
def test_dry_run_params_are_the_workers_and_what_llama_builds_for_one_slot(tmp_path, spec_kw):
    """The dry run's structs are the worker's (gateway.engine.llama_params), except how the
    model is loaded; and for one slot they are, field by field, what llama-cpp-python's Llama()
    builds from the same settings, but for the fields the batch engine sets on purpose."""
    import llama_cpp

    from gateway.engine import llama_params

    path = write_tiny_llama(tmp_path / "tiny.gguf")
    spec = WorkerSpec(name="t", model_path=str(path), **spec_kw)
    mp, cp, _keep = dry_run_params(spec)
    worker_mp, worker_cp = llama_params.model_params(spec).params, llama_params.context_params(spec)
    loading = {"no_alloc", "load_mode"}
    assert {k: v for k, v in _fields(mp).items() if k not in loading} == {k: v for k, v in _fields(worker_mp).items() if k not in loading}
    assert _fields(cp) == _fields(worker_cp)

    llm = llama_cpp.Llama(**_llama_kwargs(spec))
    # Both thread counts default to every core; a context has one sequence per slot, and KV
    # is unified only when the spec says so (Llama() unifies it for embeddings).
    on_purpose = {"n_threads", "n_threads_batch", "n_seq_max", "kv_unified"}
    assert {k: v for k, v in _fields(worker_mp).items()} == _fields(llm.model_params)
    assert {k: v for k, v in _fields(worker_cp).items() if k not in on_purpose} == {
        k: v for k, v in _fields(llm.context_params).items() if k not in on_purpose
    }
    assert (worker_cp.n_seq_max, worker_cp.kv_unified) == (1, False)
    llm.close()


@pytest.mark.llama
def test_the_dry_run_reserves_every_slot_of_the_workers_context(tmp_path):
    """slots = 2 without kv_unified: one context whose KV cache holds n_ctx cells per slot."""
    path = write_tiny_llama(tmp_path / "tiny.gguf")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    sizes = {}
    for slots in (1, 2):
        run = dry_run(WorkerSpec(name="t", model_path=str(path), n_ctx=4096, slots=slots), env)
        assert run.ok, run.error
        sizes[slots] = run.buffers.kv_size_mib
    assert sizes[2] == pytest.approx(2 * sizes[1])


# --------------------------------------------------------------------------------------------
# --use-fit-params
# --------------------------------------------------------------------------------------------


@pytest.fixture
def empty_path(tmp_path, monkeypatch):
    bin_dir = tmp_path / "empty-bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


def test_fit_params_missing_says_how_to_get_it(empty_path, qwen7b):
    assert find_fit_params() is None
    with pytest.raises(FitParamsMissing) as exc:
        require_fit_params()
    assert str(exc.value) == MISSING_MESSAGE == (
        "--use-fit-params: llama-fit-params is not on PATH. "
        "Get it from llama.cpp: build it with cmake (cmake -B build -DGGML_CUDA=ON && "
        "cmake --build build --config Release --target llama-fit-params; it lands in build/bin/) "
        "or take bin/llama-fit-params from a llama.cpp release archive "
        "(https://github.com/ggml-org/llama.cpp/releases), then put its folder on PATH"
    )
    config, files, plan = _gpu_plan(qwen7b, n_ctx=4096)
    with pytest.raises(FitParamsMissing):
        fit_plan(config, plan, files.paths)


# The example output in llama.cpp's tools/fit-params/README.md (vendored in llama-cpp-python
# 0.3.36): stderr log lines, then the arguments on stdout (shortened to three overrides).
README_STDERR = """\
llama_params_fit_impl: projected to use 61807 MiB of device memory vs. 24077 MiB of free device memory
llama_params_fit_impl: distributing layers across devices with overflow to next device/system memory:
llama_params_fit_impl:   - CUDA0 (NVIDIA GeForce RTX 4090): 48 layers (34 overflowing),  19187 MiB used,   1199 MiB free
llama_params_fit: successfully fit params to free device memory
"""
README_STDOUT = (
    "-c 4096 -ngl 48 -ot blk\\.14\\.ffn_(up|down|gate)_(ch|)exps=CPU,blk\\.15\\.ffn_(up|down|gate)_(ch|)exps=CPU,"
    "blk\\.16\\.ffn_(up|down|gate)_(ch|)exps=CPU\n"
)


def test_fit_output_is_parsed():
    fit = parse_fit_output(README_STDOUT, README_STDERR)
    assert (fit.n_ctx, fit.n_gpu_layers, fit.tensor_split) == (4096, 48, None)
    assert fit.overrides[0] == "blk\\.14\\.ffn_(up|down|gate)_(ch|)exps=CPU" and len(fit.overrides) == 3
    (dev,) = fit.devices
    assert (dev.name, dev.description, dev.layers, dev.overflowing, dev.used_mib, dev.free_mib) == (
        "CUDA0", "NVIDIA GeForce RTX 4090", 48, 34, 19187, 1199,
    )  # fmt: skip
    # This build's format: -ts layer counts per device, the -ot list quoted.
    fit = parse_fit_output('-c 8192 -ngl 65 -ts 40,25 -ot "blk\\.1\\.ffn_up=CPU"\n')
    assert (fit.tensor_split, fit.overrides) == ((40, 25), ("blk\\.1\\.ffn_up=CPU",))
    with pytest.raises(FitParamsError):
        parse_fit_output("llama_params_fit: failed\n")


def _fake_binary(folder: Path, body: str) -> Path:
    exe = folder / "llama-fit-params"
    exe.write_text("#!/bin/sh\n" + body)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def test_run_fit_params_passes_the_workers_settings_and_reads_the_answer(empty_path, qwen7b, tmp_path):
    args_file = tmp_path / "args.txt"
    _fake_binary(
        empty_path,
        f'echo "$@" > {args_file}\necho "CVD=$CUDA_VISIBLE_DEVICES" >> {args_file}\n'
        'echo "llama_params_fit_impl:   - CUDA0 (NVIDIA H200): 20 layers ( 0 overflowing),  13000 MiB used,   1024 MiB free" >&2\n'
        'echo "llama_params_fit_impl:   - CUDA1 (NVIDIA H200):  9 layers ( 0 overflowing),   6000 MiB used,   1024 MiB free" >&2\n'
        'echo "-c 4096 -ngl 29 -ts 20,9"\n',
    )
    binary = require_fit_params()
    settings = RunSettings(n_ctx=4096, flash_attn=True, type_k="q8_0")
    fit = run_fit_params(binary, "/models/m.gguf", settings, margin_mib=2048, cuda_visible_devices="1,0")
    assert args_file.read_text().split("\n")[:2] == [
        "-m /models/m.gguf -c 4096 -b 512 -ub 512 -fa on -ctk q8_0 -ctv f16 -fitt 2048",
        "CVD=1,0",
    ]
    assert (fit.n_gpu_layers, fit.tensor_split, [d.layers for d in fit.devices]) == (29, (20, 9), [20, 9])

    # Beside ours, and delegated to: the launch takes its n_gpu_layers and tensor_split.
    _, _, plan = _gpu_plan(qwen7b, n_ctx=4096)
    report = fit_report(plan, {"m": fit})
    assert "ours:             -ngl -1, layers per GPU 29 on GPU(s) 0" in report
    assert "llama-fit-params: -c 4096 -ngl 29 -ts 20,9 (layers per GPU 20+9" in report
    launches = launches_from_plan(plan, {"m": "/models/m.gguf"})
    launch = apply_fits(launches, {"m": fit})["m"]
    assert (launch.n_gpu_layers, launch.tensor_split) == (29, [20.0, 9.0])
    assert launch.notes[-1] == "split by llama-fit-params: -c 4096 -ngl 29 -ts 20,9"
    assert apply_fits(launches, {"m": "failed: no fit"}) == launches
    with pytest.raises(FitParamsError):
        apply_fit(launch, FitResult(4096, 48, None, overrides=("blk\\.1\\.ffn_up_exps=CPU",), arguments="-c 4096"))


def test_a_failing_fit_params_is_a_clear_error(empty_path):
    _fake_binary(empty_path, 'echo "llama_params_fit: failed to fit params to free device memory" >&2\nexit 1\n')
    with pytest.raises(FitParamsError) as exc:
        run_fit_params(require_fit_params(), "/models/m.gguf", RunSettings(n_ctx=4096))
    assert "llama-fit-params failed for /models/m.gguf (exit 1): llama_params_fit: failed to fit" in str(exc.value)


H200_RUN = ROOT / "docs" / "measurements" / "h200-2026-12-04" / "gpu-check.json"


def test_the_first_h200_run_passes_and_the_planner_still_predicts_what_was_measured_there(tmp_path):
    """docs/gpu-validation.md's first GPU run: the recorded figures pass the verdict, and planning
    the same four models again gives the same per-GPU totals, so a change to the memory model
    that would move them away from what the H200 measured shows here."""
    meta, rows = gc.load_record(H200_RUN)
    assert meta["card"] == "0: NVIDIA H200 (143,771 MiB)"
    assert gc.judge(rows).ok
    args = gc.build_parser().parse_args(["--dry-run", "--offload-vram-gib", "20"])
    planned = gc.prepare(args, tmp_path, declared_devices(["143771MiB"]), ["143771MiB"], lambda _: None)
    predicted = {p.model.key: p.placement.memory.devices[0].total_bytes for p in planned}
    assert predicted == {r.model: r.predicted_bytes for r in rows}
