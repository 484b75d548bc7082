"""The memory model against the H200 figures in docs/calibration.md#h200-measurements.

The header of DeepSeek-R1-Distill-Qwen-7B Q4_K_M is rebuilt with the gguf writer (sparse: no
tensor data on disk) and read back with our reader; each measured row is then predicted.
Targets: the predicted per-GPU total within 3% of the NVML delta after the first requests, and
never under it by more than 1%.
"""

import pytest

from planner.gguf_reader import read_model_info
from planner.memory import CudaCosts, RunSettings, estimate_memory
from planner.split import assign_layers
from planner.units import MIB
from testkit.ggufmaker import write_qwen2_7b_q4_k_m
from tests.h200_measurements import H200_ROWS


@pytest.fixture(scope="module")
def qwen7b(tmp_path_factory):
    return read_model_info(write_qwen2_7b_q4_k_m(tmp_path_factory.mktemp("h200") / "qwen2-7b-q4_k_m.gguf"))


def _predict(info, ngl, n_ctx, fa, ubatch):
    # llama.cpp caps n_ubatch at n_batch: the n_ubatch 2048 row ran with n_batch 2048.
    settings = RunSettings(n_ctx=n_ctx, flash_attn=fa, n_batch=max(512, ubatch), n_ubatch=ubatch)
    assignment = assign_layers([1.0], 1, info.n_layers, ngl)
    return estimate_memory(info, settings, assignment, 1, CudaCosts()).devices[0]


@pytest.mark.parametrize("row", H200_ROWS, ids=lambda r: f"ngl{r[0]}-ctx{r[1]}-fa{int(r[2])}-ub{r[3]}")
def test_predicted_gpu_total_is_within_3_percent_of_h200_nvml(qwen7b, row):
    ngl, n_ctx, fa, ubatch, _, _, _, nvml = row
    predicted = _predict(qwen7b, ngl, n_ctx, fa, ubatch).total_bytes / MIB
    assert abs(predicted - nvml) / nvml <= 0.03, (predicted, nvml)
    assert predicted >= nvml * 0.99, (predicted, nvml)


@pytest.mark.parametrize("row", H200_ROWS, ids=lambda r: f"ngl{r[0]}-ctx{r[1]}-fa{int(r[2])}-ub{r[3]}")
def test_predicted_buffers_match_h200_buffer_lines(qwen7b, row):
    ngl, n_ctx, fa, ubatch, model, kv, compute, _ = row
    dev = _predict(qwen7b, ngl, n_ctx, fa, ubatch)
    # Weights and KV are exact; llama.cpp prints two decimals.
    assert dev.weights_bytes / MIB == pytest.approx(model, abs=0.01)
    assert dev.kv_bytes / MIB == pytest.approx(kv, abs=0.01)
    # Compute buffers: within 1% of the measured figure.
    assert dev.compute_bytes / MIB == pytest.approx(compute, rel=0.01)


def test_token_embd_stays_in_host_memory(qwen7b):
    settings = RunSettings(n_ctx=4096, flash_attn=True)
    est = estimate_memory(qwen7b, settings, assign_layers([1.0], 1, qwen7b.n_layers, -1), 1)
    # H200: the 292 MiB CPU_Mapped buffer at full offload is token_embd.
    assert est.host.mapped_bytes / MIB == pytest.approx(292.36, abs=0.01)
