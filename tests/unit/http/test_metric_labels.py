"""The endpoint label is the route, never the raw path (issue 21, item 5): 40,000 requests to
random paths grew /metrics to 25 MB and the app by 40 MiB, one series per path."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.observability.telemetry import UNMATCHED_ENDPOINT
from testkit.ggufmaker import write_tiny_llama
from tests.unit.http.apps import AUTH, KEY, client_for, write_config

ROUNDS = 50


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("labels") / "tiny.gguf", n_layers=2, n_embd=64, ctx=4096)


def endpoints(text: str) -> set[str]:
    return {
        sample.labels["endpoint"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "endpoint" in sample.labels
    }


def test_random_paths_add_no_series(tmp_path, tiny):
    cfg = write_config(tmp_path / "m.toml", tiny, [{"name": "m"}, {"name": "od", "load": "on_demand"}], gpus=["8GiB"], api_keys=[KEY])
    with client_for(cfg) as client:
        for _ in range(ROUNDS):
            noise = uuid.uuid4().hex
            assert client.get(f"/{noise}").status_code == 404  # no route: unauthenticated
            assert client.get(f"/v1/models/{noise}", headers=AUTH).status_code == 404
            assert client.get(f"/v1/models/{noise}").status_code == 401
            assert client.post(f"/admin/models/{noise}/load", headers=AUTH).status_code == 404
            assert client.delete(f"/v1/{noise}").status_code in (404, 405)
        labels = endpoints(client.get("/metrics").text)
        assert labels == {UNMATCHED_ENDPOINT, "/v1/models/{model_id}", "/admin/models/{target}"}, labels
