"""Browser tests: the widget in Debian's chromium, driven by Playwright in the test's event
loop, against a real uvicorn server (the HTTP tests' harness, one level up).

Playwright's own browser download does not work here, so the tests launch the system's
chromium (`apt-get install chromium`; `.ci/run` installs it). Without it they skip, with the
reason in the summary, except under CI=true, where they fail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from http_harness import LiveServer
from playwright.async_api import Browser, BrowserContext, async_playwright
from widget_harness import CHROMIUM, CHROMIUM_ARGS, IN_CI, Widget


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        reason = f"no chromium at {CHROMIUM}: apt-get install chromium (CI installs it)"
        if IN_CI:
            pytest.fail(f"CI must run the browser tests. {reason}", pytrace=False)
        pytest.skip(reason)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    context = await browser.new_context(viewport={"width": 1100, "height": 760})
    try:
        yield context
    finally:
        await context.close()


@pytest.fixture
async def open_widget(
    live: LiveServer, context: BrowserContext
) -> AsyncIterator[Callable[..., Any]]:
    """Open the widget in a new tab of the shared browser context (so tabs share storage);
    every tab must end the test without an uncaught page error or a request elsewhere."""
    opened: list[Widget] = []

    async def open_tab(path: str = "/", *, in_context: BrowserContext | None = None) -> Widget:
        page = await (in_context or context).new_page()
        widget = Widget(page, live)
        opened.append(widget)
        await widget.open(path)
        return widget

    yield open_tab
    errors = [error for widget in opened for error in widget.errors]
    assert errors == [], errors
    elsewhere = [url for widget in opened for url in widget.elsewhere]
    assert elsewhere == [], elsewhere
