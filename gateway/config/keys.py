"""The keys part of models.toml: ``[[keys]]``, named API keys with scopes and limits.

A key is stored as the sha256 of its text (``key_sha256``), so the file never needs the secret
itself; ``gateway hash-key`` prints the line. Keys live either in models.toml's ``[[keys]]`` or in
a keys file that ``[gateway] keys_file`` (or ``GATEWAY_KEYS_FILE``) names, so that secrets can
stay outside the config and outside git; never in both (one place for the keys).

``Config`` (gateway.config.schema) holds the validated keys; the checks that involve other
tables (``key_problems``) are called by gateway.config.rules so that their problems are reported
with all the others, at once, with dotted paths. The key store that serves requests is gateway.access.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# Key names are Prometheus label values and log fields: short, no spaces, and without "[" so
# that they never collide with the names of plain api_keys entries ("api_keys[0]").
_KEY_NAME_RE = re.compile(r"[A-Za-z0-9._:/@-]{1,64}")
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")

Loc = tuple[str | int, ...]
Getter = Callable[[str], Any]


def key_sha256(key: str) -> bytes:
    """The sha256 of a key's UTF-8 text: what is stored and what a request is looked up by."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def key_digest(key: str) -> str:
    """The ``key_sha256`` line's value for a key (hex)."""
    return key_sha256(key).hex()


def plain_key_name(index: int) -> str:
    """The name an entry of ``[gateway] api_keys`` goes by in metrics, logs and status."""
    return f"api_keys[{index}]"


def _key_name(value: str) -> str:
    if not _KEY_NAME_RE.fullmatch(value):
        raise ValueError("must be 1 to 64 letters, digits or . _ : / @ -")
    return value


def _sha256(value: str) -> str:
    if not _SHA256_RE.fullmatch(value):
        raise ValueError("must be 64 hexadecimal digits, the sha256 of the key: `gateway hash-key` prints it")
    return value.lower()


class KeyConfig(BaseModel):
    """One ``[[keys]]`` table: who may call, which models, and how much."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    # Shown in metrics, logs and `gateway status`; the key itself never is.
    name: Annotated[str, AfterValidator(_key_name)]
    key_sha256: Annotated[str, AfterValidator(_sha256)]
    # Model names, aliases or globs (fnmatch: * ? [...]); None: every model.
    models: list[Annotated[str, Field(min_length=1)]] | None = None
    # Over a sliding minute; tokens are prompt + completion, a stream's counted as generated.
    requests_per_minute: Annotated[int, Field(gt=0)] | None = None
    tokens_per_minute: Annotated[int, Field(gt=0)] | None = None
    # This key's requests in flight at once (running or waiting for a model's slot), across models.
    max_concurrency: Annotated[int, Field(ge=1)] | None = None
    # May call /admin/* (reload, load/unload, plan) and the /ui actions.
    admin: bool = False


def scope_matches(patterns: Sequence[str] | None, names: Sequence[str]) -> bool:
    """Whether a key's ``models`` (None: all) covers any of a model's name and aliases."""
    if patterns is None:
        return True
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)


def key_problems(
    keys: Sequence[Getter],
    models: Sequence[Getter],
    api_keys: Any,
    *,
    keys_file: Any,
    valid: Callable[..., bool],
) -> list[tuple[Loc, str]]:
    """The checks between ``[[keys]]`` and the other tables, with locations ``keys[i].field``.

    ``valid(v)`` is False for a value that failed its own validation (already reported), so the
    checks that need it are skipped. ``keys_file`` is ``[gateway] keys_file`` when the keys come
    from models.toml, and None when they are a keys file's.
    """
    problems: list[tuple[Loc, str]] = []
    if keys and valid(keys_file) and keys_file is not None:
        problems.append((
            ("gateway", "keys_file"),
            f"{keys_file!r} (models.toml has [[keys]] too: keep the keys in one place)",
        ))
    plain: dict[str, str] = {}
    if valid(api_keys):
        for j, key in enumerate(api_keys or ()):
            plain.setdefault(key_digest(key), f"gateway.api_keys[{j}]")

    names: dict[str, str] = {}
    hashes: dict[str, str] = {}
    for i, get in enumerate(keys):
        name, digest = get("name"), get("key_sha256")
        if valid(name):
            if name in names:
                problems.append((("keys", i, "name"), f"{name!r} (duplicate of {names[name]})"))
            else:
                names[name] = f"keys[{i}].name"
        if valid(digest):
            if digest in hashes:
                problems.append((("keys", i, "key_sha256"), f"{digest!r} (the same key as {hashes[digest]})"))
            elif digest in plain:
                problems.append((
                    ("keys", i, "key_sha256"),
                    f"{digest!r} (the hash of {plain[digest]}: a key is either plain or named, not both)",
                ))
            else:
                hashes[digest] = f"keys[{i}].key_sha256"

    known: list[str] = []
    for get in models:
        name, aliases = get("name"), get("aliases")
        if not valid(name, aliases):
            return problems  # the model names are incomplete: a scope cannot be judged
        known += [name, *aliases]
    for i, get in enumerate(keys):
        scope = get("models")
        if not valid(scope) or scope is None:
            continue
        for j, pattern in enumerate(scope):
            if not scope_matches([pattern], known):
                problems.append((
                    ("keys", i, "models", j),
                    f"{pattern!r} (matches no model name or alias; known: {', '.join(dict.fromkeys(known)) or 'none'})",
                ))
    return problems
