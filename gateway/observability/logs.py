"""Logging setup: plain text for a terminal, or one JSON object per line for a log pipeline.

A JSON line carries ``time`` (UTC, ISO 8601, milliseconds), ``level``, ``logger``, ``message``
and every field passed in ``extra=``, so a request line is queryable by ``request_id``,
``model`` or ``status`` without parsing text. ``log_request`` writes the one line per request.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REQUEST_LOGGER = "gateway.request"

# Attributes every LogRecord has; whatever else a record carries came from ``extra=``.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and key not in doc:
                doc[key] = value
        if record.exc_info:
            doc["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack_info"] = self.formatStack(record.stack_info)
        # default=str: an extra field that JSON cannot hold (a Path, an enum) is still logged
        # rather than losing the whole line.
        return json.dumps(doc, ensure_ascii=False, default=str)


def make_formatter(json_format: bool) -> logging.Formatter:
    """The formatter ``configure_logging`` installs (also for granian's loggers)."""
    return JsonFormatter() if json_format else logging.Formatter(TEXT_FORMAT)


def configure_logging(level: str, json_format: bool) -> None:
    """Send every logger's records to stderr at ``level`` (``"info"``, ``"DEBUG"``...).

    Replaces the root logger's handlers, so calling it again (a reload, a second app in a test)
    switches format instead of printing each line twice.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(json_format))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def granian_log_config(level: str, json_format: bool) -> dict[str, Any]:
    """A ``log_dictconfig`` for ``Granian(...)`` so the server's own lines match ours.

    granian logs through ``_granian`` (and ``granian.access``) with handlers of its own; this
    replaces its formatters with ours, keeping its loggers and levels.
    """
    formatter = {"()": "gateway.observability.logs.JsonFormatter"} if json_format else {"()": "logging.Formatter", "fmt": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"gateway": formatter},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "gateway", "stream": "ext://sys.stderr"}},
        "loggers": {
            "_granian": {"handlers": ["console"], "level": level.upper(), "propagate": False},
            "granian.access": {"handlers": ["console"], "level": level.upper(), "propagate": False},
        },
    }


def request_log_fields(
    *,
    request_id: str,
    model: str | None,
    endpoint: str,
    status: int,
    duration_s: float,
    ttft_s: float | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """The ``extra=`` fields of one request line (durations in whole milliseconds); ``key`` is
    the API key's name, never the key (left out on a gateway without keys)."""
    return {
        "event": "request",
        "request_id": request_id,
        "model": model,
        **({"key": key} if key is not None else {}),
        "endpoint": endpoint,
        "status": status,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "duration_ms": round(duration_s * 1000, 1),
        "ttft_ms": None if ttft_s is None else round(ttft_s * 1000, 1),
    }


def log_request(logger: logging.Logger | None = None, **fields: Any) -> None:
    """Write the one line for a finished request; ``fields`` as for ``request_log_fields``.

    The message reads well as text; in JSON every field is also its own key.
    """
    extra = request_log_fields(**fields)
    (logger or logging.getLogger(REQUEST_LOGGER)).info(
        "%s %s %s %d in %.0f ms (%s+%s tokens)%s",
        extra["request_id"],
        extra["endpoint"],
        extra["model"] or "-",
        extra["status"],
        extra["duration_ms"],
        extra["prompt_tokens"] if extra["prompt_tokens"] is not None else "-",
        extra["completion_tokens"] if extra["completion_tokens"] is not None else "-",
        f" key {extra['key']}" if "key" in extra else "",
        extra=extra,
    )
