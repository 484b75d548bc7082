"""The admin API's request bodies: one typed parser each, and the JSON schema derived from it."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from gateway.errors import InvalidRequestError

MAX_DECLARED_GPUS = 64


class PlanPreviewRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /admin/plan``: a models.toml's text and, optionally, the GPUs to plan it on."""

    config: Annotated[str, msgspec.Meta(description="the text of a models.toml")]
    gpus: (
        Annotated[
            list[str],
            msgspec.Meta(
                max_length=MAX_DECLARED_GPUS,
                description='a declared inventory instead of this machine\'s GPUs, e.g. ["24GiB", "24GiB/20GiB"] (total[/free])',
            ),
        ]
        | None
    ) = None


def plan_preview_request(raw: bytes) -> PlanPreviewRequest:
    try:
        return msgspec.json.decode(raw, type=PlanPreviewRequest)
    except msgspec.ValidationError as exc:
        raise InvalidRequestError(f"the request body is invalid: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidRequestError(f"the request body is not valid JSON: {exc}") from None


def _schema(struct: type[msgspec.Struct]) -> dict[str, Any]:
    (schema,), components = msgspec.json.schema_components([struct], ref_template="#/components/schemas/{name}")
    return components[struct.__name__]


PLAN_PREVIEW_REQUEST_SCHEMA: dict[str, Any] = _schema(PlanPreviewRequest)
