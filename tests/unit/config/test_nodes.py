"""[[nodes]], [router] and replicas in models.toml (gateway.config.nodes): every mistake at once,
with its dotted path; a config without [[nodes]] is exactly what it was."""

from __future__ import annotations

import pytest

from gateway.config.loading import dump_config, parse_config
from gateway.errors import ConfigError

CLUSTER = """
[[nodes]]
name = "gpu-a"
gpus = ["80GiB", "80GiB/70GiB"]
labels = { "nvidia.com/gpu.product" = "NVIDIA-H100-80GB-HBM3" }

[[nodes]]
name = "gpu-b.example.com"
gpus = []
url = "http://10.0.0.2:8080/"

[[models]]
name = "chat"
path = "/models/chat.gguf"
replicas = 2
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, environ={})
    return exc.value.problems


def test_a_cluster_config_parses_and_round_trips():
    config = parse_config(CLUSTER, environ={})
    a, b = config.nodes
    assert (a.name, a.gpus, a.labels, a.url) == ("gpu-a", ["80GiB", "80GiB/70GiB"], {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, None)
    assert (b.name, b.gpus, b.url) == ("gpu-b.example.com", [], "http://10.0.0.2:8080")
    assert config.models[0].replicas == 2
    assert parse_config(dump_config(config), environ={}) == config


def test_a_config_without_nodes_dumps_exactly_as_before():
    config = parse_config('[[models]]\nname = "m"\npath = "/m.gguf"\n', environ={})
    assert config.nodes is None and config.router is None and config.models[0].replicas is None
    dumped = dump_config(config)
    assert "nodes" not in dumped and "replicas" not in dumped and "router" not in dumped
    assert "internal_api_key" not in dumped


def test_every_node_mistake_is_reported_at_once_with_its_path():
    text = """
[router]
poll_interval_s = 0

[[nodes]]
name = "GPU_A"
gpus = ["80XB"]
url = "ftp://x"
colour = "red"

[[nodes]]
name = "b"
gpus = "24GiB"
labels = { "kubernetes.io/hostname" = "b" }

[[models]]
name = "m"
path = "/m.gguf"
replicas = 0
"""
    assert problems(text) == [
        "router.poll_interval_s: 0 (must be > 0)",
        "nodes[0].name: 'GPU_A' (must be the Kubernetes node name: lowercase letters, digits, - and ., at most 63 characters)",
        "nodes[0].gpus[0]: '80XB' (unknown unit 'XB'; use B, KiB, MiB, GiB, TiB (binary) or KB, MB, GB, TB (decimal))",
        "nodes[0].url: 'ftp://x' (must be http://HOST:PORT or https://HOST:PORT, without a path)",
        "nodes[0].colour: unknown key",
        "nodes[1].gpus: '24GiB' (must be a list)",
        "nodes[1].labels: {'kubernetes.io/hostname': 'b'} ('kubernetes.io/hostname' is set from the node's name)",
        "models[0].replicas: 0 (must be >= 1)",
    ]


def test_labels_must_be_kubernetes_labels():
    text = CLUSTER.replace('"nvidia.com/gpu.product" = "NVIDIA-H100-80GB-HBM3"', '"bad key!" = "v"')
    (line,) = problems(text)
    assert line.startswith("nodes[0].labels: {'bad key!': 'v'} ('bad key!' is not a Kubernetes label key")


def test_duplicate_node_names_are_refused():
    text = CLUSTER.replace('name = "gpu-b.example.com"', 'name = "gpu-a"')
    assert problems(text) == ["nodes[1].name: 'gpu-a' (duplicate of nodes[0].name)"]


def test_replicas_cannot_exceed_the_nodes():
    assert problems(CLUSTER.replace("replicas = 2", "replicas = 3")) == [
        "models[0].replicas: 3 (must be <= 2, the number of [[nodes]]: replicas run on different nodes)"
    ]


def test_replicas_and_router_need_nodes():
    text = '[router]\n[[models]]\nname = "m"\npath = "/m.gguf"\nreplicas = 2\n'
    assert problems(text) == [
        "router: needs [[nodes]] (the router forwards to the nodes' gateways)",
        "models[0].replicas: 2 (needs [[nodes]]: replicas run on different nodes)",
    ]


def test_gpu_indices_and_a_global_inventory_do_not_mix_with_nodes():
    text = '[planner]\ngpus = ["24GiB"]\ndevices = [0]\n' + CLUSTER.replace("replicas = 2", "replicas = 2\ngpus = [0]")
    assert problems(text) == [
        "planner.gpus: ['24GiB'] (not with [[nodes]]: each node declares its own gpus)",
        "planner.devices: [0] (not with [[nodes]]: a node's gateway sees only the GPUs Kubernetes gives it, numbered from 0)",
        "models[0].gpus: [0] (not with [[nodes]]: a node's gateway sees only the GPUs Kubernetes gives it, numbered from 0; use max_vram_mib to cap a model)",
    ]


def test_the_internal_key_comes_from_the_environment_like_the_other_gateway_keys():
    config = parse_config(CLUSTER, environ={"GATEWAY_INTERNAL_API_KEY": "s3cret"})
    assert config.gateway.internal_api_key == "s3cret"
