"""The names a cluster's parts have in Kubernetes, in one place: the renderer writes them and
the router finds the nodes' gateways by them."""

from __future__ import annotations

import hashlib
import re

from gateway.config.nodes import NodeConfig

APP = "vram-gateway"
# Every node's gateway and the router listen here inside their pods.
PORT = 8080
NODE_PREFIX = f"{APP}-node-"
ROUTER_NAME = f"{APP}-router"
# Kubernetes' default cluster DNS domain (a cluster may set another: list it in allowed_hosts).
CLUSTER_DOMAIN = "cluster.local"
# Kubernetes Service names are DNS-1035 labels: at most 63 lowercase letters, digits and -.
_MAX_NAME = 63
_HASH_CHARS = 8


def object_name(prefix: str, name: str) -> str:
    """``prefix + name`` as a Kubernetes object name; a name that had to change (dots, length)
    gets a hash of the original, so two nodes never share one."""
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if slug == name and len(prefix) + len(slug) <= _MAX_NAME:
        return prefix + slug
    digest = hashlib.sha256(name.encode()).hexdigest()[:_HASH_CHARS]
    room = _MAX_NAME - len(prefix) - _HASH_CHARS - 1
    return f"{prefix}{slug[:room].rstrip('-')}-{digest}"


def node_object_name(node: str) -> str:
    """The ConfigMap, Deployment and Service of one node's gateway."""
    return object_name(NODE_PREFIX, node)


def service_hosts(name: str, namespace: str | None) -> list[str]:
    """The names a Service is reached by inside the cluster: its own name (from its namespace),
    and with a known namespace also ``name.ns``, ``name.ns.svc`` and the full name under the
    default cluster domain (``cluster.local``)."""
    if not namespace:
        return [name]
    return [name, f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.{CLUSTER_DOMAIN}"]


def node_url(node: NodeConfig) -> str:
    """Where the router reaches a node's gateway: its ``url``, else its Service in the namespace."""
    return node.url or f"http://{node_object_name(node.name)}:{PORT}"
