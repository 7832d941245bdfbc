"""The chat page at the server's root, driven in headless Chromium (Debian's package, by
Playwright for Python through ``executable_path``; nothing is downloaded): it streams the
API's very answer, marks the text of accepted drafts, compares speculation off and on, asks
for a key where the server has one, and never runs what the model writes as HTML.

Where Chromium is missing the tests skip, unless ADASPEC_REQUIRE_BROWSER is set (CI sets
it, after installing Chromium in .ci/run). Screenshots are kept in test-artifacts/.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from adaspec.api import load
from adaspec.models import DEFAULT_DRAFT, DEFAULT_TARGET, NAMED_MODELS, model_path
from adaspec.server.bridge import EventBridge
from adaspec.server.scheduler import Step
from tests.live import LiveServer, live_server

pytestmark = pytest.mark.browser
ARTIFACTS = Path(os.environ.get("ADASPEC_ARTIFACTS", "test-artifacts"))
# As root in a closed network: no sandbox, and no background calls to Google's hosts.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKENS = 24
WAIT_MS = 60_000
UNSAFE = "<img src=x onerror=\"document.title='owned'\"> <script>document.title='owned'</script>"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("ADASPEC_REQUIRE_BROWSER"):
            pytest.fail("Chromium is required here but not installed: apt-get install chromium")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, args=FLAGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server(model_dir, module_cache) -> Iterator[LiveServer]:
    """A tiny target drafting for itself: every draft is accepted, so marks must show."""
    engine = load(
        str(model_dir), backend="torch", drafter="model", draft=str(model_dir), policy="fixed", k=3
    )
    with live_server(engine) as live:
        yield live


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert not errors, f"the page's script failed: {errors}"


def open_chat(page: Page, live: LiveServer, tokens: int = TOKENS) -> None:
    page.goto(live.url + "/")
    page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
    if not page.is_visible("#max-tokens"):  # a narrow window folds the settings away
        page.click("#settings summary")
    page.fill("#max-tokens", str(tokens))


def ask(page: Page, prompt: str) -> dict:
    """Send ``prompt`` from the page and wait for the answer: its text and stats."""
    page.fill("#prompt", prompt)
    page.press("#prompt", "Enter")
    ended = ".msg.assistant:is([data-state=done], [data-state=failed])"
    done = page.wait_for_selector(ended, timeout=WAIT_MS)
    assert done.get_attribute("data-state") == "done", done.inner_text()
    return {
        "text": done.evaluate("element => element.answerText"),
        "stats": done.query_selector(".stats").inner_text(),
        "marked": len(done.query_selector_all(".answer span.draft")),
    }


def api_answer(live: LiveServer, prompt: str, tokens: int = TOKENS, key: str = "unused"):
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=key, max_retries=0, timeout=60)
    messages = [{"role": "user", "content": prompt}]
    return client.chat.completions.create(
        model=live.state.settings.model_id, messages=messages, max_tokens=tokens
    )


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_page_shows_the_apis_answer_with_accepted_drafts_marked(server, page):
    open_chat(page, server)
    assert page.inner_text("#drafter") == "model" and page.inner_text("#policy") == "—"
    shown = ask(page, "def reverse(head):")
    expected = api_answer(server, "def reverse(head):")
    assert shown["text"] == expected.choices[0].message.content
    assert expected.model_extra["adaspec"]["accepted"] > 0
    assert shown["marked"] > 0
    assert "tok/s" in shown["stats"] and "tokens per target pass" in shown["stats"]
    assert "accepted" in page.inner_text("#legend")
    screenshot(page, "chat-page-tiny.png")


def test_a_second_turn_carries_the_history(server, page):
    open_chat(page, server, tokens=8)
    ask(page, "The quick brown fox")
    page.fill("#prompt", "models run")
    page.press("#prompt", "Enter")
    page.wait_for_selector(".msg.assistant:nth-of-type(4)[data-state=done]", timeout=WAIT_MS)
    assert len(page.query_selector_all(".msg.user")) == 2


def test_compare_answers_alike_with_speculation_off_and_on(server, page):
    open_chat(page, server)
    page.fill("#prompt", "Summarize the following")
    page.click("#compare")
    verdict = page.wait_for_selector(".compare .verdict", timeout=WAIT_MS)
    answers = page.query_selector_all(".compare .msg.assistant")
    texts = [answer.evaluate("element => element.answerText") for answer in answers]
    assert verdict.get_attribute("data-same") == "true" and texts[0] == texts[1] != ""
    off, on = (len(answer.query_selector_all("span.draft")) for answer in answers)
    assert off == 0 and on > 0
    screenshot(page, "chat-page-compare.png")


def test_what_the_model_writes_is_never_run_as_html(server, page):
    open_chat(page, server)
    rendered = page.evaluate(
        """async (text) => {
            const { renderMarkdown } = await import("/ui/markdown.js");
            const root = document.createElement("div");
            const marks = [{ start: 0, end: text.length, mark: {} }];
            renderMarkdown(root, text, marks, (parent, piece) => parent.append(piece));
            return {
                unsafe: root.querySelectorAll("img, script").length,
                text: root.textContent,
                tags: [...root.querySelectorAll("*")].map((node) => node.tagName),
            };
        }""",
        f"{UNSAFE}\n\n```python\nprint('**x**')\n```\n- **bold** and `code`",
    )
    assert rendered["unsafe"] == 0 and UNSAFE in rendered["text"]
    assert rendered["tags"] == ["P", "PRE", "CODE", "UL", "LI", "STRONG", "CODE"]
    assert page.title() == "adaspec chat"


def test_a_keyed_servers_page_asks_for_the_key(model_dir, module_cache, page):
    engine = load(str(model_dir), backend="torch", drafter="none")
    with live_server(engine, api_keys=("sesame",)) as live:
        assert httpx.get(live.url + "/").status_code == 200
        assert httpx.get(live.url + "/v1/models").status_code == 401
        page.goto(live.url + "/")
        page.wait_for_selector("#key-dialog[open]", timeout=WAIT_MS)
        assert "API key is required" in page.inner_text("#key-message")
        page.fill("#key", "wrong")
        page.press("#key", "Enter")
        page.wait_for_selector("#key-message:has-text('not valid')", timeout=WAIT_MS)
        page.fill("#key", "sesame")
        page.press("#key", "Enter")
        page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
        page.fill("#max-tokens", str(TOKENS))
        assert page.inner_text("#model") == "tiny"
        assert page.evaluate("sessionStorage.getItem('adaspec-api-key')") == "sesame"
        shown = ask(page, "models run")
        assert (
            shown["text"] == api_answer(live, "models run", key="sesame").choices[0].message.content
        )


@pytest.mark.integration
def test_the_default_pair_on_the_page(browser):
    from adaspec.build import EngineSpec
    from adaspec.server.launch import load_engine
    from adaspec.server.model_thread import ModelThread

    if not model_path(NAMED_MODELS[DEFAULT_DRAFT]).is_file():
        pytest.skip("the default pair is not pulled; run `adaspec models pull`")
    thread = ModelThread()
    engine = load_engine(EngineSpec(context=4096), thread)
    prompt = "Repeat this line exactly three times: for i in range(10): print(i)"
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    settings = {"model_id": DEFAULT_TARGET, "drafter": "auto", "policy": "goodput"}
    try:
        with live_server(engine, thread=thread, **settings) as live:
            open_chat(page, live, tokens=64)
            shown = ask(page, prompt)
            expected = api_answer(live, prompt, tokens=64)
            screenshot(page, "chat-page-default-pair.png")
    finally:
        context.close()
    assert shown["text"] == expected.choices[0].message.content
    assert (shown["marked"] > 0) == (expected.model_extra["adaspec"]["accepted"] > 0)
    assert "tok/s" in shown["stats"]


def test_stop_ends_the_answer_and_keeps_what_came(server, page, monkeypatch):
    original = EventBridge.on_event

    def late(self, event):  # 30 ms a step: the answer is still coming when Stop is pressed
        if isinstance(event, Step):
            time.sleep(0.03)
        original(self, event)

    monkeypatch.setattr(EventBridge, "on_event", late)
    open_chat(page, server, tokens=96)
    page.fill("#prompt", "The quick brown fox")
    page.press("#prompt", "Enter")
    page.wait_for_selector(".answer span", timeout=WAIT_MS)
    page.click("#stop")
    stopped = page.wait_for_selector(".msg.assistant[data-state=failed]", timeout=WAIT_MS)
    assert stopped.query_selector(".error").inner_text() == "Stopped."
    assert stopped.evaluate("element => element.answerText") != ""
    assert page.is_enabled("#send") and not page.is_enabled("#stop")


def test_a_narrow_window_and_the_keyboard(server, browser):
    context = browser.new_context(viewport={"width": 380, "height": 800})
    page = context.new_page()
    try:
        open_chat(page, server)
        ask(page, "models run")
        width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1]  # nothing wider than the window
        page.focus(".chart")
        page.keyboard.press("ArrowRight")
        assert page.inner_text("#step-info").startswith("Step 1: model drafted 3")
        unlabeled = page.evaluate(
            """[...document.querySelectorAll("input, textarea")]
                .filter((e) => !e.closest("label"))
                .filter((e) => !document.querySelector(`label[for="${e.id}"]`))
                .map((e) => e.id)"""
        )
        assert unlabeled == []
        screenshot(page, "chat-page-narrow.png")
    finally:
        context.close()
