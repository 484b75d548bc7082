"""What a scoped key, or a caller without a key, learns about the models (issue 21, item 10)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.keys import key_digest
from gateway.runtime.fake import FakeScript, FakeTransport
from testkit.ggufmaker import write_tiny_llama
from tests.unit.http.apps import client_for, write_config

EMB_KEY = "sk-emb-only"
ADMIN = "sk-admin"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("scoped") / "tiny.gguf", n_layers=2, n_embd=64, ctx=4096)


@pytest.fixture
def cfg(tmp_path, tiny) -> Path:
    path = write_config(
        tmp_path / "models.toml", tiny,
        [{"name": "gemma"}, {"name": "emb", "embedding": True}, {"name": "od", "load": "on_demand"}],
        gpus=["8GiB"], api_keys=[ADMIN],
    )
    path.write_text(path.read_text() + f'\n[[keys]]\nname = "emb-only"\nkey_sha256 = "{key_digest(EMB_KEY)}"\nmodels = ["emb"]\n')
    return path


def test_the_state_shows_a_scoped_key_its_own_models_only(cfg):
    with client_for(cfg) as client:
        state = client.get("/ui/state", headers={"Authorization": f"Bearer {EMB_KEY}"}).json()
        assert [m["name"] for m in state["models"]] == ["emb"]
        assert {b["model"] for b in state["map"]["blocks"]} <= {"emb"}
        everything = client.get("/ui/state", headers={"Authorization": f"Bearer {ADMIN}"}).json()
        assert [m["name"] for m in everything["models"]] == ["gemma", "emb", "od"]


def test_a_request_without_model_names_the_keys_models_only(cfg):
    with client_for(cfg) as client:
        answer = client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {EMB_KEY}"},
        )
        assert answer.status_code == 400
        message = answer.json()["error"]["message"]
        assert message == "'model' is required: key 'emb-only' may use emb"


def test_health_without_a_key_carries_no_failure_reason(cfg, tiny):
    transport = FakeTransport(lambda spec: FakeScript(fail_load=f"cannot open {tiny}" if spec.name == "gemma" else None))
    with client_for(cfg, transport) as client:
        open_body = client.get("/health").json()
        assert open_body["models"]["gemma"] == {"state": "failed", "reason": None}
        assert str(tiny) not in client.get("/health").text
        keyed = client.get("/health", headers={"Authorization": f"Bearer {ADMIN}"}).json()
        assert str(tiny) in keyed["models"]["gemma"]["reason"]
