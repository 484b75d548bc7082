"""Helpers for the in-process app tests: a models.toml on a declared inventory, and a client."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w
from litestar.testing import TestClient

from gateway.config.loading import load_config
from gateway.config.source import ConfigFile
from gateway.http.app import create_app
from gateway.runtime.fake import FakeTransport
from testkit.serving import HANG_S

# The name the test clients reach the app under: one it serves (gateway.http.network.served_hosts).
BASE_URL = "http://127.0.0.1"
KEY = "admin-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def write_config(path: Path, tiny: Path, models: list[dict], *, gpus: list[str] | None, planner: dict | None = None, **gateway) -> Path:
    doc = {
        "gateway": {"shutdown_grace_s": 0.5, **gateway},
        "planner": {**({"gpus": gpus} if gpus is not None else {}), "reserve_mib": 0, "min_budget_mib": 0, **(planner or {})},
        "models": [{"path": str(tiny), "n_ctx": 256, **m} for m in models],
    }
    path.write_text(tomli_w.dumps(doc))
    return path


def client_for(cfg: Path, transport: FakeTransport | None = None) -> TestClient:
    app = create_app(load_config(cfg, environ={}), config_path=cfg, transport=transport or FakeTransport())
    return TestClient(app, base_url=BASE_URL)


@dataclass
class HeldRead:
    """A reload's config read held until the test releases it (``hold_config_reads``)."""

    reading: threading.Event = field(default_factory=threading.Event)  # a read has begun
    release: threading.Event = field(default_factory=threading.Event)
    gave_up: list[bool] = field(default_factory=list)  # per read: it waited HANG_S for the release


def hold_config_reads(monkeypatch) -> HeldRead:
    """Every ConfigFile.read (a reload's) waits for ``release`` before it reads."""
    held = HeldRead()
    read = ConfigFile.read

    def held_read(self: ConfigFile):
        held.reading.set()
        held.gave_up.append(not held.release.wait(HANG_S))
        return read(self)

    monkeypatch.setattr(ConfigFile, "read", held_read)
    return held


def health_during_held_reload(client: TestClient, held: HeldRead, headers: dict[str, str]) -> tuple[int, list[int]]:
    """POST /admin/reload on a thread while ``held`` holds its config read, and GET /health
    meanwhile: (the /health status, the reload's statuses once the read is released)."""
    answers: list[int] = []
    reloading = threading.Thread(target=lambda: answers.append(client.post("/admin/reload", headers=headers).status_code))
    reloading.start()
    try:
        assert held.reading.wait(HANG_S)
        health = client.get("/health").status_code
    finally:
        held.release.set()
        reloading.join(HANG_S)
    return health, answers
