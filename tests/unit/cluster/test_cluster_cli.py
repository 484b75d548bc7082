"""`gateway plan` and `validate-config` on a cluster config (configs/cluster-example.toml)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli.main import main
from tests.cluster_example import EXAMPLE, write_example


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> Path:
    return write_example(tmp_path_factory.mktemp("cluster") / "models")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_example_describes_three_nodes_and_ten_models():
    from gateway.config.loading import load_config

    config = load_config(EXAMPLE, environ={})
    assert len(config.nodes) == 3 and len(config.models) == 10


def test_validate_config_accepts_the_cluster_example(capsys, config_path):
    code, out, err = run(capsys, "validate-config", str(config_path))
    assert (code, err) == (0, "")
    assert out.strip().endswith(": OK")


def test_plan_json_shows_nodes_then_gpus_then_models(capsys, config_path):
    code, out, _ = run(capsys, "plan", "--config", str(config_path), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["fits"] and doc["problems"] == [] and doc["moves"] == []
    assert [n["name"] for n in doc["nodes"]] == ["gpu-h100-a", "gpu-h100-b", "gpu-l4-c"]
    assert sorted(doc["models"]["chat"]) == ["gpu-h100-a", "gpu-h100-b", "gpu-l4-c"]
    for node in doc["nodes"]:
        on_gpus = {m["name"] for g in node["gpus"] for m in g["models"]}
        placed = {m["name"] for m in node["models"]} | {m["name"] for m in node["on_demand"]}
        assert on_gpus == placed
        assert node["gpus_used"] == sorted({g["index"] for g in node["gpus"] if g["models"]})
        for gpu in node["gpus"]:
            eager = sum(m["total_bytes"] for m in gpu["models"] if m["load"] == "eager")
            assert eager == gpu["planned_bytes"] <= gpu["budget_bytes"]
    lazy = {m["name"] for n in doc["nodes"] for m in n["on_demand"]}
    assert lazy == {"qwen2.5-14b-instruct", "mistral-nemo-instruct"}


def test_plan_text_lists_each_node_with_its_gpus(capsys, config_path):
    code, out, _ = run(capsys, "plan", "--config", str(config_path))
    assert code == 0
    assert out.startswith("node gpu-h100-a (2 GPUs: 80GiB, 80GiB)\n  GPU 0 [")
    assert "(on demand)" in out


def test_plan_with_the_previous_placement_shows_what_moved(capsys, config_path, tmp_path):
    previous = tmp_path / "placement.toml"
    previous.write_text('[models]\n"mistral-7b-instruct" = ["gone-node"]\n')
    code, out, _ = run(capsys, "plan", "--config", str(config_path), "--previous", str(previous))
    assert code == 0
    assert "MOVED (since the previous plan):\n  model 'mistral-7b-instruct': gone-node -> " in out
    assert "(node gone-node is no longer in the cluster)" in out


def test_a_malformed_previous_placement_is_a_config_error(capsys, config_path, tmp_path):
    previous = tmp_path / "placement.toml"
    previous.write_text('[models]\nchat = "gpu-a"\nextra = 1\n')
    code, _, err = run(capsys, "plan", "--config", str(config_path), "--previous", str(previous))
    assert code == 1
    assert f"error: {previous}: models.chat: 'gpu-a' (must be a list of node names)" in err.splitlines()
    assert f"error: {previous}: models.extra: 1 (must be a list of node names)" in err.splitlines()


def test_an_infeasible_cluster_plan_explains_itself_per_node(capsys, config_path, tmp_path):
    small = tmp_path / "small.toml"
    small.write_text(config_path.read_text().replace('["80GiB", "80GiB"]', '["24GiB"]'))
    code, _, err = run(capsys, "validate-config", str(small))
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("  plan: model 'chat' (replica 1 of 3) fits on no node: ")]
    # One line per node, the roomiest first: what is short, where, and what would make it fit.
    assert [line.split(": ", 3)[2] for line in lines] == ["node gpu-l4-c", "node gpu-h100-a", "node gpu-h100-b"]
    assert all("(declared GPU 0, " in line and "it is short by" in line and "would fit with" in line for line in lines)


def test_validate_config_refuses_gpus_for_a_cluster(capsys, config_path):
    code, _, err = run(capsys, "validate-config", str(config_path), "--gpus", "24GiB")
    assert code == 1
    assert "  --gpus: not with [[nodes]] (each node declares its gpus)" in err.splitlines()


def test_serve_refuses_a_cluster_config_without_router(capsys, config_path):
    code, _, err = run(capsys, "serve", "--config", str(config_path))
    assert code == 1
    assert "serve it with --router" in err


def test_plan_flags_for_one_machine_are_refused_for_a_cluster(capsys, config_path, tmp_path):
    code, _, err = run(capsys, "plan", "--config", str(config_path), "--write", str(tmp_path / "p.toml"))
    assert code == 1 and err.startswith("error: --write: not with [[nodes]]")


def test_render_needs_nodes(capsys, tmp_path):
    cfg = tmp_path / "one.toml"
    cfg.write_text('[[models]]\nname = "m"\npath = "/m.gguf"\n')
    code, _, err = run(capsys, "render", "k8s", "--config", str(cfg), "--out", str(tmp_path / "out"))
    assert code == 1 and "no [[nodes]]" in err
