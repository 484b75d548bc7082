"""The keys in force, found by the sha256 of the presented key.

A ``KeyRing`` is built from one config (its ``[[keys]]`` and its plain ``api_keys``) and never
changes; a reload builds a new one. Lookup hashes the presented key once and finds it in a dict
by digest, so 1,000 keys cost what one does; the stored and computed digests are then compared
in constant time. The dict's own probing depends only on the digest of what the client sent,
which tells the client nothing about any key it does not already know.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.config.keys import KeyConfig, key_sha256, plain_key_name, scope_matches
from gateway.config.schema import Config


def keys_required(config: Config) -> bool:
    """Whether a config asks for API keys: any plain ``api_keys`` entry or ``[[keys]]`` table."""
    return bool(config.gateway.api_keys or config.keys)


@dataclass(frozen=True)
class ApiKey:
    """One key as the gateway enforces it (the key itself is never kept, only its digest)."""

    name: str
    digest: bytes
    models: tuple[str, ...] | None = None  # names, aliases or globs; None: every model
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrency: int | None = None
    admin: bool = False

    @property
    def scoped(self) -> bool:
        return self.models is not None

    def may_use(self, names: Sequence[str]) -> bool:
        """Whether the key covers a model, given its name and aliases."""
        return scope_matches(self.models, names)


class KeyRing:
    """Every key of one config, by digest."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self.keys: dict[str, ApiKey] = {}
        self._by_digest: dict[bytes, ApiKey] = {}
        for key in keys:
            self.keys[key.name] = key
            self._by_digest[key.digest] = key

    @classmethod
    def from_config(cls, config: Config) -> KeyRing:
        return cls.build(config.gateway.api_keys, config.keys)

    @classmethod
    def build(cls, api_keys: Sequence[str], keys: Sequence[KeyConfig]) -> KeyRing:
        # Plain api_keys predate scopes: each may do everything, /admin/* included, as before.
        plain = [ApiKey(plain_key_name(i), key_sha256(k), admin=True) for i, k in enumerate(api_keys)]
        named = [
            ApiKey(
                name=k.name,
                digest=bytes.fromhex(k.key_sha256),
                models=tuple(k.models) if k.models is not None else None,
                requests_per_minute=k.requests_per_minute,
                tokens_per_minute=k.tokens_per_minute,
                max_concurrency=k.max_concurrency,
                admin=k.admin,
            )
            for k in keys
        ]
        return cls([*plain, *named])

    @property
    def required(self) -> bool:
        """A key is needed (any is configured); without keys the gateway is open."""
        return bool(self._by_digest)

    def find(self, token: str) -> ApiKey | None:
        """The key whose digest is the sha256 of ``token``, or None."""
        digest = key_sha256(token)
        key = self._by_digest.get(digest)
        if key is not None and hmac.compare_digest(key.digest, digest):
            return key
        return None
