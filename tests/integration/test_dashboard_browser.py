"""The dashboard in real headless Chromium (Playwright), against gunicorn and the mock upstream.

Screenshots of every page, at 1280 px and at phone width, go to test-output/screenshots/;
docs/screenshots/ holds the committed copies the README shows.
"""

from __future__ import annotations

import re
import threading
import time

import openai
import pytest
import requests
from playwright.sync_api import expect, sync_playwright

from tests.integration.conftest import MASTER_KEY, ROOT, start_gateway, start_mock, upstream_toml
from tests.services import chromium_binary

PASSWORD = "browser-test-password-1"
SECRET_KEY = "browser-test-secret-key-0123456789abcdef"
TOKENS = ["main-token-000000000001", "main-token-000000000002"]
SHOTS = ROOT / "test-output" / "screenshots"
PAGES = {"overview": "/dashboard", "upstreams": "/dashboard/upstreams", "keys": "/dashboard/keys",
         "usage": "/dashboard/usage", "requests": "/dashboard/requests", "audit": "/dashboard/audit"}  # fmt: skip
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dashboard")
    mock = start_mock(tmp, "--delay", "0.02")
    config = upstream_toml("main", mock.url, TOKENS, ["*"])
    gateway = start_gateway(tmp, config, workers=2, SLUICE_ADMIN_PASSWORD=PASSWORD, SLUICE_SECRET_KEY=SECRET_KEY)
    yield mock, gateway
    gateway.stop()
    mock.stop()


@pytest.fixture(scope="module")
def browser():
    executable = chromium_binary()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, stack):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=stack[1].url)
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.set_default_timeout(15_000)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
    page.dialogs = dialogs  # type: ignore[attr-defined]
    yield page
    context.close()


def sign_in(page) -> None:
    page.goto("/dashboard")
    assert "/dashboard/login" in page.url
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/dashboard$"))


def flash(page) -> str:
    return page.inner_text("p.flash")


def shoot(page, name: str) -> None:
    """Full-page screenshots at 1280 px and at phone width; the page must not scroll sideways on a phone."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 1, f"{name} scrolls sideways by {overflow}px at phone width"
    page.screenshot(path=str(SHOTS / f"{name}-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})


def sdk(stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack[1].url}/v1", api_key=key, max_retries=0, timeout=20)


def slow_stream(stack, seconds: float, started: threading.Event) -> None:
    """A stream that stays open for about `seconds` (the mock waits between chunks)."""
    body = {"model": "mock-gpt", "stream": True, "messages": [{"role": "user", "content": "hi"}],
            "mock": {"chunks": int(seconds / 0.5), "delay": 0.5}}  # fmt: skip
    headers = {"Authorization": f"Bearer {MASTER_KEY}", "Connection": "close"}
    with requests.post(f"{stack[1].url}/v1/chat/completions", json=body, headers=headers, stream=True, timeout=30) as r:
        for _ in r.iter_lines():
            started.set()


def test_operator_journey(page, stack):
    mock, gateway = stack
    page.goto("/dashboard")
    page.fill("input[name=password]", "not the password")
    page.click("button[type=submit]")
    assert flash(page) == "Wrong password."
    shoot(page, "login")
    sign_in(page)

    # a key: created, shown once with a copy button, used with the OpenAI SDK, revoked
    page.goto("/dashboard/keys")
    page.fill("input[name=name]", "sdk-team")
    page.fill("input[name=rpm]", "100")
    page.fill("input[name=models]", "mock-*")
    page.click("form.grid button[type=submit]")
    secret = page.input_value("#new-key")
    assert secret.startswith("sk-sluice-")
    page.click("button[data-copy]")
    expect(page.locator("button[data-copy]")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    reply = sdk(stack, secret).chat.completions.create(model="mock-gpt", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content.startswith("Hello from the Sluice mock upstream!")
    chunks = sdk(stack, secret).chat.completions.create(
        model="mock-gpt", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("Hello from")
    page.goto("/dashboard/keys")
    assert secret not in page.content()  # shown once only
    row = page.locator("tr", has_text="sdk-team")
    row.locator("button", has_text="Revoke").click()
    page.wait_for_load_state()
    assert page.dialogs == ["Revoke key sdk-team for good?"]
    assert flash(page) == "Key sdk-team revoked."
    assert row.locator("td.state").inner_text().startswith("revoked")
    with pytest.raises(openai.AuthenticationError):
        sdk(stack, secret).chat.completions.create(model="mock-gpt", messages=[{"role": "user", "content": "hi"}])
    shoot(page, "keys")

    # upstream tokens: added (never echoed), validated good and revoked, headers edited
    page.goto("/dashboard/upstreams")
    for value in ("good-runtime-token-0000000007", "revoked-runtime-token-000000008"):
        page.fill("#upstream-main input[name=token]", value)
        page.click("#upstream-main form.row button[type=submit]")
        assert flash(page).startswith("Token main:") and value not in page.content()
        token_row = page.locator("tr", has_text=f"...{value[-4:]}")
        token_row.locator("button", has_text="Validate").click()
        page.wait_for_load_state()
        verdict = "is valid: 200 OK" if value.startswith("good") else "is NOT valid: 403 Forbidden"
        assert verdict in flash(page)
    page.click("#upstream-main summary")
    page.fill("#upstream-main textarea[name=headers]", "X-Team: research")
    page.click("#upstream-main form.stack button[type=submit]")
    assert flash(page) == "Upstream main updated."
    shoot(page, "upstreams")

    # traffic for the overview, with one stream still open while the page loads
    client = sdk(stack, MASTER_KEY)
    for i in range(6):
        client.chat.completions.create(
            model="mock-gpt" if i % 2 else "mock-gpt-mini", messages=[{"role": "user", "content": "x"}]
        )
    started = threading.Event()
    streamer = threading.Thread(target=slow_stream, args=(stack, 8.0, started))
    streamer.start()
    try:
        assert started.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # workers report every 2 s, usage records land every 1 s
            page.goto("/dashboard")
            if page.inner_text("#active-streams .value") != "0":
                break
            time.sleep(0.5)
        assert int(page.inner_text("#active-streams .value")) >= 1
        bars = page.locator("figure.chart svg").first.get_attribute("data-bars")
        assert int(bars) >= 1 and page.locator("figure.chart svg rect").count() >= 4
        shoot(page, "overview")
    finally:
        streamer.join(20)

    page.goto("/dashboard/usage")
    assert page.locator("figure.chart svg rect").count() >= 2  # the top-models chart
    assert "mock-gpt" in page.inner_text("table[data-by=model]")
    shoot(page, "usage")
    page.goto("/dashboard/requests")
    assert page.locator("table.requests tbody tr").count() >= 8
    assert "sdk-team" in page.inner_text("table.requests")
    shoot(page, "requests")
    page.goto("/dashboard/audit")
    log = page.inner_text("table.audit")
    for action in ("login.failed", "login", "key.create", "key.revoke", "token.add", "token.validate",
                   "upstream.override"):  # fmt: skip
        assert action in log
    shoot(page, "audit")

    html = "".join(page.goto(path) and page.content() for path in PAGES.values())
    for value in (secret, MASTER_KEY, SECRET_KEY, PASSWORD, *TOKENS, "good-runtime-token-0000000007"):
        assert value not in html


XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


def test_injected_markup_stays_inert(page, stack):
    sign_in(page)
    page.goto("/dashboard/keys")
    page.fill("input[name=name]", XSS[:64])
    page.click("form.grid button[type=submit]")
    page.goto("/dashboard/upstreams")
    page.click("#upstream-main summary")
    page.fill("#upstream-main input[name=user_agent]", "ua " + XSS)
    page.fill("#upstream-main textarea[name=headers]", f"X-Note: {XSS}")
    page.click("#upstream-main form.stack button[type=submit]")
    for path in PAGES.values():
        page.goto(path)
        # Escaping, not only the CSP: no element was made from the payload (a CSP would merely stop it running).
        assert page.locator("img[src=x]").count() == 0 and page.locator("script:not([src])").count() == 0, path
        assert page.evaluate("window.__xss") is None and page.dialogs == []
    page.goto("/dashboard/keys")
    assert XSS[:64] in page.inner_text("table.keys")  # shown as text


def test_logout_and_the_disabled_page(page, stack, tmp_path):
    sign_in(page)
    page.click("text=Log out")
    page.wait_for_url(re.compile(r"/dashboard/login"))
    page.goto("/dashboard/keys")
    assert "/dashboard/login" in page.url
    mock = stack[0]
    plain = start_gateway(tmp_path, upstream_toml("main", mock.url, TOKENS, ["*"]))
    try:
        page.goto(f"{plain.url}/")
        assert "The dashboard is not enabled" in page.inner_text("h1")
        assert "SLUICE_ADMIN_PASSWORD" in page.inner_text("main")
    finally:
        plain.stop()
