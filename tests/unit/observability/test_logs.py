"""One console format: granian's records and the app's come out in ours, as text and as JSON.

Each test sets logging up as the app process of ``gateway serve`` does: granian applies our
``granian_log_config`` through its own ``configure_logging``, then calls the app factory
(``gateway.http.asgi.app_from_state``), which configures our handler and builds the Litestar app.
"""

from __future__ import annotations

import io
import json
import logging
import re

import pytest
from granian.log import LogLevels
from granian.log import access_logger as granian_access_logger
from granian.log import configure_logging as granian_configure_logging
from granian.log import logger as granian_logger

from gateway.config.loading import parse_config
from gateway.http.asgi import STATE_ENV, app_from_state
from gateway.http.server import write_state
from gateway.observability.logs import granian_log_config

# TEXT_FORMAT: "%(asctime)s %(levelname)s %(name)s: %(message)s"
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<logger>[\w.]+): (?P<message>.*)")
LOGGERS = ("", "_granian", "granian.access", "litestar", "gateway")


@pytest.fixture
def console(monkeypatch, tmp_path):
    """A function that sets logging up as the app process does and returns stderr as a buffer;
    every logger it touches is restored afterwards."""
    saved = {name: (lg.handlers[:], lg.level, lg.propagate) for name in LOGGERS for lg in [logging.getLogger(name)]}

    def start(log_format: str) -> io.StringIO:
        # Here, not in the fixture: pytest puts its own sys.stderr back between setup and call.
        stream = io.StringIO()
        monkeypatch.setattr("sys.stderr", stream)
        config = parse_config(
            f'[gateway]\nlog_format = "{log_format}"\n[[models]]\nname = "m"\npath = "m.gguf"\n', environ={}
        )
        json_format = log_format == "json"
        granian_configure_logging(LogLevels.info, granian_log_config("info", json_format))
        monkeypatch.setenv(STATE_ENV, str(write_state(config, {}, strict=False, directory=tmp_path)))
        app_from_state()
        return stream

    yield start
    for name, (handlers, level, propagate) in saved.items():
        lg = logging.getLogger(name)
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


def _log_one_of_each() -> None:
    granian_logger.info("Listening at: %s", "http://127.0.0.1:8080")
    granian_access_logger.info('%(addr)s - "%(method)s %(path)s" %(status)d', {"addr": "127.0.0.1", "method": "GET", "path": "/health", "status": 200})
    logging.getLogger("gateway").info("model m: ready (loaded in %.1f s)", 4.5)
    logging.getLogger("litestar").warning("from the framework")


EXPECTED = [
    ("INFO", "_granian", "Listening at: http://127.0.0.1:8080"),
    ("INFO", "granian.access", '127.0.0.1 - "GET /health" 200'),
    ("INFO", "gateway", "model m: ready (loaded in 4.5 s)"),
    ("WARNING", "litestar", "from the framework"),
]


def test_granian_and_gateway_records_share_our_text_format(console):
    stream = console("text")
    _log_one_of_each()
    lines = stream.getvalue().splitlines()
    parsed = [TEXT_LINE.fullmatch(line) for line in lines]
    assert all(parsed), lines
    assert [(m["level"], m["logger"], m["message"]) for m in parsed] == EXPECTED


def test_granian_and_gateway_records_are_our_json_lines(console):
    stream = console("json")
    _log_one_of_each()
    docs = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(d["level"].upper(), d["logger"], d["message"]) for d in docs] == EXPECTED
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", d["time"]) for d in docs), docs
