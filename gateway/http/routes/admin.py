"""/admin/*: reload the config (the work behind SIGHUP and `gateway reload`)."""

from __future__ import annotations

import logging

from litestar.di import NamedDependency
from litestar import Response, post
from litestar.handlers import HTTPRouteHandler

from gateway.errors import ConfigError
from gateway.http.auth import Auth
from gateway.runtime.pool import ModelPool, ReloadResult
from gateway.config.source import ConfigFile

log = logging.getLogger("gateway")


async def admin_reload(pool: NamedDependency[ModelPool], config_file: NamedDependency[ConfigFile]) -> Response:
    """Re-read models.toml and apply it; 422 with every problem when it is refused."""
    try:
        new = config_file.read()
    except ConfigError as exc:
        result = ReloadResult(False, problems=list(exc.problems))
    else:
        result = await pool.reload(new)
    if result.reloaded:
        log.info(
            "reloaded %s: unchanged %s, removed %s, changed %s, added %s",
            config_file.path, result.unchanged, result.removed, result.changed, result.added,
        )
    else:
        log.error("reload of %s refused, nothing changed:\n  %s", config_file.path, "\n  ".join(result.problems))
    return Response(content=result.as_dict(), status_code=200 if result.reloaded else 422)


def handlers(auth: Auth) -> list[HTTPRouteHandler]:
    admin = [auth.guard("admin")]
    return [
        post("/admin/reload", status_code=200, guards=admin, operation_id="reload")(admin_reload),
    ]
