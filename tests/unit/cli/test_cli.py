"""The CLI: analyze, plan and validate-config, on real and header-only GGUF files."""

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as QT

from gateway.cli.main import main
from tests.ggufmaker import q4_k_m_types, write_header_only_model, write_qwen2_7b_q4_k_m

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def qwen7b(tmp_path_factory):
    return write_qwen2_7b_q4_k_m(tmp_path_factory.mktemp("cli") / "qwen2-7b-q4_k_m.gguf", vocab_in_header=False)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_analyze_json_has_the_layer_table(capsys, qwen7b):
    code, out, _ = run(capsys, "analyze", "--model", str(qwen7b), "--gpus", "24GiB", "--json")
    doc = json.loads(out)
    assert code == 0
    assert doc["architecture"] == "qwen2"
    assert doc["n_layers"] == 28
    assert doc["total_bytes"] == 4_677_120_000
    assert len(doc["layers"]) == 28 and set(doc["layers"][0]) == {"index", "bytes"}
    assert doc["token_embd_bytes"] == 306_561_024
    assert doc["output_bytes"] == 447_068_160


def test_analyze_prints_the_poc_report_and_a_tensor_split(capsys, qwen7b):
    code, out, _ = run(capsys, "analyze", "--model", str(qwen7b), "--gpus", "4GiB,4GiB,4GiB", "--reserve-mib", "512")
    assert code == 0
    assert "[Model Analysis]" in out and "Layers: 28" in out and "Layer size range:" in out
    assert "LAYER-TO-GPU ALLOCATION PLAN" in out
    assert 'TENSOR SPLIT: --tensor-split "' in out


def test_analyze_corrupt_gguf_is_one_line_error_not_a_traceback(capsys, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"hello world, not a model")
    code, out, err = run(capsys, "analyze", "--model", str(bad))
    assert code == 1
    assert err == f"error: models[0].path: {bad}: not a GGUF file (magic b'hell')\n"


def test_plan_json_shape_for_two_models(capsys, qwen7b):
    code, out, _ = run(capsys, "plan", "--model", str(qwen7b), "--model", str(qwen7b), "--gpus", "24GiB,12GiB", "--json")
    doc = json.loads(out)
    assert code == 0
    assert [g["index"] for g in doc["gpus"]] == [0, 1]
    names = [m["name"] for m in doc["models"]]
    assert names == ["qwen2-7b-q4_k_m", "qwen2-7b-q4_k_m-2"]
    for m in doc["models"]:
        assert set(m) >= {"name", "devices", "tensor_split", "n_gpu_layers", "cuda_visible_devices"}
        dev = m["devices"][0]
        assert set(dev) == {"gpu", "layers", "weights_bytes", "kv_bytes", "compute_bytes", "overhead_bytes", "total_bytes"}
        assert dev["total_bytes"] == dev["weights_bytes"] + dev["kv_bytes"] + dev["compute_bytes"] + dev["overhead_bytes"]
    # Best fit: both fit the 12 GiB card (11 GiB usable), which keeps the 24 GiB card whole.
    assert [m["cuda_visible_devices"] for m in doc["models"]] == ["1", "1"]


def test_plan_write_saves_the_plan_as_toml(capsys, qwen7b, tmp_path):
    target = tmp_path / "plan.toml"
    code, _, _ = run(capsys, "plan", "--model", str(qwen7b), "--gpus", "8GiB", "--write", str(target))
    assert code == 0
    doc = tomllib.loads(target.read_text())
    assert doc["models"][0]["cuda_visible_devices"] == "0"
    assert doc["models"][0]["n_gpu_layers"] == -1


def test_plan_manual_tensor_split_is_honoured(capsys, qwen7b):
    code, out, _ = run(
        capsys, "plan", "--model", str(qwen7b), "--gpus", "24GiB,24GiB", "--tensor-split", "1,3", "--device-order", "index", "--json"
    )
    (m,) = json.loads(out)["models"]
    assert code == 0
    assert [d["layers"] for d in m["devices"]] == [8, 21]  # x = il/29 < 0.25 for il <= 7


def test_plan_that_does_not_fit_exits_1_with_the_reason(capsys, qwen7b):
    code, out, _ = run(capsys, "plan", "--model", str(qwen7b), "--gpus", "4GiB", "--n-ctx", "32768")
    assert code == 1
    assert "DOES NOT FIT:" in out
    assert "model 'qwen2-7b-q4_k_m' does not fit: on GPU 0 (declared GPU 0, 3,072 MiB left) it is short by" in out
    assert "allow_cpu_offload = true (" in out


def test_validate_config_accepts_the_demo_config(capsys):
    code, out, _ = run(capsys, "validate-config", str(REPO / "configs" / "demo.toml"), "--gpus", "24GiB,24GiB,12GiB")
    assert code == 0
    assert out.endswith(": OK\n")


def test_validate_config_lists_every_problem(capsys, tmp_path, qwen7b):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00")
    cfg = tmp_path / "models.toml"
    cfg.write_text(
        f"""
[[models]]
name = "big"
path = "{qwen7b}"
n_ctx = 131072

[[models]]
name = "broken"
path = "bad.gguf"

[[models]]
name = "gone"
path = "missing.gguf"
"""
    )
    code, _, err = run(capsys, "validate-config", str(cfg), "--gpus", "8GiB")
    assert code == 1
    lines = err.splitlines()
    assert lines[0] == f"{cfg}: 3 problem(s)"
    assert lines[1] == f"  models[1].path: {tmp_path / 'bad.gguf'}: truncated GGUF header: file ends at byte 8 while reading the header counts"
    assert lines[2] == f"  models[2].path: {tmp_path / 'missing.gguf'}: file not found"
    assert lines[3].startswith("  plan: model 'big' does not fit: on GPU 0 (declared GPU 0, 7,168 MiB left) it is short by ")


def test_validate_config_reports_schema_errors_with_dotted_paths(capsys, tmp_path):
    cfg = tmp_path / "models.toml"
    cfg.write_text('[[models]]\nname = "a"\npath = "a.gguf"\nn_ctx = -5\nnctx = 3\n')
    code, _, err = run(capsys, "validate-config", str(cfg))
    assert code == 1
    assert "  models[0].n_ctx: -5 (must be > 0)" in err.splitlines()
    assert any(line.startswith("  models[0].nctx: unknown key") for line in err.splitlines())


# The example box in configs/multi-gpu.toml: each model's header rebuilt (sparse) at a temp path.
MULTI_GPU_SHAPES = {
    "qwen2.5-32b-instruct-q4_k_m.gguf": dict(arch="qwen2", n_layers=64, n_embd=5120, n_head=40, n_head_kv=8, n_ff=27648, n_vocab=152064, attn_bias=True),
    "Meta-Llama-3.1-8B-Instruct-Q5_K_M.gguf": dict(arch="llama", n_layers=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=128256, tensor_types=QT.Q5_K),
    "qwen2.5-coder-7b-instruct-q4_k_m.gguf": dict(arch="qwen2", n_layers=28, n_embd=3584, n_head=28, n_head_kv=4, n_ff=18944, n_vocab=152064, attn_bias=True),
    "nomic-embed-text-v1.5.Q8_0.gguf": dict(arch="llama", n_layers=12, n_embd=768, n_head=12, n_head_kv=12, n_ff=3072, n_vocab=30528, tensor_types=QT.Q8_0),
}


def test_multi_gpu_example_fits_the_box_it_describes(capsys, tmp_path):
    for name, shape in MULTI_GPU_SHAPES.items():
        shape = dict(shape)
        shape.setdefault("tensor_types", q4_k_m_types(shape["n_layers"]))
        write_header_only_model(tmp_path / name, vocab_in_header=False, **shape)
    text = (REPO / "configs" / "multi-gpu.toml").read_text().replace('"/models/', f'"{tmp_path}/')
    cfg = tmp_path / "multi-gpu.toml"
    cfg.write_text(text)
    code, out, err = run(capsys, "validate-config", str(cfg), "--gpus", "24GiB,24GiB,12GiB")
    assert (code, err) == (0, "")


def test_vram_llm_is_an_alias_of_gateway():
    bindir = Path(sys.executable).parent
    for script in ("gateway", "vram-llm"):
        exe = shutil.which(script, path=str(bindir)) or shutil.which(script)
        assert exe, f"console script {script} not installed"
        proc = subprocess.run([exe, "--help"], capture_output=True, text=True, env={**os.environ}, timeout=60)
        assert proc.returncode == 0
        assert "validate-config" in proc.stdout


def test_validate_config_accepts_the_on_demand_example(capsys):
    code, out, err = run(capsys, "validate-config", str(REPO / "configs" / "on-demand.toml"))
    assert (code, err) == (0, "")


def test_validate_config_checks_each_on_demand_model_alone(capsys, tmp_path, qwen7b):
    cfg = tmp_path / "models.toml"
    cfg.write_text(f'[[models]]\nname = "lazy"\npath = "{qwen7b}"\nload = "on_demand"\n')
    code, _, err = run(capsys, "validate-config", str(cfg), "--gpus", "4GiB")
    assert code == 1
    assert err.splitlines()[1].startswith("  plan: model 'lazy' does not fit: on GPU 0")
    assert err.rstrip().endswith("(on its own, with nothing else loaded)")


def test_plan_verify_off_a_gpu_says_it_cannot_verify(capsys, qwen7b, monkeypatch):
    monkeypatch.setattr("gateway.engine.dry_run.cuda_available", lambda: False, raising=False)
    code, _, err = run(capsys, "plan", "--model", str(qwen7b), "--gpus", "24GiB", "--verify")
    assert code == 1
    assert err.startswith("error: plan --verify needs llama-cpp-python built with CUDA and an NVIDIA GPU")


def test_use_fit_params_without_the_binary_says_how_to_get_it(capsys, qwen7b, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    code, _, err = run(capsys, "plan", "--model", str(qwen7b), "--gpus", "24GiB", "--use-fit-params")
    assert code == 1
    assert err.startswith("error: --use-fit-params: llama-fit-params is not on PATH. Get it from llama.cpp")
