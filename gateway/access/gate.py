"""Who may use what, and how much: the keys in force, their scopes, limits and usage.

``Access`` reads the config in force at each call (the pool's), and builds its ``KeyRing`` again
when that config changes: a reload that adds a key admits it from its next request, one that
removes a key refuses it from its next request, and requests in flight keep their tickets. Each
key's usage follows its *name*, so a key rotated to a new hash keeps its minute of history.

A scoped key is told 403 for every model outside its scope, whether or not such a model exists,
so its answers never reveal the names of models it may not use.

The router (gateway.router.app) uses the same ``Access`` over its cluster config: ``permit`` and
``visible_names`` work on the config's model names, so scopes, limits and usage mean the same
through a router as on one gateway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from gateway.access.keyring import ApiKey, KeyRing
from gateway.access.limits import Clock, KeyUsage, Ticket, admit
from gateway.config.names import ModelNames
from gateway.config.schema import Config
from gateway.errors import InvalidRequestError, ModelNotFoundError, PermissionDeniedError
from gateway.runtime.pool import ModelEntry, ModelPool

log = logging.getLogger("gateway")


def _names(entry: ModelEntry) -> tuple[str, ...]:
    return (entry.name, *entry.config.aliases)


def _config_names(config: Config, name: str) -> tuple[str, ...]:
    model = next(m for m in config.models if m.name == name)
    return (model.name, *model.aliases)


class Access:
    """The key store of one app: lookup, scopes, limits and the last minute of use per key."""

    def __init__(
        self,
        config: Callable[[], Config],
        *,
        clock: Clock = time.monotonic,
        on_keys: Callable[[list[str]], None] | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._on_keys = on_keys or (lambda names: None)
        self._built_for: Config | None = None
        self._ring = KeyRing([])
        self._usage: dict[str, KeyUsage] = {}
        self._names: tuple[Config, ModelNames] | None = None

    def ring(self) -> KeyRing:
        """The keys of the config in force."""
        config = self._config()
        if config is not self._built_for:
            ring = KeyRing.from_config(config)
            if self._built_for is not None and ring.keys.keys() != self._ring.keys.keys():
                added = [n for n in ring.keys if n not in self._ring.keys]
                removed = [n for n in self._ring.keys if n not in ring.keys]
                log.info("API keys: %d in force; added %s; removed %s", len(ring.keys), added or "-", removed or "-")
            self._usage = {name: self._usage.get(name) or KeyUsage() for name in ring.keys}
            self._ring, self._built_for = ring, config
            self._on_keys(list(ring.keys))
        return self._ring

    def _usage_of(self, key: ApiKey) -> KeyUsage:
        self.ring()
        # A key removed by a reload after its request was let in: counted, but not kept.
        return self._usage.get(key.name) or KeyUsage()

    # ------------------------------------------------------------------ scopes

    def permit(self, key: ApiKey | None, requested: Any) -> str:
        """The configured name of the model a request names, if the key may use it; 403
        otherwise (never a 404). The one rule for a gateway and for the router in front of
        several: both resolve names by the config in force (gateway.config.names)."""
        config = self._config()
        names = self._names_of(config)
        if key is None or not key.scoped:
            return names.resolve(requested)
        try:
            name: str | None = names.resolve(requested)
        except ModelNotFoundError:
            name = None
        except InvalidRequestError as exc:
            if exc.param != "model" or requested not in (None, ""):
                raise
            # No model and no default: name the key's models only, never the others.
            allowed = ", ".join(self.visible_names(key)) or "none"
            raise InvalidRequestError(f"'model' is required: key {key.name!r} may use {allowed}", param="model") from None
        if name is None or not key.may_use(_config_names(config, name)):
            allowed = ", ".join(self.visible_names(key)) or "none"
            what = "the default model" if requested is None or requested == "" else f"model {requested!r}"
            raise PermissionDeniedError(f"key {key.name!r} may not use {what}; its models: {allowed}")
        return name

    def visible_names(self, key: ApiKey | None) -> list[str]:
        """The configured models a key may use, in config order (all of them for an unscoped key
        or an open gateway)."""
        config = self._config()
        return [m.name for m in config.models if key is None or key.may_use((m.name, *m.aliases))]

    def _names_of(self, config: Config) -> ModelNames:
        if self._names is None or self._names[0] is not config:
            self._names = (config, ModelNames(config))
        return self._names[1]

    def resolve(self, pool: ModelPool, key: ApiKey | None, requested: Any) -> ModelEntry:
        """``permit`` as the pool's entry (the pool follows the same config)."""
        return pool.entries[self.permit(key, requested)]

    def visible(self, key: ApiKey | None, entries: Iterable[ModelEntry]) -> list[ModelEntry]:
        """The models a key may use (every model for an unscoped key or an open gateway)."""
        return [e for e in entries if key is None or key.may_use(_names(e))]

    # ------------------------------------------------------------------ limits

    def admit(self, key: ApiKey | None) -> Ticket:
        """A ticket for one request of ``key``, or RateLimitError; no key: an open gateway."""
        if key is None:
            return Ticket(None, None, self._clock)
        return admit(key, self._usage_of(key), self._clock(), self._clock)

    def rejected(self, name: str | None, reason: str) -> None:
        """Count a refusal of the key's request (for its last minute in ``gateway status``)."""
        usage = self._usage.get(name) if name is not None else None
        if usage is not None:
            usage.reject(self._clock(), reason)

    def usage(self) -> list[dict[str, Any]]:
        """Every key in force: its scope, limits, requests running and its last minute."""
        ring = self.ring()
        now = self._clock()
        return [
            {
                "name": key.name,
                "models": list(key.models) if key.models is not None else None,
                "admin": key.admin,
                "requests_per_minute": key.requests_per_minute,
                "tokens_per_minute": key.tokens_per_minute,
                "max_concurrency": key.max_concurrency,
                "in_flight": self._usage[key.name].in_flight,
                "last_minute": self._usage[key.name].last_minute(now),
            }
            for key in ring.keys.values()
        ]
