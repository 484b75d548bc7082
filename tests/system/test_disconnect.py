"""A client that goes away stops its generation and frees its slot, streamed or not."""

from __future__ import annotations

import contextlib
import json
import socket

import httpx
import pytest

from testkit.ggufmaker import write_tiny_llama
from testkit.serving import HANG_S, free_port, running_gateway, wait_until, worker_held

pytestmark = pytest.mark.llama

N_CTX = 32768
# Tokens: the generation never ends by itself while the test looks at it, because the worker is
# held (SIGSTOP) whenever the test waits; long only so that it cannot end in the instant between
# the streamed case's first chunk and its hold.
LONG = 32000


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("disconnect")
    tiny = write_tiny_llama(tmp / "tiny.gguf", ctx=N_CTX)
    port = free_port()
    cfg = tmp / "models.toml"
    cfg.write_text(
        f'[gateway]\nport = {port}\n\n[[models]]\nname = "tiny"\npath = "{tiny}"\nn_ctx = {N_CTX}\nmax_concurrency = 1\n'
    )
    with running_gateway(cfg, port, tmp / "serve.log") as gw:
        yield gw


def _wait_for(predicate, what: str) -> None:
    wait_until(predicate, timeout=HANG_S, what=what)


def _running(base: str) -> int:
    return httpx.get(base + "/v1/models/tiny", timeout=10).json()["queue"]["running"]


def _closed_requests(base: str) -> float:
    for line in httpx.get(base + "/metrics", timeout=10).text.splitlines():
        if line.startswith("vram_gateway_requests_total{") and 'endpoint="/v1/completions"' in line and 'status="499"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_client_that_leaves_frees_its_slot_at_once(gateway, stream):
    # Issue 21, item 6: a non-streamed request kept generating, and held its slot, to its last
    # token after its client had gone.
    base = gateway.base
    closed_before = _closed_requests(base)
    body = json.dumps(
        {"prompt": "hello world", "max_tokens": LONG, "temperature": 0, "logit_bias": {"97": 50}, "stream": stream}
    ).encode()
    host, port = base.removeprefix("http://").split(":")
    client = socket.create_connection((host, int(port)))

    def send() -> None:
        client.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: " + host.encode() + b"\r\nContent-Type: application/json\r\n"
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )

    # The worker is held (SIGSTOP) from before the client leaves until the gateway has let the
    # request go: the generation cannot end by itself meanwhile, however fast the machine.
    with contextlib.ExitStack() as held:
        if stream:
            # The stream runs (its first chunk came) when the client leaves.
            send()
            _read_until(client, b"data: ")
            held.enter_context(worker_held(base, "tiny"))
        else:
            # Held before it is sent: it holds its slot and waits for a result that cannot come.
            held.enter_context(worker_held(base, "tiny"))
            send()
        _wait_for(lambda: _running(base) == 1, "the long request holds the model's slot")
        client.close()

        _wait_for(lambda: _running(base) == 0, "the slot is free again")
        # It ended because its client left (499), not because it ran to its end...
        _wait_for(lambda: _closed_requests(base) == closed_before + 1, "the request is recorded as closed by its client (499)")
    # ...and the worker's one slot takes the next request at once.
    r = httpx.post(
        base + "/v1/completions", json={"prompt": "hello", "max_tokens": 3, "temperature": 0, "logit_bias": {"97": 50}}, timeout=HANG_S
    )
    assert r.status_code == 200
    assert r.json()["usage"]["completion_tokens"] == 3


def _read_until(client: socket.socket, marker: bytes) -> None:
    """Read the raw response until ``marker`` has come (the response's first event)."""
    client.settimeout(HANG_S)
    seen = b""
    while marker not in seen:
        data = client.recv(4096)
        assert data, f"the connection closed before {marker!r}: {seen!r}"
        seen += data
