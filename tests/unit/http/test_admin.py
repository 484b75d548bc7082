"""The admin API behind the web page, in-process on fake workers: load, unload, plan preview."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gateway.runtime.fake import FakeScript, FakeTransport
from testkit.ggufmaker import write_tiny_llama
from testkit.serving import HANG_S, wait_until
from tests.unit.http.apps import AUTH, KEY, client_for, health_during_held_reload, hold_config_reads, write_config

XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("admin") / "tiny.gguf", n_layers=2, n_embd=64, ctx=4096)


@pytest.fixture
def cfg(tmp_path, tiny) -> Path:
    models = [{"name": "eager"}, {"name": "od", "load": "on_demand", "aliases": ["od-alias"]}, {"name": "org/od", "load": "on_demand"}]
    return write_config(tmp_path / "models.toml", tiny, models, gpus=["8GiB"], api_keys=[KEY])


def states(client) -> dict[str, str]:
    return {m["id"]: m["state"] for m in client.get("/v1/models", headers=AUTH).json()["data"]}


def test_an_on_demand_model_loads_and_unloads_through_the_admin_api(cfg):
    with client_for(cfg) as client:
        loaded = client.post("/admin/models/od/load", headers=AUTH)
        assert loaded.status_code == 200, loaded.text
        assert loaded.json()["id"] == "od" and loaded.json()["state"] == "ready"
        assert loaded.json()["planned"]["devices"][0]["gpu"] == 0
        assert states(client)["od"] == "ready"
        unloaded = client.post("/admin/models/od-alias/unload", headers=AUTH)  # an alias works too
        assert unloaded.status_code == 200, unloaded.text
        assert unloaded.json()["state"] == "stopped" and states(client)["od"] == "stopped"


def test_a_model_name_with_a_slash_needs_no_escaping(cfg):
    with client_for(cfg) as client:
        assert client.post("/admin/models/org/od/load", headers=AUTH).json()["id"] == "org/od"
        assert client.post("/admin/models/org/od/unload", headers=AUTH).json()["state"] == "stopped"


def test_admin_actions_need_the_admin_key_when_api_keys_is_set(cfg):
    with client_for(cfg) as client:
        for path in ("/admin/models/od/load", "/admin/models/od/unload", "/admin/plan"):
            assert client.post(path).status_code == 401, path
            assert client.post(path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
        assert states(client)["od"] == "stopped"


def test_without_api_keys_admin_actions_answer_loopback_clients_only(tmp_path, tiny):
    cfg = write_config(tmp_path / "m.toml", tiny, [{"name": "od", "load": "on_demand"}], gpus=["8GiB"])
    with client_for(cfg) as client:  # the test client's address is "testclient", not loopback
        assert client.post("/admin/models/od/load").status_code == 401


def test_unknown_and_misspelt_targets_are_refused_with_their_reason(cfg):
    with client_for(cfg) as client:
        assert client.post("/admin/models/eager/load", headers=AUTH).json()["state"] == "ready"  # already is
        unknown = client.post("/admin/models/nope/load", headers=AUTH)
        assert unknown.status_code == 404 and "known models" in unknown.json()["error"]["message"]
        assert client.post("/admin/models/od/reboot", headers=AUTH).status_code == 404
        assert client.post("/admin/models/load", headers=AUTH).status_code == 404
        assert client.get("/admin/models/od/load", headers=AUTH).status_code == 404  # a view is GET, an action POST
        assert client.post("/admin/models/od/logs", headers=AUTH).status_code == 404


def pid(client, model: str) -> int | None:
    return next(m for m in client.get("/v1/models", headers=AUTH).json()["data"] if m["id"] == model)["pid"]


def test_an_unloaded_eager_model_stays_stopped_until_an_admin_load(cfg):
    transport = FakeTransport()
    with client_for(cfg, transport) as client:
        unloaded = client.post("/admin/models/eager/unload", headers=AUTH)
        assert unloaded.status_code == 200, unloaded.text
        assert unloaded.json()["state"] == "stopped" and "unloaded by an operator" in unloaded.json()["reason"]
        refused = client.post("/v1/completions", json={"model": "eager", "prompt": "a"}, headers=AUTH)
        assert refused.status_code == 503 and "stopped" in refused.json()["error"]["message"]
        # Nothing started it again behind the operator's back (no restart, no load retry).
        assert transport.alive("eager") == [] and states(client)["eager"] == "stopped"
        loaded = client.post("/admin/models/eager/load", headers=AUTH)
        assert loaded.status_code == 200 and loaded.json()["state"] == "ready" and loaded.json()["reason"] is None
        assert client.post("/v1/completions", json={"model": "eager", "prompt": "a"}, headers=AUTH).status_code == 200


def test_a_reload_starts_an_eager_model_the_admin_unloaded(cfg):
    with client_for(cfg) as client:
        assert client.post("/admin/models/eager/unload", headers=AUTH).status_code == 200
        reloaded = client.post("/admin/reload", headers=AUTH)
        assert reloaded.status_code == 200 and reloaded.json()["restarted"] == ["eager"], reloaded.text
        assert states(client)["eager"] == "ready"


@pytest.mark.parametrize("model", ["eager", "od"])
def test_restart_gives_a_model_a_new_worker(cfg, model):
    with client_for(cfg) as client:
        assert client.post(f"/admin/models/{model}/load", headers=AUTH).status_code == 200
        before = pid(client, model)
        restarted = client.post(f"/admin/models/{model}/restart", headers=AUTH)
        assert restarted.status_code == 200, restarted.text
        assert restarted.json()["state"] == "ready" and restarted.json()["pid"] not in (None, before)


def test_logs_show_the_workers_stderr_to_an_admin_key(cfg):
    with client_for(cfg) as client:
        assert client.get("/admin/models/eager/logs").status_code == 401
        logs = client.get("/admin/models/eager/logs", headers=AUTH)
        assert logs.status_code == 200, logs.text
        assert logs.json() == {"id": "eager", "state": "ready", "pid": pid(client, "eager"), "lines": []}
        stopped = client.get("/admin/models/od/logs", headers=AUTH).json()
        assert stopped == {"id": "od", "state": "stopped", "pid": None, "lines": []}


def running(client, model: str) -> int:
    models = client.get("/v1/models", headers=AUTH).json()["data"]
    return next(m for m in models if m["id"] == model)["queue"]["running"]


def test_unloading_a_model_with_a_request_running_is_a_conflict(cfg):
    held = threading.Event()  # the request cannot end until the unload has been refused
    with client_for(cfg, FakeTransport(FakeScript(hold_answer=held))) as client:
        assert client.post("/admin/models/od/load", headers=AUTH).status_code == 200
        done: list = []
        t = threading.Thread(
            target=lambda: done.append(client.post("/v1/completions", json={"model": "od", "prompt": "a"}, headers=AUTH))
        )
        t.start()
        try:
            wait_until(lambda: running(client, "od") == 1, what="the request running")
            busy = client.post("/admin/models/od/unload", headers=AUTH)
        finally:
            held.set()
            t.join()
        assert busy.status_code == 409, busy.text
        assert done[0].status_code == 200
        assert client.post("/admin/models/od/unload", headers=AUTH).status_code == 200


def test_a_load_that_cannot_be_placed_says_why_and_the_page_shows_it(tmp_path, tiny):
    # Each tiny model is planned at ~716 MiB (mostly the CUDA context); the eager one is never evicted.
    models = [{"name": "eager"}, {"name": "od", "load": "on_demand"}]
    cfg = write_config(tmp_path / "m.toml", tiny, models, gpus=["1GiB"], api_keys=[KEY])
    with client_for(cfg) as client:
        refused = client.post("/admin/models/od/load", headers=AUTH)
        assert refused.status_code == 503, refused.text
        message = refused.json()["error"]["message"]
        assert "cannot be placed" in message and "short by" in message and "GPU 0" in message
        row = next(m for m in client.get("/ui/state", headers=AUTH).json()["models"] if m["name"] == "od")
        assert row["state"] == "stopped" and row["error"] == message


def test_the_plan_preview_lists_every_problem_with_its_dotted_path(cfg):
    text = f"[planner]\nreserve_mib = -1\n\n[[models]]\nname = '{XSS}'\npath = 'x.gguf'\nn_ctx = -5\ncolour = 'red'\n"
    with client_for(cfg) as client:
        response = client.post("/admin/plan", json={"config": text}, headers=AUTH)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["valid"] is False and body["fits"] is False and body["map"] is None
        problems = body["problems"]
        assert any(p.startswith("planner.reserve_mib: -1") for p in problems), problems
        assert any(p.startswith("models[0].n_ctx: -5") for p in problems), problems
        assert any(p.startswith("models[0].colour") for p in problems), problems
        assert any(p.startswith("models[0].name") and XSS in p for p in problems), problems


def test_the_plan_preview_reads_relative_paths_beside_the_running_config_and_reports_missing_files(cfg, tiny):
    text = "[[models]]\nname = 'a'\npath = 'tiny.gguf'\n\n[[models]]\nname = 'b'\npath = 'missing.gguf'\n"
    (cfg.parent / "tiny.gguf").write_bytes(tiny.read_bytes())
    with client_for(cfg) as client:
        body = client.post("/admin/plan", json={"config": text, "gpus": ["8GiB"]}, headers=AUTH).json()
        assert body["valid"] is False
        assert len(body["problems"]) == 1 and body["problems"][0].startswith("models[1].path:"), body["problems"]


def test_the_plan_preview_maps_a_valid_config_and_touches_nothing_running(cfg, tiny):
    text = (
        "[planner]\ngpus = ['4GiB', '2GiB']\nreserve_mib = 256\nmin_budget_mib = 0\n\n"
        f"[[models]]\nname = 'new'\npath = '{tiny}'\nn_ctx = 512\n\n"
        f"[[models]]\nname = 'later'\npath = '{tiny}'\nload = 'on_demand'\n"
    )
    transport = FakeTransport()
    with client_for(cfg, transport) as client:
        spawned = len(transport.spawned)
        body = client.post("/admin/plan", json={"config": text}, headers=AUTH).json()
        assert body["valid"] and body["fits"] and body["problems"] == []
        assert body["inventory"] == "declared" and body["on_demand"] == ["later"]
        assert [g["total_bytes"] for g in body["map"]["gpus"]] == [4 << 30, 2 << 30]
        assert {g["reserve_bytes"] for g in body["map"]["gpus"]} == {256 << 20}
        (block,) = [b for b in body["map"]["blocks"] if b["gpu"] is not None]
        assert block["model"] == "new" and block["state"] == "planned"
        assert block["planned_bytes"] == block["weights_bytes"] + block["kv_bytes"] + block["compute_bytes"] + block["overhead_bytes"]
        assert len(transport.spawned) == spawned
        assert set(states(client)) == {"eager", "od", "org/od"}


def test_the_plan_preview_plans_on_a_declared_inventory_given_with_the_request(cfg, tiny):
    text = f"[planner]\nreserve_mib = 0\nmin_budget_mib = 0\n\n[[models]]\nname = 'a'\npath = '{tiny}'\n"
    with client_for(cfg) as client:
        small = client.post("/admin/plan", json={"config": text, "gpus": ["512MiB"]}, headers=AUTH).json()
        assert small["valid"] and not small["fits"]
        assert small["problems"][0].startswith("plan: model 'a' does not fit"), small["problems"]
        bad = client.post("/admin/plan", json={"config": text, "gpus": ["8GiB", "lots"]}, headers=AUTH).json()
        assert bad["problems"] and bad["problems"][0].startswith("gpus[1]: 'lots'"), bad["problems"]


def test_the_plan_preview_says_where_a_model_that_does_not_fit_would_go_and_by_how_much(cfg, tiny):
    text = (
        "[planner]\nreserve_mib = 0\nmin_budget_mib = 0\n\n"
        f"[[models]]\nname = 'a'\npath = '{tiny}'\n\n"
        f"[[models]]\nname = 'b'\npath = '{tiny}'\ngpus = [1]\n"
    )
    with client_for(cfg) as client:
        body = client.post("/admin/plan", json={"config": text, "gpus": ["2GiB", "512MiB"]}, headers=AUTH).json()
    assert body["valid"] and not body["fits"]
    assert [b["model"] for b in body["map"]["blocks"] if b["gpu"] is not None] == ["a"]
    (short,) = body["map"]["shortfalls"]
    assert (short["model"], short["gpu"], short["tried_gpus"]) == ("b", 1, [1])
    assert short["room_bytes"] == 512 << 20 and short["need_bytes"] == short["room_bytes"] + short["short_bytes"]
    assert (short["placed_layers"], short["gpu_layers"]) == (0, 3)
    short_mib = -(-short["short_bytes"] // (1 << 20))
    (problem,) = body["problems"]
    assert f"on GPU 1 (declared GPU 1, 512 MiB left) it is short by {short_mib:,} MiB" in problem, problem


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"gpus": ["8GiB"]}', b'{"config": 5}', b'{"config": "", "extra": 1}', b'{"config": "", "gpus": "8GiB"}'],
)
def test_a_malformed_preview_request_is_a_400_naming_the_problem(cfg, body):
    with client_for(cfg) as client:
        response = client.post("/admin/plan", content=body, headers={**AUTH, "Content-Type": "application/json"})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["message"].startswith("the request body")


def test_the_openapi_document_describes_the_admin_api_with_its_security(cfg):
    with client_for(cfg) as client:
        doc = client.get("/openapi.json").json()
        ops = {op["operationId"]: (path, op) for path, item in doc["paths"].items() for op in item.values()}
        for op_id, path in (
            ("loadModel", "/admin/models/{name}/load"),
            ("unloadModel", "/admin/models/{name}/unload"),
            ("restartModel", "/admin/models/{name}/restart"),
            ("modelLogs", "/admin/models/{name}/logs"),
            ("planPreview", "/admin/plan"),
        ):
            assert ops[op_id][0] == path
            assert ops[op_id][1]["security"] == [{"bearer": []}]
            assert "401" in ops[op_id][1]["responses"]
        assert ops["planPreview"][1]["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/PlanPreviewRequest"}
        assert doc["components"]["schemas"]["PlanPreviewRequest"]["required"] == ["config"]
        assert not any(p.startswith("/ui") for p in doc["paths"])


def test_models_show_when_the_idle_ttl_will_unload_them(tmp_path, tiny):
    models = [{"name": "eager"}, {"name": "od", "load": "on_demand", "idle_ttl_s": 300}]
    cfg = write_config(tmp_path / "m.toml", tiny, models, gpus=["8GiB"], api_keys=[KEY])
    with client_for(cfg) as client:
        assert client.post("/admin/models/od/load", headers=AUTH).status_code == 200
        listed = {m["id"]: m for m in client.get("/v1/models", headers=AUTH).json()["data"]}
        assert listed["od"]["idle_ttl_s"] == 300 and 0 < listed["od"]["unload_in_s"] <= 300
        assert listed["eager"]["idle_ttl_s"] is None and listed["eager"]["unload_in_s"] is None


def test_a_reload_names_the_settings_read_at_start_and_applies_the_rest(cfg, tiny, caplog):
    with client_for(cfg) as client:
        write_config(
            cfg, tiny, [{"name": "eager"}, {"name": "od", "load": "on_demand", "aliases": ["od-alias"]}], gpus=["8GiB"],
            api_keys=[KEY], port=9999, max_body_bytes=1000, log_level="debug", log_format="json", shutdown_grace_s=7.0,
            health_requires_key=True,
        )
        with caplog.at_level("WARNING", logger="gateway"):
            reloaded = client.post("/admin/reload", headers=AUTH)
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["not_applied"] == [
            "gateway.port: 9999 (the gateway runs with 8080 until it restarts)",
            "gateway.max_body_bytes: 1000 (the gateway runs with 8388608 until it restarts)",
            "gateway.log_level: 'debug' (the gateway runs with 'info' until it restarts)",
            "gateway.log_format: 'json' (the gateway runs with 'text' until it restarts)",
            "gateway.shutdown_grace_s: 7.0 (the gateway runs with 0.5 until it restarts)",
        ]
        logged = [r.getMessage() for r in caplog.records if "not applied until the gateway restarts" in r.getMessage()]
        assert len(logged) == 5 and "gateway.port: 9999" in logged[0]
        # A setting read per request applies at once; the body limit in force is still the old one.
        assert client.get("/health").status_code == 401
        assert client.get("/health", headers=AUTH).status_code == 200
        big = client.post("/v1/completions", json={"model": "eager", "prompt": "a" * 2000, "max_tokens": 1}, headers=AUTH)
        assert big.status_code == 200, big.text
        # Nothing changed since: a second reload names the same values, and nothing else.
        assert client.post("/admin/reload", headers=AUTH).json()["not_applied"] == reloaded.json()["not_applied"]


def test_the_gateway_answers_while_a_reload_reads_its_config(cfg, monkeypatch):
    """A big keys file takes seconds to parse; the read runs off the event loop, so /health and
    requests go on meanwhile. The read is held (an Event) while the test asks /health."""
    held = hold_config_reads(monkeypatch)
    with client_for(cfg) as client:
        health, answers = health_during_held_reload(client, held, AUTH)
    assert health == 200
    assert held.gave_up == [False], "/health answered only once the reload's read gave up"
    assert answers == [200]
