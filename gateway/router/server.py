"""`gateway serve --router CLUSTER.toml`: the router under granian (one process, one worker).

Like `gateway serve`, the CLI reads the config (GATEWAY_* variables and --host/--port applied)
in its own process and hands it to the app process in a state file named by
``VRAM_GATEWAY_ROUTER_STATE`` (the config, the config file's path for reloads, and the reload
token); ``gateway.router.asgi.router_from_state`` reads it there. The server process forwards a
SIGHUP to the app's ``POST /admin/reload`` as a gateway's does (gateway.http.server).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import tomllib
from pathlib import Path

import msgspec
import tomli_w

from gateway.config.loading import dump_config, load_config, parse_config
from gateway.config.schema import Config
from gateway.errors import ConfigError
from gateway.http.server import forwarding_server, new_reload_token
from gateway.router.reload import router_config_problems

STATE_ENV = "VRAM_GATEWAY_ROUTER_STATE"


def router_config(args: argparse.Namespace) -> Config:
    """The cluster config with GATEWAY_* and then --host/--port laid over it."""
    config = load_config(args.router)
    problems = router_config_problems(config)
    if problems:
        raise ConfigError(problems, source=str(args.router))
    doc = tomllib.loads(dump_config(config))
    for flag in ("host", "port"):
        if getattr(args, flag, None) is not None:
            doc["gateway"][flag] = getattr(args, flag)
    # GATEWAY_* took effect in load_config; the flags win over both.
    return parse_config(tomli_w.dumps(doc), environ={})


def write_router_state(config: Config, config_path: Path, reload_token: str) -> Path:
    """The state file ``router_from_state`` reads."""
    state = {"config": dump_config(config), "config_path": str(config_path.resolve()), "reload_token": reload_token}
    fd, name = tempfile.mkstemp(prefix="vram-gateway-router-", suffix=".json")
    with os.fdopen(fd, "wb") as f:
        f.write(msgspec.json.encode(state))
    return Path(name)


def serve_router(args: argparse.Namespace) -> int:
    config = router_config(args)
    token = new_reload_token()
    state = write_router_state(config, Path(args.router), token)
    os.environ[STATE_ENV] = str(state)
    nodes = ", ".join(n.name for n in config.nodes or ())
    print(f"routing to {len(config.nodes or ())} node(s) ({nodes}) on http://{config.gateway.host}:{config.gateway.port}/v1", flush=True)
    try:
        forwarding_server("gateway.router.asgi:router_from_state", config, kill_after_grace_s=5, reload_token=token, drain=False).serve()
    finally:
        state.unlink(missing_ok=True)
    return 0
