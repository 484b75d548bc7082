"""A gateway without keys listens on loopback only, unless told otherwise (issue 21, item 8):
the rule (gateway.http.network.exposure_problem) and a reload that would drop the keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.loading import parse_config
from gateway.http.network import exposure_problem, is_loopback
from testkit.ggufmaker import write_tiny_llama
from tests.unit.http.apps import AUTH, KEY, client_for, write_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("exposure") / "tiny.gguf", n_layers=2, n_embd=64, ctx=4096)


def config(gateway: str):
    return parse_config(f'[gateway]\n{gateway}\n\n[[models]]\nname = "m"\npath = "/m.gguf"\n', environ={})


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.5", "::1", "localhost", "[::1]"])
def test_loopback_needs_no_keys(host):
    assert is_loopback(host) and exposure_problem(config(f'host = "{host}"'), keys_required=False) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "gpu1.lan"])
def test_beyond_loopback_without_keys_is_refused_unless_allowed(host):
    problem = exposure_problem(config(f'host = "{host}"'), keys_required=False)
    assert problem is not None and problem.startswith(f"gateway.host: {host!r} (listens beyond loopback")
    assert exposure_problem(config(f'host = "{host}"'), keys_required=True) is None
    assert exposure_problem(config(f'host = "{host}"\nallow_unauthenticated_network = true'), keys_required=False) is None


def test_a_reload_that_drops_every_key_of_a_network_gateway_is_refused(tmp_path, tiny):
    cfg = write_config(tmp_path / "m.toml", tiny, [{"name": "eager"}], gpus=["8GiB"], host="0.0.0.0", api_keys=[KEY])
    with client_for(cfg) as client:
        write_config(cfg, tiny, [{"name": "eager"}, {"name": "added"}], gpus=["8GiB"], host="0.0.0.0")
        refused = client.post("/admin/reload", headers=AUTH)
        assert refused.status_code == 422, refused.text
        assert refused.json()["problems"][0].startswith("gateway.host: '0.0.0.0' (listens beyond loopback")
        assert [m["id"] for m in client.get("/v1/models", headers=AUTH).json()["data"]] == ["eager"]


def test_the_reload_check_sees_the_address_bound_at_start_after_a_reload_that_named_another(tmp_path, tiny):
    """A reload does not move the listening socket: a file that says 127.0.0.1 leaves the gateway
    on 0.0.0.0, so a later reload that drops every key must still be refused."""
    cfg = write_config(tmp_path / "m.toml", tiny, [{"name": "eager"}], gpus=["8GiB"], host="0.0.0.0", api_keys=[KEY])
    with client_for(cfg) as client:
        write_config(cfg, tiny, [{"name": "eager"}], gpus=["8GiB"], host="127.0.0.1", api_keys=[KEY])
        moved = client.post("/admin/reload", headers=AUTH)
        assert moved.status_code == 200, moved.text
        write_config(cfg, tiny, [{"name": "eager"}, {"name": "added"}], gpus=["8GiB"], host="127.0.0.1")
        refused = client.post("/admin/reload", headers=AUTH)
        assert refused.status_code == 422, refused.text
        assert refused.json()["problems"][0].startswith("gateway.host: '0.0.0.0' (listens beyond loopback")
        assert client.get("/v1/models").status_code == 401  # the keys in force stay
