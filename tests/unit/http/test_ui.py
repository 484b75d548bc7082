"""/ui and /ui/state in-process on fake workers: the page's files, its headers, the state it polls."""

from __future__ import annotations

import fnmatch
import re
import threading
import tomllib
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import pytest

from gateway.http.routes.ui import STATIC_FILES
from gateway.runtime.fake import FakeScript, FakeTransport
from testkit.ggufmaker import write_tiny_llama
from testkit.serving import wait_until
from tests.unit.http.apps import AUTH, KEY, client_for, write_config

ROOT = Path(__file__).resolve().parents[3]
UI_DIR = ROOT / "gateway" / "http" / "ui"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("ui") / "tiny.gguf", n_layers=2, n_embd=64, ctx=4096)


@pytest.fixture
def cfg(tmp_path, tiny) -> Path:
    models = [{"name": "eager", "aliases": ["e"]}, {"name": "od", "load": "on_demand", "n_ctx": 512}]
    return write_config(tmp_path / "models.toml", tiny, models, gpus=["4GiB"], planner={"reserve_mib": 256}, api_keys=[KEY])


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_the_page_has_a_strict_policy_no_inline_code_and_no_secret(cfg):
    with client_for(cfg) as client:
        page = client.get("/ui")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = {d.split()[0]: d.split()[1:] for d in page.headers["content-security-policy"].split("; ")}
        assert csp["default-src"] == ["'none'"] and csp["script-src"] == ["'self'"] and csp["style-src"] == ["'self'"]
        assert csp["frame-ancestors"] == ["'none'"] and page.headers["x-content-type-options"] == "nosniff"
        assert KEY not in page.text
        parser = _Tags()
        parser.feed(page.text)
        assert not [t for t, a in parser.tags if t == "style" or "style" in a or any(k.startswith("on") for k in a)]
        scripts = [a for t, a in parser.tags if t == "script"]
        assert scripts and all(a.get("src", "").startswith("/ui/static/") for a in scripts)
        referenced = [a.get("src") or a.get("href") for t, a in parser.tags if t in ("script", "link")]
        for ref in referenced:
            served = client.get(ref)
            assert served.status_code == 200, ref
            assert served.headers["content-security-policy"] == page.headers["content-security-policy"]


def test_only_the_pages_own_files_are_served(cfg):
    with client_for(cfg) as client:
        assert client.get("/ui/static/app.js").headers["content-type"].startswith("text/javascript")
        assert client.get("/ui/static/app.css").headers["content-type"].startswith("text/css")
        for name in ("index.html", "..%2Fapp.py", "nope.js", "%2e%2e%2froutes%2fui.py"):
            assert client.get(f"/ui/static/{name}").status_code == 404, name


def test_the_script_never_parses_data_as_html():
    script = (UI_DIR / "app.js").read_text()
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function", script)
    assert "setAttribute(\"style\"" not in script  # the policy forbids inline styles; widths go through the CSSOM


def test_every_file_of_the_page_is_in_the_wheel():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["gateway.http"]
    files = sorted(p.name for p in UI_DIR.iterdir() if p.is_file())
    assert set(STATIC_FILES) | {"index.html"} == set(files)
    for name in files:
        assert any(fnmatch.fnmatch(f"ui/{name}", pattern) for pattern in patterns), name
        assert resources.files("gateway.http").joinpath("ui", name).is_file()


def test_the_state_needs_a_key_where_v1_models_does(cfg):
    with client_for(cfg) as client:
        assert client.get("/ui/state").status_code == 401
        assert client.get("/ui/state", headers=AUTH).status_code == 200


def test_the_state_has_the_map_and_one_row_per_model(cfg):
    with client_for(cfg) as client:
        state = client.get("/ui/state", headers=AUTH).json()
        assert state["status"] == "ok" and state["admin"] is True and state["reloadable"] is True
        assert state["inventory"] == "declared" and state["window_s"] == 60
        (gpu,) = state["map"]["gpus"]
        assert gpu["total_bytes"] == 4 << 30 and gpu["reserve_bytes"] == 256 << 20
        blocks = [b for b in state["map"]["blocks"] if b["gpu"] == 0]
        assert [b["model"] for b in blocks] == ["eager"]  # the on-demand model holds nothing yet
        assert gpu["free_bytes"] == (4 << 30) - blocks[0]["planned_bytes"]
        rows = {m["name"]: m for m in state["models"]}
        assert {k: rows["eager"][k] for k in ("aliases", "state", "load", "gpus", "n_ctx", "running", "max_concurrency", "waiting", "queue_size")} == {
            "aliases": ["e"], "state": "ready", "load": "eager", "gpus": [0], "n_ctx": 256,
            "running": 0, "max_concurrency": 1, "waiting": 0, "queue_size": 16,
        }
        assert rows["od"]["state"] == "stopped" and rows["od"]["placed"] is False and rows["od"]["error"] is None


def test_without_the_admin_key_the_state_says_admin_actions_are_not_allowed(tmp_path, tiny):
    cfg = write_config(tmp_path / "m.toml", tiny, [{"name": "od", "load": "on_demand"}], gpus=["4GiB"])
    with client_for(cfg) as client:
        # No api_keys: the state is open, but admin endpoints answer loopback clients only.
        state = client.get("/ui/state").json()
        assert state["admin"] is False


def test_the_state_shows_load_progress_and_then_the_model_on_the_map(cfg):
    loaded = threading.Event()  # the fake load stays at 50 % until the test has seen it there
    transport = FakeTransport(lambda spec: FakeScript(hold_load=loaded) if spec.name == "od" else FakeScript())
    with client_for(cfg, transport) as client:
        t = threading.Thread(target=lambda: client.post("/admin/models/od/load", headers=AUTH))
        t.start()
        seen = set()

        def progress() -> tuple[str, int]:
            row = next(m for m in client.get("/ui/state", headers=AUTH).json()["models"] if m["name"] == "od")
            seen.add((row["state"], row["progress"]))
            return row["state"], row["progress"]

        try:
            wait_until(lambda: progress() == ("starting", 50), what="the load shown at 50 %")
        finally:
            loaded.set()
        wait_until(lambda: progress()[0] == "ready", what="the model shown ready")
        t.join()
        assert ("starting", 50) in seen and ("ready", 100) in seen, seen
        state = client.get("/ui/state", headers=AUTH).json()
        assert sorted(b["model"] for b in state["map"]["blocks"] if b["gpu"] == 0) == ["eager", "od"]


def test_requests_and_tokens_of_the_last_minute_are_counted_per_model(cfg):
    with client_for(cfg, FakeTransport(FakeScript(tokens=6))) as client:
        for _ in range(3):
            assert client.post("/v1/completions", json={"model": "e", "prompt": "a"}, headers=AUTH).status_code == 200
        rows = {m["name"]: m for m in client.get("/ui/state", headers=AUTH).json()["models"]}
        assert rows["eager"]["requests_1m"] == 3 and rows["eager"]["tokens_per_s_1m"] == round(18 / 60, 2)
        assert rows["od"]["requests_1m"] == 0


def test_the_state_follows_a_reload_of_models_toml(cfg, tiny):
    with client_for(cfg) as client:
        write_config(cfg, tiny, [{"name": "eager"}, {"name": "added"}], gpus=["4GiB", "4GiB"], api_keys=[KEY])
        assert client.post("/admin/reload", headers=AUTH).status_code == 200
        state = client.get("/ui/state", headers=AUTH).json()
        assert [m["name"] for m in state["models"]] == ["eager", "added"]
        assert len(state["map"]["gpus"]) == 2 and state["map"]["gpus"][0]["reserve_bytes"] == 0
        assert {b["model"] for b in state["map"]["blocks"]} == {"eager", "added"}


def test_a_ready_model_whose_requests_fail_shows_its_error_rate_and_last_error(cfg):
    script = lambda spec: FakeScript(fail_answer="unknown chat format 'gemma3'") if spec.name == "eager" else FakeScript()  # noqa: E731
    with client_for(cfg, FakeTransport(script)) as client:
        for stream in (False, True):
            answer = client.post("/v1/completions", json={"model": "e", "prompt": "a", "stream": stream}, headers=AUTH)
            assert answer.status_code == 500
        assert client.post("/v1/completions", json={"model": "od", "prompt": "a"}, headers=AUTH).status_code == 200
        rows = {m["name"]: m for m in client.get("/ui/state", headers=AUTH).json()["models"]}
        eager = rows["eager"]
        assert eager["state"] == "ready" and eager["error"] is None  # the worker itself is fine
        assert (eager["requests_1m"], eager["errors_1m"], eager["error_rate_1m"]) == (2, 2, 1.0)
        last = eager["last_request_error"]
        assert last["status"] == 500 and "unknown chat format 'gemma3'" in last["message"] and last["age_s"] >= 0
        assert (rows["od"]["errors_1m"], rows["od"]["error_rate_1m"], rows["od"]["last_request_error"]) == (0, 0.0, None)


def test_each_row_has_its_planned_memory_and_an_on_demand_models_idle_countdown(tmp_path, tiny):
    models = [{"name": "eager"}, {"name": "od", "load": "on_demand", "n_ctx": 512, "idle_ttl_s": 300}]
    cfg = write_config(tmp_path / "m.toml", tiny, models, gpus=["4GiB"], api_keys=[KEY])
    with client_for(cfg) as client:
        state = client.get("/ui/state", headers=AUTH).json()
        rows = {m["name"]: m for m in state["models"]}
        on_map = sum(b["planned_bytes"] for b in state["map"]["blocks"] if b["model"] == "eager")  # its GPU's and host's
        assert rows["eager"]["planned_bytes"] == on_map > 0 and rows["eager"]["holds_memory"] is True
        assert rows["eager"]["unload_in_s"] is None and rows["eager"]["idle_ttl_s"] is None
        assert rows["od"]["planned_bytes"] is None and rows["od"]["unload_in_s"] is None and rows["od"]["idle_ttl_s"] == 300
        assert client.post("/admin/models/od/load", headers=AUTH).status_code == 200
        od = next(m for m in client.get("/ui/state", headers=AUTH).json()["models"] if m["name"] == "od")
        assert od["planned_bytes"] > 0 and od["holds_memory"] is True and 0 < od["unload_in_s"] <= 300


def test_an_unloaded_on_demand_model_shows_the_memory_it_would_need(tmp_path, tiny):
    """Never placed: the planner's estimate from its header; after an unload: its last plan."""
    models = [{"name": "eager"}, {"name": "od", "load": "on_demand", "n_ctx": 512}]
    cfg = write_config(tmp_path / "m.toml", tiny, models, gpus=["4GiB"], api_keys=[KEY])

    def od_row(client):
        return next(m for m in client.get("/ui/state", headers=AUTH).json()["models"] if m["name"] == "od")

    with client_for(cfg) as client:
        before = od_row(client)
        assert before["planned_bytes"] is None and before["needs_from"] == "estimate" and before["needs_bytes"] > 0
        assert client.post("/admin/models/od/load", headers=AUTH).status_code == 200
        loaded = od_row(client)
        assert (loaded["needs_bytes"], loaded["needs_from"]) == (loaded["planned_bytes"], "placement")
        assert loaded["planned_bytes"] == before["needs_bytes"]  # the estimate is the plan it loads with
        assert client.post("/admin/models/od/unload", headers=AUTH).status_code == 200
        after = od_row(client)
        assert after["planned_bytes"] is None and after["holds_memory"] is False
        assert (after["needs_bytes"], after["needs_from"]) == (loaded["planned_bytes"], "last placement")
