"""What a web page in a local user's browser can make a gateway do (gateway/http/network.py):
cross-site requests, DNS rebinding and the web page's own admin token. In-process, fake workers.

A gateway without keys trusts loopback clients with its admin API, and a browser on the same
machine is one: each test sends what such a page could send, from a loopback address.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from litestar.testing import TestClient

from gateway.config.loading import load_config
from gateway.config.schema import GatewaySettings
from gateway.errors import ConfigError
from gateway.http.app import create_app
from gateway.http.network import UI_TOKEN_HEADER, host_name, served_hosts
from gateway.runtime.fake import FakeTransport
from testkit.ggufmaker import write_tiny_llama
from tests.unit.http.apps import AUTH, BASE_URL, KEY, write_config

EVIL = "http://evil.example"
CHAT = {"model": "eager", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("xsite") / "tiny.gguf", n_layers=2, n_embd=64, ctx=4096)


def loopback_client(cfg: Path) -> TestClient:
    """A client whose requests come from 127.0.0.1, as a local browser's do."""
    app = create_app(load_config(cfg, environ={}), config_path=cfg, transport=FakeTransport())

    async def from_loopback(scope, receive, send):
        if scope["type"] == "http":
            scope = {**scope, "client": ("127.0.0.1", 50123)}
        await app(scope, receive, send)

    return TestClient(from_loopback, base_url=BASE_URL)  # type: ignore[arg-type]


@pytest.fixture
def open_cfg(tmp_path, tiny) -> Path:
    """The demo's default: no keys, on loopback."""
    models = [{"name": "eager"}, {"name": "od", "load": "on_demand"}]
    return write_config(tmp_path / "models.toml", tiny, models, gpus=["8GiB"])


def state_of(client: TestClient, name: str) -> str:
    return {m["id"]: m["state"] for m in client.get("/v1/models").json()["data"]}[name]


def test_a_page_of_another_site_cannot_load_a_model_on_a_gateway_without_keys(open_cfg):
    with loopback_client(open_cfg) as client:
        simple = client.post("/admin/models/od/load", headers={"Origin": EVIL, "Content-Type": "text/plain"}, content=b"x")
        assert simple.status_code == 403 and simple.json()["error"]["code"] == "cross_site_request"
        no_origin = client.post("/admin/models/od/load", headers={"Sec-Fetch-Site": "cross-site"})
        assert no_origin.status_code == 403
        null_origin = client.post("/admin/models/od/load", headers={"Origin": "null"})
        assert null_origin.status_code == 403
        assert state_of(client, "od") == "stopped"
        # The same loopback client without a browser's marks may (curl, `gateway reload`).
        assert client.post("/admin/models/od/load").status_code == 200


def test_a_form_posted_to_reload_is_refused(open_cfg):
    with loopback_client(open_cfg) as client:
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        assert client.post("/admin/reload", headers={**form, "Origin": EVIL}, content=b"a=1").status_code == 403
        refused = client.post("/admin/reload", headers=form, content=b"a=1")
        assert refused.status_code == 415 and refused.json()["error"]["code"] == "unsupported_media_type"
        assert client.post("/admin/reload").status_code == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None])
def test_a_json_body_is_accepted_only_as_application_json(open_cfg, content_type):
    import json

    with loopback_client(open_cfg) as client:
        headers = {"Content-Type": content_type} if content_type else {}
        refused = client.post("/v1/chat/completions", headers=headers, content=json.dumps(CHAT).encode())
        if content_type is None:  # httpx sends no type: still not JSON
            assert refused.request.headers.get("content-type") is None
        assert refused.status_code == 415, refused.text
        ok = client.post("/v1/chat/completions", headers={"Content-Type": "application/json; charset=utf-8"}, content=json.dumps(CHAT).encode())
        assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.1.evil.example", "localhost.evil.example:80"])
def test_a_rebound_name_cannot_read_the_state_or_call_the_api(open_cfg, host):
    with loopback_client(open_cfg) as client:
        for method, path in (("GET", "/ui/state"), ("GET", "/v1/models"), ("GET", "/health"), ("POST", "/admin/reload")):
            answer = client.request(method, path, headers={"Host": host})
            assert answer.status_code == 400, (method, path, answer.text)
            assert "allowed_hosts" in answer.json()["error"]["message"]


@pytest.mark.parametrize("host", ["127.0.0.1:8080", "localhost", "LOCALHOST:80", "[::1]:8080", "::1"])
def test_the_loopback_names_are_served(open_cfg, host):
    with loopback_client(open_cfg) as client:
        assert client.get("/ui/state", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("host", ["10.0.0.7:8080", "192.168.1.20", "[fd00::7]:8080"])
def test_an_ip_address_is_served_as_the_host_there_is_no_name_to_rebind(open_cfg, host):
    # A scraper or probe calling a pod by its IP (Prometheus' pod annotations) is answered.
    with loopback_client(open_cfg) as client:
        assert client.get("/health", headers={"Host": host}).status_code == 200


def test_allowed_hosts_names_the_hosts_served(tmp_path, tiny):
    cfg = write_config(tmp_path / "m.toml", tiny, [{"name": "eager"}], gpus=["8GiB"], allowed_hosts=["gpu1.lan", "127.0.0.1"])
    with loopback_client(cfg) as client:
        assert client.get("/ui/state", headers={"Host": "gpu1.lan:8080"}).status_code == 200
        assert client.get("/ui/state", headers={"Host": "localhost"}).status_code == 400
    cfg = write_config(tmp_path / "m.toml", tiny, [{"name": "eager"}], gpus=["8GiB"], allowed_hosts=["*"])
    with loopback_client(cfg) as client:
        assert client.get("/ui/state", headers={"Host": "anything.example"}).status_code == 200


def test_the_pages_admin_actions_need_the_token_it_reads_from_the_state(open_cfg):
    with loopback_client(open_cfg) as client:
        same_site = {"Origin": BASE_URL, "Sec-Fetch-Site": "same-origin"}
        refused = client.post("/admin/models/od/load", headers=same_site)
        assert refused.status_code == 403 and UI_TOKEN_HEADER in refused.json()["error"]["message"]
        assert client.post("/admin/models/od/load", headers={**same_site, UI_TOKEN_HEADER: "guess"}).status_code == 403
        state = client.get("/ui/state").json()
        assert state["admin"] is True and state["admin_token"]
        loaded = client.post("/admin/models/od/load", headers={**same_site, UI_TOKEN_HEADER: state["admin_token"]})
        assert loaded.status_code == 200, loaded.text


def test_a_caller_who_may_not_administer_gets_no_token(tmp_path, tiny):
    cfg = write_config(tmp_path / "m.toml", tiny, [{"name": "eager"}], gpus=["8GiB"])
    app = create_app(load_config(cfg, environ={}), config_path=cfg, transport=FakeTransport())
    with TestClient(app, base_url=BASE_URL) as client:  # "testclient" is not a loopback address
        state = client.get("/ui/state").json()
        assert state["admin"] is False and state["admin_token"] is None


def test_the_page_sends_the_token_with_its_admin_actions():
    script = (Path(__file__).resolve().parents[3] / "gateway" / "http" / "ui" / "app.js").read_text()
    assert f'headers["{UI_TOKEN_HEADER}"] = adminToken' in script and "state.admin_token" in script


def test_with_keys_a_foreign_origin_is_refused_even_with_the_admin_key(tmp_path, tiny):
    cfg = write_config(tmp_path / "m.toml", tiny, [{"name": "od", "load": "on_demand"}], gpus=["8GiB"], api_keys=[KEY])
    app = create_app(load_config(cfg, environ={}), config_path=cfg, transport=FakeTransport())
    with TestClient(app, base_url=BASE_URL) as client:
        assert client.post("/admin/models/od/load", headers={**AUTH, "Origin": EVIL}).status_code == 403
        assert client.post("/admin/models/od/load", headers=AUTH).status_code == 200


def test_the_hosts_served_by_default_follow_the_listen_address_and_the_keys():
    loopback = {"localhost", "127.0.0.1", "::1"}
    assert served_hosts(GatewaySettings(), keys_required=False) == loopback
    assert served_hosts(GatewaySettings(host="10.0.0.5"), keys_required=True) == loopback | {"10.0.0.5"}
    assert served_hosts(GatewaySettings(host="0.0.0.0"), keys_required=False) == loopback
    assert served_hosts(GatewaySettings(host="0.0.0.0"), keys_required=True) is None  # keys are the trust
    assert served_hosts(GatewaySettings(host="::", allowed_hosts=["a.lan"]), keys_required=True) == {"a.lan"}
    assert [host_name(h) for h in ("A.lan:80", "[::1]:8080", "::1", "x.lan.", "")] == ["a.lan", "::1", "::1", "x.lan", ""]


@pytest.mark.parametrize("bad", ["http://gpu1.lan", "gpu1.lan:8080", "a1.b:80", "a b", "*.lan"])
def test_allowed_hosts_refuses_what_is_not_a_host_name(tmp_path, tiny, bad):
    cfg = write_config(tmp_path / "m.toml", tiny, [{"name": "eager"}], gpus=["8GiB"], allowed_hosts=["ok.lan", bad])
    with pytest.raises(ConfigError) as caught:
        load_config(cfg, environ={})
    (line,) = caught.value.problems
    assert line.startswith("gateway.allowed_hosts[1]: ") and "without scheme or port" in line
