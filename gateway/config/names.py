"""Which configured model a request's ``model`` field means: a name, an alias, or absent.

One rule for a gateway and for the router in front of several: absent goes to ``default_model``,
else to the only model; an unknown name is ModelNotFoundError listing the known ones; never a
guess and never another model.
"""

from __future__ import annotations

from typing import Any

from gateway.config.schema import Config
from gateway.errors import InvalidRequestError, ModelNotFoundError


class ModelNames:
    """Names and aliases of one config's models."""

    def __init__(self, config: Config) -> None:
        self._default = config.gateway.default_model
        self._names = [m.name for m in config.models]
        lookup: dict[str, str] = {}
        for m in config.models:
            lookup[m.name] = m.name
        for m in config.models:
            for alias in m.aliases:
                lookup.setdefault(alias, m.name)
        self.lookup = lookup

    def resolve(self, requested: Any) -> str:
        """The configured name ``requested`` stands for."""
        if requested is None or requested == "":
            if self._default is not None:
                return self.lookup[self._default]
            if len(self._names) == 1:
                return self._names[0]
            raise InvalidRequestError(
                f"'model' is required: this gateway serves {len(self._names)} models ({', '.join(self._names)})",
                param="model",
            )
        if not isinstance(requested, str):
            raise InvalidRequestError(f"'model' must be a string, not {type(requested).__name__}", param="model")
        name = self.lookup.get(requested)
        if name is None:
            raise ModelNotFoundError(requested, sorted(self.lookup))
        return name
