"""The value types models.toml's tables share: names, GPU specs, host names, cache types.

Each type carries its own check, so ``gateway.config.schema`` declares a field in one line and
``gateway.config.problems`` can explain a failed pattern in words.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, Field
from pydantic.fields import FieldInfo

from planner.memory import KV_TYPES, QUANTIZED_KV_TYPES
from planner.units import parse_gpu_spec

NAME_PATTERN = r"^[A-Za-z0-9._:/-]+$"
NAME_PATTERN_TEXT = "may contain only letters, digits and . _ : / -"

# The planner's list of llama.cpp's KV cache types (planner.memory.KV_TYPES), as a Literal.
CacheType = Literal[KV_TYPES]  # type: ignore[valid-type]
CACHE_TYPES: tuple[str, ...] = get_args(CacheType)
QUANTIZED_CACHE_TYPES = QUANTIZED_KV_TYPES
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
NonEmptyStr = Annotated[str, Field(min_length=1)]


def _check_gpu_spec(text: str) -> str:
    parse_gpu_spec(text)  # raises ValueError with a message meant for the user
    return text


def _check_unique_indices(values: list[int]) -> list[int]:
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"lists GPU {', '.join(map(str, repeated))} more than once")
    return values


def _check_not_all_zero(values: list[float]) -> list[float]:
    if not any(values):
        raise ValueError("must not be all zero")
    return values


def _check_host_name(text: str) -> str:
    if text == "*":
        return text
    if ":" in text:
        try:
            ipaddress.IPv6Address(text.strip("[]"))
        except ValueError:
            raise ValueError("must be a host name or an address as clients write it, without scheme or port, or '*' for any") from None
        return text
    if re.fullmatch(r"[A-Za-z0-9.-]+", text) is None:
        raise ValueError("must be a host name or an address as clients write it, without scheme or port, or '*' for any")
    return text


GpuSpec = Annotated[str, AfterValidator(_check_gpu_spec)]
HostName = Annotated[str, Field(min_length=1), AfterValidator(_check_host_name)]
ANY_ORIGIN = "*"
_ORIGIN_PATTERN = r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?"


def _check_origin(text: str) -> str:
    if text != ANY_ORIGIN and re.fullmatch(_ORIGIN_PATTERN, text) is None:
        raise ValueError(
            "must be an origin as a browser sends it, scheme://host[:port] without path or trailing slash "
            "(e.g. 'http://localhost:3000'), or '*' for any (only with API keys)"
        )
    return text


Origin = Annotated[str, Field(min_length=1), AfterValidator(_check_origin)]
GpuIndexList = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1), AfterValidator(_check_unique_indices)]
TensorSplit = Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=1), AfterValidator(_check_not_all_zero)]


def field_type(field: FieldInfo) -> Any:
    """A field's annotation with its constraints, for validating one value on its own."""
    return Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
