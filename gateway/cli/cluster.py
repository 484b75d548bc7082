"""The cluster's commands: `gateway plan` on a config with [[nodes]], and `gateway render k8s`.

gateway.cli.main calls in here, so that its own changes stay small.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gateway.cli.render import BAR_WIDTH, plan_json
from gateway.cluster.planning import PLACEMENT_FILE, load_placement, plan_cluster_config
from gateway.cluster.render_k8s import RenderOptions, node_summary, render, write_rendered
from gateway.config.loading import load_config
from gateway.config.schema import Config
from gateway.errors import ConfigError, PlanError
from gateway.placement.planning import read_models
from planner.cluster import ClusterPlan, Move, NodePlan
from planner.plan import Plan
from planner.units import MIB


def add_render_parser(sub: argparse._SubParsersAction) -> None:
    render_cmd = sub.add_parser("render", help="write deployment files for a cluster config ([[nodes]])")
    targets = render_cmd.add_subparsers(dest="target", required=True)
    k8s = targets.add_parser("k8s", help="Kubernetes manifests: one gateway per node and a router in front")
    k8s.add_argument("--config", type=Path, required=True, help="the cluster config (models.toml with [[nodes]])")
    k8s.add_argument("--out", type=Path, required=True, help="directory for the manifests (kubectl apply -f DIR)")
    k8s.add_argument("--image", default=RenderOptions.image, help=f"the gateway image (default {RenderOptions.image})")
    k8s.add_argument("--namespace", help="namespace for every object (default: kubectl's)")
    k8s.add_argument("--models-dir", type=Path, help="model files under this folder are read from the models volume at /models in the pods")
    vol = k8s.add_mutually_exclusive_group()
    vol.add_argument("--models-claim", default=RenderOptions.models_claim, help="PersistentVolumeClaim with the models, mounted read-only on every node")
    vol.add_argument("--models-host-path", help="the models are in this folder on each node's own disk (hostPath)")
    k8s.add_argument("--router-replicas", type=int, default=1, help="router pods (default 1)")
    k8s.add_argument(
        "--previous",
        type=Path,
        help=f"the previous placement (default: {PLACEMENT_FILE} in --out, when there): models stay on their nodes",
    )


def _previous(path: Path | None) -> dict[str, tuple[str, ...]] | None:
    return load_placement(path) if path is not None else None


def _plan(config: Config, previous: dict[str, tuple[str, ...]] | None) -> ClusterPlan:
    # Planning for the nodes, whose model files need not be on this machine: header copies stand in.
    files = read_models(config, header_copies=True)
    if files.problems:
        raise ConfigError(files.problems)
    for note in files.header_copy_notes(config):
        print(f"note: {note}", file=sys.stderr)
    return plan_cluster_config(config, files.infos, previous)


def cmd_render(args: argparse.Namespace) -> int:
    # Rendering is for other machines: the GATEWAY_* variables of this shell do not belong in it.
    config = load_config(args.config, environ={})
    if config.nodes is None:
        raise ConfigError([f"{args.config}: no [[nodes]]: render k8s needs a cluster config (see docs/cluster.md)"])
    previous_path = args.previous or (args.out / PLACEMENT_FILE if (args.out / PLACEMENT_FILE).exists() else None)
    result = _plan(config, _previous(previous_path))
    if not result.fits:
        raise PlanError(list(result.problems))
    options = RenderOptions(
        image=args.image,
        namespace=args.namespace,
        models_dir=args.models_dir,
        models_claim=args.models_claim,
        models_host_path=args.models_host_path,
        router_replicas=args.router_replicas,
        source=args.config.name,
    )
    rendered = render(config, result, options)
    written, unchanged, removed = write_rendered(rendered, args.out)
    for node in result.nodes:
        if node.models:
            print(node_summary(node))
    for move in result.moves:
        print(f"moved: {_move_text(move)}")
    for name in written:
        print(f"wrote {args.out / name}")
    if unchanged:
        print(f"unchanged: {', '.join(unchanged)}")
    for name in removed:
        print(f"removed {args.out / name} (its node left: kubectl apply --prune -l app.kubernetes.io/part-of=vram-gateway -f {args.out})")
    for note in rendered.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _move_text(move: Move) -> str:
    to = ", ".join(move.joined) or "nowhere"
    return f"model {move.model!r}: {', '.join(move.left)} -> {to} ({'; '.join(move.reasons)})"


def cmd_plan_cluster(args: argparse.Namespace, config: Config) -> int:
    """`gateway plan --config cluster.toml`: nodes -> GPUs -> models."""
    for flag in ("write", "verify", "use_fit_params"):
        if getattr(args, flag, None):
            raise ConfigError([f"--{flag.replace('_', '-')}: not with [[nodes]] (plan one node's models.toml from `gateway render k8s`)"])
    result = _plan(config, _previous(getattr(args, "previous", None)))
    if args.json:
        print(json.dumps(cluster_plan_json(result, config), indent=2))
    else:
        print(cluster_plan_text(result, config))
    return 0 if result.fits else 1


def _gpu_models(plan: Plan, on_demand: tuple) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for load, placements in (("eager", plan.placements), ("on_demand", on_demand)):
        for p in placements:
            for slot, g in enumerate(p.gpus):
                out.setdefault(g, []).append({"name": p.name, "load": load, "total_bytes": p.memory.devices[slot].total_bytes})
    return out


def node_json(node: NodePlan, labels: dict[str, str]) -> dict[str, Any]:
    doc = plan_json(node.plan)
    per_gpu = _gpu_models(node.plan, node.on_demand)
    for gpu in doc["gpus"]:
        gpu["models"] = per_gpu.get(gpu["index"], [])
    on_demand = plan_json(Plan(node.plan.gpus, node.plan.skipped, node.on_demand))["models"]
    return {
        "name": node.name,
        "labels": labels,
        "gpus_used": list(node.gpus_used),
        "gpus": doc["gpus"],
        "skipped_gpus": doc["skipped_gpus"],
        "models": doc["models"],
        "on_demand": on_demand,
        "problems": doc["problems"],
    }


def cluster_plan_json(result: ClusterPlan, config: Config) -> dict[str, Any]:
    labels = {n.name: dict(n.labels) for n in config.nodes or ()}
    return {
        "fits": result.fits,
        "nodes": [node_json(n, labels.get(n.name, {})) for n in result.nodes],
        "models": {name: list(nodes) for name, nodes in result.assigned},
        "moves": [{"model": m.model, "left": list(m.left), "joined": list(m.joined), "reasons": list(m.reasons)} for m in result.moves],
        "problems": list(result.problems),
    }


def cluster_plan_text(result: ClusterPlan, config: Config) -> str:
    declared = {n.name: n.gpus for n in config.nodes or ()}
    lines: list[str] = []
    for node in result.nodes:
        gpus = declared.get(node.name, [])
        lines.append(f"node {node.name} ({len(gpus)} GPU{'s' if len(gpus) != 1 else ''}: {', '.join(gpus) or 'none'})")
        per_gpu = _gpu_models(node.plan, node.on_demand)
        for u in node.plan.gpus:
            eager = [m for m in per_gpu.get(u.index, []) if m["load"] == "eager"]
            used = sum(m["total_bytes"] for m in eager)
            frac = used / u.budget_bytes if u.budget_bytes else 0.0
            filled = min(BAR_WIDTH, round(frac * BAR_WIDTH))
            lines.append(f"  GPU {u.index} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {used / MIB:,.0f} / {u.budget_bytes / MIB:,.0f} MiB ({frac:.1%})")
            for m in per_gpu.get(u.index, []):
                tag = " (on demand)" if m["load"] == "on_demand" else ""
                lines.append(f"      {m['name']:<24} {m['total_bytes'] / MIB:>9,.0f} MiB{tag}")
        for s in node.plan.skipped:
            lines.append(f"  GPU {s.device.index}: skipped: {s.reason}")
        cpu = [p.name for p in (*node.plan.placements, *node.on_demand) if not p.gpus]
        if cpu:
            lines.append(f"  CPU: {', '.join(cpu)}")
        if not node.models:
            lines.append("  (no models)")
    if result.moves:
        lines.append("")
        lines.append("MOVED (since the previous plan):")
        lines += [f"  {_move_text(m)}" for m in result.moves]
    if result.problems:
        lines.append("")
        lines.append("DOES NOT FIT:")
        lines += [f"  {p}" for p in result.problems]
    return "\n".join(lines)
