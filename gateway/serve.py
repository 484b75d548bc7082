"""Run the gateway under granian: one server process, one app worker."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import msgspec
from granian import Granian
from granian.constants import Interfaces
from granian.log import LogLevels

from gateway.asgi import STATE_ENV
from gateway.config import Config, dump_config
from gateway.launch import ModelLaunch, encode_launches
from gateway.logs import granian_log_config


def write_state(config: Config, launches: dict[str, ModelLaunch], *, strict: bool, directory: Path | None = None) -> Path:
    """The state file ``gateway.asgi.app_from_state`` reads: the config and the plan."""
    state = {
        "config": dump_config(config),
        "launches": msgspec.json.decode(encode_launches(launches)),
        "strict": strict,
    }
    fd, path = tempfile.mkstemp(prefix="vram-gateway-", suffix=".json", dir=directory)
    with os.fdopen(fd, "wb") as f:
        f.write(msgspec.json.encode(state))
    return Path(path)


def run_server(config: Config, launches: dict[str, ModelLaunch], *, strict: bool = False) -> None:
    """Serve until SIGINT/SIGTERM; workers are stopped by the app's lifespan."""
    state = write_state(config, launches, strict=strict)
    os.environ[STATE_ENV] = str(state)
    try:
        Granian(
            "gateway.asgi:app_from_state",
            factory=True,
            interface=Interfaces.ASGI,
            address=config.gateway.host,
            port=config.gateway.port,
            workers=1,
            log_level=LogLevels(config.gateway.log_level),
            log_dictconfig=granian_log_config(config.gateway.log_level, config.gateway.log_format == "json"),
            # The lifespan drains requests and stops the model workers: give it the grace
            # period plus time to SIGTERM/SIGKILL them before granian kills the app process.
            workers_kill_timeout=int(config.gateway.shutdown_grace_s) + 15,
        ).serve()
    finally:
        state.unlink(missing_ok=True)
