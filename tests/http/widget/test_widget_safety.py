"""No HTML injection: what a user types is shown as text, and what a model writes is
markdown whose HTML is escaped and sanitised. The host page here has no Content-Security-
Policy (the demo page's would block inline handlers anyway), so only the widget stands
between a payload and the page."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from http_harness import LiveServer
from playwright.async_api import BrowserContext, expect
from widget_harness import Widget, embed_page, serve_embed_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

OpenWidget = Callable[..., Any]

IMG_PAYLOAD = '<img src=x onerror="window.__pwned = 1; alert(1)">'


async def _host_page(context: BrowserContext, live: LiveServer, open_widget: OpenWidget) -> Widget:
    await serve_embed_page(context, live, "/no-csp.html", embed_page())
    tab: Widget = await open_widget("/no-csp.html")
    dialogs: list[str] = []
    tab.page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    tab.dialogs = dialogs  # type: ignore[attr-defined]
    return tab


async def test_an_html_payload_from_the_user_and_its_echo_show_as_text_and_run_nothing(
    live: LiveServer, open_widget: OpenWidget, context: BrowserContext
) -> None:
    tab = await _host_page(context, live, open_widget)

    await tab.send(IMG_PAYLOAD)
    await tab.wait_answered(1)

    # The echo answers with the same text, so the assistant's markdown carries it too.
    await expect(tab.user_messages).to_have_text([IMG_PAYLOAD])
    await expect(tab.answers).to_have_text([IMG_PAYLOAD])
    await expect(tab.page.locator(".cs-msg img")).to_have_count(0)
    assert await tab.page.evaluate("window.__pwned") is None
    assert tab.dialogs == []  # type: ignore[attr-defined]


async def test_assistant_markdown_with_script_and_javascript_links_is_sanitised(
    live: LiveServer, open_widget: OpenWidget, context: BrowserContext
) -> None:
    tab = await _host_page(context, live, open_widget)
    text = (
        "[click me](javascript:window.__pwned=2) "
        "<script>window.__pwned=3</script> "
        '<svg onload="window.__pwned=4"></svg> '
        "![pic](javascript:window.__pwned=5)"
    )
    await tab.send(text)
    await tab.wait_answered(1)

    answer = tab.answers.first
    await expect(answer.locator("a")).to_have_count(2)
    hrefs = await answer.locator("a").evaluate_all("as => as.map(a => a.getAttribute('href'))")
    assert hrefs == [None, None]
    await expect(answer.locator("a").first).to_have_text("click me")
    await expect(answer.locator("script, svg, img, iframe")).to_have_count(0)
    assert await tab.page.evaluate("window.__pwned") is None
    assert tab.dialogs == []  # type: ignore[attr-defined]


async def test_markdown_renderer_lets_no_handler_script_or_unsafe_url_through(
    live: LiveServer, open_widget: OpenWidget
) -> None:
    tab: Widget = await open_widget()
    payloads = [
        IMG_PAYLOAD,
        "<script>window.__pwned = 1</script>",
        '<a href="javascript:window.__pwned=1">x</a>',
        "[x](javascript:window.__pwned=1)",
        "[x](  JaVaScRiPt:window.__pwned=1)",
        "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
        "![x](https://tracker.example/pixel.png)",
        '<iframe src="https://example.com"></iframe>',
        '<div style="position:fixed;inset:0" onclick="window.__pwned=1">cover</div>',
        '<p class="cs-root">borrowed styles</p>',
        '<math><mi xlink:href="javascript:alert(1)">x</mi></math>',
        "`<img src=x onerror=alert(1)>` in code",
        "```html\n<script>alert(1)</script>\n```",
    ]
    report = await tab.page.evaluate(
        """async (payloads) => {
            const { renderMarkdown } = await import("/widget/markdown.js");
            return payloads.map((text) => {
                const box = document.createElement("div");
                box.append(renderMarkdown(text));
                const elements = [...box.querySelectorAll("*")];
                return {
                    tags: [...new Set(elements.map((e) => e.tagName.toLowerCase()))].sort(),
                    handlers: elements.flatMap((e) => [...e.attributes]
                        .filter((a) => a.name.startsWith("on")).map((a) => a.name)),
                    styles: elements.filter((e) => e.hasAttribute("style")).length,
                    classes: elements.map((e) => e.className).filter((c) => c !== ""),
                    hrefs: elements.filter((e) => e.hasAttribute("href"))
                        .map((e) => e.getAttribute("href")),
                    srcs: elements.filter((e) => e.hasAttribute("src")).length,
                };
            });
        }""",
        payloads,
    )
    allowed = {"a", "br", "code", "p", "pre"}
    for payload, rendered in zip(payloads, report, strict=True):
        assert set(rendered["tags"]) <= allowed, (payload, rendered)
        assert rendered["handlers"] == [], (payload, rendered)
        assert rendered["styles"] == 0 and rendered["srcs"] == 0, (payload, rendered)
        assert all(c.startswith("language-") for c in rendered["classes"]), (payload, rendered)
        assert all(h.startswith("https://") for h in rendered["hrefs"]), (payload, rendered)
    # The image became a link to its address: nothing is loaded from a URL a model chose.
    assert report[6]["hrefs"] == ["https://tracker.example/pixel.png"]
    assert await tab.page.evaluate("window.__pwned") is None
