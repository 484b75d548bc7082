"""From a Config to a Plan: read each model's header, take the inventory, call the planner.

The I/O the pure planner refuses to do lives here: resolving model paths, reading GGUF headers
and NVML.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config.chat_formats import FALLBACK_CHAT_FORMAT, chat_format_problem
from gateway.config.model_files import package_module, resolve_model_path
from gateway.config.schema import Config, ModelConfig
from gateway.nvml import read_nvml_devices
from gateway.placement.header_copies import MODEL_HEADERS_KEY, header_copy_for
from gateway.placement.mapping import model_request, run_settings
from planner.devices import Device, DevicePolicy, declared_devices
from planner.errors import ModelFileError
from planner.gguf_reader import read_model_info
from planner.memory import CudaCosts
from planner.model_info import ModelInfo
from planner.plan import Plan, PlanPolicy, plan
from planner.units import MIB

__all__ = [
    "ModelFiles",
    "inventory",
    "model_request",
    "on_demand_problems",
    "plan_config",
    "plan_policy",
    "plan_startup",
    "model_warnings",
    "read_models",
    "run_settings",
]


@dataclass(frozen=True)
class ModelFiles:
    """Each model's resolved file and header; one line per model that could not be read or
    whose settings its file refutes (problems), and per setting the file advises against
    (warnings: printed, not refused). ``header_copies``: the models read from a header copy
    because their file is not on this machine (``paths`` then holds the copy)."""

    paths: dict[str, Path]
    infos: dict[str, ModelInfo]
    problems: list[str]
    warnings: list[str] = field(default_factory=list)
    header_copies: dict[str, Path] = field(default_factory=dict)

    def header_copy_notes(self, config: Config) -> list[str]:
        """One line per model read from a header copy: what was checked is not its file."""
        return [
            f"models[{i}].path: {m.path} is not on this machine: checked with its header copy {self.header_copies[m.name]}"
            for i, m in enumerate(config.models)
            if m.name in self.header_copies
        ]


def read_models(config: Config, cache_dir: Path | None = None, *, header_copies: bool = False) -> ModelFiles:
    """Resolve and read every model's header; collect every failure instead of stopping at one.

    ``header_copies`` (checking a config, never serving it): a model whose file is absent is
    read from its header copy in ``[planner] model_headers`` (gateway.placement.header_copies).
    A configured path that is itself a header copy is always a problem: it cannot be served.
    """
    paths: dict[str, Path] = {}
    infos: dict[str, ModelInfo] = {}
    problems: list[str] = []
    warnings: list[str] = []
    copies: dict[str, Path] = {}
    for i, model in enumerate(config.models):
        try:
            path = resolve_model_path(model.path, cache_dir)
            if header_copies and package_module(model.path) is None and not os.path.lexists(path):
                path = copies[model.name] = header_copy_for(path, config.planner.model_headers)
            info = read_model_info(path)
        except ModelFileError as exc:
            problems.append(f"models[{i}].path: {exc}")
            continue
        if info.header_copy and model.name not in copies:
            problems.append(
                f"models[{i}].path: {path}: a header copy, without the model's weights: it cannot be served "
                f"(put it in the folder {MODEL_HEADERS_KEY} names to check this config without the model file)"
            )
            continue
        infos[model.name] = info
        paths[model.name] = path
        bad_format = chat_format_problem(model.chat_format, info.chat_templates)
        if bad_format is not None:
            problems.append(f"models[{i}].chat_format: {bad_format}")
        warnings += model_warnings(f"models[{i}]", model, info)
    return ModelFiles(paths, infos, problems, warnings, copies)


def model_warnings(where: str, model: ModelConfig, info: ModelInfo) -> list[str]:
    """What the model's file advises against in its settings: served anyway."""
    warnings = []
    if info.context_length and model.n_ctx > info.context_length:
        warnings.append(
            f"{where}.n_ctx: {model.n_ctx} is more than the {info.context_length} tokens the model was trained on "
            "(answers past those degrade; llama.cpp warns the same)"
        )
    if model.chat_format is None and not info.chat_templates and not model.embedding:
        warnings.append(
            f"{where}.chat_format: not set and the model file carries no chat template: chats use "
            f"{FALLBACK_CHAT_FORMAT!r}, as llama.cpp's server does (set chat_format to choose another)"
        )
    return warnings


def inventory(config: Config, read_nvml: Callable[[], list[Device]] = read_nvml_devices) -> list[Device]:
    """The declared inventory when ``[planner] gpus`` is set, else what NVML sees."""
    if config.planner.gpus is not None:
        return declared_devices(config.planner.gpus)
    return read_nvml()


def plan_policy(config: Config) -> PlanPolicy:
    p = config.planner
    return PlanPolicy(
        devices=DevicePolicy(
            reserve_mib=p.reserve_mib,
            min_budget_mib=p.min_budget_mib,
            device_order=p.device_order,
            devices=tuple(p.devices) if p.devices is not None else None,
        ),
        costs=CudaCosts(
            overhead_bytes=p.cuda_overhead_mib * MIB,
            growth_bytes=p.growth_mib * MIB if p.growth_mib is not None else None,
        ),
        packing=p.packing,
    )


def plan_config(config: Config, infos: dict[str, ModelInfo], devices: Sequence[Device]) -> Plan:
    """Plan every model whose header could be read."""
    requests = [model_request(m, infos[m.name]) for m in config.models if m.name in infos]
    return plan(requests, devices, plan_policy(config))


def plan_startup(
    config: Config, infos: dict[str, ModelInfo], devices: Sequence[Device], learned: Mapping[str, int] | None = None
) -> Plan:
    """What ``serve`` loads at start: the eager models, placed together; ``learned``: by model,
    what earlier loads measured beyond the estimate (gateway.placement.learning)."""
    eager = [m for m in config.models if m.load == "eager" and m.name in infos]
    extra = learned or {}
    return plan([model_request(m, infos[m.name], learned_bytes=extra.get(m.name, 0)) for m in eager], devices, plan_policy(config))


def on_demand_problems(config: Config, infos: dict[str, ModelInfo], devices: Sequence[Device]) -> list[str]:
    """On-demand models that would not fit even with nothing else loaded (they would only 503)."""
    problems = []
    for m in config.models:
        if m.load == "on_demand" and m.name in infos:
            alone = plan([model_request(m, infos[m.name])], devices, plan_policy(config))
            problems += [f"{p} (on its own, with nothing else loaded)" for p in alone.problems]
    return problems
