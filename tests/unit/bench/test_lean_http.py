"""bench/lean_http.py's keep-alive client: a connection the server closed while it sat idle is
replaced once, as HTTP clients do; anything else is a clear error, not an IndexError."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

import lean_http  # noqa: E402

BODY = b'{"ok": true}'
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)


def _read_request(conn: socket.socket) -> bytes:
    """One request (head and Content-Length body), or b"" if the client closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(65536)
        if not more:
            return b""
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        body += conn.recv(65536)
    return data


class Server:
    """A one-thread HTTP server on 127.0.0.1 whose every accepted connection is handled by
    ``script(conn, index)``; ``closed`` is set each time a script closes its connection."""

    def __init__(self, script: Callable[[socket.socket, int], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.script = script
        self.accepted = 0
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            index, self.accepted = self.accepted, self.accepted + 1
            with conn:
                self.script(conn, index)
            self.closed.set()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def serve():
    servers: list[Server] = []

    def start(script: Callable[[socket.socket, int], None]) -> Server:
        servers.append(Server(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_a_keep_alive_connection_the_server_closed_while_idle_is_replaced(serve):
    # The first connection answers one request, then the server closes it (as granian does
    # after its idle timeout); the next request goes out on a new connection.
    def script(conn: socket.socket, index: int) -> None:
        while _read_request(conn):
            conn.sendall(OK)
            if index == 0:
                return

    server = serve(script)
    with lean_http.LeanClient(server.base) as client:
        assert client.post("/v1/x", {"a": 1}) == {"ok": True}
        assert server.closed.wait(30)
        assert client.post("/v1/x", {"a": 2}) == {"ok": True}
        assert client.post("/v1/x", {"a": 3}) == {"ok": True}
        assert client.connections == 2
    assert server.accepted == 2


def test_a_request_the_server_closed_unanswered_on_a_reused_connection_is_sent_once_more(serve):
    # The close races the request: the server reads it and closes without a byte of answer.
    seen: list[bytes] = []

    def script(conn: socket.socket, index: int) -> None:
        while request := _read_request(conn):
            seen.append(request)
            if index == 0 and len(seen) == 2:
                return
            conn.sendall(OK)

    server = serve(script)
    with lean_http.LeanClient(server.base) as client:
        assert client.post("/v1/x", {"a": 1}) == {"ok": True}
        assert client.post("/v1/x", {"a": 2}) == {"ok": True}
        assert client.connections == 2
    assert [r.rsplit(b"\r\n\r\n", 1)[1] for r in seen] == [b'{"a": 1}', b'{"a": 2}', b'{"a": 2}']


def test_a_fresh_connection_closed_unanswered_is_an_error_not_a_retry(serve):
    def script(conn: socket.socket, index: int) -> None:
        _read_request(conn)

    server = serve(script)
    with lean_http.LeanClient(server.base) as client, pytest.raises(lean_http.LeanHttpError, match="closed the connection without an answer"):
        client.post("/v1/x", {"a": 1})
    assert server.accepted == 1


def test_a_reply_that_is_not_http_is_a_clear_error(serve):
    def script(conn: socket.socket, index: int) -> None:
        _read_request(conn)
        conn.sendall(b"SSH-2.0-OpenSSH\r\n")

    server = serve(script)
    with lean_http.LeanClient(server.base) as client, pytest.raises(lean_http.LeanHttpError, match="not an HTTP status line"):
        client.post("/v1/x", {"a": 1})


def test_a_connection_closed_mid_body_is_a_clear_error(serve):
    def script(conn: socket.socket, index: int) -> None:
        _read_request(conn)
        conn.sendall(OK[:-4])

    server = serve(script)
    with lean_http.LeanClient(server.base) as client, pytest.raises(lean_http.LeanHttpError, match="closed after 8 of 12 body bytes"):
        client.post("/v1/x", {"a": 1})
