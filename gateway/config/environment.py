"""``GATEWAY_<KEY>`` environment variables: values for ``[gateway]`` that beat the file's.

Read only from the mapping ``parse_config`` is given (``os.environ`` by default), never at
import and never behind its back (``GatewaySettings`` lists no settings source of its own).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource

from gateway.config.fields import field_type
from gateway.config.schema import ENV_PREFIX, GatewaySettings


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source reading a given mapping instead of ``os.environ``.

    List values may be JSON (``["a","b"]``) or comma-separated (``a,b``); undecodable JSON is
    passed through as text so validation reports it like any other bad value.
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # Same normalisation as the parent's os.environ reading (names are case-insensitive).
        if self.case_sensitive:
            return dict(self._environ)
        return {key.lower(): value for key, value in self._environ.items()}

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if not value.lstrip().startswith("["):
            return [part.strip() for part in value.split(",") if part.strip()]
        try:
            return json.loads(value)
        except ValueError:
            return value


def gateway_env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``[gateway]`` keys that ``GATEWAY_*`` variables in ``environ`` set, with their values."""
    values = _MappingEnvSource(GatewaySettings, environ)()
    # Environment values are text: convert each one the lax way ("9000" -> 9000, "true" -> True).
    # One that does not convert stays text, so strict validation reports it with its variable.
    for key, value in values.items():
        if isinstance(value, str):
            try:
                values[key] = TypeAdapter(field_type(GatewaySettings.model_fields[key])).validate_python(value)
            except ValidationError:
                pass
    return values


def env_var_name(key: str) -> str:
    """The variable that sets a ``[gateway]`` key: ``port`` -> ``GATEWAY_PORT``."""
    return f"{ENV_PREFIX}{key.upper()}"
