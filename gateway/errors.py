"""The gateway's exceptions: the planner's tree plus what only the gateway can go wrong with.

The HTTP layer maps these classes (never their message text) to OpenAI-shaped error bodies.
"""

from __future__ import annotations

from planner.errors import DeviceError, GatewayError, ModelFileError, PlanError

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "ConflictError",
    "CrossSiteRequestError",
    "DeviceError",
    "EngineError",
    "GatewayError",
    "ImportOrderError",
    "InvalidRequestError",
    "ModelFileError",
    "ModelNotFoundError",
    "ModelUnavailableError",
    "PermissionDeniedError",
    "PlanError",
    "QueueFullError",
    "QueueTimeoutError",
    "RateLimitError",
    "RoutingLoopError",
    "UnsupportedMediaTypeError",
    "UpstreamError",
    "VerifyError",
]


class ConfigError(GatewayError):
    """The configuration is unreadable or invalid.

    ``problems`` holds one line per mistake, e.g. ``models[1].n_ctx: -5 (must be > 0)``; the
    message is those lines joined by newlines. ``source`` names the file when there is one.
    """

    def __init__(self, problems: list[str], *, source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__("\n".join(self.problems))


class EngineError(GatewayError):
    """A model's engine (llama-cpp-python) failed to load or to run."""


class ModelNotFoundError(GatewayError):
    """A request named a model that is neither a configured name nor an alias."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = list(known)
        listed = ", ".join(self.known) if self.known else "(none)"
        super().__init__(f"model {name!r} not found; known models: {listed}")


class ModelUnavailableError(GatewayError):
    """The model exists but is not ready to serve (loading, failed, stopping or not placed)."""


class InvalidRequestError(GatewayError):
    """A request body is malformed or asks for something the model cannot do (400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        self.param = param
        super().__init__(message)


class AuthenticationError(GatewayError):
    """A missing or wrong API key (401)."""


class QueueFullError(GatewayError):
    """The model's waiting room is full (429 with Retry-After)."""

    def __init__(self, name: str, queue_size: int) -> None:
        self.name = name
        self.queue_size = queue_size
        super().__init__(f"model {name!r} is busy: {queue_size} request(s) already waiting; retry later")


class QueueTimeoutError(GatewayError):
    """A request waited for a free slot longer than its timeout (503)."""

    def __init__(self, name: str, timeout: float) -> None:
        self.name = name
        self.timeout = timeout
        super().__init__(f"model {name!r}: no free slot within {timeout:g} s; retry later")


class ConflictError(GatewayError):
    """The operation conflicts with one already running, or with the model's state (409)."""


class PermissionDeniedError(GatewayError):
    """A valid API key that may not do this (a model outside its scope, an admin call): 403."""


class CrossSiteRequestError(GatewayError):
    """A browser sent this request for a page of another site (its ``Origin``): 403."""


class UnsupportedMediaTypeError(GatewayError):
    """A request body that is not ``application/json`` (415): the types a web page may send
    anywhere without asking first (text/plain, form data) are never accepted."""


class RateLimitError(GatewayError):
    """A key's rate or concurrency limit is reached (429 with Retry-After and ``headers``)."""

    def __init__(self, message: str, *, code: str, retry_after_s: float, headers: dict[str, str] | None = None) -> None:
        self.code = code
        self.retry_after_s = retry_after_s
        self.headers = dict(headers or {})
        super().__init__(message)


class VerifyError(GatewayError):
    """The plan cannot be verified here (no CUDA build or no GPU), or a dry run went wrong."""


class UpstreamError(GatewayError):
    """A node behind the router broke the connection after the request reached it (502; not
    retried elsewhere, since the node may have run it)."""


class RoutingLoopError(GatewayError):
    """A request a router sent to a node reached a router (508): a ``[[nodes]]`` url points at
    a router (that router itself, or another one) instead of a node's gateway."""


class ImportOrderError(GatewayError):
    """A model-loading process imported numpy before llama.cpp's native library (the order that
    crashed every CUDA load: gateway/engine/native.py)."""
