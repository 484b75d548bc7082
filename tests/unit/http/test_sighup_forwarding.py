"""The server process forwards SIGHUP to the app's POST /admin/reload (gateway.http.server._Server).

A fake app (a loopback HTTP server) stands in for the gateway or the router; the server's
``_reload`` is what granian's main loop calls on SIGHUP. Nothing here waits on a timer: the fake
app holds its first reload until the test lets it go, and the test waits for the forwarding
thread to end.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from granian.constants import Interfaces

from gateway.http.auth import RELOAD_TOKEN_HEADER
from gateway.http.server import _Server
from testkit.serving import HANG_S


class FakeApp:
    """Answers POST /admin/reload; the first one is held until ``release`` is set."""

    def __init__(self) -> None:
        self.posts: list[str] = []
        self.busy = 0  # the first POSTs answered 409: another reload (`gateway reload`) is running
        self.first_in = threading.Event()
        self.release = threading.Event()
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                app.posts.append(self.headers.get(RELOAD_TOKEN_HEADER, ""))
                if len(app.posts) == 1:
                    app.first_in.set()
                    app.release.wait(HANG_S)
                if len(app.posts) <= app.busy:
                    body = b'{"error": {"message": "a reload is already running", "type": "conflict"}}'
                    self.send_response(409)
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                body = b'{"reloaded": true}'
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/admin/reload"


@pytest.fixture
def app() -> Iterator[FakeApp]:
    fake = FakeApp()
    thread = threading.Thread(target=fake.http.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.release.set()
        fake.http.shutdown()
        fake.http.server_close()


def forwarding_to(app: FakeApp) -> _Server:
    server = _Server("gateway.http.asgi:app_from_state", factory=True, interface=Interfaces.ASGI, address="127.0.0.1", port=0)
    server.reload_url = app.url
    server.reload_token = "token"
    return server


def wait_forwarding_done() -> None:
    for thread in [t for t in threading.enumerate() if t.name == "reload"]:
        thread.join(HANG_S)
        assert not thread.is_alive(), "the SIGHUP forwarding thread did not end"


def test_a_sighup_during_a_running_reload_reloads_again_once_it_answers(app: FakeApp) -> None:
    # The first reload read the file before the operator's second edit: dropping the second
    # SIGHUP would leave that edit unapplied with nothing said.
    server = forwarding_to(app)
    server._reload(None, None)
    assert app.first_in.wait(HANG_S)
    server._reload(None, None)  # while the app works on the first one
    server._reload(None, None)  # a storm joins: one more reload reads the file as it is then
    app.release.set()
    wait_forwarding_done()
    assert app.posts == ["token", "token"]


def test_a_single_sighup_is_forwarded_once(app: FakeApp) -> None:
    server = forwarding_to(app)
    app.release.set()
    server._reload(None, None)
    assert app.first_in.wait(HANG_S)
    wait_forwarding_done()
    assert app.posts == ["token"]


def test_a_sighup_while_another_reload_runs_is_sent_again_once_that_one_is_done(app: FakeApp) -> None:
    # An operator's `gateway reload` (or the page's) is running: the app answers 409. That one
    # may have read the file before this SIGHUP's edit, so the SIGHUP's reload must still run.
    app.busy = 2
    app.release.set()
    server = forwarding_to(app)
    server._reload(None, None)
    wait_forwarding_done()
    assert app.posts == ["token", "token", "token"]
