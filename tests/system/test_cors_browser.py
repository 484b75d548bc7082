"""A web page of another origin calls the gateway's OpenAI API from a real browser ([gateway]
allowed_origins; gateway/http/cors.py): Debian's chromium driven by Playwright, the real
`gateway serve` with a tiny llama-cpp-python model, and the page served by a small http.server
on another port (another origin: the same host on another port is another origin, and the same
site, which the gateway's guard refuses unless the origin is listed).

Playwright never downloads a browser: it launches /usr/bin/chromium (.ci/run installs Debian's
package, best effort); without it, or without Playwright, the tests skip.
"""

from __future__ import annotations

import functools
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import tomli_w

pytest.importorskip("playwright", reason="Playwright for Python is not installed (pip install -e '.[test]')")
from playwright.sync_api import sync_playwright

from testkit.ggufmaker import write_tiny_llama
from testkit.serving import HANG_S, free_port, running_gateway

pytestmark = pytest.mark.llama

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
KEY = "cors-key"

# What a chat UI does: POST with the key, read the JSON and a header the gateway exposes.
FETCH = """async ([base, key, body]) => {
  try {
    const r = await fetch(base + "/v1/completions", {
      method: "POST",
      headers: {"Authorization": "Bearer " + key, "Content-Type": "application/json", "x-stainless-lang": "js"},
      body: JSON.stringify(body),
    });
    return {status: r.status, requestId: r.headers.get("x-request-id"), text: await r.text()};
  } catch (e) {
    return {error: String(e)};
  }
}"""


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """Two page servers on their own ports: the origin the gateway lists, and one it does not."""
    folder = tmp_path_factory.mktemp("page")
    (folder / "index.html").write_text("<!doctype html><title>chat</title><p>a chat page</p>")
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder))) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield [f"http://127.0.0.1:{s.server_address[1]}" for s in servers]
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, pages):
    tmp = tmp_path_factory.mktemp("cors")
    tiny = write_tiny_llama(tmp / "tiny.gguf", n_layers=2, n_embd=64, ctx=512)
    port = free_port()
    cfg = tmp / "models.toml"
    cfg.write_text(tomli_w.dumps({
        "gateway": {"port": port, "api_keys": [KEY], "allowed_origins": [pages[0]]},
        "models": [{"name": "tiny", "path": str(tiny), "n_ctx": 256}],
    }))
    with running_gateway(cfg, port, tmp / "serve.log") as gw:
        yield gw.base


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium; .ci/run does, best effort)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--headless", "--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


def fetch_from(browser, page_origin: str, base: str, body: dict) -> dict:
    page = browser.new_page()
    try:
        page.set_default_timeout(HANG_S * 1000)
        page.goto(page_origin + "/index.html")
        return page.evaluate(FETCH, [base, KEY, body])
    finally:
        page.close()


def test_a_page_of_a_listed_origin_calls_the_api_with_a_key_and_reads_the_answer(browser, gateway, pages):
    answer = fetch_from(browser, pages[0], gateway, {"model": "tiny", "prompt": "hi", "max_tokens": 2})
    assert answer.get("status") == 200, answer
    assert '"text_completion"' in answer["text"] and answer["requestId"]
    streamed = fetch_from(browser, pages[0], gateway, {"model": "tiny", "prompt": "hi", "max_tokens": 2, "stream": True})
    assert streamed.get("status") == 200 and streamed["text"].rstrip().endswith("data: [DONE]"), streamed


def test_a_page_of_an_unlisted_origin_cannot_call_the_api(browser, gateway, pages):
    answer = fetch_from(browser, pages[1], gateway, {"model": "tiny", "prompt": "hi", "max_tokens": 2})
    assert "error" in answer and "Failed to fetch" in answer["error"], answer
