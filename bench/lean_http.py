"""A load generator's HTTP/1.1 client: as little CPU per request and per streamed chunk as Python allows.

Why the benchmarks need one: on the 2-vCPU machine the benchmark's client shares the cores with
the server it measures. httpx spends about 0.7 ms of CPU per streamed chunk (4 client threads,
``iter_lines``) and about 1 ms per small request (/health: 1.5 ms through httpx, 0.56 ms with
this client, same server): CPU taken from llama.cpp's decode threads, counted against whichever
server is measured. This client (plain sockets, one thread, asyncio for streams) costs a fifth of
that, so the figures are the server's. Every HTTP path of a benchmark uses the same client; the
benches still print httpx's figures beside it.

Scope: JSON POSTs and GETs on 127.0.0.1, ``Content-Length`` or chunked responses, SSE streams.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import time
from typing import Any
from urllib.parse import urlsplit


def _address(base: str) -> tuple[str, int]:
    parts = urlsplit(base)
    return parts.hostname or "127.0.0.1", parts.port or 80


class LeanHttpError(RuntimeError):
    """The server's answer is not what this client reads (or the connection closed mid-answer)."""


def _status(line: bytes, what: str) -> int:
    """The status code of an HTTP/1.1 status line."""
    parts = line.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise LeanHttpError(f"{what}: not an HTTP status line: {line[:200]!r}" if line else f"{what}: the server closed the connection without an answer")
    return int(parts[1])


def _head(method: str, path: str, host: str, body: bytes, keep_alive: bool) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    ).encode()


class LeanClient:
    """One keep-alive connection, one request at a time (latency measurements).

    A server may close a keep-alive connection while it sits idle (the gateway's granian did
    while bench/concurrency.py's overhead check measured httpx between two lean passes). As HTTP
    clients do, the next request then opens a new connection: when the idle connection is seen
    closed before sending, or when the server closes it without a byte of answer to the request
    just sent on it (the close raced the request), once. Anything else (a reply that is not
    HTTP, a connection closed mid-answer, a fresh connection closed unanswered) raises
    LeanHttpError."""

    def __init__(self, base: str, timeout: float = 120) -> None:
        self._address = _address(base)
        self._host = f"{self._address[0]}:{self._address[1]}"
        self._timeout = timeout
        self.connections = 0  # connections opened so far
        self._connect()

    def _connect(self) -> None:
        self._sock = socket.create_connection(self._address, timeout=self._timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._file = self._sock.makefile("rb")
        self._used = False  # a request was answered on this connection
        self.connections += 1

    def _reconnect(self) -> None:
        self._file.close()
        self._sock.close()
        self._connect()

    def _idle_closed(self) -> bool:
        """Whether the server closed this idle connection (readable at EOF); bytes the server
        sent unasked are an error."""
        readable, _, _ = select.select([self._sock], [], [], 0)
        if not readable:
            return False
        try:
            peeked = self._sock.recv(1, socket.MSG_PEEK)
        except ConnectionResetError:
            return True
        if peeked:
            raise LeanHttpError(f"{self._host}: the server sent {peeked!r}... on an idle connection, unasked")
        return True

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        """(status, body) of one request."""
        data = b"" if body is None else json.dumps(body).encode()
        message = _head(method, path, self._host, data, keep_alive=True) + data
        if self._used and self._idle_closed():
            self._reconnect()
        reused = self._used
        try:
            self._sock.sendall(message)
            status_line = self._file.readline()
        except (BrokenPipeError, ConnectionResetError):
            if not reused:
                raise
            status_line = b""
        if not status_line and reused:
            # The server closed the connection as the request went out: nothing of it was
            # answered, so it is sent again once, on a new connection.
            self._reconnect()
            self._sock.sendall(message)
            status_line = self._file.readline()
        status = _status(status_line, f"{method} {path}")
        length, chunked, closing = 0, False, False
        while (line := self._file.readline()) != b"\r\n":
            if not line:
                raise LeanHttpError(f"{method} {path}: the connection closed in the middle of the headers")
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                closing = True
        if not chunked:
            payload = self._file.read(length)
            if len(payload) != length:
                raise LeanHttpError(f"{method} {path}: the connection closed after {len(payload)} of {length} body bytes")
        else:
            parts = []
            while size := self._chunk_size(f"{method} {path}"):
                parts.append(self._file.read(size + 2)[:-2])
            self._file.readline()  # the empty trailer
            payload = b"".join(parts)
        self._used = True
        if closing:  # the server said it closes this connection: the next request opens one
            self._reconnect()
        return status, payload

    def _chunk_size(self, what: str) -> int:
        line = self._file.readline()
        if not line:
            raise LeanHttpError(f"{what}: the connection closed in the middle of a chunked body")
        return int(line.split(b";")[0], 16)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        status, payload = self.request("POST", path, body)
        if status != 200:
            raise RuntimeError(f"POST {path}: {status} {payload[:200]!r}")
        return json.loads(payload)

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> LeanClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _has_text(event: bytes) -> bool:
    """A stream event that carries generated text (a completion's or a chat's)."""
    if not event.startswith(b"data: ") or event == b"data: [DONE]":
        return False
    choices = json.loads(event[6:]).get("choices") or []
    return bool(choices and (choices[0].get("text") or (choices[0].get("delta") or {}).get("content")))


async def _stream(base: str, path: str, body: dict[str, Any], start: asyncio.Barrier) -> tuple[float, list[float]]:
    host, port = _address(base)
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    data = json.dumps(body).encode()
    request = _head("POST", path, f"{host}:{port}", data, keep_alive=False) + data
    await start.wait()
    sent = time.perf_counter()
    writer.write(request)
    status = await reader.readline()
    if _status(status, f"POST {path}") != 200:
        raise LeanHttpError(f"POST {path}: {status!r}")
    chunked = False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
            chunked = True
    arrivals: list[float] = []
    pending = b""
    while True:
        if chunked:
            line = await reader.readline()
            if not line.strip():  # the server closed the connection without the last chunk
                break
            size = int(line.split(b";")[0], 16)
            if size == 0:
                break
            pending += (await reader.readexactly(size + 2))[:-2]
        else:
            more = await reader.read(65536)
            if not more:
                break
            pending += more
        *events, pending = pending.split(b"\n\n")
        now = time.perf_counter()
        arrivals.extend(now for event in events if _has_text(event))
    writer.close()
    return sent, arrivals


def stream_all(base: str, path: str, bodies: list[dict[str, Any]]) -> list[tuple[float, list[float]]]:
    """Send every body at once as a streamed request; per request (sent at, text chunk arrival times)."""

    async def run() -> list[tuple[float, list[float]]]:
        start = asyncio.Barrier(len(bodies))
        return list(await asyncio.gather(*(_stream(base, path, body, start) for body in bodies)))

    return asyncio.run(run())
