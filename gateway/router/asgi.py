"""The ASGI entry point granian imports in the router's worker process (read when called)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgspec
from litestar import Litestar

from gateway.config.loading import parse_config
from gateway.observability.logs import configure_logging
from gateway.router.app import create_router_app
from gateway.router.server import STATE_ENV


def router_from_state() -> Litestar:
    state = msgspec.json.decode(Path(os.environ[STATE_ENV]).read_bytes())
    # GATEWAY_* variables were applied when the CLI read the config; do not apply them twice.
    config = parse_config(state["config"], environ={})
    configure_logging(config.gateway.log_level, config.gateway.log_format == "json")
    # httpx logs every request at INFO: each poll of each node, several times a second.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return create_router_app(config, config_path=Path(state["config_path"]), reload_token=state["reload_token"])
