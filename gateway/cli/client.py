"""The commands that talk to a running gateway: ``status``, ``ps``, ``load``, ``unload``,
``restart``, ``logs`` and ``reload``.

Each finds the gateway where ``serve`` listens: ``--url`` (``http://HOST:PORT``, ``HOST:PORT`` or
``HOST``), else the ``[gateway]`` host and port of ``--config``, else ``GATEWAY_HOST`` and
``GATEWAY_PORT`` over the defaults, read the way ``serve`` reads them (gateway.config.schema).
Each sends ``--api-key`` or ``GATEWAY_API_KEY`` as a bearer token. A gateway listening on every
address (0.0.0.0, ::) is reached on loopback.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from gateway.config.loading import load_config, parse_config
from gateway.errors import GatewayError
from gateway.cli.render import keys_text, logs_text, ps_text, status_text

API_KEY_VARIABLE = "GATEWAY_API_KEY"
# Listening on every address: the gateway is reached on loopback.
ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "::1"}
REQUEST_TIMEOUT_S = 10.0
# A load, restart or reload waits for the model(s) to load (up to load_timeout_s on the gateway).
LOAD_TIMEOUT_S = 3600.0
URL_FORMS = "http://HOST:PORT, https://HOST:PORT, HOST:PORT or HOST"


def add_client_parsers(sub: argparse._SubParsersAction) -> None:
    def client(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument(
            "--url",
            help=f"the gateway's address: {URL_FORMS} (default: where `serve` listens: [gateway] host and port of "
            "--config, else GATEWAY_HOST and GATEWAY_PORT, else 127.0.0.1:8080)",
        )
        p.add_argument("--config", type=Path, help="the models.toml the gateway serves: its [gateway] host and port")
        p.add_argument("--api-key", help=f"API key, when the gateway requires one (or {API_KEY_VARIABLE})")
        return p

    status = client("status", "planned vs allocated memory and state of each model of a running gateway")
    status.add_argument("--json", action="store_true", help="print the /v1/models answer as JSON")
    ps = client("ps", "each model's state, memory per GPU and host, context, busy slots and idle time left")
    ps.add_argument("--json", action="store_true", help="print the /v1/models answer as JSON")
    for action, help in (
        ("load", "load a model now (an on-demand one, or an eager one that failed or was unloaded)"),
        ("unload", "unload an idle model; an eager one stays down until `gateway load` or a reload"),
        ("restart", "stop an idle model's worker and load it again"),
    ):
        p = client(action, help)
        p.add_argument("name", help="the model's name or alias")
    logs = client("logs", "the last lines the model's worker wrote to stderr (llama.cpp's log)")
    logs.add_argument("name", help="the model's name or alias")
    logs.add_argument("-n", "--lines", type=int, help="only the last N lines")
    client("reload", "make a running gateway re-read its models.toml, or a router its cluster config (like SIGHUP)")


def _connect_host(host: str) -> str:
    host = ANY_ADDRESS.get(host, host)
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host  # a name


def gateway_url(url: str | None, config: Path | None, environ: Mapping[str, str] | None = None) -> str:
    """The base URL of the gateway: ``url`` as given (a bare ``HOST:PORT`` or ``HOST`` is
    http, its port the configured one), else where ``serve`` would listen."""
    env = os.environ if environ is None else environ
    if config is not None:
        settings = load_config(config, environ=env).gateway
    else:
        # The [gateway] defaults with GATEWAY_* laid over them, validated as serve validates
        # them (a placeholder model, never read: a config needs one).
        placeholder = {"models": [{"name": "none", "path": os.devnull}]}
        settings = parse_config(tomli_w.dumps(placeholder), environ=env).gateway
    if url is None:
        return f"http://{_connect_host(settings.host)}:{settings.port}"
    given = url.strip()
    parts = urllib.parse.urlsplit(given if "://" in given else f"http://{given}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1 or parts.query or parts.fragment:
        raise GatewayError(f"--url: {url!r} (must be {URL_FORMS})")
    if port is None:
        port = settings.port if "://" not in given else (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{_connect_host(parts.hostname)}:{port}{parts.path.rstrip('/')}"


class Client:
    """One running gateway, as the command line asked for it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.url = gateway_url(args.url, args.config)
        self._key = args.api_key or os.environ.get(API_KEY_VARIABLE)

    def call(self, path: str, method: str = "GET", timeout: float = REQUEST_TIMEOUT_S) -> tuple[int, dict[str, Any]]:
        """One request: (status, JSON body); unreachable, or an answer that is not JSON, is a GatewayError."""
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.url + path, method=method)
        if self._key:
            req.add_header("Authorization", f"Bearer {self._key}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                return exc.code, json.loads(body)
            except ValueError:
                raise GatewayError(f"{self.url}: HTTP {exc.code}: {body.decode(errors='replace')[:300]}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise GatewayError(f"{self.url}: cannot reach the gateway ({getattr(exc, 'reason', exc)})") from None

    def ok(self, path: str, method: str = "GET", timeout: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
        """The JSON body of a 200; any error answer is a GatewayError with the gateway's message."""
        status, doc = self.call(path, method, timeout)
        if status != 200 or "error" in doc:
            message = (doc.get("error") or {}).get("message") if isinstance(doc.get("error"), dict) else None
            raise GatewayError(f"{self.url}: HTTP {status}: {message or json.dumps(doc)[:300]}")
        return doc


def _model_path(name: str, action: str) -> str:
    # A model name may contain "/": the admin routes take the rest of the path.
    return f"/admin/models/{urllib.parse.quote(name, safe='/')}/{action}"


def cmd_status(args: argparse.Namespace) -> int:
    client = Client(args)
    doc = client.ok("/v1/models")
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(status_text(doc))
    # Per-key use needs an admin key; a gateway without keys lists none.
    keys_status, keys_doc = client.call("/admin/keys")
    if keys_status == 200 and keys_doc.get("data"):
        print()
        print(keys_text(keys_doc["data"]))
    elif keys_status == 403:
        print(f"\nper-key usage not shown: {keys_doc.get('error', {}).get('message')}")
    return 0


def cmd_ps(args: argparse.Namespace) -> int:
    doc = Client(args).ok("/v1/models")
    print(json.dumps(doc, indent=2) if args.json else ps_text(doc))
    return 0


def cmd_model_action(args: argparse.Namespace) -> int:
    """``gateway load|unload|restart NAME``: the model's state afterwards, in one line."""
    model = Client(args).ok(_model_path(args.name, args.command), "POST", timeout=LOAD_TIMEOUT_S)
    line = f"{model['id']}: {model['state']}"
    if model.get("state") == "ready" and model.get("load_seconds") is not None and args.command != "unload":
        line += f" (loaded in {model['load_seconds']:.1f} s)"
    elif model.get("reason"):
        line += f" ({model['reason']})"
    print(line)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    if args.lines is not None and args.lines < 0:
        raise GatewayError(f"--lines: {args.lines} (must be 0 or more)")
    doc = Client(args).ok(_model_path(args.name, "logs"))
    print(logs_text(doc, args.lines))
    return 0


RELOAD_CHANGES = ("unchanged", "removed", "changed", "added")


def cmd_reload(args: argparse.Namespace) -> int:
    client = Client(args)
    status, doc = client.call("/admin/reload", "POST", timeout=LOAD_TIMEOUT_S)
    if "error" in doc:
        raise GatewayError(f"{client.url}: HTTP {status}: {doc['error'].get('message')}")
    if not doc.get("reloaded"):
        print("reload refused; the running models are untouched:", file=sys.stderr)
        for p in doc.get("problems", []):
            print(f"  {p}", file=sys.stderr)
        return 1
    if "nodes" in doc:  # a router (gateway serve --router): its nodes, models and keys
        for section in ("nodes", "models", "keys"):
            changes = doc.get(section, {})
            print(f"{section}: " + "; ".join(f"{key} {', '.join(changes.get(key, [])) or '-'}" for key in RELOAD_CHANGES))
    else:
        for key in RELOAD_CHANGES:
            print(f"{key}: {', '.join(doc.get(key, [])) or '-'}")
        if doc.get("restarted"):  # failed models started again (shown only when there are some)
            print(f"restarted: {', '.join(doc['restarted'])}")
    # Settings read only at start (gateway.config.start_only): each line names what still runs.
    for line in doc.get("not_applied", []):
        print(f"not applied until a restart: {line}", file=sys.stderr)
    return 0


HANDLERS = {
    "status": cmd_status,
    "ps": cmd_ps,
    "load": cmd_model_action,
    "unload": cmd_model_action,
    "restart": cmd_model_action,
    "logs": cmd_logs,
    "reload": cmd_reload,
}
