"""gateway.access: keys by digest, scopes, and per-key limits over a sliding minute (injected clock)."""

from __future__ import annotations

import pytest
import tomli_w

from gateway.access.gate import Access
from gateway.access.keyring import KeyRing
from gateway.access.limits import KeyUsage, Window, admit, duration, rate_headers
from gateway.config.keys import key_digest, key_sha256
from gateway.config.loading import parse_config
from gateway.config.schema import Config
from gateway.errors import RateLimitError


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def config(keys: list[dict], api_keys: list[str] | None = None) -> Config:
    doc = {
        "gateway": {"api_keys": api_keys or []},
        "models": [{"name": "qwen-7b", "path": "/m/q.gguf", "aliases": ["chat"]}, {"name": "embed-small", "path": "/m/e.gguf"}],
        "keys": [{"key_sha256": key_digest(f"sk-{k['name']}"), **k} for k in keys],
    }
    return parse_config(tomli_w.dumps(doc), environ={})


def key(**fields):
    return KeyRing.from_config(config([{"name": "k", **fields}])).keys["k"]


def test_a_window_counts_the_last_minute_in_one_second_steps():
    w = Window()
    w.add(1000.2, 3)
    w.add(1030.9, 2)
    assert w.total(1059.9) == 5
    assert w.total(1060.0) == 2  # the step of second 1000 has left
    assert w.seconds_until_below(1060.0, 2) == pytest.approx(30.0)
    assert w.seconds_until_empty(1060.0) == pytest.approx(30.0)
    assert w.total(1091.0) == 0


def test_durations_are_written_as_openai_writes_them():
    assert [duration(s) for s in (0.25, 1, 12.2, 60, 61)] == ["250ms", "1s", "13s", "1m0s", "1m1s"]


def test_the_requests_limit_refuses_with_retry_after_and_the_ratelimit_headers():
    clock, usage, k = Clock(), KeyUsage(), key(requests_per_minute=2)
    for _ in range(2):
        admit(k, usage, clock(), clock).release()
        clock.now += 10
    with pytest.raises(RateLimitError) as info:
        admit(k, usage, clock(), clock)
    exc = info.value
    assert exc.code == "rate" and "requests_per_minute (2)" in str(exc)
    assert exc.retry_after_s == 40  # the first request leaves the window 60 s after it came
    assert exc.headers == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "50s",
    }
    clock.now += 40
    admit(k, usage, clock(), clock).release()


def test_the_tokens_limit_counts_prompt_and_completion_and_refuses_once_it_is_reached():
    clock, usage, k = Clock(), KeyUsage(), key(tokens_per_minute=100)
    ticket = admit(k, usage, clock(), clock)
    ticket.settle({"prompt_tokens": 30, "completion_tokens": 80})
    ticket.release()
    assert rate_headers(k, usage, clock())["x-ratelimit-remaining-tokens"] == "0"
    with pytest.raises(RateLimitError) as info:
        admit(k, usage, clock(), clock)
    assert info.value.code == "rate" and info.value.retry_after_s == 60
    clock.now += 60
    admit(k, usage, clock(), clock)


def test_a_stream_takes_tokens_until_the_budget_is_used_up():
    clock, usage, k = Clock(), KeyUsage(), key(tokens_per_minute=5)
    ticket = admit(k, usage, clock(), clock)
    taken = [ticket.take(1) for _ in range(8)]
    assert taken == [True] * 5 + [False] * 3
    assert ticket.charged == 5
    assert "reached its tokens_per_minute (5)" in ticket.budget_note()
    # The prompt tokens the worker reports at the end are charged too.
    ticket.settle({"prompt_tokens": 4, "completion_tokens": 5})
    assert usage.tokens.total(clock()) == 9


def test_the_concurrency_limit_counts_requests_running_across_models():
    clock, usage, k = Clock(), KeyUsage(), key(max_concurrency=2)
    first, second = admit(k, usage, clock(), clock), admit(k, usage, clock(), clock)
    with pytest.raises(RateLimitError) as info:
        admit(k, usage, clock(), clock)
    assert info.value.code == "concurrency" and info.value.retry_after_s == 1
    first.release()
    first.release()  # idempotent: a place is given back once
    assert usage.in_flight == 1
    admit(k, usage, clock(), clock)
    second.release()


def test_an_unlimited_key_is_counted_but_never_refused():
    clock, usage, k = Clock(), KeyUsage(), key()
    for _ in range(1000):
        admit(k, usage, clock(), clock).settle({"prompt_tokens": 10, "completion_tokens": 10})
    assert usage.last_minute(clock()) == {"requests": 1000, "tokens": 20000, "rejected": {}}
    assert rate_headers(k, usage, clock()) == {}


def test_keys_are_found_by_the_sha256_of_the_presented_key():
    ring = KeyRing.from_config(config([{"name": "ci", "models": ["chat"]}], api_keys=["plain"]))
    ci = ring.find("sk-ci")
    assert ci is not None and ci.name == "ci" and ci.digest == key_sha256("sk-ci") and not ci.admin
    plain = ring.find("plain")
    assert plain is not None and plain.name == "api_keys[0]" and plain.admin and not plain.scoped
    assert ring.find("sk-nope") is None and ring.find("") is None


def test_a_scope_matches_names_aliases_and_globs():
    assert key(models=["chat"]).may_use(("qwen-7b", "chat"))
    assert key(models=["embed-*"]).may_use(("embed-small",))
    assert not key(models=["embed-*"]).may_use(("qwen-7b", "chat"))
    assert key().may_use(("anything",))


def test_a_reload_adds_and_removes_keys_and_usage_follows_the_name():
    clock = Clock()
    current = [config([{"name": "ci", "requests_per_minute": 5}, {"name": "old"}])]
    seen: list[list[str]] = []
    access = Access(lambda: current[0], clock=clock, on_keys=seen.append)
    ci = access.ring().find("sk-ci")
    running = access.admit(ci)
    # Rotate ci's key (same name, new hash), remove "old", add "new".
    current[0] = config([{"name": "new"}, {"name": "ci", "requests_per_minute": 5, "key_sha256": key_digest("sk-ci-2")}])
    ring = access.ring()
    assert ring.find("sk-old") is None and ring.find("sk-new") is not None
    assert ring.find("sk-ci") is None and ring.find("sk-ci-2") is not None
    assert seen == [["ci", "old"], ["new", "ci"]]
    usage = {u["name"]: u for u in access.usage()}
    assert usage["ci"]["last_minute"]["requests"] == 1 and usage["ci"]["in_flight"] == 1
    running.release()  # the request admitted before the reload ends normally
    assert {u["name"]: u["in_flight"] for u in access.usage()} == {"new": 0, "ci": 0}
