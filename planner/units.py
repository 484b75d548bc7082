"""Memory sizes written by people: ``"24GiB"``, ``"512 MB"``, ``"24GiB/20GiB"``.

Pure functions. Every failure is a ``ValueError`` whose message says what is wrong and what is
accepted without repeating the input, because callers show the input next to it
(``planner.gpus[1]: '12XB' (unknown unit 'XB'; use ...)``).
"""

from __future__ import annotations

import re
from decimal import Decimal
from types import MappingProxyType

MIB = 1024 * 1024
GIB = 1024 * MIB

# Binary and decimal units both appear on spec sheets and in tool output; mixing them up is a
# ~7% error at GiB scale, so each unit means exactly what its name says.
_UNITS = MappingProxyType({
    "b": 1,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
})

_UNIT_NAMES = "B, KiB, MiB, GiB, TiB (binary) or KB, MB, GB, TB (decimal)"
_EXPECTED = f"expected a number and a unit, e.g. '24GiB'; units: {_UNIT_NAMES}"

_SIZE_RE = re.compile(r"\s*(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?P<unit>[A-Za-z]*)\s*")


def parse_size(text: str) -> int:
    """Parse a size such as ``"24GiB"``, ``"1.5 GB"`` or ``"512MiB"`` into bytes.

    Units are case-insensitive and required (a bare number is ambiguous). Fractions of a byte
    are rounded down.
    """
    if not isinstance(text, str):
        raise ValueError(f"not text; {_EXPECTED}")
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        if text.strip().startswith("-"):
            raise ValueError(f"a size cannot be negative; {_EXPECTED}")
        raise ValueError(f"not a size; {_EXPECTED}")
    unit = match["unit"]
    if not unit:
        raise ValueError(f"no unit; {_EXPECTED}")
    if unit.lower() not in _UNITS:
        raise ValueError(f"unknown unit {unit!r}; use {_UNIT_NAMES}")
    return int(Decimal(match["number"]) * _UNITS[unit.lower()])


def parse_gpu_spec(text: str) -> tuple[int, int | None]:
    """Parse a declared GPU, ``"24GiB"`` (total) or ``"24GiB/20GiB"`` (total/free), into bytes.

    Returns ``(total, free)``; ``free`` is None when not given. The total must be more than zero
    and the free memory cannot exceed it.
    """
    if not isinstance(text, str):
        raise ValueError("not text; expected 'TOTAL' or 'TOTAL/FREE', e.g. '24GiB' or '24GiB/20GiB'")
    parts = text.split("/")
    if len(parts) > 2:
        raise ValueError("more than one '/'; expected 'TOTAL' or 'TOTAL/FREE', e.g. '24GiB/20GiB'")
    if len(parts) == 1:
        total = parse_size(text)
        if total <= 0:
            raise ValueError("total memory must be more than 0")
        return total, None
    try:
        total = parse_size(parts[0])
    except ValueError as exc:
        raise ValueError(f"total: {exc}") from None
    if total <= 0:
        raise ValueError("total memory must be more than 0")
    try:
        free = parse_size(parts[1])
    except ValueError as exc:
        raise ValueError(f"free: {exc}") from None
    if free > total:
        raise ValueError(f"free memory ({parts[1].strip()}) exceeds total memory ({parts[0].strip()})")
    return total, free
