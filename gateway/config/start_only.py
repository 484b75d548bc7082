"""The ``[gateway]`` settings a running gateway or router reads only when it starts.

A reload (SIGHUP, ``gateway reload``, ``POST /admin/reload``) applies the rest of the file, but
these are read once: the listening socket (``host``, ``port``, bound by the server process), the
app's body limit (``max_body_bytes``, given to Litestar when the app is built), logging
(``log_level``, ``log_format``: set up in both processes at start) and ``shutdown_grace_s`` (the
server process's drain and kill timeouts are set from it at start, so a new value could only
half apply). A reload keeps their running values, so the config in force always says what is
running (the network-exposure check sees the address actually bound), and names each new value
that waits for the next start (``not_applied``).
"""

from __future__ import annotations

from gateway.config.schema import Config

START_ONLY = ("host", "port", "max_body_bytes", "log_level", "log_format", "shutdown_grace_s")


def keep_start_only(running: Config, new: Config, runner: str) -> tuple[Config, list[str]]:
    """``new`` with ``running``'s START_ONLY settings, and a line for each new value that is not
    applied (``runner``: "gateway" or "router", as the line names what keeps running)."""
    kept = {name: getattr(running.gateway, name) for name in START_ONLY}
    not_applied = [
        f"gateway.{name}: {getattr(new.gateway, name)!r} (the {runner} runs with {value!r} until it restarts)"
        for name, value in kept.items()
        if getattr(new.gateway, name) != value
    ]
    return new.model_copy(update={"gateway": new.gateway.model_copy(update=kept)}), not_applied
