"""A web page of another origin calling the OpenAI API from a browser ([gateway] allowed_origins;
gateway/http/cors.py and gateway/http/network.py). In-process, fake workers.

What a browser sends is imitated here: a preflight (OPTIONS with Access-Control-Request-*), then
the request with its Origin and Sec-Fetch-Site; tests/system/test_cors_browser.py does it with a
real browser.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import tomli_w
from litestar.testing import TestClient

from gateway.config.keys import key_digest
from gateway.config.loading import load_config
from gateway.config.schema import Config, GatewaySettings, ModelConfig
from gateway.errors import ConfigError
from gateway.router.app import create_router_app
from testkit.ggufmaker import write_tiny_llama
from tests.unit.http.apps import AUTH, BASE_URL, KEY, client_for, write_config
from tests.unit.router.nodes import completion, models_listing

APP = "http://localhost:3000"
EVIL = "http://evil.example"
CHAT = {"model": "eager", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
# What the openai JavaScript client asks to send (besides the safelisted ones).
CLIENT_HEADERS = "authorization,content-type,x-stainless-lang,x-stainless-retry-count,x-stainless-timeout,openai-organization"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("cors") / "tiny.gguf", n_layers=2, n_embd=64, ctx=4096)


def cfg_with(tmp_path: Path, tiny: Path, **gateway) -> Path:
    models = [{"name": "eager"}, {"name": "od", "load": "on_demand"}]
    return write_config(tmp_path / "models.toml", tiny, models, gpus=["8GiB"], **gateway)


def from_page(origin: str) -> dict[str, str]:
    """What a browser adds to a page's fetch to another origin."""
    return {"Origin": origin, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"}


def preflight(client: TestClient, origin: str, path: str = "/v1/chat/completions", method: str = "POST") -> httpx.Response:
    headers = {"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": CLIENT_HEADERS}
    return client.options(path, headers=headers)


def assert_cors_for(answer: httpx.Response, origin: str) -> None:
    assert answer.headers.get("access-control-allow-origin") == origin, answer.headers
    assert "Origin" in answer.headers.get("vary", "")
    exposed = {h.strip() for h in answer.headers["access-control-expose-headers"].split(",")}
    assert {"x-request-id", "retry-after", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-requests"} <= exposed


def test_an_allowed_origin_gets_its_preflight_answered_with_the_openai_clients_headers(tmp_path, tiny):
    with client_for(cfg_with(tmp_path, tiny, api_keys=[KEY], allowed_origins=[APP])) as client:
        answer = preflight(client, APP)
        assert answer.status_code == 204, answer.text
        assert answer.headers["access-control-allow-origin"] == APP
        assert answer.headers["access-control-allow-methods"] == "GET, POST"
        assert answer.headers["access-control-allow-headers"].split(", ") == CLIENT_HEADERS.split(",")
        assert "Origin" in answer.headers["vary"] and int(answer.headers["access-control-max-age"]) > 0
        assert "access-control-allow-credentials" not in answer.headers
        # A header the clients do not send is left out, so the browser refuses to send it.
        odd = client.options("/v1/models", headers={"Origin": APP, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "x-odd"})
        assert "access-control-allow-headers" not in odd.headers
        assert "access-control-allow-private-network" not in answer.headers
        # A public site's page calling a gateway on this machine (Chrome's Private Network Access).
        private = client.options("/v1/models", headers={"Origin": APP, "Access-Control-Request-Method": "GET", "Access-Control-Request-Private-Network": "true"})
        assert private.status_code == 204 and private.headers["access-control-allow-private-network"] == "true"


def test_an_allowed_origins_answers_carry_the_cors_headers_whole_streamed_and_errors(tmp_path, tiny):
    with client_for(cfg_with(tmp_path, tiny, api_keys=[KEY], allowed_origins=[APP])) as client:
        page = {**from_page(APP), **AUTH}
        whole = client.post("/v1/chat/completions", headers=page, json=CHAT)
        assert whole.status_code == 200, whole.text
        assert_cors_for(whole, APP)
        streamed = client.post("/v1/chat/completions", headers=page, json={**CHAT, "stream": True})
        assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
        assert "data: [DONE]" in streamed.text
        assert_cors_for(streamed, APP)
        listed = client.get("/v1/models", headers=page)
        assert listed.status_code == 200
        assert_cors_for(listed, APP)
        no_key = client.post("/v1/chat/completions", headers=from_page(APP), json=CHAT)
        assert no_key.status_code == 401  # the page still needs a key
        assert_cors_for(no_key, APP)  # and can read why
        unknown = client.post("/v1/chat/completions", headers=page, json={**CHAT, "model": "nope"})
        assert unknown.status_code == 404
        assert_cors_for(unknown, APP)
        text = client.post("/v1/chat/completions", headers={**page, "Content-Type": "text/plain"}, content=json.dumps(CHAT))
        assert text.status_code == 415  # the JSON-only rule stays
        assert_cors_for(text, APP)


def test_a_foreign_origin_stays_refused_and_gets_no_cors_headers(tmp_path, tiny):
    with client_for(cfg_with(tmp_path, tiny, api_keys=[KEY], allowed_origins=[APP])) as client:
        answer = preflight(client, EVIL)
        assert "access-control-allow-origin" not in answer.headers
        refused = client.post("/v1/chat/completions", headers={**from_page(EVIL), **AUTH}, json=CHAT)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "cross_site_request"
        assert "access-control-allow-origin" not in refused.headers
        # An origin differing only in port or scheme is another origin.
        for other in ("http://localhost:3001", "https://localhost:3000"):
            assert client.post("/v1/chat/completions", headers={**from_page(other), **AUTH}, json=CHAT).status_code == 403


def test_admin_and_the_web_pages_actions_are_never_opened_to_another_origin(tmp_path, tiny):
    with client_for(cfg_with(tmp_path, tiny, api_keys=[KEY], allowed_origins=[APP, "*"])) as client:
        for path in ("/admin/reload", "/admin/models/od/load", "/ui/state", "/health", "/metrics"):
            answer = preflight(client, APP, path)
            assert "access-control-allow-origin" not in answer.headers, path
        for path in ("/admin/reload", "/admin/models/od/load"):
            refused = client.post(path, headers={**from_page(APP), **AUTH})
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "cross_site_request", path
            assert "access-control-allow-origin" not in refused.headers
        state = client.get("/ui/state", headers={**from_page(APP), **AUTH})
        assert "access-control-allow-origin" not in state.headers


def test_without_the_setting_a_page_of_another_origin_cannot_call_the_api(tmp_path, tiny):
    with client_for(cfg_with(tmp_path, tiny, api_keys=[KEY])) as client:
        assert "access-control-allow-origin" not in preflight(client, APP).headers
        refused = client.post("/v1/chat/completions", headers={**from_page(APP), **AUTH}, json=CHAT)
        assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers


def test_any_origin_with_keys_lets_every_page_call_with_a_key(tmp_path, tiny):
    with client_for(cfg_with(tmp_path, tiny, api_keys=[KEY], allowed_origins=["*"])) as client:
        assert preflight(client, EVIL).headers["access-control-allow-origin"] == EVIL
        answer = client.post("/v1/chat/completions", headers={**from_page(EVIL), **AUTH}, json=CHAT)
        assert answer.status_code == 200, answer.text
        assert_cors_for(answer, EVIL)
        assert client.post("/v1/chat/completions", headers=from_page(EVIL), json=CHAT).status_code == 401


def test_a_reload_changes_the_allowed_origins(tmp_path, tiny):
    cfg = cfg_with(tmp_path, tiny, api_keys=[KEY])
    with client_for(cfg) as client:
        page = {**from_page(APP), **AUTH}
        assert client.post("/v1/chat/completions", headers=page, json=CHAT).status_code == 403
        cfg_with(tmp_path, tiny, api_keys=[KEY], allowed_origins=[APP])
        reloaded = client.post("/admin/reload", headers=AUTH)
        assert reloaded.status_code == 200 and reloaded.json()["not_applied"] == []
        assert preflight(client, APP).headers["access-control-allow-origin"] == APP
        allowed = client.post("/v1/chat/completions", headers=page, json=CHAT)
        assert allowed.status_code == 200
        assert_cors_for(allowed, APP)
        cfg_with(tmp_path, tiny, api_keys=[KEY])
        assert client.post("/admin/reload", headers=AUTH).status_code == 200
        assert "access-control-allow-origin" not in preflight(client, APP).headers
        assert client.post("/v1/chat/completions", headers=page, json=CHAT).status_code == 403


def test_a_gateway_without_keys_serves_a_listed_origin(tmp_path, tiny):
    with client_for(cfg_with(tmp_path, tiny, allowed_origins=[APP])) as client:
        answer = client.post("/v1/chat/completions", headers=from_page(APP), json=CHAT)
        assert answer.status_code == 200, answer.text
        assert_cors_for(answer, APP)


def test_any_origin_without_keys_is_refused_with_the_dotted_path(tmp_path, tiny):
    cfg = cfg_with(tmp_path, tiny, allowed_origins=[APP, "*"])
    with pytest.raises(ConfigError) as caught:
        load_config(cfg, environ={})
    (line,) = caught.value.problems
    assert line.startswith("gateway.allowed_origins[1]: '*' (") and "api_keys" in line
    # The same from the environment; with keys it is allowed.
    with pytest.raises(ConfigError):
        load_config(cfg_with(tmp_path, tiny), environ={"GATEWAY_ALLOWED_ORIGINS": "*"})
    cfg = cfg_with(tmp_path, tiny, allowed_origins=[APP, "*"])
    assert load_config(cfg, environ={"GATEWAY_API_KEYS": KEY}).gateway.allowed_origins == [APP, "*"]


@pytest.mark.parametrize("bad", ["localhost:3000", "http://localhost:3000/", "http://localhost:3000/app", "ftp://x.lan", "null", "http://*.lan"])
def test_allowed_origins_refuses_what_is_not_an_origin(tmp_path, tiny, bad):
    with pytest.raises(ConfigError) as caught:
        load_config(cfg_with(tmp_path, tiny, allowed_origins=[APP, bad]), environ={})
    (line,) = caught.value.problems
    assert line.startswith("gateway.allowed_origins[1]: ") and "scheme://host[:port]" in line


def test_the_environment_sets_the_allowed_origins(tmp_path, tiny):
    env = {"GATEWAY_ALLOWED_ORIGINS": "http://localhost:3000,https://chat.lan:8443"}
    assert load_config(cfg_with(tmp_path, tiny), environ=env).gateway.allowed_origins == [APP, "https://chat.lan:8443"]


def test_the_router_answers_an_allowed_origin_and_follows_a_reload(tmp_path):
    def node(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return models_listing("a")
        return completion("a")

    path = tmp_path / "cluster.toml"

    def write(**gateway) -> None:
        path.write_text(tomli_w.dumps({
            "gateway": {"internal_api_key": "internal-key", "api_keys": [KEY], **gateway},
            "router": {"poll_interval_s": 60},
            "nodes": [{"name": "n", "gpus": ["24GiB"], "url": "http://node-n:8080"}],
            "models": [{"name": "a", "path": "/m/a.gguf"}],
        }))

    write(allowed_origins=[APP])
    app = create_router_app(load_config(path, environ={}), transport=httpx.MockTransport(node), config_path=path)
    with TestClient(app, base_url=BASE_URL) as client:
        assert preflight(client, APP, "/v1/completions").headers["access-control-allow-origin"] == APP
        answer = client.post("/v1/completions", headers={**from_page(APP), **AUTH}, json={"model": "a", "prompt": "x"})
        assert answer.status_code == 200, answer.text
        assert_cors_for(answer, APP)
        write()
        assert client.post("/admin/reload", headers=AUTH).status_code == 200
        assert "access-control-allow-origin" not in preflight(client, APP, "/v1/completions").headers


def test_a_config_built_in_code_refuses_any_origin_without_keys():
    model = ModelConfig(name="a", path="/m/a.gguf")
    with pytest.raises(ValueError, match=r"gateway\.allowed_origins\[0\]: '\*' \(any web page"):
        Config(gateway=GatewaySettings(allowed_origins=["*"]), models=[model])
    assert Config(gateway=GatewaySettings(allowed_origins=["*"], api_keys=[KEY]), models=[model]).gateway.allowed_origins == ["*"]


def test_any_origin_with_keys_only_in_a_keys_file_needs_a_key_there(tmp_path, tiny):
    cfg = cfg_with(tmp_path, tiny, keys_file="keys.toml", allowed_origins=["*"])
    (tmp_path / "keys.toml").write_text(tomli_w.dumps({"keys": [{"name": "k", "key_sha256": key_digest(KEY)}]}))
    assert load_config(cfg, environ={}).gateway.allowed_origins == ["*"]
    (tmp_path / "keys.toml").write_text("")
    with pytest.raises(ConfigError) as caught:
        load_config(cfg, environ={})
    assert any("gateway.allowed_origins[0]: '*' (any web page" in p for p in caught.value.problems)


def test_an_unknown_api_path_answers_a_listed_origin_readably(tmp_path, tiny):
    with client_for(cfg_with(tmp_path, tiny, api_keys=[KEY], allowed_origins=[APP])) as client:
        missing = client.get("/v1/nothing-here", headers={**from_page(APP), **AUTH})
        assert missing.status_code == 404
        assert_cors_for(missing, APP)
