"""`gateway copy-headers` where the model files are, then validate-config, plan and render k8s
where they are not; serve never starts a model from a header copy."""

import json
from pathlib import Path

import pytest

from gateway.cli.main import main
from testkit.ggufmaker import write_qwen2_7b_q4_k_m

REPO = Path(__file__).resolve().parents[3]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def laptop(tmp_path, capsys) -> Path:
    """A model's header copied where its file is, and a config for a machine without the file."""
    (tmp_path / "node").mkdir()
    model = write_qwen2_7b_q4_k_m(tmp_path / "node" / "qwen7b.gguf", vocab_in_header=False)
    node_cfg = tmp_path / "node" / "models.toml"
    node_cfg.write_text(f'[[models]]\nname = "qwen"\npath = "{model}"\n')
    code, out, err = run(capsys, "copy-headers", "--config", str(node_cfg), "--out", str(tmp_path / "laptop" / "headers"))
    assert (code, err) == (0, "")
    assert out.startswith(f"wrote {tmp_path / 'laptop' / 'headers' / 'qwen7b.gguf'} (")
    assert out.endswith(f"KiB: the header of {model}, a 4.36 GiB model)\n")
    cfg = tmp_path / "laptop" / "models.toml"
    cfg.write_text('[planner]\nmodel_headers = "headers"\n\n[[models]]\nname = "qwen"\npath = "/models/qwen7b.gguf"\n')
    return cfg


def test_validate_config_checks_a_model_from_its_header_copy(capsys, laptop):
    code, out, err = run(capsys, "validate-config", str(laptop), "--gpus", "8GiB")
    assert (code, out) == (0, f"{laptop}: OK\n")
    assert [line for line in err.splitlines() if not line.startswith("warning: ")] == [
        "note: models[0].path: /models/qwen7b.gguf is not on this machine: checked with its header copy "
        f"{laptop.parent / 'headers' / 'qwen7b.gguf'}"
    ]
    # The copy is sized as the model: too big for 4 GiB, as the model itself would be.
    code, _, err = run(capsys, "validate-config", str(laptop), "--gpus", "4GiB")
    assert code == 1 and "plan: model 'qwen' does not fit" in err


def test_plan_places_a_model_from_its_header_copy(capsys, laptop):
    code, out, _ = run(capsys, "plan", "--config", str(laptop), "--gpus", "8GiB", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["fits"]
    assert [m["name"] for m in doc["models"]] == ["qwen"]


@pytest.mark.parametrize("flag", ["--verify", "--use-fit-params"])
def test_plan_does_not_run_llama_cpp_on_a_header_copy(capsys, laptop, flag):
    code, _, err = run(capsys, "plan", "--config", str(laptop), "--gpus", "8GiB", flag)
    assert code == 1
    assert err.splitlines()[-1] == f"error: {flag}: needs the model files, and qwen is only read from header copies here"


def test_serve_refuses_a_model_whose_file_is_absent_even_with_its_header_copy(capsys, laptop, monkeypatch):
    import gateway.http.server

    def never(*args, **kwargs):
        raise AssertionError("serve started a server for a model whose file is absent")

    monkeypatch.setattr(gateway.http.server, "run_server", never)
    code, _, err = run(capsys, "serve", "--config", str(laptop), "--gpus", "8GiB")
    assert code == 1
    assert err == "error: models[0].path: /models/qwen7b.gguf: file not found\n"


def test_copy_headers_names_a_model_it_cannot_read(capsys, tmp_path):
    code, _, err = run(capsys, "copy-headers", str(tmp_path / "gone.gguf"), "--out", str(tmp_path / "headers"))
    assert code == 1
    assert err == f"error: {tmp_path / 'gone.gguf'}: file not found\n"


def test_copy_headers_never_replaces_a_model_with_its_header(capsys, tmp_path):
    model = write_qwen2_7b_q4_k_m(tmp_path / "qwen7b.gguf", vocab_in_header=False)
    size = model.stat().st_size
    code, _, err = run(capsys, "copy-headers", str(model), "--out", str(tmp_path))
    assert code == 1
    assert err == f"error: {model}: exists and is not a header copy: not replaced (choose another folder)\n"
    assert model.stat().st_size == size and not (tmp_path / "headers").exists()
    # A header copy is replaced: copying again refreshes it.
    assert run(capsys, "copy-headers", str(model), "--out", str(tmp_path / "headers"))[0] == 0
    assert run(capsys, "copy-headers", str(model), "--out", str(tmp_path / "headers"))[0] == 0


def test_rendered_configs_do_not_carry_the_header_copies_folder(capsys, tmp_path):
    # configs/cluster-example.toml renders here, without its models' files, from its header copies.
    code, _, err = run(capsys, "render", "k8s", "--config", str(REPO / "configs" / "cluster-example.toml"), "--out", str(tmp_path))
    assert code == 0, err
    assert err.startswith("note: models[0].path: /models/qwen2.5-72b-instruct-q4_0.gguf is not on this machine")
    rendered = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert "vram-gateway-router.yaml" in rendered
    assert [name for name, text in rendered.items() if "model_headers" in text or "model-headers" in text] == []
