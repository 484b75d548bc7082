"""`gateway serve --router CLUSTER.toml`: the router under granian (one process, one worker).

Like `gateway serve`, the CLI reads the config (GATEWAY_* variables and --host/--port applied)
in its own process and hands it to the app process in a state file named by
``VRAM_GATEWAY_ROUTER_STATE``; ``gateway.router.asgi.router_from_state`` reads it there.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import tomllib
from pathlib import Path

import tomli_w
from granian import Granian

from gateway.config.loading import dump_config, load_config, parse_config
from gateway.config.schema import Config
from gateway.errors import ConfigError
from gateway.http.server import granian_server

STATE_ENV = "VRAM_GATEWAY_ROUTER_STATE"


def router_config(args: argparse.Namespace) -> Config:
    """The cluster config with GATEWAY_* and then --host/--port laid over it."""
    config = load_config(args.router)
    if config.nodes is None:
        raise ConfigError([f"{args.router}: no [[nodes]]: the router forwards to the nodes of a cluster config (docs/cluster.md)"])
    doc = tomllib.loads(dump_config(config))
    for flag in ("host", "port"):
        if getattr(args, flag, None) is not None:
            doc["gateway"][flag] = getattr(args, flag)
    # GATEWAY_* took effect in load_config; the flags win over both.
    return parse_config(tomli_w.dumps(doc), environ={})


def serve_router(args: argparse.Namespace) -> int:
    config = router_config(args)
    fd, name = tempfile.mkstemp(prefix="vram-gateway-router-", suffix=".toml")
    state = Path(name)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(dump_config(config))
    os.environ[STATE_ENV] = str(state)
    nodes = ", ".join(n.name for n in config.nodes or ())
    print(f"routing to {len(config.nodes or ())} node(s) ({nodes}) on http://{config.gateway.host}:{config.gateway.port}/v1", flush=True)
    try:
        granian_server(Granian, "gateway.router.asgi:router_from_state", config, kill_after_grace_s=5).serve()
    finally:
        state.unlink(missing_ok=True)
    return 0
