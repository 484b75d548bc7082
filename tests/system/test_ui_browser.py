"""The web page (/ui) in a real browser: Debian's chromium, driven by Playwright (pytest-playwright),
against the real gateway (gateway serve -> granian -> Litestar -> llama-cpp-python workers)
serving Gemma 3 270M on a declared 4 GiB GPU (the engines run on the CPU here; memory is
accounted as if on that GPU, as in tests/system/test_ondemand.py).

One server for the module. Each test sets the state it needs through the HTTP API, so any of
them runs alone. Playwright never downloads a browser: it launches /usr/bin/chromium (.ci/run
installs Debian's package, best effort); without it, or without Playwright, the tests skip.

The last test saves a screenshot of the whole page as an artifact (test-results/, pytest-
playwright's --output); with UI_SCREENSHOT=docs/ui.png it also writes the README's picture.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import httpx
import pytest
import tomli_w

pytest.importorskip("playwright", reason="Playwright for Python is not installed (pip install -e '.[test]')")
from playwright.sync_api import Page, Route, expect

from testkit.serving import HANG_S, free_port, running_gateway

pytestmark = pytest.mark.llama

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
KEY = "ui-admin-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
XSS = "<img src=x onerror=alert(1)>"
MIB = 1024 * 1024


@pytest.fixture(scope="module", autouse=True)
def expectations_wait_for_the_page():
    """Playwright's ``expect`` gives up after 5 s by default; on a busy 2-core CI machine the
    page's next poll and render can take longer. Its bound here only guards against a hang."""
    expect.set_options(timeout=HANG_S * 1000)
    yield
    expect.set_options(timeout=5_000)  # Playwright's own default, for whatever runs next


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium; .ci/run does, best effort)")
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS, "headless": True}


# pytest-playwright starts Playwright once per session, and its sync API keeps an event loop
# running on the main thread until it stops: every later test's asyncio.run() would then fail.
# These fixtures give this module its own Playwright, stopped when the module ends.
@pytest.fixture(scope="module")
def playwright(_pw_api_request_contexts):
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    yield pw
    pw.stop()


@pytest.fixture(scope="module")
def browser_type(playwright, browser_name):
    return getattr(playwright, browser_name)


@pytest.fixture(scope="module")
def launch_browser(browser_type_launch_args, browser_type):
    return lambda **kwargs: browser_type.launch(**{**browser_type_launch_args, **kwargs})


@pytest.fixture(scope="module")
def browser(launch_browser):
    browser = launch_browser()
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def browser_context_args():
    # pytest-playwright's own asks its session Playwright for --device presets: not used here.
    return {"viewport": {"width": 1280, "height": 900}}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, gemma_path):
    tmp = tmp_path_factory.mktemp("ui")
    port = free_port()
    cfg = tmp / "models.toml"
    common = {"path": str(gemma_path), "chat_format": "gemma", "flash_attn": True}
    cfg.write_text(
        tomli_w.dumps(
            {
                "gateway": {"port": port, "api_keys": [KEY], "load_timeout_s": 120, "request_timeout_s": 60},
                "planner": {"gpus": ["4GiB"], "reserve_mib": 512, "min_budget_mib": 0},
                "models": [
                    {"name": "gemma", "aliases": ["gemma-3-270m"], "n_ctx": 1024, **common},
                    {"name": "gemma-od", "n_ctx": 512, "load": "on_demand", **common},
                ],
            }
        )
    )
    with running_gateway(cfg, port, tmp / "serve.log") as gw:
        yield {"base": gw.base, "log": gw.log}


@pytest.fixture
def console(page: Page) -> list[str]:
    """Every console error and dialog of the page (a Content-Security-Policy violation, an alert)."""
    seen: list[str] = []

    def on_console(msg) -> None:
        # A poll before the key is entered gets 401, which chromium logs; that is the page working.
        if msg.type == "error" and "status of 401" not in msg.text:
            seen.append(f"console {msg.type}: {msg.text}")

    page.on("console", on_console)
    page.on("dialog", lambda dialog: (seen.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    page.on("pageerror", lambda exc: seen.append(f"page error: {exc}"))
    return seen


def state(gateway) -> dict:
    return httpx.get(gateway["base"] + "/ui/state", headers=AUTH, timeout=10).json()


def admin(gateway, name: str, action: str) -> httpx.Response:
    return httpx.post(f"{gateway['base']}/admin/models/{name}/{action}", headers=AUTH, timeout=150)


def open_page(page: Page, gateway, key: str | None = KEY) -> None:
    page.goto(gateway["base"] + "/ui")
    if key is not None:
        page.fill("#key", key)
        page.click("#key-form button[type=submit]")
        expect(page.locator("#models-table tbody tr[data-model=gemma]")).to_be_visible()


def row(page: Page, name: str):
    return page.locator(f"#models-table tbody tr[data-model='{name}']")


def block(page: Page, where: str, name: str):
    return page.locator(f"[data-bar='{where}'] .block[data-model='{name}']")


def test_the_page_carries_a_strict_content_security_policy_and_no_secret(gateway):
    response = httpx.get(gateway["base"] + "/ui", timeout=10)
    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp
    assert KEY not in response.text and "<script>" not in response.text and "style=" not in response.text


def test_the_map_shows_the_planned_block_at_its_proportion_of_the_gpu(page: Page, gateway, console):
    open_page(page, gateway)
    planned = next(b for b in state(gateway)["map"]["blocks"] if b["model"] == "gemma" and b["gpu"] == 0)
    gpu = state(gateway)["map"]["gpus"][0]
    node = block(page, "gpu-0", "gemma")
    expect(node).to_be_visible()
    # Both widths in one script, from one render: the page re-renders the map at each poll, and
    # two separate evaluations could measure a block its next render had just detached (CI once
    # read a width of 0 that way).
    width, track = page.evaluate(
        """() => {
            const bar = document.querySelector("#map [data-bar='gpu-0'] .bar");
            return [bar.querySelector(".block[data-model='gemma']").getBoundingClientRect().width, bar.clientWidth];
        }"""
    )
    assert width / track == pytest.approx(planned["planned_bytes"] / gpu["total_bytes"], abs=0.003)
    assert 0.1 < width / track < 0.5  # ~1 GiB of 4 GiB: a real proportion, not a full or empty bar
    # Hover shows what the block is made of.
    node.hover()
    detail = page.locator("#detail")
    for label, key in (("weights", "weights_bytes"), ("KV cache", "kv_bytes"), ("compute buffers", "compute_bytes"), ("CUDA context", "overhead_bytes")):
        expect(detail).to_contain_text(label)
        expect(detail).to_contain_text(f"{round(planned[key] / MIB):,} MiB")
    expect(page.locator("[data-bar='gpu-0'] .seg.reserve")).to_be_attached()
    expect(page.locator("[data-bar='host'] .bar")).to_be_visible()
    assert console == []


def test_an_on_demand_load_appears_without_reloading_the_page(page: Page, gateway, console):
    if state(gateway)["models"][1]["state"] == "ready":
        assert admin(gateway, "gemma-od", "unload").status_code == 200
    open_page(page, gateway)
    expect(row(page, "gemma-od").locator(".state")).to_have_text("stopped")
    expect(block(page, "gpu-0", "gemma-od")).to_have_count(0)
    page.evaluate("window.__sameDocument = true")
    # A client's request loads the model (the page is not involved); the page follows by polling.
    answer: list[httpx.Response] = []
    body = {"model": "gemma-od", "prompt": "Hello", "max_tokens": 2}
    client = threading.Thread(target=lambda: answer.append(httpx.post(gateway["base"] + "/v1/completions", json=body, headers=AUTH, timeout=150)))
    client.start()
    expect(row(page, "gemma-od").locator(".state")).to_have_text("ready")
    expect(block(page, "gpu-0", "gemma-od")).to_be_visible()
    client.join(150)
    assert answer and answer[0].status_code == 200, answer
    expect(row(page, "gemma-od").locator("td").nth(7)).to_have_text("1")  # requests, last minute
    expect(row(page, "gemma-od").locator("td.where")).to_have_text("GPU 0")  # not a bare "0" under "GPUs"
    assert page.evaluate("window.__sameDocument") is True
    assert console == []


def test_unload_works_with_the_admin_key_and_is_refused_without_it(page: Page, gateway, console):
    assert admin(gateway, "gemma-od", "load").status_code == 200
    open_page(page, gateway, key=None)
    expect(page.locator("#message")).to_contain_text("needs an API key")
    expect(page.locator("button[data-action]")).to_have_count(0)
    expect(page.locator("#preview")).to_be_hidden()
    refused = page.evaluate("fetch('/admin/models/gemma-od/unload', {method: 'POST'}).then(r => r.status)")
    assert refused == 401
    assert state(gateway)["models"][1]["state"] == "ready"

    page.fill("#key", KEY)
    page.click("#key-form button[type=submit]")
    unload = row(page, "gemma-od").locator("button[data-action=unload]")
    expect(unload).to_be_visible()
    expect(row(page, "gemma").locator("button[data-action]")).to_have_count(0)  # eager: no action
    unload.click()
    expect(row(page, "gemma-od").locator(".state")).to_have_text("stopped")
    expect(block(page, "gpu-0", "gemma-od")).to_have_count(0)
    expect(row(page, "gemma-od").locator("button[data-action=load]")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 1  # the key, for this tab only
    assert console == []


def test_the_plan_preview_lists_every_problem_with_its_dotted_path_as_text(page: Page, gateway, console, tmp_path, gemma_path):
    open_page(page, gateway)
    bad = tmp_path / "bad.toml"
    bad.write_text(
        "[planner]\nreserve_mib = -1\n\n"
        f"[[models]]\nname = '{XSS}'\npath = '{gemma_path}'\nn_ctx = -5\ncolour = 'red'\n"
    )
    page.set_input_files("#preview-file", str(bad))  # the upload path; pasting is the textarea
    expect(page.locator("#preview-text")).to_have_value(bad.read_text())
    page.click("#preview-run")
    problems = page.locator("#preview-problems li")
    expect(page.locator("#preview-summary")).to_contain_text("Invalid")
    texts = problems.all_text_contents()
    assert any(t.startswith("planner.reserve_mib: -1") for t in texts), texts
    assert any(t.startswith("models[0].n_ctx: -5") for t in texts), texts
    assert any(t.startswith("models[0].colour") for t in texts), texts
    assert any(t.startswith("models[0].name") and XSS in t for t in texts), texts  # the name, as text
    assert page.locator("img").count() == 0

    # A valid file on a declared inventory: the map it would produce, nothing running touched.
    before = state(gateway)["models"]
    good = f"[planner]\ngpus = ['8GiB']\nreserve_mib = 0\n\n[[models]]\nname = 'preview-only'\npath = '{gemma_path}'\nn_ctx = 2048\n"
    page.fill("#preview-text", good)
    page.click("#preview-run")
    expect(page.locator("#preview-summary")).to_contain_text("Fits")
    expect(page.locator("#preview-map [data-bar='gpu-0'] .block[data-model='preview-only']")).to_be_visible()
    assert [m["name"] for m in state(gateway)["models"]] == [m["name"] for m in before]
    assert console == []


def test_the_plan_preview_draws_a_model_that_does_not_fit_past_the_room_on_its_gpu(page: Page, gateway, console, gemma_path):
    open_page(page, gateway)
    text = (
        "[planner]\ngpus = ['8GiB', '1GiB']\nreserve_mib = 0\nmin_budget_mib = 0\n\n"
        f"[[models]]\nname = 'fits'\npath = '{gemma_path}'\nn_ctx = 2048\n\n"
        f"[[models]]\nname = 'pinned'\npath = '{gemma_path}'\nn_ctx = 32768\ngpus = [1]\n"
    )
    page.fill("#preview-text", text)
    page.click("#preview-run")
    expect(page.locator("#preview-summary")).to_contain_text("Does not fit")
    (problem,) = page.locator("#preview-problems li").all_text_contents()
    short_mib = problem.split("it is short by ")[1].split(" MiB")[0]  # the planner's words: the page must agree
    ghost = page.locator("#preview-map [data-bar='gpu-1'] .bar.ghost[data-short='pinned'] .block.short")
    expect(ghost).to_be_visible()
    expect(ghost).to_contain_text(f"pinned · short by {short_mib} MiB")
    expect(ghost.locator(".short-part")).to_be_visible()
    # It starts where the GPU's room starts and ends past the GPU's end (the bar is drawn to scale).
    gpu_bar = page.locator("#preview-map [data-bar='gpu-1'] > .bar:not(.ghost)").bounding_box()
    drawn = ghost.bounding_box()
    assert drawn["x"] + drawn["width"] > gpu_bar["x"] + gpu_bar["width"] + 1, (drawn, gpu_bar)
    assert page.locator("#preview-map [data-bar='gpu-0'] [data-short]").count() == 0
    assert console == []


def test_hostile_model_names_and_error_texts_render_as_text(page: Page, gateway, console):
    """Names cannot hold markup in a valid config; the page must not trust that: every string
    of the state the page polls is replaced by markup, and none of it becomes an element."""

    def hostile(route: Route) -> None:
        response = route.fetch()
        if response.status != 200:  # the poll before the key is entered
            route.fulfill(response=response)
            return
        doc = response.json()
        for m in doc["models"]:
            m.update(name=f"{m['name']}{XSS}", aliases=[XSS], error=f"failed: {XSS}", state="failed")
        for b in doc["map"]["blocks"]:
            b["model"] = f"{b['model']}{XSS}"
        for g in doc["map"]["gpus"]:
            g.update(name=XSS, note=XSS)
        route.fulfill(json=doc)

    page.route("**/ui/state", hostile)
    open_page(page, gateway, key=None)
    page.fill("#key", KEY)
    page.click("#key-form button[type=submit]")
    expect(row(page, f"gemma{XSS}")).to_contain_text(f"gemma{XSS}")
    expect(page.locator(f"tr.why[data-why='gemma{XSS}']")).to_contain_text(f"why: failed: {XSS}")
    expect(page.locator("[data-bar='gpu-0'] .bar-label")).to_contain_text(XSS)
    expect(page.locator("[data-bar='gpu-0'] .bar-models")).to_contain_text(f"gemma{XSS}")
    assert page.locator("img").count() == 0
    assert console == []


def test_a_ready_model_whose_requests_fail_shows_its_errors_and_last_error(page: Page, gateway, console):
    """The state of a model that is ready while its requests answer 500 (the unit tests make one
    with a fake worker; here the page's rendering of it): the errors column, the last error with
    its age, the whole text under the row, and the page's other aids (legend, full names)."""
    failing = {"requests_1m": 2, "errors_1m": 2, "error_rate_1m": 1.0}
    last = {"status": 500, "message": "model 'gemma': unknown chat format 'gemma3'", "age_s": 3}

    def with_errors(route: Route) -> None:
        response = route.fetch()
        doc = response.json() if response.status == 200 else None
        if doc is None:
            route.fulfill(response=response)
            return
        for m in doc["models"]:
            if m["name"] == "gemma":
                m.update(failing, last_request_error=last)
        route.fulfill(json=doc)

    page.route("**/ui/state", with_errors)
    open_page(page, gateway)
    gemma = row(page, "gemma")
    expect(gemma.locator(".state")).to_have_text("ready")
    expect(gemma.locator("td.bad")).to_have_text("2 (100%)")
    expect(gemma.locator("td.error")).to_have_text(f"500 · 3 s ago: {last['message']}")
    expect(page.locator("tr.why[data-why='gemma']")).to_have_text(f"last failed request (500): {last['message']}")
    expect(gemma.locator("td.where")).to_have_text("GPU 0")
    expect(page.locator(".legend")).to_contain_text("beyond the plan")
    expect(page.locator("[data-bar='gpu-0'] .bar-models li[data-model='gemma']")).to_contain_text("gemma · ")
    assert console == []


def test_the_whole_page_as_a_screenshot(page: Page, gateway, console, output_path, gemma_path):
    assert admin(gateway, "gemma-od", "load").status_code == 200
    for _ in range(2):
        body = {"model": "gemma", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
        assert httpx.post(gateway["base"] + "/v1/chat/completions", json=body, headers=AUTH, timeout=60).status_code == 200
    open_page(page, gateway)
    page.fill(
        "#preview-text",
        f"[planner]\ngpus = ['24GiB', '12GiB/6GiB']\n\n"
        f"[[models]]\nname = 'chat'\npath = '{gemma_path}'\nn_ctx = 32768\nmax_concurrency = 4\n\n"
        f"[[models]]\nname = 'code'\npath = '{gemma_path}'\nn_ctx = 8192\ngpus = [1]\n\n"
        f"[[models]]\nname = 'tight'\npath = '{gemma_path}'\nload = 'on_demand'\nmax_vram_mib = 600\n",
    )
    page.click("#preview-run")
    expect(page.locator("#preview-problems li")).to_have_count(1)
    expect(page.locator("#preview-map [data-bar='gpu-1'] .block[data-model='code']")).to_be_visible()
    block(page, "gpu-0", "gemma").hover()
    expect(page.locator("#detail")).to_contain_text("KV cache")
    out = Path(output_path)
    out.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out / "ui.png"), full_page=True)
    if os.environ.get("UI_SCREENSHOT"):
        page.screenshot(path=os.environ["UI_SCREENSHOT"], full_page=True)
    assert (out / "ui.png").stat().st_size > 10_000
    assert console == []
