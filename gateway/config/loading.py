"""Reading models.toml: text to a validated ``Config``, every problem reported at once.

``parse_config`` raises one ``ConfigError`` whose ``problems`` are lines such as
``models[1].n_ctx: -5 (must be > 0)``, schema errors (gateway.config.problems) and cross-field
errors (gateway.config.rules) together, so a user fixes the whole file in one round instead of
one error per restart. ``load_config`` reads a file and the keys file it names.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path

import tomli_w
from pydantic import TypeAdapter, ValidationError

from gateway.config.environment import env_var_name, gateway_env_values
from gateway.config.keys import KeyConfig
from gateway.config.problems import Problem, ordered, translate
from gateway.config.rules import cross_problems
from gateway.config.schema import BASE_DIR_CONTEXT, CROSS_CHECKED_CONTEXT, Config
from gateway.errors import ConfigError

__all__ = ["dump_config", "load_config", "parse_config", "parse_keys_file", "read_keys_file"]


def load_config(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> Config:
    """Read a models.toml (UTF-8) and parse it; relative model paths are taken from its folder.

    A ``keys_file`` it names (or ``GATEWAY_KEYS_FILE``) is read too (``read_keys_file``).
    """
    file = Path(path)
    text = _read_text(file, "config file")
    try:
        return read_keys_file(parse_config(text, base_dir=file.parent, environ=environ), base_dir=file.parent)
    except ConfigError as exc:
        raise ConfigError(exc.problems, source=exc.source or str(file)) from None


def parse_config(
    text: str, *, base_dir: Path | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Parse and validate models.toml text; ``GATEWAY_*`` variables in ``environ`` beat ``[gateway]``.

    ``base_dir`` anchors relative model paths (default: the current directory); ``environ``
    defaults to ``os.environ``. Raises ``ConfigError`` listing every problem found.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_toml_error_line(exc)]) from None

    env_values = gateway_env_values(os.environ if environ is None else environ)
    gateway_table = data.get("gateway", {})
    if env_values and isinstance(gateway_table, dict):
        data["gateway"] = {**gateway_table, **env_values}
    env_vars = {key: env_var_name(key) for key in env_values} if isinstance(gateway_table, dict) else {}

    # The cross-field rules run below, on the data, not in the models' validators.
    context = {BASE_DIR_CONTEXT: Path.cwd() if base_dir is None else Path(base_dir), CROSS_CHECKED_CONTEXT: True}
    config: Config | None = None
    problems: list[Problem] = []
    try:
        config = Config.model_validate(data, context=context)
    except ValidationError as exc:
        problems.extend(translate(error, Config) for error in exc.errors(include_url=False))
    # Cross-field checks run on whatever parts are individually valid, so they are reported
    # together with schema errors instead of only after those are fixed.
    problems.extend(cross_problems(data, Config))
    if problems or config is None:
        raise ConfigError([p.render(env_vars) for p in ordered(problems)])
    return config


def read_keys_file(config: Config, *, base_dir: Path | None = None) -> Config:
    """The config with the keys of its ``[gateway] keys_file`` (relative to ``base_dir``, default
    the current directory); a config without one is returned as it is. Reads that file."""
    name = config.gateway.keys_file
    if name is None:
        return config
    file = (Path.cwd() if base_dir is None else Path(base_dir)) / name
    return parse_keys_file(_read_text(file, "keys file"), config, source=str(file))


def parse_keys_file(text: str, config: Config, *, source: str = "keys file") -> Config:
    """A keys file's ``[[keys]]`` tables as ``config.keys``; ``keys_file`` is cleared, so the
    result stands alone (``dump_config`` writes the keys, ``parse_config`` reads them back).

    Every problem is reported at once as ``<source>: keys[i].field: ...``, the checks against
    the models (a scope matching none) and ``api_keys`` (the same key twice) included.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: {_toml_error_line(exc)}"], source=source) from None
    problems = [Problem((key,), "unknown key (a keys file holds only [[keys]] tables)") for key in data if key != "keys"]
    raw = data.get("keys", [])
    keys: list[KeyConfig] = []
    try:
        keys = TypeAdapter(list[KeyConfig]).validate_python(raw)
    except ValidationError as exc:
        problems.extend(translate({**e, "loc": ("keys", *e["loc"])}, Config) for e in exc.errors(include_url=False))
    # The same rules as for [[keys]] in models.toml, on the config with these keys in it (the
    # rest of the config passed them already, so only the keys' problems can come back).
    combined = config.model_dump(exclude_none=True)
    combined["gateway"].pop("keys_file", None)
    problems += cross_problems({**combined, "keys": raw}, Config)
    if problems:
        raise ConfigError([f"{source}: {p.render()}" for p in ordered(problems)], source=source)
    gateway = config.gateway.model_copy(update={"keys_file": None})
    return config.model_copy(update={"gateway": gateway, "keys": keys})


def dump_config(config: Config) -> str:
    """The config as TOML (None values left out); ``parse_config`` reads it back unchanged."""
    return tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))


def _read_text(file: Path, what: str) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([f"{file}: cannot read the {what} ({reason})"], source=str(file)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"{file}: not UTF-8 text (bad byte at offset {exc.start})"], source=str(file)
        ) from None


def _toml_error_line(exc: tomllib.TOMLDecodeError) -> str:
    message = str(exc)
    # Python 3.11's tomllib puts the position only in the message: "... (at line 3, column 7)".
    match = re.search(r"^(?P<what>.*?)\s*\(at line (?P<line>\d+), column (?P<col>\d+)\)\s*$", message)
    if match:
        return f"line {match['line']}, column {match['col']}: TOML syntax error: {match['what']}"
    match = re.search(r"^(?P<what>.*?)\s*\(at end of document\)\s*$", message)
    if match:
        return f"end of file: TOML syntax error: {match['what']}"
    return f"TOML syntax error: {message}"
