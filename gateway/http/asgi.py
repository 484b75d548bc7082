"""The ASGI entry point granian imports in its worker process.

``gateway serve`` plans in its own process, writes the config and the plan to a state file and
names it in ``VRAM_GATEWAY_STATE``; ``app_from_state`` (a granian factory) reads it when called,
never at import time.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
from litestar import Litestar

from gateway.http.app import create_app
from gateway.config.loading import parse_config
from gateway.placement.launch import decode_launches
from gateway.placement.learning import LearnedMemory, learned_path
from gateway.observability.logs import configure_logging

STATE_ENV = "VRAM_GATEWAY_STATE"


def app_from_state() -> Litestar:
    """Build the app from the state file ``gateway serve`` wrote."""
    state = msgspec.json.decode(Path(os.environ[STATE_ENV]).read_bytes())
    # GATEWAY_* variables were applied when the CLI built the config; do not apply them twice.
    config = parse_config(state["config"], environ={})
    configure_logging(config.gateway.log_level, config.gateway.log_format == "json")
    launches = decode_launches(msgspec.json.encode(state["launches"]))
    return create_app(
        config,
        launches,
        strict=state.get("strict", False),
        config_path=Path(state["config_path"]) if state.get("config_path") else None,
        reload_token=state.get("reload_token"),
        learned=LearnedMemory.load(learned_path(config, os.environ)),
    )
