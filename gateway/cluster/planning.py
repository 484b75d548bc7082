"""From a cluster config to a cluster plan, and from the plan to each node's own models.toml.

The I/O the pure planner (planner.cluster) refuses to do lives here: the model headers (through
gateway.placement.planning, the same reading as on one machine) and the previous placement file.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import tomli_w

from gateway.cluster.naming import PORT, node_url
from gateway.config.schema import Config, ModelConfig
from gateway.errors import ConfigError
from gateway.http.network import LOOPBACK_NAMES
from gateway.placement.planning import ModelFiles, model_request, plan_policy
from planner.cluster import ClusterModel, ClusterPlan, Node, NodePlan, plan_cluster
from planner.devices import declared_devices
from planner.model_info import ModelInfo

# Written next to the manifests by `gateway render k8s`, read back by the next render so that
# models stay on their nodes (kubectl apply -f DIR reads only .yaml, .yml and .json files).
PLACEMENT_FILE = "placement.toml"
# The models volume inside every node's pod.
MODELS_MOUNT = "/models"
# [gateway] keys a node's gateway takes from the cluster config. The others are the router's:
# where it listens (host, port), clients' keys (api_keys: a node takes the internal key from its
# Secret), default_model (kept only where that model runs), what probes may see unasked and who
# may reach it (allowed_hosts, allowed_origins, allow_unauthenticated_network: a node's are its
# own, set by ``keyless_network`` when the cluster has no internal key).
NODE_GATEWAY_KEYS = (
    "log_level",
    "log_format",
    "request_timeout_s",
    "load_timeout_s",
    "shutdown_grace_s",
    "max_body_bytes",
    "restart_max_failures",
    "restart_window_s",
    "restart_backoff_s",
)
# [planner] keys about the machine that renders, not the nodes: model_headers is a folder here
# (header copies for checking the plan); the pods read their model files.
LOCAL_PLANNER_KEYS = {"model_headers"}
# Secrets never go into a ConfigMap: the Deployments read them from Secrets instead.
SECRET_GATEWAY_KEYS = ("api_keys", "internal_api_key")


def keyless_network(gateway: dict[str, Any], service_names: list[str]) -> None:
    """Make a [gateway] table of a pod that runs without API keys serve the cluster network.

    Its pod listens on 0.0.0.0, which a gateway without keys refuses unless
    ``allow_unauthenticated_network`` says so: written here, so the choice is visible in the
    manifests. Its ``allowed_hosts`` are the names it is reached by: its Service's
    (``service_names``), loopback (kubectl port-forward, the probes) and any the table already
    lists. Names rather than "*": the Host check is what keeps a browser from using the pod
    through a kubectl port-forward on someone's machine (a page whose name is re-bound to
    127.0.0.1 carries that name), and inside the cluster the Service names are what clients
    send. A client using another name (an Ingress, another cluster domain, a pod IP: Prometheus
    scraping pods) needs it listed in the cluster config's allowed_hosts, or keys.
    """
    gateway["allow_unauthenticated_network"] = True
    names = [*gateway.get("allowed_hosts", ()), *service_names, *LOOPBACK_NAMES]
    gateway["allowed_hosts"] = list(dict.fromkeys(names))


def cluster_nodes(config: Config) -> list[Node]:
    return [Node(n.name, tuple(declared_devices(n.gpus))) for n in config.nodes or ()]


def cluster_models(config: Config, infos: dict[str, ModelInfo]) -> list[ClusterModel]:
    """Every model whose header could be read, with its replicas and load mode."""
    return [
        ClusterModel(model_request(m, infos[m.name]), replicas=m.replicas or 1, on_demand=m.load == "on_demand")
        for m in config.models
        if m.name in infos
    ]


def plan_cluster_config(
    config: Config, infos: dict[str, ModelInfo], previous: dict[str, tuple[str, ...]] | None = None
) -> ClusterPlan:
    return plan_cluster(cluster_models(config, infos), cluster_nodes(config), plan_policy(config), previous)


def cluster_problems(config: Config, files: ModelFiles, previous: dict[str, tuple[str, ...]] | None = None) -> list[str]:
    """`validate-config` for a cluster: every model file's problem, then every plan problem."""
    result = plan_cluster_config(config, files.infos, previous)
    return list(files.problems) + [f"plan: {p}" for p in result.problems]


# --------------------------------------------------------------------------------------------
# The previous placement


def parse_placement(text: str) -> dict[str, tuple[str, ...]]:
    """``[models]`` of a placement file: each model's nodes, the ones it kept first."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"TOML syntax error: {exc}"]) from None
    problems = [f"{key}: unknown key (a placement file has only [models])" for key in data if key != "models"]
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise ConfigError(problems + [f"models: {models!r} (must be a table: model = [nodes])"])
    out: dict[str, tuple[str, ...]] = {}
    for name, nodes in models.items():
        if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
            problems.append(f"models.{name}: {nodes!r} (must be a list of node names)")
            continue
        out[name] = tuple(nodes)
    if problems:
        raise ConfigError(problems)
    return out


def load_placement(path: str | os.PathLike[str]) -> dict[str, tuple[str, ...]]:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{file}: cannot read the placement file ({getattr(exc, 'strerror', None) or exc})"]) from None
    try:
        return parse_placement(text)
    except ConfigError as exc:
        raise ConfigError([f"{file}: {p}" for p in exc.problems], source=str(file)) from None


def dump_placement(result: ClusterPlan) -> str:
    header = (
        "# Where each model runs, written by `gateway render k8s`. The next render keeps every model\n"
        "# on these nodes unless it must move; delete a line to let that model be placed afresh.\n"
    )
    return header + tomli_w.dumps({"models": {name: list(nodes) for name, nodes in result.assigned}})


# --------------------------------------------------------------------------------------------
# Each node's models.toml


def container_path(path: str, models_dir: Path | None) -> str:
    """A model's path as the node's pod sees it: files under ``models_dir`` come from the models
    volume at /models; ``package:`` paths and other paths are kept as written."""
    if models_dir is None or path.startswith("package:"):
        return path
    try:
        rel = Path(path).resolve().relative_to(Path(models_dir).resolve())
    except ValueError:
        return path
    return str(PurePosixPath(MODELS_MOUNT, *rel.parts))


def _model_doc(model: ModelConfig, models_dir: Path | None, *, keep_replicas: bool = False) -> dict[str, Any]:
    doc = model.model_dump(mode="json", exclude_unset=True, exclude_none=True)
    if not keep_replicas:
        doc.pop("replicas", None)  # a node's gateway serves one copy
    doc["path"] = container_path(model.path, models_dir)
    return doc


def node_config_doc(config: Config, node: NodePlan, models_dir: Path | None) -> dict[str, Any]:
    """One node's models.toml: the cluster's settings for a node and the models planned there."""
    serving = set(node.models)
    gateway = {
        k: v
        for k, v in config.gateway.model_dump(mode="json", exclude_unset=True, exclude_none=True).items()
        if k in NODE_GATEWAY_KEYS
    }
    gateway["port"] = PORT
    wanted = config.gateway.default_model
    default = next((m.name for m in config.models if m.name == wanted), None) or next(
        (m.name for m in config.models if wanted in m.aliases), None
    )
    if default is not None and default in serving:
        # Requests without "model" reach this node only for the cluster's default model.
        gateway["default_model"] = config.gateway.default_model
    doc: dict[str, Any] = {"gateway": gateway}
    planner = config.planner.model_dump(mode="json", exclude_unset=True, exclude_none=True, exclude=LOCAL_PLANNER_KEYS)
    if planner:
        doc["planner"] = planner
    doc["models"] = [_model_doc(m, models_dir) for m in config.models if m.name in serving]
    return doc


def router_config_doc(config: Config, models_dir: Path | None) -> dict[str, Any]:
    """The router's cluster.toml: the cluster config with every node's address filled in."""
    doc = config.model_dump(mode="json", exclude_unset=True, exclude_none=True, exclude={"planner": LOCAL_PLANNER_KEYS})
    gateway = {k: v for k, v in doc.get("gateway", {}).items() if k not in SECRET_GATEWAY_KEYS and k != "host"}
    gateway["port"] = PORT
    doc["gateway"] = gateway
    doc["models"] = [_model_doc(m, models_dir, keep_replicas=True) for m in config.models]
    doc["nodes"] = [{**n.model_dump(mode="json", exclude_unset=True, exclude_none=True), "url": node_url(n)} for n in config.nodes or ()]
    return doc


def toml_text(doc: dict[str, Any], comment: str) -> str:
    """A document as TOML with a comment on top; the same document always gives the same text."""
    lines = "".join(f"# {line}\n" if line else "#\n" for line in comment.splitlines())
    return lines + "\n" + tomli_w.dumps(doc)
