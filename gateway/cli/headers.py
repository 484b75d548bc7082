"""`gateway copy-headers`: write the header copies that let `validate-config`, `plan` and
`render k8s` check a config on a machine without its model files (gateway.placement.header_copies).

gateway.cli.main calls in here, so that its own changes stay small.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.config.model_files import package_module
from gateway.config.loading import load_config
from gateway.errors import ConfigError
from gateway.placement.header_copies import MODEL_HEADERS_KEY, write_header_copy
from gateway.placement.planning import ModelFiles
from planner.errors import ModelFileError
from planner.gguf_reader import read_model_info
from planner.units import GIB


def add_copy_headers_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "copy-headers",
        help="write header copies of model files (no weights), to check a config where the files are not",
        description=(
            "Write each model's GGUF header and tensor table, without the tensor data (tens of KB), into "
            f"--out, named as the model file. Set {MODEL_HEADERS_KEY} to that folder: validate-config, plan "
            "and render k8s then read a model's copy there when its file is not on the machine. serve never does."
        ),
    )
    p.add_argument("model", nargs="*", help="a GGUF model file (any part of a split model)")
    p.add_argument("--config", type=Path, help="copy the header of every model of this models.toml")
    p.add_argument("--out", type=Path, required=True, help="the folder of header copies (made if absent)")


def _wanted(args: argparse.Namespace) -> list[str]:
    paths = list(args.model)
    if args.config is not None:
        # Only the model paths are wanted: the GATEWAY_* variables of this shell change nothing here.
        paths += [m.path for m in load_config(args.config, environ={}).models]
    if not paths:
        raise ConfigError(["copy-headers: no model given (name model files, or --config models.toml)"])
    return list(dict.fromkeys(paths))


def cmd_copy_headers(args: argparse.Namespace) -> int:
    problems: list[str] = []
    by_name: dict[str, str] = {}
    todo: list[Path] = []
    for path in _wanted(args):
        if package_module(path) is not None:
            print(f"skipped {path}: a package model is installed where it runs (no header copy needed)")
            continue
        file = Path(path).expanduser()
        if by_name.setdefault(file.name, path) != path:
            problems.append(f"{path}: its copy would be {args.out / file.name}, as for {by_name[file.name]} (one folder holds one file of a name)")
            continue
        todo.append(file)
    if problems:
        raise ConfigError(problems)
    args.out.mkdir(parents=True, exist_ok=True)
    for file in todo:
        try:
            copy = write_header_copy(file, args.out / file.name)
        except ModelFileError as exc:
            problems.append(str(exc))
            continue
        # Read back: the copy reads as the model does (file_bytes: the model's size on disk).
        model_gib = read_model_info(copy).file_bytes / GIB
        print(f"wrote {copy} ({copy.stat().st_size / 1024:,.0f} KiB: the header of {file}, a {model_gib:,.2f} GiB model)")
    if problems:
        raise ConfigError(problems)
    return 0


def refuse_header_copies(files: ModelFiles, args: argparse.Namespace) -> None:
    """`plan --verify` and `--use-fit-params` run llama.cpp on the model files: not on header copies."""
    if not files.header_copies:
        return
    names = ", ".join(files.header_copies)
    for flag in ("verify", "use_fit_params"):
        if getattr(args, flag, False):
            raise ConfigError(
                [f"--{flag.replace('_', '-')}: needs the model files, and {names} {'is' if len(files.header_copies) == 1 else 'are'} only read from header copies here"]
            )
