"""The ``gateway`` (alias ``vram-llm``) command line.

Subcommands: ``serve``, ``analyze``, ``plan``, ``validate-config``, ``hash-key``, ``render``, and
the commands that talk to a running gateway (gateway.cli.client: ``status``, ``ps``, ``load``,
``unload``, ``restart``, ``logs``, ``reload``). Every PoC command and flag
keeps its meaning (docs/poc-reference.md). Expected failures print one clear message and exit 1;
usage errors exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import tomli_w

from gateway.config.model_files import package_module
from gateway.config.loading import dump_config, load_config, parse_config, read_keys_file
from gateway.config.schema import Config
from gateway.errors import ConfigError, GatewayError
from gateway.placement.launch import launches_from_plan
from gateway.placement.learning import LearnedMemory, learned_path
from gateway.placement.planning import inventory, on_demand_problems, plan_config, plan_policy, plan_startup, read_models
from gateway.cli.cluster import add_render_parser, cmd_render
from gateway.cli.headers import add_copy_headers_parser, cmd_copy_headers, refuse_header_copies
from gateway.cli.client import HANDLERS as CLIENT_HANDLERS, add_client_parsers
from gateway.cli.render import analysis_json, analysis_text, gpus_text, plan_json, plan_text, plan_toml_doc
from planner.devices import Device, parse_gpus_flag
from planner.errors import PlanError
from planner.plan import plan
from planner.units import MIB

if TYPE_CHECKING:
    from gateway.cli.fit_params import FitResult
    from planner.plan import Plan


def _add_allocation_flags(p: argparse.ArgumentParser) -> None:
    """The PoC's allocation flags; None means "not given", so a config's values stand."""
    g = p.add_argument_group("GPU allocation (PoC flags)")
    g.add_argument("--gpus", help="declared inventory instead of NVML, e.g. 24GiB,24GiB,12GiB (total[/free] each)")
    g.add_argument("--reserve-mib", type=int, help="VRAM kept free per GPU (default 1024)")
    g.add_argument("--min-budget-mib", type=int, help="skip GPUs with less usable VRAM (default 1024)")
    g.add_argument("--device-order", choices=["free_desc", "total_desc", "index"], help="GPU order (default free_desc)")
    g.add_argument("--devices", help="comma-separated GPU indices to use, e.g. 0,2 (default all)")
    g.add_argument("--n-ctx", type=int, help="context size (default 4096)")
    g.add_argument("--tensor-split", help='manual split proportions, e.g. "0.35,0.45,0.20"')


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model settings (PoC flags, with --model)")
    g.add_argument("--n-batch", type=int, help="batch size (default 512)")
    g.add_argument("--n-gpu-layers", type=int, help="layers to offload, -1 = all (default -1)")
    g.add_argument("--split-mode", choices=["layer", "row", "none"], help="llama.cpp split mode (default layer)")
    g.add_argument(
        "--smart-split",
        action="store_true",
        help="accepted for the PoC: the planner always sizes layers from the GGUF header",
    )
    g.add_argument("--no-mmap", action="store_true", help="disable memory-mapped loading")
    g.add_argument("--mlock", action="store_true", help="lock the model in RAM")


def _add_fit_params_flag(p: argparse.ArgumentParser, *, serve_uses_it: bool = False) -> None:
    """The PoC's ``--use-fit-params``, for ``serve``, ``analyze`` and ``plan``."""
    p.add_argument(
        "--use-fit-params",
        action="store_true",
        help="ask llama.cpp's llama-fit-params (on PATH) for the split and show it beside ours"
        + ("; serve uses it" if serve_uses_it else ""),
    )


def _show_fit_params(config: Config, result: Plan, paths: Mapping[str, Path]) -> dict[str, FitResult | str]:
    """``--use-fit-params``: run llama-fit-params for each GPU model of the plan and print its
    split beside ours; FitParamsMissing (one clear line from main) without the binary."""
    from gateway.cli.fit_params import fit_plan, fit_report

    fits = fit_plan(config, result, paths)
    print()
    print(fit_report(result, fits))
    return fits


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="vram-gateway: many GGUF models on one machine's GPUs behind one OpenAI-compatible endpoint.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="plan, load the models and serve the OpenAI API")
    src = serve.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", type=Path, help="models.toml")
    src.add_argument("--model", help="one GGUF file (the PoC's single-model form)")
    src.add_argument("--router", type=Path, metavar="CLUSTER.toml", help="route to the nodes of a cluster config; no local models")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8080)")
    serve.add_argument("--strict", action="store_true", help="exit if any model fails to load")
    _add_allocation_flags(serve)
    _add_model_flags(serve)
    _add_fit_params_flag(serve, serve_uses_it=True)

    analyze = sub.add_parser("analyze", help="analyse one GGUF and show the recommended GPU allocation")
    analyze.add_argument("--model", required=True, help="GGUF file (any part of a split file)")
    analyze.add_argument("--json", action="store_true", help="print one JSON object")
    _add_allocation_flags(analyze)
    _add_model_flags(analyze)
    _add_fit_params_flag(analyze)

    plan = sub.add_parser("plan", help="print the placement of every model without loading anything")
    psrc = plan.add_mutually_exclusive_group()
    psrc.add_argument("--config", type=Path, help="models.toml")
    psrc.add_argument("--model", action="append", help="a GGUF file (repeatable)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("--write", type=Path, metavar="FILE.toml", help="also write the plan as TOML")
    plan.add_argument("--previous", type=Path, metavar="placement.toml", help="with [[nodes]]: keep models on these nodes")
    plan.add_argument(
        "--verify",
        action="store_true",
        help="confirm the plan with llama.cpp's no_alloc dry run of each GPU model (CUDA build + GPU)",
    )
    _add_allocation_flags(plan)
    _add_model_flags(plan)
    _add_fit_params_flag(plan)

    add_client_parsers(sub)

    hash_key = sub.add_parser("hash-key", help="print the key_sha256 line of an API key for [[keys]] (a new key if none is given)")
    hash_key.add_argument("key", nargs="?", help="the key; '-' reads it from stdin; none: make a new random key")
    hash_key.add_argument("--name", help="print a whole [[keys]] table with this name")

    validate = sub.add_parser("validate-config", help="check a models.toml: schema, model files and fit")
    validate.add_argument("file", type=Path)
    validate.add_argument("--gpus", help="declared inventory to check the fit against, e.g. 24GiB,24GiB,12GiB")
    add_render_parser(sub)
    add_copy_headers_parser(sub)
    return parser


def _csv_ints(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError([f"{flag}: {text!r} (must be comma-separated integers)"]) from None


def _csv_floats(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError([f"{flag}: {text!r} (must be comma-separated numbers)"]) from None


def _model_name(path: str) -> str:
    module = package_module(path)
    stem = module if module is not None else Path(path).name.removesuffix(".gguf")
    stem = re.sub(r"-\d{5}-of-\d{5}$", "", stem)
    return re.sub(r"[^A-Za-z0-9._:/-]+", "-", stem) or "model"


def config_from_args(args: argparse.Namespace) -> Config:
    """A Config from ``--config`` or ``--model``, with the command-line flags laid over it."""
    if getattr(args, "config", None):
        doc = tomllib.loads(dump_config(load_config(args.config)))
    else:
        models = args.model if isinstance(args.model, list) else [args.model]
        doc = {"models": []}
        for path in models:
            name = _model_name(path)
            taken = {m["name"] for m in doc["models"]}
            base, k = name, 2
            while name in taken:
                name, k = f"{base}-{k}", k + 1
            # A package: model (a PyPI-packaged GGUF) is resolved where every model path is, not here.
            where = path if package_module(path) is not None else str(Path(path).expanduser().resolve())
            doc["models"].append({"name": name, "path": where})
        if len(models) == 1:
            # The PoC's client example asks for model "local" (docs/poc-reference.md#api-endpoints).
            doc["models"][0]["aliases"] = ["local"]
        # Validate once with GATEWAY_* applied, so the flags below are laid over env and file.
        # GATEWAY_KEYS_FILE applies to a --model gateway too.
        doc = tomllib.loads(dump_config(read_keys_file(parse_config(tomli_w.dumps(doc)))))
    planner = doc.setdefault("planner", {})
    for flag, key in (("reserve_mib", "reserve_mib"), ("min_budget_mib", "min_budget_mib"), ("device_order", "device_order")):
        if getattr(args, flag, None) is not None:
            planner[key] = getattr(args, flag)
    if getattr(args, "devices", None):
        planner["devices"] = _csv_ints(args.devices, "--devices")
    if getattr(args, "gpus", None):
        planner["gpus"] = [s.strip() for s in args.gpus.split(",") if s.strip()]
    gateway = doc.setdefault("gateway", {})
    for flag in ("host", "port"):
        if getattr(args, flag, None) is not None:
            gateway[flag] = getattr(args, flag)
    for model in doc["models"]:
        if getattr(args, "n_ctx", None) is not None:
            model["n_ctx"] = args.n_ctx
        if getattr(args, "n_batch", None) is not None:
            model["n_batch"] = args.n_batch
            model["n_ubatch"] = min(model.get("n_ubatch", 512), args.n_batch)
        if getattr(args, "n_gpu_layers", None) is not None:
            model["n_gpu_layers"] = args.n_gpu_layers
        if getattr(args, "split_mode", None) is not None:
            model["split_mode"] = args.split_mode
        if getattr(args, "tensor_split", None):
            model["tensor_split"] = _csv_floats(args.tensor_split, "--tensor-split")
        if getattr(args, "no_mmap", False):
            model["use_mmap"] = False
        if getattr(args, "mlock", False):
            model["use_mlock"] = True
    # GATEWAY_* already took effect above; command-line flags win over both.
    return parse_config(tomli_w.dumps(doc), environ={})


def _devices(config: Config) -> list[Device]:
    return inventory(config)


def cmd_analyze(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    files = read_models(config)
    if files.problems:
        raise ConfigError(files.problems)
    name = config.models[0].name
    info = files.infos[name]
    devices = _devices(config)
    result = plan_config(config, files.infos, devices)
    if args.json:
        doc = analysis_json(info)
        doc["plan"] = plan_json(result)
        print(json.dumps(doc, indent=2))
    else:
        print(analysis_text(str(files.paths[name]), info))
        print()
        print(gpus_text(result, devices))
        print()
        print(plan_text(result, files.infos))
    if args.use_fit_params:
        _show_fit_params(config, result, files.paths)
    return 0 if result.fits else 1


def _plan_budgets(args: argparse.Namespace) -> int:
    """The PoC's ``vram-llm plan --reserve-mib N``: each GPU's usable memory, no model."""
    doc = {"planner": {}, "models": [{"name": "none", "path": os.devnull}]}  # a placeholder, never read
    for key in ("reserve_mib", "min_budget_mib", "device_order"):
        if getattr(args, key, None) is not None:
            doc["planner"][key] = getattr(args, key)
    if getattr(args, "devices", None):
        doc["planner"]["devices"] = _csv_ints(args.devices, "--devices")
    if getattr(args, "gpus", None):
        doc["planner"]["gpus"] = [s.strip() for s in args.gpus.split(",") if s.strip()]
    config = parse_config(tomli_w.dumps(doc))
    devices = _devices(config)
    budgets = plan([], devices, plan_policy(config))
    if args.json:
        print(json.dumps(plan_json(budgets), indent=2))
    else:
        print(gpus_text(budgets, devices))
        print("\n(no model given: `gateway plan --config models.toml` or `--model FILE` places models)")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    if not args.config and not args.model:
        return _plan_budgets(args)
    config = config_from_args(args)
    if config.nodes is not None:
        from gateway.cli.cluster import cmd_plan_cluster

        return cmd_plan_cluster(args, config)
    files = read_models(config, header_copies=True)
    if files.problems:
        raise ConfigError(files.problems)
    refuse_header_copies(files, args)
    for note in files.header_copy_notes(config):
        print(f"note: {note}", file=sys.stderr)
    devices = _devices(config)
    # What `serve` loads at start, planned as serve plans it: with what earlier loads measured
    # beyond the estimates; on-demand models are placed when asked for.
    learned_file = learned_path(config, os.environ)
    learned = LearnedMemory.load(learned_file).for_config(config)
    for name, extra in learned.items():
        if extra:
            print(
                f"note: model {name!r} is planned with {extra / MIB:,.0f} MiB more per GPU than its estimate, "
                f"as an earlier load measured (kept in {learned_file}; a load that meets the estimate drops it)",
                file=sys.stderr,
            )
    result = plan_startup(config, files.infos, devices, learned)
    lazy = [m.name for m in config.models if m.load == "on_demand"]
    lazy_problems = on_demand_problems(config, files.infos, devices)
    rows = None
    if args.verify:
        from gateway.placement.verify import verify_plan

        # Off a CUDA build or GPU this raises VerifyError, printed as one line by main().
        rows = verify_plan(config, result, files.paths)
    if args.json:
        doc = plan_json(result)
        doc["on_demand"] = lazy
        doc["learned_bytes"] = {name: extra for name, extra in learned.items() if extra}
        doc["problems"] += lazy_problems
        if rows is not None:
            from gateway.placement.verify import verify_json

            doc["verify"] = verify_json(rows)
        print(json.dumps(doc, indent=2))
    else:
        print(gpus_text(result, devices))
        print()
        print(plan_text(result, files.infos))
        if lazy:
            print(f"\non demand (loaded by their first request, evicting idle ones): {', '.join(lazy)}")
        for p in lazy_problems:
            print(f"  {p}")
        if rows is not None:
            from gateway.placement.verify import format_verify_table

            print()
            print(format_verify_table(rows))
    if args.use_fit_params:
        _show_fit_params(config, result, files.paths)
    if rows is not None and not all(r.ok for r in rows):
        return 1
    if args.write:
        args.write.write_text(tomli_w.dumps(plan_toml_doc(result)), encoding="utf-8")
        if not args.json:
            print(f"\nwrote {args.write}")
    return 0 if result.fits and not lazy_problems else 1


def validate(
    path: Path, gpus: str | None = None, warnings: list[str] | None = None, notes: list[str] | None = None
) -> list[str]:
    """Every problem with a models.toml: schema, model files, headers, and the plan's fit; what
    the model files advise against is added to ``warnings`` when given, and which models were
    checked with a header copy (their file is not here) to ``notes``."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        return list(exc.problems)
    files = read_models(config, header_copies=True)
    if notes is not None:
        notes += files.header_copy_notes(config)
    if config.nodes is not None:
        from gateway.cluster.planning import cluster_problems

        # Each node declares its GPUs: a --gpus inventory has no node to stand for.
        return (["--gpus: not with [[nodes]] (each node declares its gpus)"] if gpus else []) + cluster_problems(config, files)
    if warnings is not None:
        warnings += files.warnings
    problems = list(files.problems)
    devices = parse_gpus_flag(gpus) if gpus else _devices(config)
    result = plan_startup(config, files.infos, devices)
    problems += [f"plan: {p}" for p in result.problems]
    problems += [f"plan: {p}" for p in on_demand_problems(config, files.infos, devices)]
    return problems


def cmd_validate(args: argparse.Namespace) -> int:
    warnings: list[str] = []
    notes: list[str] = []
    problems = validate(args.file, args.gpus, warnings, notes)
    if problems:
        print(f"{args.file}: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    if problems:
        return 1
    print(f"{args.file}: OK")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    if args.router is not None:
        from gateway.router.server import serve_router

        return serve_router(args)
    config = config_from_args(args)
    if config.nodes is not None:
        raise ConfigError([f"{args.config}: has [[nodes]]: serve it with --router, and each node's models.toml from `gateway render k8s`"])
    files = read_models(config)
    if files.problems:
        raise ConfigError(files.problems)
    for warning in files.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    devices = _devices(config)
    # What earlier loads measured beyond the estimates (the server process reads the same file).
    learned = LearnedMemory.load(learned_path(config, os.environ)).for_config(config)
    result = plan_startup(config, files.infos, devices, learned)
    if not result.fits:
        raise PlanError(list(result.problems))
    for problem in on_demand_problems(config, files.infos, devices):
        print(f"warning: {problem}; its requests will get 503", file=sys.stderr)
    print(gpus_text(result, devices))
    print(plan_text(result, files.infos))
    print(f"\nserving on http://{config.gateway.host}:{config.gateway.port}/v1 once every model is loaded", flush=True)
    from gateway.http.server import run_server  # granian is only needed to serve

    launches = launches_from_plan(result, {n: str(p) for n, p in files.paths.items()})
    if args.use_fit_params:
        from gateway.cli.fit_params import apply_fits

        launches = apply_fits(launches, _show_fit_params(config, result, files.paths))
    run_server(config, launches, strict=args.strict, config_path=args.config)
    return 0


NEW_KEY_PREFIX = "sk-gw-"


def cmd_hash_key(args: argparse.Namespace) -> int:
    """The line to paste into a [[keys]] table; the key itself is printed only when made here."""
    import secrets

    from gateway.config.keys import key_digest

    if args.key is None:
        key = NEW_KEY_PREFIX + secrets.token_urlsafe(32)
        print(f"# the new key (give it to its user; only its hash below goes into the config): {key}")
    elif args.key == "-":
        key = sys.stdin.readline().rstrip("\r\n")  # keeps the key out of the shell's history
    else:
        key = args.key
    if not key:
        raise GatewayError("hash-key: the key is empty")
    if args.name:
        print(tomli_w.dumps({"keys": [{"name": args.name, "key_sha256": key_digest(key)}]}).rstrip())
    else:
        print(f'key_sha256 = "{key_digest(key)}"')
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {
        "serve": cmd_serve,
        "analyze": cmd_analyze,
        "plan": cmd_plan,
        "validate-config": cmd_validate,
        **CLIENT_HANDLERS,
        "hash-key": cmd_hash_key,
        "render": cmd_render,
        "copy-headers": cmd_copy_headers,
    }
    try:
        return handlers[args.command](args)
    except BrokenPipeError:
        # Output piped into `head` and friends: stop quietly, like any Unix tool.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ConfigError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return 1
    except PlanError as exc:
        print("error: the models do not fit:", file=sys.stderr)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    except GatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
