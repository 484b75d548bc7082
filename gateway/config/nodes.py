"""The cluster part of models.toml: ``[[nodes]]`` and ``[router]``.

A config with ``[[nodes]]`` describes several GPU machines (Kubernetes nodes); ``gateway plan``
places its models on them, ``gateway render k8s`` writes one gateway per node and a router in
front, and ``gateway serve --router`` is that router. A config without ``[[nodes]]`` is the
one-machine config it always was.

``Config`` (gateway.config.schema) holds these tables; the checks that involve other tables
(``cluster_problems``) are called by gateway.config.rules so that their problems are reported
with all the others, at once, with dotted paths.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from planner.units import parse_gpu_spec

# A Kubernetes node name (DNS-1123 subdomain) short enough to be the value of the
# kubernetes.io/hostname label that pins a node's gateway to it (label values: 63 characters).
_NODE_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME_RE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_URL_RE = re.compile(r"https?://[^\s/?#@]+/?")
HOSTNAME_LABEL = "kubernetes.io/hostname"

Loc = tuple[str | int, ...]
Getter = Callable[[str], Any]


def _node_name(value: str) -> str:
    if len(value) > 63 or not _NODE_NAME_RE.fullmatch(value):
        raise ValueError("must be the Kubernetes node name: lowercase letters, digits, - and ., at most 63 characters")
    return value


def _gpu_spec(value: str) -> str:
    parse_gpu_spec(value)  # raises ValueError with a message meant for the user
    return value


def _labels(values: dict[str, str]) -> dict[str, str]:
    for key, value in values.items():
        prefix, slash, name = key.rpartition("/")
        if not slash:
            prefix, name = "", key
        if key == HOSTNAME_LABEL:
            raise ValueError(f"{key!r} is set from the node's name")
        if len(name) > 63 or not _LABEL_NAME_RE.fullmatch(name) or (slash and not _NODE_NAME_RE.fullmatch(prefix)):
            raise ValueError(f"{key!r} is not a Kubernetes label key ([prefix/]name, name at most 63 letters, digits, - _ .)")
        if len(value) > 63 or (value and not _LABEL_NAME_RE.fullmatch(value)):
            raise ValueError(f"{key} = {value!r}: not a Kubernetes label value (at most 63 letters, digits, - _ .)")
    return values


def _url(value: str) -> str:
    if not _URL_RE.fullmatch(value):
        raise ValueError("must be http://HOST:PORT or https://HOST:PORT, without a path")
    return value.rstrip("/")


class NodeConfig(BaseModel):
    """One ``[[nodes]]`` table: a GPU machine the cluster's models may run on."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    # The Kubernetes node: its gateway is pinned there by the kubernetes.io/hostname label.
    name: Annotated[str, AfterValidator(_node_name)]
    # Its GPUs, as [planner] gpus declares them ("80GiB" or "80GiB/75GiB"); [] for a CPU node.
    gpus: list[Annotated[str, AfterValidator(_gpu_spec)]]
    # More node labels the gateway's pod must find on it (e.g. nvidia.com/gpu.product).
    labels: Annotated[dict[str, str], AfterValidator(_labels)] = Field(default_factory=dict)
    # Where the router reaches this node's gateway; unset: the Service `gateway render k8s` writes.
    url: Annotated[str, AfterValidator(_url)] | None = None


class RouterConfig(BaseModel):
    """``[router]``: how ``gateway serve --router`` watches the nodes."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    # How often the router reads each node's /v1/models (models, states, queues).
    poll_interval_s: Annotated[float, Field(gt=0)] = 1.0
    # A node that does not answer a poll (or accept a connection) within this is down.
    poll_timeout_s: Annotated[float, Field(gt=0)] = 2.0


def cluster_problems(
    planner: Getter,
    models: Sequence[Getter],
    nodes: Sequence[Getter] | None,
    *,
    has_nodes: bool,
    has_router: bool,
    valid: Callable[..., bool],
) -> list[tuple[Loc, str]]:
    """The checks between [[nodes]] and the other tables; ``valid(v)`` is False for a value
    that failed its own validation (already reported), so checks that need it are skipped."""
    problems: list[tuple[Loc, str]] = []
    if not has_nodes:
        for i, get in enumerate(models):
            replicas = get("replicas")
            if valid(replicas) and replicas is not None and replicas > 1:
                problems.append((("models", i, "replicas"), f"{replicas!r} (needs [[nodes]]: replicas run on different nodes)"))
        if has_router:
            problems.append((("router",), "needs [[nodes]] (the router forwards to the nodes' gateways)"))
        return problems

    gpus = planner("gpus")
    if valid(gpus) and gpus is not None:
        problems.append((("planner", "gpus"), f"{gpus!r} (not with [[nodes]]: each node declares its own gpus)"))
    pod_gpus = "not with [[nodes]]: a node's gateway sees only the GPUs Kubernetes gives it, numbered from 0"
    devices = planner("devices")
    if valid(devices) and devices is not None:
        problems.append((("planner", "devices"), f"{devices!r} ({pod_gpus})"))
    for i, get in enumerate(models):
        model_gpus = get("gpus")
        if valid(model_gpus) and model_gpus is not None:
            problems.append((("models", i, "gpus"), f"{model_gpus!r} ({pod_gpus}; use max_vram_mib to cap a model)"))
        replicas = get("replicas")
        if nodes is not None and valid(replicas) and replicas is not None and replicas > len(nodes):
            problems.append((
                ("models", i, "replicas"),
                f"{replicas!r} (must be <= {len(nodes)}, the number of [[nodes]]: replicas run on different nodes)",
            ))
    owner: dict[str, str] = {}
    for i, get in enumerate(nodes or ()):
        name = get("name")
        if not valid(name):
            continue
        if name in owner:
            problems.append((("nodes", i, "name"), f"{name!r} (duplicate of {owner[name]})"))
        else:
            owner[name] = f"nodes[{i}].name"
    return problems
