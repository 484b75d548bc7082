"""On-demand loading and eviction by memory, on a declared inventory too small for all models
(the engines run on the CPU here; memory is accounted as if on the declared GPU)."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
import tomli_w

from testkit.ggufmaker import write_header_only_model, write_tiny_llama
from testkit.serving import free_port, queue_running, running_gateway, wait_until, worker_held

pytestmark = pytest.mark.llama


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ondemand")
    tiny = write_tiny_llama(tmp / "tiny.gguf", n_layers=2, n_embd=64, ctx=4096)
    huge = write_header_only_model(
        tmp / "huge.gguf", arch="llama", n_layers=8, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=32000
    )
    port = free_port()
    # Each tiny model is planned at ~720 MiB (mostly the CUDA context): 1600 MiB holds two.
    models = [{"name": "base", "path": str(tiny), "n_ctx": 256}]
    models += [
        {"name": n, "path": str(tiny), "n_ctx": 2048, "load": "on_demand", "queue_size": 32, "priority": p}
        for n, p in (("b", 0), ("c", 0), ("d", 1))
    ]
    models += [{"name": "idle", "path": str(tiny), "n_ctx": 256, "load": "on_demand", "idle_ttl_s": 1.0}]
    models += [{"name": "huge", "path": str(huge), "n_ctx": 256, "load": "on_demand"}]
    cfg = tmp / "models.toml"
    cfg.write_text(
        tomli_w.dumps(
            {
                "gateway": {"port": port, "load_timeout_s": 60},
                "planner": {"gpus": ["1600MiB"], "reserve_mib": 0, "min_budget_mib": 0},
                "models": models,
            }
        )
    )
    # /health is 503 while no model is ready; here the eager one is, but accept both.
    with running_gateway(cfg, port, tmp / "serve.log", ok=(200, 503)) as gw:
        yield {"base": gw.base, "log": gw.log}


def _ask(base: str, model: str, **extra) -> httpx.Response:
    body = {"model": model, "prompt": "a", "max_tokens": 4, "logit_bias": {"97": 50}, **extra}
    return httpx.post(base + "/v1/completions", json=body, timeout=90)


def _states(base: str) -> dict[str, str]:
    return {m["id"]: m["state"] for m in httpx.get(base + "/v1/models", timeout=5).json()["data"]}


def _metric(base: str, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(httpx.get(base + "/metrics", timeout=5).text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def test_on_demand_models_start_unloaded(gateway):
    states = _states(gateway["base"])
    assert states["base"] == "ready"
    assert {states[n] for n in ("b", "c", "d", "idle", "huge")} == {"stopped"}


def test_alternating_requests_all_succeed_by_evicting_idle_models(gateway):
    base = gateway["base"]
    for model in ["b", "c", "d", "b", "c", "b"]:
        r = _ask(base, model)
        assert r.status_code == 200, r.text
        states = _states(base)
        assert states["base"] == "ready"  # the eager model is never evicted
        assert sum(states[n] == "ready" for n in ("b", "c", "d", "idle")) == 1  # room for one beside it
    assert _metric(base, "vram_gateway_model_evictions_total", reason="make_room") >= 5
    assert _metric(base, "vram_gateway_model_loads_total", model="b", reason="on_demand") >= 3
    assert _metric(base, "vram_gateway_load_wait_seconds_count", model="c") >= 2
    assert "unloaded (make_room for" in gateway["log"].read_text()


STREAM_TOKENS = 200
STREAM_HANG_S = 300  # only a hang: a busy 2-core machine decodes the tiny model at ~10 tokens/s


def test_a_model_streaming_is_not_evicted(gateway):
    base = gateway["base"]
    assert _ask(base, "b").status_code == 200
    got: dict = {}

    def stream_b() -> None:
        with httpx.stream(
            "POST",
            base + "/v1/completions",
            json={"model": "b", "prompt": "a", "max_tokens": STREAM_TOKENS, "logit_bias": {"97": 50}, "stream": True},
            timeout=90,
        ) as r:
            got["status"] = r.status_code
            got["events"] = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]

    # b's worker is held still, so its stream cannot end before the test is done, however fast
    # the machine generates (the tiny model once streamed 1,800 tokens in 0.3 s, before a guessed
    # 0.3 s sleep ended). It goes on where it stopped once c has been asked for.
    t = threading.Thread(target=stream_b)
    with worker_held(base, "b"):
        t.start()
        wait_until(lambda: queue_running(base, "b") == 1, what="b running the stream")
        r = _ask(base, "c")
        b_while_c_asked = _states(base)["b"], queue_running(base, "b")
    t.join(STREAM_HANG_S)
    assert not t.is_alive(), f"b's stream did not end within {STREAM_HANG_S} s"
    # b was busy and base is eager: nothing could make room for c.
    assert r.status_code == 503
    assert "cannot be placed even after evicting every idle on-demand model" in r.json()["error"]["message"]
    assert b_while_c_asked == ("ready", 1)
    # The whole stream, not cut short: every token, and it ended at max_tokens.
    assert got["status"] == 200
    assert "".join(e["choices"][0]["text"] for e in got["events"]) == "a" * STREAM_TOKENS
    assert got["events"][-1]["choices"][0]["finish_reason"] == "length"
    assert _ask(base, "c").status_code == 200  # once b is idle again, it can go


def test_model_larger_than_any_gpu_gets_503_with_the_explanation(gateway):
    r = _ask(gateway["base"], "huge")
    assert r.status_code == 503
    message = r.json()["error"]["message"]
    assert message.startswith("model 'huge' cannot be placed even after evicting every idle on-demand model: model 'huge' does not fit")


def test_idle_model_unloads_after_its_ttl(gateway):
    base = gateway["base"]
    # The gateway is shared by the module: an earlier test may have left "idle" loaded, and its
    # own TTL unload (counted too) may land at any moment on a slow machine. So start from a
    # stopped model and count the unloads from there.
    wait_until(lambda: _states(base)["idle"] == "stopped", what="'idle' stopped before the test")
    before = _metric(base, "vram_gateway_model_evictions_total", model="idle", reason="idle_ttl")
    assert _ask(base, "idle").status_code == 200
    # The TTL is 1 s; the timeout only guards against a hang on a busy machine.
    wait_until(lambda: _states(base)["idle"] == "stopped", what="'idle' unloaded after its TTL")
    assert _metric(base, "vram_gateway_model_evictions_total", model="idle", reason="idle_ttl") == before + 1
