"""Reloading the router: ``POST /admin/reload``, the work behind SIGHUP to ``gateway serve
--router`` (forwarded by its server process, gateway.http.server) and ``gateway reload --url``.

The router re-reads the cluster config it was started with, and the keys file it names, as a
node re-reads its models.toml (gateway.config.source.ConfigFile, GATEWAY_* laid over it), and
applies it whole or not at all: an invalid file (or one without ``[[nodes]]``, or one that would
leave a router listening beyond loopback without keys) is refused with every problem, and
nothing changes.

Applied at once: ``[[keys]]`` and ``api_keys`` (gateway.access.gate.Access follows the config in
force: a new key works from its next request, a removed one is refused from its next request,
requests in flight finish), ``[[nodes]]`` (added, removed, a new ``url``; gateway.router.directory),
``[[models]]`` (names, aliases, replicas), ``[router]``'s polling and the ``[gateway]`` settings
read per request (``internal_api_key``, ``default_model``, ``health_requires_key`` ...). The
settings read when the router starts (gateway.config.start_only, the same as a gateway's) keep
their running values; a new value there is named in the answer (``not_applied``) and in the
log, for the next start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.access.keyring import KeyRing, keys_required
from gateway.cluster.naming import node_url
from gateway.config.schema import Config
from gateway.config.source import ConfigFile
from gateway.config.start_only import keep_start_only
from gateway.errors import ConfigError
from gateway.http.network import exposure_problem


class Reloadable(Protocol):
    """What a reload needs of the router (gateway.router.app.Router): its config in force, a way
    to install a new one, a poll of every node, and the lock that runs one reload at a time."""

    @property
    def config(self) -> Config: ...

    @property
    def reloading(self) -> asyncio.Lock: ...

    def apply(self, config: Config) -> None: ...

    async def poll_all(self) -> None: ...

log = logging.getLogger("gateway.router")


def router_config_problems(config: Config) -> list[str]:
    """Why a valid config cannot be a router's (empty when it can): the one check for
    ``serve --router`` and for a reload."""
    if not config.nodes:
        return ["nodes: none (the router forwards to the nodes of a cluster config: add [[nodes]]; docs/cluster.md)"]
    return []


@dataclass
class Changes:
    """Names, by what a reload did to them."""

    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)


def diff_named(before: Mapping[str, Any], after: Mapping[str, Any]) -> Changes:
    return Changes(
        unchanged=[n for n in after if n in before and before[n] == after[n]],
        removed=[n for n in before if n not in after],
        changed=[n for n in after if n in before and before[n] != after[n]],
        added=[n for n in after if n not in before],
    )


@dataclass
class RouterReloadResult:
    reloaded: bool
    problems: list[str] = field(default_factory=list)
    nodes: Changes = field(default_factory=Changes)
    models: Changes = field(default_factory=Changes)
    keys: Changes = field(default_factory=Changes)  # by name; a key's hash is never shown
    not_applied: list[str] = field(default_factory=list)  # gateway.config.start_only, until a restart

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def plan_reload(running: Config, new: Config) -> tuple[Config, RouterReloadResult]:
    """What applying ``new`` over ``running`` means: the config to put in force (``new`` with
    ``running``'s start-only settings) and what changes; refused (``reloaded`` False) with its
    problems when ``new`` cannot serve as this router's config."""
    problems = router_config_problems(new)
    # The address stays the one bound at start: a reload may not drop the keys it needs.
    exposed = exposure_problem(new, keys_required(new), host=running.gateway.host)
    if exposed is not None:
        problems.append(exposed)
    if problems:
        return running, RouterReloadResult(False, problems=problems)
    applied, not_applied = keep_start_only(running, new, "router")
    result = RouterReloadResult(
        True,
        nodes=diff_named({n.name: node_url(n) for n in running.nodes or ()}, {n.name: node_url(n) for n in applied.nodes or ()}),
        models=diff_named({m.name: m for m in running.models}, {m.name: m for m in applied.models}),
        keys=diff_named(KeyRing.from_config(running).keys, KeyRing.from_config(applied).keys),
        not_applied=not_applied,
    )
    return applied, result


async def reload_router(router: Reloadable, config_file: ConfigFile) -> RouterReloadResult:
    """Re-read the cluster config and apply it, or refuse it with every problem. The file is
    read and checked in a thread: a big keys file takes seconds to parse, and the router's
    requests and polls go on meanwhile."""
    # One at a time: a reload that read the file first must not apply it after a later one.
    async with router.reloading:
        try:
            new = await asyncio.to_thread(config_file.read)
        except ConfigError as exc:
            result = RouterReloadResult(False, problems=list(exc.problems))
        else:
            applied, result = plan_reload(router.config, new)
            if result.reloaded:
                router.apply(applied)
                # Know the new nodes before answering: the next request may be for one of them.
                await router.poll_all()
    if result.reloaded:
        log.info(
            "reloaded %s: nodes %s; models %s; keys %s",
            config_file.path, _summary(result.nodes), _summary(result.models), _summary(result.keys),
        )
        for line in result.not_applied:
            log.warning("reload: not applied until the router restarts: %s", line)
    else:
        log.error("reload of %s refused, nothing changed:\n  %s", config_file.path, "\n  ".join(result.problems))
    return result


def _summary(changes: Changes) -> str:
    parts = [f"{what}: {', '.join(names)}" for what, names in dataclasses.asdict(changes).items() if names and what != "unchanged"]
    return f"({'; '.join(parts)})" if parts else "(unchanged)"
