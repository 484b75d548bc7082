"""The PoC's ``--use-fit-params`` (docs/poc-reference.md#optional---use-fit-params): ask
llama.cpp's own ``llama-fit-params`` for the split.

``llama-fit-params`` (llama.cpp tools/fit-params) runs ``common_fit_params`` (common/fit.cpp):
it measures the model with no_alloc dry runs, then picks ``n_gpu_layers`` and a per-device
``tensor_split`` (and, for MoE models, tensor overrides) that leave ``--fit-target`` MiB free on
every visible device. It prints the result to stdout as llama.cpp command-line arguments, one
line:

    -c 4096 -ngl 48 -ts 30,18 -ot "blk\\.14\\.ffn_(up|down|gate)_(ch|)exps=CPU,..."

``-ts`` (only with several devices) holds layer counts per device, the output layer included
in the last one; ``-ot`` appears only when layers overflow partly to system memory. With
``-c`` given, the context is never reduced ("context size set by user"); ``-ngl`` is not
passed, so it is the fit's to choose. ``-ngl -1`` with no ``-ts`` means: nothing to change, all
layers on the GPUs with llama.cpp's default split (by free memory). Its log (stderr) may also
carry one line per device, ``- CUDA0 (NVIDIA H200): 48 layers (34 overflowing), 19187 MiB used,
1199 MiB free``, which is parsed where present.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from gateway.config.schema import Config
from gateway.errors import GatewayError
from gateway.placement.launch import ModelLaunch, config_models
from gateway.placement.mapping import run_settings
from planner.memory import RunSettings
from planner.plan import Placement, Plan

BINARY = "llama-fit-params"
FIT_TIMEOUT_S = 600.0

MISSING_MESSAGE = (
    "--use-fit-params: llama-fit-params is not on PATH. "
    "Get it from llama.cpp: build it with cmake (cmake -B build -DGGML_CUDA=ON && "
    "cmake --build build --config Release --target llama-fit-params; it lands in build/bin/) "
    "or take bin/llama-fit-params from a llama.cpp release archive "
    "(https://github.com/ggml-org/llama.cpp/releases), then put its folder on PATH"
)

_DEVICE_LINE = re.compile(
    r"-\s+(?P<name>\S+)(?:\s+\((?P<desc>[^)]*)\))?:\s+(?P<layers>\d+) layers\s+\(\s*(?P<over>\d+) overflowing\),"
    r"\s+(?P<used>-?\d+) MiB used,\s+(?P<free>-?\d+) MiB free"
)


class FitParamsMissing(GatewayError):
    """``--use-fit-params`` without a ``llama-fit-params`` binary on PATH."""

    def __init__(self) -> None:
        super().__init__(MISSING_MESSAGE)


class FitParamsError(GatewayError):
    """llama-fit-params ran but gave no usable answer (it could not fit, or printed no arguments)."""


@dataclass(frozen=True)
class FitDevice:
    """One device line of llama-fit-params' log."""

    name: str  # CUDA0
    description: str  # NVIDIA H200
    layers: int
    overflowing: int
    used_mib: int
    free_mib: int


@dataclass(frozen=True)
class FitResult:
    """What llama-fit-params chose, as it printed it."""

    n_ctx: int
    n_gpu_layers: int  # -1: all layers (it changed nothing)
    tensor_split: tuple[int, ...] | None  # layers per visible device; None with one device or no change
    overrides: tuple[str, ...] = ()  # "pattern=BUFFER" tensor overrides (-ot)
    devices: tuple[FitDevice, ...] = ()
    arguments: str = ""  # the printed line
    command: tuple[str, ...] = field(default=(), compare=False)

    @property
    def layer_counts(self) -> tuple[int, ...] | None:
        return self.tensor_split


def find_fit_params() -> str | None:
    """The path of ``llama-fit-params`` on PATH, or None."""
    return shutil.which(BINARY)


def require_fit_params() -> str:
    binary = find_fit_params()
    if binary is None:
        raise FitParamsMissing()
    return binary


def parse_fit_output(stdout: str, stderr: str = "") -> FitResult:
    """Parse llama-fit-params' stdout (its last argument line) and the device lines of its log."""
    candidates = [line.strip() for line in stdout.splitlines() if line.strip().startswith("-c ")]
    if not candidates:
        raise FitParamsError(f"llama-fit-params printed no arguments (stdout: {stdout.strip()[-300:]!r})")
    line = candidates[-1]
    # Plain whitespace splitting, not shlex: the -ot patterns are regular expressions whose
    # backslashes must survive (older builds print them unquoted); none contains a space.
    tokens = line.split()
    values: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        flag = tokens[i]
        if not flag.startswith("-") or i + 1 >= len(tokens):
            raise FitParamsError(f"llama-fit-params printed an unexpected argument {flag!r} in {line[:300]!r}")
        values[flag] = tokens[i + 1]
        i += 2
    if "-ot" in values:
        values["-ot"] = values["-ot"].strip('"')
    try:
        n_ctx = int(values["-c"])
        ngl = int(values["-ngl"])
        split = tuple(int(x) for x in values["-ts"].split(",")) if "-ts" in values else None
    except (KeyError, ValueError) as exc:
        raise FitParamsError(f"llama-fit-params printed an unexpected line ({exc}): {line[:300]!r}") from None
    overrides = tuple(o for o in values.get("-ot", "").split(",") if o)
    devices = tuple(
        FitDevice(
            name=m["name"],
            description=m["desc"] or "",
            layers=int(m["layers"]),
            overflowing=int(m["over"]),
            used_mib=int(m["used"]),
            free_mib=int(m["free"]),
        )
        for m in _DEVICE_LINE.finditer(stderr)
    )
    return FitResult(n_ctx=n_ctx, n_gpu_layers=ngl, tensor_split=split, overrides=overrides, devices=devices, arguments=line)


def fit_arguments(settings: RunSettings) -> list[str]:
    """llama-fit-params' context arguments for the context a worker would create.

    ``-c`` is llama.cpp's context size: the cells of all slots (``-np``) together, as the worker
    asks for them. llama-fit-params takes no ``--kv-unified`` (common/arg.cpp offers it to the
    server, not to fit-params): for a unified pool it fits one stream per slot of the same total
    size, which holds the same full-attention cells.
    """
    args = [
        "-c", str(settings.kv_cells),
        "-b", str(settings.n_batch),
        "-ub", str(settings.n_ubatch),
        "-fa", "on" if settings.flash_attn else "off",
        "-ctk", settings.type_k,
        "-ctv", settings.type_v,
    ]  # fmt: skip
    if settings.slots > 1:
        args += ["-np", str(settings.slots)]
    if settings.swa_full:
        args.append("--swa-full")
    return args


def fit_command(binary: str, model_path: str, settings: RunSettings, *, margin_mib: int = 1024) -> list[str]:
    """The whole llama-fit-params command line: the model, its context and the margin."""
    return [binary, "-m", model_path, *fit_arguments(settings), "-fitt", str(margin_mib)]


def run_fit_params(
    binary: str,
    model_path: str,
    settings: RunSettings,
    *,
    margin_mib: int = 1024,
    cuda_visible_devices: str | None = None,
    environ: Mapping[str, str] | None = None,
    timeout: float = FIT_TIMEOUT_S,
) -> FitResult:
    """Run llama-fit-params for one model and parse what it chose.

    ``margin_mib`` is its ``--fit-target`` (MiB left free per device: the planner's reserve);
    ``cuda_visible_devices`` limits it to the GPUs we would give the model, in our order.
    """
    cmd = fit_command(binary, model_path, settings, margin_mib=margin_mib)
    env = dict(os.environ if environ is None else environ)
    if cuda_visible_devices is not None:
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise FitParamsError(f"llama-fit-params took longer than {timeout:g} s for {model_path}") from None
    except OSError as exc:
        raise FitParamsError(f"cannot run {binary}: {exc}") from None
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise FitParamsError(f"llama-fit-params failed for {model_path} (exit {proc.returncode})" + (f": {tail}" if tail else ""))
    return replace(parse_fit_output(proc.stdout, proc.stderr), command=tuple(cmd))


def _ours(p: Placement) -> str:
    if not p.gpus:
        return "CPU only"
    counts = "+".join(str(c) for c in p.layer_counts)
    split = f", tensor_split {list(p.tensor_split)}" if p.tensor_split else ""
    return f"-ngl {p.n_gpu_layers}, layers per GPU {counts} on GPU(s) {p.cuda_visible_devices}{split}"


def _theirs(fit: FitResult, n_devices: int) -> str:
    if fit.n_gpu_layers < 0 and fit.tensor_split is None:
        return f"{fit.arguments} (no change: all layers, llama.cpp's default split by free memory)"
    counts = "+".join(str(c) for c in fit.tensor_split) if fit.tensor_split else str(fit.n_gpu_layers)
    extra = f", {len(fit.overrides)} tensor override(s) to system memory" if fit.overrides else ""
    return f"{fit.arguments} (layers per GPU {counts} on {n_devices} GPU(s){extra})"


def fit_report(plan: Plan, fits: Mapping[str, FitResult | str]) -> str:
    """Each model's split by llama-fit-params beside the planner's; a str value is why none."""
    lines = ["llama-fit-params beside the planner:"]
    for p in plan.placements:
        lines.append(f"  {p.name}:")
        lines.append(f"    ours:             {_ours(p)}")
        got = fits.get(p.name)
        if isinstance(got, FitResult):
            lines.append(f"    llama-fit-params: {_theirs(got, len(p.gpus))}")
            for d in got.devices:
                lines.append(f"      {d.name} ({d.description}): {d.layers} layers ({d.overflowing} overflowing), {d.used_mib:,} MiB used, {d.free_mib:,} MiB free")
        else:
            lines.append(f"    llama-fit-params: {got or 'not run'}")
    return "\n".join(lines)


def fit_plan(config: Config, plan: Plan, paths: Mapping[str, str | os.PathLike[str]], *, binary: str | None = None) -> dict[str, FitResult | str]:
    """Run llama-fit-params for every model the plan puts on GPUs, each limited to its GPUs.

    Raises FitParamsMissing when the binary is not on PATH. Each model is fitted alone against
    the free memory of its GPUs now, with the planner's reserve as the margin.
    """
    binary = binary or require_fit_params()
    models = config_models(config)
    out: dict[str, FitResult | str] = {}
    for p in plan.placements:
        if not p.gpus:
            out[p.name] = "not run: the plan keeps this model on the CPU"
            continue
        try:
            out[p.name] = run_fit_params(
                binary, str(paths[p.name]), run_settings(models[p.name]),
                margin_mib=config.planner.reserve_mib, cuda_visible_devices=p.cuda_visible_devices,
            )  # fmt: skip
        except FitParamsError as exc:
            out[p.name] = f"failed: {exc}"
    return out


def apply_fit(launch: ModelLaunch, fit: FitResult) -> ModelLaunch:
    """The launch with llama-fit-params' n_gpu_layers and tensor_split (the PoC's delegation).

    The planned per-GPU figures stay in ``devices`` for comparison; a note says the split is
    llama.cpp's. Tensor overrides (MoE overflow) cannot be passed through llama-cpp-python's
    Llama(): a fit that needs them is refused.
    """
    if fit.overrides:
        raise FitParamsError(
            f"model {launch.name!r}: llama-fit-params wants {len(fit.overrides)} tensor override(s) (-ot), "
            "which the worker cannot pass to llama-cpp-python; keep the planner's split"
        )
    split = [float(c) for c in fit.tensor_split] if fit.tensor_split else None
    return replace(
        launch,
        n_gpu_layers=fit.n_gpu_layers,
        tensor_split=split if split and len(split) > 1 else None,
        notes=[*launch.notes, f"split by llama-fit-params: {fit.arguments}"],
    )


def apply_fits(launches: Mapping[str, ModelLaunch], fits: Mapping[str, FitResult | str]) -> dict[str, ModelLaunch]:
    """Every launch that got a fit takes it; the others keep the planner's split."""
    out = {}
    for name, launch in launches.items():
        fit = fits.get(name)
        out[name] = apply_fit(launch, fit) if isinstance(fit, FitResult) else launch
    return out


__all__: Sequence[str] = (
    "BINARY",
    "MISSING_MESSAGE",
    "FitDevice",
    "FitParamsError",
    "FitParamsMissing",
    "FitResult",
    "apply_fit",
    "apply_fits",
    "find_fit_params",
    "fit_arguments",
    "fit_command",
    "fit_plan",
    "fit_report",
    "parse_fit_output",
    "require_fit_params",
    "run_fit_params",
)
