"""The widget seen from a test: a tab with helpers to read what a person sees, the browser's
launch settings, and ways to drive the ControlledEcho responder word by word."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import httpx
from http_harness import ControlledEcho, LiveServer
from playwright.async_api import BrowserContext, Page, Route, expect

CHROMIUM = Path(os.environ.get("CHATSERVER_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
# Written by the layout tests for a person to look at; gitignored.
SCREENSHOTS = Path(__file__).resolve().parents[3] / "test-results" / "screenshots"
# The states a widget settles in once it has loaded (live on a thread, ready on a new one).
_SETTLED = re.compile("^(live|idle)$")

# Playwright's assertions poll; a few seconds is plenty on a loaded 2-core machine.
expect.set_options(timeout=10_000)


class Widget:
    """One tab with the widget, seen the way a person sees it (plus a few looks inside)."""

    def __init__(self, page: Page, live: LiveServer) -> None:
        self.page = page
        self.live = live
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        # Nothing may be fetched from anywhere but the chat server.
        self.elsewhere: list[str] = []
        page.on(
            "request",
            lambda request: (
                None
                if request.url.startswith((live.url + "/", "data:"))
                else self.elsewhere.append(request.url)
            ),
        )

    @property
    def composer(self) -> Any:
        return self.page.locator("textarea.cs-input")

    @property
    def send_button(self) -> Any:
        return self.page.locator("button.cs-send")

    @property
    def stop_button(self) -> Any:
        return self.page.locator("button.cs-stop")

    @property
    def connection(self) -> Any:
        return self.page.locator(".cs-connection")

    @property
    def notices(self) -> Any:
        return self.page.locator(".cs-notice")

    @property
    def user_messages(self) -> Any:
        return self.page.locator(".cs-msg[data-role=user]")

    @property
    def answers(self) -> Any:
        return self.page.locator(".cs-msg[data-role=assistant]")

    @property
    def threads(self) -> Any:
        return self.page.locator(".cs-thread")

    async def open(self, path: str = "/") -> None:
        await self.page.goto(self.live.url + path)
        await self.ready()

    async def ready(self) -> None:
        await expect(self.connection).to_have_attribute("data-state", _SETTLED)

    async def send(self, text: str) -> None:
        await self.composer.fill(text)
        await self.composer.press("Enter")

    async def storage(self, name: str) -> str | None:
        key = f"chatserver:{self.live.url}/:{name}"
        value = await self.page.evaluate("key => localStorage.getItem(key)", key)
        return None if value is None else str(value)

    async def wait_answered(self, count: int) -> None:
        await expect(self.answers).to_have_count(count)
        await expect(self.answers.nth(count - 1)).to_have_attribute("data-status", "completed")
        await expect(self.stop_button).to_be_hidden()


async def step(chat: ControlledEcho) -> None:
    """Let a held turn say exactly one more word, then hold it again."""
    chat.paused.clear()
    chat.hold.set()
    chat.hold.clear()
    await asyncio.wait_for(chat.paused.wait(), 10)


def hold_next_turn(chat: ControlledEcho) -> None:
    chat.paused.clear()
    chat.hold.clear()


async def paused(chat: ControlledEcho) -> None:
    await asyncio.wait_for(chat.paused.wait(), 10)


def embed_page(**data: str) -> str:
    """A host page of our own that embeds the widget with some data attributes."""
    attributes = " ".join(f'data-{key.replace("_", "-")}="{value}"' for key, value in data.items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>host page</title>
<style>body {{ margin: 0; font-family: serif; }} #chat {{ height: 100vh; }}</style></head>
<body><div id="chat" data-chatserver {attributes}></div>
<script type="module" src="/widget/chatserver.js"></script></body></html>"""


async def serve_embed_page(context: BrowserContext, live: LiveServer, path: str, html: str) -> None:
    """Answer `path` on the server's origin with `html`, as a host page would be served."""

    async def fulfil(route: Route) -> None:
        await route.fulfill(status=200, content_type="text/html", body=html)

    await context.route(live.url + path, fulfil)


async def same_user(context: BrowserContext, live: LiveServer) -> httpx.AsyncClient:
    """An HTTP client that is the browser's user (its identity cookie): another device."""
    cookies = {cookie["name"]: cookie["value"] for cookie in await context.cookies()}
    return httpx.AsyncClient(base_url=live.url, cookies=cookies, timeout=10)


async def server_view(
    context: BrowserContext, live: LiveServer, path: str, **chatkit_params: Any
) -> Any:
    """What the server holds, asked over HTTP as the browser's user: GET `path`, or with
    params, the ChatKit request `path` (`items.list`, `threads.list`, ...)."""
    async with await same_user(context, live) as client:
        if chatkit_params:
            body = {"type": path, "params": chatkit_params}
            response = await client.post("/chatkit", json=body)
        else:
            response = await client.get(path)
    assert response.status_code == 200, response.text
    return response.json()
