"""The widget fits a desktop window and a phone, in light and dark. The screenshots go to
test-results/screenshots/ (gitignored) for a person to look at."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from http_harness import LiveServer
from playwright.async_api import Browser, BrowserContext, expect
from widget_harness import SCREENSHOTS, Widget

pytestmark = [pytest.mark.browser, pytest.mark.slow]

OpenWidget = Callable[..., Any]

CONVERSATION = (
    "Here is how to **start the server**:\n\n"
    "1. Make a virtual environment\n"
    "2. Install the package\n"
    "3. Run it\n\n"
    "```sh\npython3.11 -m venv .venv && .venv/bin/pip install -e . "
    "&& .venv/bin/chatserver serve\n```\n\n"
    "Then open [the demo page](http://127.0.0.1:8000) and say `hello`."
)
PHONE = {"width": 390, "height": 844}


async def test_desktop_and_phone_layouts_fit_their_screens(
    live: LiveServer, browser: Browser, context: BrowserContext, open_widget: OpenWidget
) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if live.store.backend == "sqlite" else f"-{live.store.backend}"
    desktop: Widget = await open_widget()
    await desktop.send("What is this?")
    await desktop.wait_answered(1)
    await desktop.page.get_by_role("button", name="New chat").click()
    await desktop.send(CONVERSATION)
    await desktop.wait_answered(1)
    await desktop.composer.fill("A draft of the next question")

    await expect(desktop.page.locator(".cs-root")).to_have_attribute("data-layout", "wide")
    await expect(desktop.page.locator(".cs-sidebar")).to_be_visible()
    await expect(desktop.page.get_by_role("button", name="Conversations")).to_be_hidden()
    await _fits(desktop)
    await desktop.page.screenshot(path=SCREENSHOTS / f"desktop{suffix}.png")

    # The same browser (cookie and storage) on a phone: same user, same open thread.
    state = await context.storage_state()
    for scheme in ("light", "dark"):
        phone_context = await browser.new_context(
            viewport=PHONE,
            device_scale_factor=2,
            is_mobile=True,
            has_touch=True,
            color_scheme=scheme,
            storage_state=state,
        )
        try:
            phone: Widget = await open_widget(in_context=phone_context)
            await expect(phone.answers).to_have_count(1)
            await expect(phone.page.locator(".cs-root")).to_have_attribute("data-layout", "narrow")
            await expect(phone.page.locator(".cs-sidebar")).to_be_hidden()
            await _fits(phone)
            # The code block scrolls inside itself instead of widening the page.
            code = phone.answers.first.locator("pre")
            assert await code.evaluate("pre => pre.scrollWidth > pre.clientWidth")
            await phone.page.screenshot(path=SCREENSHOTS / f"phone-{scheme}{suffix}.png")
            if scheme == "light":
                await phone.page.get_by_role("button", name="Conversations").click()
                sidebar = phone.page.locator(".cs-sidebar")
                await expect(sidebar).to_be_visible()
                await expect(phone.threads).to_have_count(2)
                await expect(sidebar.get_by_role("button", name="New chat")).to_be_focused()
                await phone.page.wait_for_timeout(300)  # the drawer's slide-in, for the picture
                await phone.page.screenshot(path=SCREENSHOTS / f"phone-drawer{suffix}.png")
                await phone.page.keyboard.press("Escape")
                await expect(sidebar).to_be_hidden()
                await expect(phone.page.get_by_role("button", name="Conversations")).to_be_focused()
        finally:
            await phone_context.close()


async def _fits(tab: Widget) -> None:
    """Nothing wider than the screen, and the composer and header fully on it."""
    page = tab.page
    size = page.viewport_size
    assert size is not None
    assert await page.evaluate("document.documentElement.scrollWidth") <= size["width"]
    for selector in (".cs-composer", ".cs-header"):
        box = await page.locator(selector).bounding_box()
        assert box is not None, selector
        assert box["x"] >= 0 and box["x"] + box["width"] <= size["width"], (selector, box)
        assert box["y"] >= 0 and box["y"] + box["height"] <= size["height"], (selector, box)
