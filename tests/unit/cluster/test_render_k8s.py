"""`gateway render k8s` on configs/cluster-example.toml: manifests that kubernetes-validate
accepts, the same bytes every time, each node's models.toml valid on that node's GPUs, and a
re-render that changes only the nodes whose models changed."""

from __future__ import annotations

import shutil
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from gateway.access.keyring import keys_required
from gateway.cli.main import main, validate
from gateway.cluster.naming import node_object_name
from gateway.cluster.render_k8s import GPU_RESOURCE, NODE_LABEL
from gateway.config.loading import load_config, parse_config
from gateway.http.network import exposure_problem, host_name, served_hosts
from tests.cluster_example import write_example

yaml = pytest.importorskip("yaml")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cluster") / "models"
    write_example(folder)
    return folder


@pytest.fixture(scope="module")
def config_path(models_dir) -> Path:
    return models_dir / "cluster-example.toml"


def render(out: Path, config: Path, models_dir: Path, *extra: str) -> int:
    return main(["render", "k8s", "--config", str(config), "--out", str(out), "--models-dir", str(models_dir), *extra])


@pytest.fixture(scope="module")
def out(tmp_path_factory, config_path, models_dir) -> Path:
    folder = tmp_path_factory.mktemp("rendered")
    assert render(folder, config_path, models_dir) == 0
    return folder


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def by_kind(path: Path) -> dict[str, dict]:
    return {d["kind"]: d for d in docs(path)}


def node_files(out: Path) -> list[Path]:
    return sorted(out.glob("vram-gateway-node-*.yaml"))


def tool(name: str) -> str:
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install the project's test extras)")
    return found


def test_one_file_per_node_the_router_and_the_placement(out):
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "placement.toml",
        "vram-gateway-node-gpu-h100-a.yaml",
        "vram-gateway-node-gpu-h100-b.yaml",
        "vram-gateway-node-gpu-l4-c.yaml",
        "vram-gateway-router.yaml",
    ]


def test_the_manifests_pass_kubernetes_validate(out):
    files = [str(p) for p in sorted(out.glob("*.yaml"))]
    result = subprocess.run([tool("kubernetes-validate"), "--strict", "--quiet", *files], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rendering_again_gives_the_same_bytes(tmp_path, out, config_path, models_dir):
    # From scratch, and again from the placement the first render wrote.
    assert render(tmp_path / "fresh", config_path, models_dir) == 0
    assert render(tmp_path / "fresh", config_path, models_dir) == 0
    for path in out.iterdir():
        assert (tmp_path / "fresh" / path.name).read_bytes() == path.read_bytes(), path.name


def test_each_node_deployment_is_pinned_to_its_node_and_serves_the_models_placed_there(out, config_path):
    config = load_config(config_path, environ={})
    placement = tomllib.loads((out / "placement.toml").read_text())["models"]
    for path in node_files(out):
        kinds = by_kind(path)
        pod = kinds["Deployment"]["spec"]["template"]
        node_name = pod["metadata"]["labels"][NODE_LABEL]
        node = next(n for n in config.nodes if n.name == node_name)
        assert pod["spec"]["nodeSelector"] == {"kubernetes.io/hostname": node.name, **node.labels}
        assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
        assert kinds["Deployment"]["spec"]["strategy"] == {"type": "Recreate"}
        (container,) = pod["spec"]["containers"]
        assert container["args"] == ["gateway", "serve", "--config", "/etc/vram-gateway/models.toml"]
        resources = container["resources"]
        assert resources["requests"][GPU_RESOURCE] == resources["limits"][GPU_RESOURCE] >= 1
        models = {m.name for m in parse_config(kinds["ConfigMap"]["data"]["models.toml"], environ={}).models}
        assert models == {name for name, nodes in placement.items() if node.name in nodes}


def test_gpu_requests_match_the_plan(out, config_path, capsys):
    assert main(["plan", "--config", str(config_path), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    for node in plan["nodes"]:
        path = out / f"vram-gateway-node-{node['name']}.yaml"
        (container,) = by_kind(path)["Deployment"]["spec"]["template"]["spec"]["containers"]
        assert container["resources"]["limits"][GPU_RESOURCE] == len(node["gpus_used"])


def test_each_nodes_configmap_validates_onto_the_gpus_its_pod_gets(out, config_path, models_dir, tmp_path):
    config = load_config(config_path, environ={})
    plan_nodes = {}
    for path in node_files(out):
        kinds = by_kind(path)
        text = kinds["ConfigMap"]["data"]["models.toml"]
        name = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"][NODE_LABEL]
        gpus = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][GPU_RESOURCE]
        declared = next(n.gpus for n in config.nodes if n.name == name)
        # The pod's /models is the test's model folder.
        local = tmp_path / f"{name}.toml"
        local.write_text(text.replace('"/models/', f'"{models_dir}/'), encoding="utf-8")
        assert validate(local, ",".join(declared[:gpus])) == [], name
        plan_nodes[name] = {m.name for m in load_config(local, environ={}).models}
    # Every model runs on as many nodes as its replicas.
    for m in config.models:
        assert sum(m.name in names for names in plan_nodes.values()) == (m.replicas or 1), m.name


def test_node_configs_keep_the_models_settings_and_drop_the_routers(out):
    text = by_kind(out / "vram-gateway-node-gpu-l4-c.yaml")["ConfigMap"]["data"]["models.toml"]
    node = parse_config(text, environ={})
    assert node.nodes is None and node.gateway.port == 8080 and node.gateway.api_keys == []
    assert all(m.replicas is None for m in node.models)
    assert all(m.path.startswith("/models/") for m in node.models)
    chat = next(m for m in node.models if m.name == "chat")
    assert (chat.n_ctx, chat.max_concurrency, chat.aliases) == (8192, 2, ["llama-3.1-8b-instruct"])


def test_services_select_their_pods(out):
    for path in [*node_files(out), out / "vram-gateway-router.yaml"]:
        kinds = by_kind(path)
        labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
        selector = kinds["Service"]["spec"]["selector"]
        assert selector.items() <= labels.items(), path.name
        assert kinds["Deployment"]["spec"]["selector"]["matchLabels"] == selector


def test_the_routers_config_names_every_nodes_service(out):
    kinds = by_kind(out / "vram-gateway-router.yaml")
    config = parse_config(kinds["ConfigMap"]["data"]["cluster.toml"], environ={})
    services = {by_kind(p)["Service"]["metadata"]["name"] for p in node_files(out)}
    assert {n.url for n in config.nodes} == {f"http://{s}:8080" for s in services}
    (container,) = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["gateway", "serve", "--router", "/etc/vram-gateway/cluster.toml"]
    env = {e["name"]: e for e in container["env"]}
    assert env["GATEWAY_API_KEYS"]["valueFrom"]["secretKeyRef"]["name"] == "vram-gateway"
    assert env["GATEWAY_INTERNAL_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "vram-gateway-internal"


def test_keys_in_the_config_never_reach_a_configmap(tmp_path, config_path, models_dir, capsys):
    text = config_path.read_text().replace("port = 8080", 'port = 8080\napi_keys = ["sk-client"]\ninternal_api_key = "sk-internal"', 1)
    cfg = tmp_path / "with-keys.toml"
    cfg.write_text(text)
    assert render(tmp_path / "out", cfg, models_dir) == 0
    for path in (tmp_path / "out").iterdir():
        assert "sk-client" not in path.read_text() and "sk-internal" not in path.read_text()
    assert "not written into ConfigMaps" in capsys.readouterr().err


def test_adding_a_model_rerenders_only_the_node_it_lands_on(tmp_path, out, config_path, models_dir):
    # Start from the committed render, as an operator would.
    work = tmp_path / "out"
    shutil.copytree(out, work)
    before = {p.name: p.read_bytes() for p in work.iterdir()}
    text = config_path.read_text() + f'\n[[models]]\nname = "extra"\npath = "{models_dir}/Llama-3.2-3B-Instruct-Q4_K_M.gguf"\nn_ctx = 4096\n'
    cfg = tmp_path / config_path.name  # the generated files name their source
    cfg.write_text(text)
    assert render(work, cfg, models_dir) == 0
    changed = sorted(p.name for p in work.iterdir() if p.read_bytes() != before.get(p.name))
    node_changed = [n for n in changed if n.startswith("vram-gateway-node-")]
    assert len(node_changed) == 1
    assert set(changed) == {*node_changed, "placement.toml", "vram-gateway-router.yaml"}


def test_a_removed_nodes_file_is_removed_and_its_models_move(tmp_path, out, config_path, models_dir, capsys):
    work = tmp_path / "out"
    shutil.copytree(out, work)
    text = config_path.read_text()
    # Drop the L4 node (and chat's third replica); its models fit on the H100s.
    start = text.index('[[nodes]]\nname = "gpu-l4-c"')
    end = text.index("# The big models")
    cfg = tmp_path / config_path.name
    cfg.write_text((text[:start] + text[end:]).replace("replicas = 3", "replicas = 2"))
    capsys.readouterr()
    assert render(work, cfg, models_dir) == 0
    printed = capsys.readouterr().out
    assert not (work / "vram-gateway-node-gpu-l4-c.yaml").exists()
    assert "removed " in printed and "moved: model 'mistral-7b-instruct': gpu-l4-c -> " in printed
    assert "(node gpu-l4-c is no longer in the cluster)" in printed


def test_a_plan_that_does_not_fit_writes_nothing(tmp_path, config_path, models_dir, capsys):
    text = config_path.read_text().replace('gpus = ["80GiB", "80GiB"]', 'gpus = ["8GiB"]')
    cfg = tmp_path / "small.toml"
    cfg.write_text(text)
    assert render(tmp_path / "out", cfg, models_dir) == 1
    assert not (tmp_path / "out").exists()
    err = capsys.readouterr().err
    assert "error: the models do not fit:" in err and "fits on no node: node " in err


def pod_config(path: Path, file: str):
    """The config a pod of ``path`` starts with: its ConfigMap's file under the env its container
    sets (a Secret's value is absent, as when the optional Secret was not created)."""
    kinds = by_kind(path)
    (container,) = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    environ = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    return parse_config(kinds["ConfigMap"]["data"][file], environ=environ)


def test_a_cluster_without_keys_starts_and_the_router_reaches_its_nodes(out):
    # Issue 21 items 3 and 8: a pod on 0.0.0.0 without keys exits at start unless its config says
    # allow_unauthenticated_network, and a node answers only the Host names it is served under.
    router = pod_config(out / "vram-gateway-router.yaml", "cluster.toml")
    assert router.gateway.host == "0.0.0.0"
    assert exposure_problem(router, keys_required(router)) is None
    served = served_hosts(router.gateway, keys_required(router))
    assert served is not None and {"vram-gateway-router", "localhost", "127.0.0.1"} <= served
    for node in router.nodes:
        path = out / f"{node_object_name(node.name)}.yaml"
        config = pod_config(path, "models.toml")
        assert config.gateway.host == "0.0.0.0"
        assert exposure_problem(config, keys_required(config)) is None, path.name
        served = served_hosts(config.gateway, keys_required(config))
        # The Host the router sends (its node URL) and the probes' (localhost) are served; another is not.
        assert host_name(urlsplit(node.url).netloc) in served, path.name
        assert "localhost" in served and "evil.example" not in served
        probe = by_kind(path)["Deployment"]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
        assert {"name": "Host", "value": "localhost"} in probe["httpGet"]["httpHeaders"]


def test_with_a_namespace_the_routers_full_service_names_are_served(tmp_path, config_path, models_dir):
    assert render(tmp_path / "out", config_path, models_dir, "--namespace", "llm") == 0
    router = pod_config(tmp_path / "out" / "vram-gateway-router.yaml", "cluster.toml")
    served = served_hosts(router.gateway, False)
    assert {"vram-gateway-router.llm", "vram-gateway-router.llm.svc", "vram-gateway-router.llm.svc.cluster.local"} <= served


def test_a_cluster_with_keys_renders_no_keyless_network_and_refuses_to_start_without_its_secrets(tmp_path, config_path, models_dir):
    text = config_path.read_text().replace("port = 8080", 'port = 8080\napi_keys = ["sk-client"]\ninternal_api_key = "sk-internal"', 1)
    cfg = tmp_path / "with-keys.toml"
    cfg.write_text(text)
    assert render(tmp_path / "out", cfg, models_dir) == 0
    files = [(tmp_path / "out" / "vram-gateway-router.yaml", "cluster.toml")]
    files += [(p, "models.toml") for p in node_files(tmp_path / "out")]
    for path, file in files:
        config = pod_config(path, file)
        assert not config.gateway.allow_unauthenticated_network and config.gateway.allowed_hosts is None, path.name
        # The keys come from the Secrets; without them the pod fails closed.
        assert exposure_problem(config, keys_required(config)) is not None, path.name
