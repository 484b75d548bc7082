"""The Makefile's targets install what they need and no more: `make serve` the project and the
demo model's package, `make test` (CI, .ci/run) the test tools too (issue 22, item 10)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
# Packages only the tests use: none of them may come with `make serve`.
TEST_TOOLS = ("pytest", "hypothesis", "openai", "schemathesis", "yamllint", "hadolint", "check-jsonschema", "kubernetes-validate", "playwright")


def extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def installed_extras(target: str, venv: Path) -> list[str]:
    """The extras a target's `pip install -e '.[...]'` lines name, from `make -n` (nothing runs)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", target, f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True).stdout
    return re.findall(r"pip install .*-e '\.\[([^\]]*)\]'", out)


def test_make_serve_installs_the_demo_extras_only(tmp_path):
    assert installed_extras("serve", tmp_path / "venv") == ["demo"]
    assert installed_extras("plan", tmp_path / "venv") == ["demo"]


def test_make_test_installs_the_test_extras(tmp_path):
    assert installed_extras("test", tmp_path / "venv") == ["test"]


def test_the_demo_extras_hold_no_test_tool_and_the_test_extras_hold_the_demo():
    groups = extras()
    assert not [r for r in groups["demo"] for tool in TEST_TOOLS if r.lower().startswith(tool)]
    assert "vram-gateway[demo]" in groups["test"]
    assert all(any(r.startswith(tool) for r in groups["test"]) for tool in TEST_TOOLS)
