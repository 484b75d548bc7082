"""Every models.toml in configs/ passes `gateway validate-config` and `gateway plan` here, where
none of their model files are: the examples whose models are not packages read the header copies
in configs/model-headers ([planner] model_headers)."""

import filecmp
from pathlib import Path

import pytest

from gateway.cli.main import main
from tests.cluster_example import HEADERS, write_example_headers

REPO = Path(__file__).resolve().parents[3]
CONFIGS = sorted((REPO / "configs").glob("*.toml"))
# The GPUs a config is written for, where it does not declare them itself (a cluster's nodes
# do): on this machine NVML would answer for the GPUs it has, or none.
DESCRIBED_GPUS = {"multi-gpu.toml": ["--gpus", "24GiB,24GiB,12GiB"]}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_example_config_passes_validate_config(capsys, config):
    code, out, err = run(capsys, "validate-config", str(config), *DESCRIBED_GPUS.get(config.name, []))
    assert (code, out) == (0, f"{config}: OK\n"), err


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_example_config_plans(capsys, config):
    code, out, err = run(capsys, "plan", "--config", str(config), *DESCRIBED_GPUS.get(config.name, []))
    assert code == 0, err
    assert "DOES NOT FIT" not in out


def test_examples_without_their_model_files_say_they_were_checked_with_header_copies(capsys):
    code, _, err = run(capsys, "validate-config", str(REPO / "configs" / "multi-gpu.toml"), *DESCRIBED_GPUS["multi-gpu.toml"])
    assert code == 0
    notes = [line for line in err.splitlines() if line.startswith("note: ")]
    assert notes[0] == (
        "note: models[0].path: /models/qwen2.5-32b-instruct-q4_k_m.gguf is not on this machine: "
        f"checked with its header copy {HEADERS / 'qwen2.5-32b-instruct-q4_k_m.gguf'}"
    )
    assert len(notes) == 4
    # The copies stand in for real files that carry a chat template and their trained context:
    # nothing else to warn about.
    assert [line for line in err.splitlines() if not line.startswith("note: ")] == []


def test_the_committed_header_copies_are_what_tests_cluster_example_makes(tmp_path):
    made = write_example_headers(tmp_path / "headers", tmp_path / "scratch")
    committed = sorted(p.name for p in HEADERS.glob("*.gguf"))
    assert sorted(p.name for p in made) == committed, "python -m tests.cluster_example rewrites configs/model-headers"
    _, mismatch, errors = filecmp.cmpfiles(HEADERS, tmp_path / "headers", committed, shallow=False)
    assert (mismatch, errors) == ([], []), "python -m tests.cluster_example rewrites configs/model-headers"
