"""The HTTP app in-process on fake workers: what a client and a scraper see, in milliseconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w
from litestar.testing import TestClient

from gateway.config.loading import load_config
from gateway.http.app import create_app
from gateway.http.auth import RELOAD_TOKEN_HEADER
from gateway.runtime.fake import FakeScript, FakeTransport
from testkit.ggufmaker import write_tiny_llama
from testkit.serving import wait_until
from tests.unit.http.apps import BASE_URL

TOKEN = "reload-token"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("app") / "tiny.gguf", n_layers=2, n_embd=64, ctx=4096)


def write_config(path: Path, tiny: Path, models: list[dict], *, gpus: list[str], **gateway) -> Path:
    doc = {
        "gateway": {"shutdown_grace_s": 0.5, **gateway},
        "planner": {"gpus": gpus, "reserve_mib": 0, "min_budget_mib": 0},
        "models": [{"path": str(tiny), "n_ctx": 256, **m} for m in models],
    }
    path.write_text(tomli_w.dumps(doc))
    return path


def client_for(cfg: Path, transport: FakeTransport | None = None) -> TestClient:
    app = create_app(load_config(cfg, environ={}), config_path=cfg, reload_token=TOKEN, transport=transport or FakeTransport())
    return TestClient(app, base_url=BASE_URL)


def reload(client: TestClient):
    return client.post("/admin/reload", headers={RELOAD_TOKEN_HEADER: TOKEN})


def metric_lines(client: TestClient, name: str) -> list[str]:
    return [line for line in client.get("/metrics").text.splitlines() if line.startswith(name)]


def test_health_is_ok_when_every_model_loads_on_demand_and_none_is_loaded(tmp_path, tiny):
    cfg = write_config(tmp_path / "m.toml", tiny, [{"name": "od", "load": "on_demand"}], gpus=["8GiB"])
    with client_for(cfg) as client:
        response = client.get("/health")
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "ok", "models": {"od": {"state": "stopped", "reason": None}}}


def test_health_is_unavailable_when_every_model_failed(tmp_path, tiny):
    cfg = write_config(tmp_path / "m.toml", tiny, [{"name": "m"}], gpus=["8GiB"])
    with client_for(cfg, FakeTransport(FakeScript(fail_load="out of memory"))) as client:
        response = client.get("/health")
        assert response.status_code == 503
        assert response.json()["models"]["m"] == {"state": "failed", "reason": "out of memory"}


def test_a_non_streamed_request_records_time_to_first_token_and_decode_speed(tmp_path, tiny):
    cfg = write_config(tmp_path / "m.toml", tiny, [{"name": "m"}], gpus=["8GiB"])
    with client_for(cfg, FakeTransport(FakeScript(tokens=5, token_s=0.01))) as client:
        response = client.post("/v1/completions", json={"model": "m", "prompt": "a"})
        assert response.status_code == 200, response.text
        ttft = [l for l in metric_lines(client, "vram_gateway_time_to_first_token_seconds_count") if 'model="m"' in l]
        speed = [l for l in metric_lines(client, "vram_gateway_generation_tokens_per_second_count") if 'model="m"' in l]
        assert ttft and float(ttft[0].split()[-1]) == 1.0, ttft
        assert speed and float(speed[0].split()[-1]) == 1.0, speed


def test_after_a_reload_metrics_read_the_new_gpus_and_new_models_have_zeroed_counters(tmp_path, tiny):
    cfg = write_config(tmp_path / "m.toml", tiny, [{"name": "a"}], gpus=["8GiB"])
    with client_for(cfg) as client:
        assert len(metric_lines(client, "vram_gateway_gpu_memory_total_bytes{")) == 1
        write_config(cfg, tiny, [{"name": "a"}, {"name": "b"}], gpus=["8GiB", "8GiB"])
        assert reload(client).status_code == 200
        assert len(metric_lines(client, "vram_gateway_gpu_memory_total_bytes{")) == 2
        zeroed = [l for l in metric_lines(client, "vram_gateway_requests_rejected_total{") if 'model="b"' in l]
        assert zeroed and all(l.endswith(" 0.0") for l in zeroed), zeroed


def test_the_openapi_document_follows_api_keys_changed_by_a_reload(tmp_path, tiny):
    cfg = write_config(tmp_path / "m.toml", tiny, [{"name": "a"}], gpus=["8GiB"])
    with client_for(cfg) as client:
        before = client.get("/openapi.json").json()
        assert "security" not in before["paths"]["/v1/completions"]["post"]
        write_config(cfg, tiny, [{"name": "a"}], gpus=["8GiB"], api_keys=["k1"])
        assert reload(client).status_code == 200
        after = client.get("/openapi.json").json()
        assert after["paths"]["/v1/completions"]["post"]["security"] == [{"bearer": []}]
        assert client.get("/v1/models").status_code == 401
        assert client.get("/v1/models", headers={"Authorization": "Bearer k1"}).status_code == 200


def test_a_second_reload_while_one_runs_gets_409(tmp_path, tiny):
    cfg = write_config(tmp_path / "m.toml", tiny, [{"name": "a"}], gpus=["8GiB"])
    import threading

    b_loading = threading.Event()  # the first reload cannot end until the second one was refused
    transport = FakeTransport(lambda spec: FakeScript(hold_load=b_loading) if spec.name == "b" else FakeScript())
    with client_for(cfg, transport) as client:
        write_config(cfg, tiny, [{"name": "a"}, {"name": "b"}], gpus=["8GiB"])
        first: list = []
        t = threading.Thread(target=lambda: first.append(reload(client)))
        t.start()
        try:
            wait_until(lambda: transport.alive("b"), what="the first reload loading b")
            assert reload(client).status_code == 409
        finally:
            b_loading.set()
            t.join()
        assert first[0].status_code == 200
