"""/admin/keys: every key in force with its scope, limits and last minute of use (`gateway status`)."""

from __future__ import annotations

from typing import Any

from litestar import get
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler

from gateway.access.gate import Access
from gateway.http.auth import Auth


async def admin_keys(access: NamedDependency[Access]) -> dict[str, Any]:
    """Names, never keys or hashes: requests, tokens and refusals over the last minute."""
    return {"object": "list", "data": access.usage()}


def handlers(auth: Auth) -> list[HTTPRouteHandler]:
    return [get("/admin/keys", guards=[auth.guard("admin")], operation_id="listKeys")(admin_keys)]
