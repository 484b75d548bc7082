"""Where a running gateway's config comes from, read again on each reload."""

from __future__ import annotations

from pathlib import Path

from gateway.config.loading import load_config
from gateway.config.schema import Config
from gateway.errors import InvalidRequestError


class ConfigFile:
    """The models.toml a gateway was started with (or none: ``gateway serve --model``)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def read(self) -> Config:
        """Read and validate the file now; ConfigError lists every problem."""
        if self.path is None:
            raise InvalidRequestError("this gateway was started without a config file (--model): nothing to reload")
        return load_config(self.path)
