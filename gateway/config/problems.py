"""Problem lines: ``<dotted.path[i]>: <value> (<what is allowed>)``, one per mistake.

``translate`` turns one pydantic error entry into such a line, chosen by the entry's ``type``
(never by its message); the cross-field rules (``gateway.config.rules``) write theirs directly.
``ordered`` sorts a file's problems by table so a report reads top to bottom.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, NamedTuple, Union, get_args, get_origin

from pydantic import BaseModel

from gateway.config.fields import NAME_PATTERN, NAME_PATTERN_TEXT

Loc = tuple[str | int, ...]


class Problem(NamedTuple):
    loc: Loc
    text: str  # everything after "path: "

    def render(self, env_vars: Mapping[str, str] | None = None) -> str:
        """The line; ``env_vars`` names the variable that set a ``[gateway]`` key (``port`` ->
        ``GATEWAY_PORT``), shown after the path of that key's problems."""
        path = dotted(self.loc)
        if env_vars and len(self.loc) >= 2 and self.loc[0] == "gateway" and self.loc[1] in env_vars:
            path += f" (from {env_vars[str(self.loc[1])]})"
        return f"{path}: {self.text}" if path else self.text


def dotted(loc: Loc) -> str:
    """``("models", 1, "name")`` as ``models[1].name``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def ordered(problems: Sequence[Problem]) -> list[Problem]:
    """By table, in the order a models.toml is usually written; stable, so each table keeps the
    order its problems were found in (pydantic's field order, then the rules')."""
    return sorted(problems, key=lambda p: _section_key(p.loc))


def _section_key(loc: Loc) -> tuple[int, int]:
    ranks = {"gateway": 1, "planner": 2, "router": 3, "nodes": 4, "models": 5, "keys": 6}
    rank = ranks.get(str(loc[0]), 0) if loc else 0
    index = loc[1] if rank in (4, 5, 6) and len(loc) > 1 and isinstance(loc[1], int) else -1
    return rank, index


def show(value: Any) -> str:
    """A value as a problem line quotes it: its repr, cut at 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _number(value: Any) -> str:
    # Float fields carry float bounds; "> 0" reads better than "> 0.0".
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin is Union or origin is types.UnionType:
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def annotation_at(root: type[BaseModel], loc: Loc) -> Any:
    """The declared type at a location, walking from ``root`` (None when it cannot be found):
    ``annotation_at(Config, ("models", 0))`` is ``ModelConfig``."""
    current: Any = root
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int):
            if get_origin(current) is not list:
                return None
            current = get_args(current)[0]
        elif isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part)
            if field is None:
                return None
            current = field.annotation
        else:
            return None
    return _unwrap(current)


_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def translate(error: Mapping[str, Any], root: type[BaseModel]) -> Problem:
    """One pydantic error entry (its ``loc`` counted from ``root``) as a problem line."""
    loc: Loc = tuple(error["loc"])
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    shown = show(value)

    if kind == "missing":
        if loc == ("models",):
            return Problem(loc, "missing (add at least one [[models]] table)")
        return Problem(loc, "missing (required)")
    if kind == "extra_forbidden":
        parent = annotation_at(root, loc[:-1])
        known = list(parent.model_fields) if isinstance(parent, type) and issubclass(parent, BaseModel) else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return Problem(loc, f"unknown key{hint}")
    if kind in _BOUNDS:
        key, op = _BOUNDS[kind]
        return Problem(loc, f"{shown} (must be {op} {_number(ctx.get(key))})")
    if kind == "literal_error":
        annotation = annotation_at(root, loc)
        allowed = get_args(annotation) if get_origin(annotation) is Literal else ()
        listed = ", ".join(str(a) for a in allowed) if allowed else str(ctx.get("expected", "?"))
        return Problem(loc, f"{shown} (must be one of: {listed})")
    if kind in ("int_type", "int_parsing", "int_from_float", "int_parsing_size"):
        return Problem(loc, f"{shown} (must be an integer)")
    if kind in ("float_type", "float_parsing"):
        return Problem(loc, f"{shown} (must be a number)")
    if kind == "finite_number":
        return Problem(loc, f"{shown} (must be a finite number)")
    if kind in ("bool_type", "bool_parsing"):
        return Problem(loc, f"{shown} (must be true or false)")
    if kind == "string_type":
        return Problem(loc, f"{shown} (must be a string)")
    if kind == "list_type":
        if loc == ("models",):
            return Problem(loc, f"{shown} (must be an array of tables: write each model as [[models]])")
        return Problem(loc, f"{shown} (must be a list)")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return Problem(loc, f"{shown} (must be a table)")
    if kind == "string_too_short":
        minimum = ctx.get("min_length", 1)
        allowed = "must not be empty" if minimum == 1 else f"must be at least {minimum} characters"
        return Problem(loc, f"{shown} ({allowed})")
    if kind == "too_short":
        minimum = ctx.get("min_length", 1)
        if loc == ("models",):
            return Problem(loc, f"{shown} (at least one [[models]] table is required)")
        allowed = "must not be empty" if minimum == 1 else f"must have at least {minimum} items"
        return Problem(loc, f"{shown} ({allowed})")
    if kind == "string_pattern_mismatch":
        if ctx.get("pattern") == NAME_PATTERN:
            return Problem(loc, f"{shown} ({NAME_PATTERN_TEXT})")
        return Problem(loc, f"{shown} (must match {ctx.get('pattern')})")
    if kind == "value_error":
        return Problem(loc, f"{shown} ({ctx.get('error', error.get('msg'))})")
    return Problem(loc, f"{shown} ({error.get('msg', kind)})")
