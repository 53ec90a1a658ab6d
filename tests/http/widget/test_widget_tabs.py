"""Several tabs of one browser: each follows the thread's events itself, so all of them show
the conversation live; the thread list and the open thread stay in step between them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from http_harness import LiveServer
from playwright.async_api import BrowserContext, expect
from widget_harness import Widget, embed_page, hold_next_turn, paused, serve_embed_page, step

pytestmark = [pytest.mark.browser, pytest.mark.slow]

OpenWidget = Callable[..., Any]


async def test_a_message_sent_in_one_tab_streams_live_in_the_other(
    live: LiveServer, open_widget: OpenWidget
) -> None:
    seen: dict[str, set[tuple[str | None, str | None]]] = {"first": set(), "second": set()}
    first: Widget = await open_widget()
    second: Widget = await open_widget()
    for name, tab in (("first", first), ("second", second)):
        tab.page.on(
            "request",
            lambda r, name=name: seen[name].add(
                (r.headers.get("x-session-id"), r.headers.get("x-tab-id"))
            ),
        )
    hold_next_turn(live.chat)

    await first.send("hello from the first tab")
    await paused(live.chat)

    # The second tab switched to the new thread and follows its events: the answer grows
    # there too, word by word, while it is being written.
    await expect(second.user_messages).to_have_text(["hello from the first tab"])
    await expect(second.answers).to_have_text([""])
    await step(live.chat)
    await expect(second.answers).to_have_text(["hello"])
    await expect(first.answers).to_have_text(["hello"])
    await expect(second.stop_button).to_be_visible()
    live.chat.hold.set()
    await second.wait_answered(1)
    await first.wait_answered(1)
    await expect(second.answers).to_have_text(["hello from the first tab"])
    await expect(second.threads).to_have_text(["hello from the first tab"])
    assert await second.storage("thread") == await first.storage("thread")

    # And the other way round, on the same thread.
    await second.send("and back from the second")
    await first.wait_answered(2)
    await expect(first.user_messages).to_have_text(
        ["hello from the first tab", "and back from the second"]
    )
    await expect(first.answers).to_have_count(2)
    await expect(second.answers).to_have_count(2)
    # Every request names the browser's one session and its own tab.
    ((first_session, first_tab),) = seen["first"]
    ((second_session, second_tab),) = seen["second"]
    assert first_session == second_session == await first.storage("session")
    assert first_tab and second_tab and first_tab != second_tab


async def test_thread_choice_renames_and_deletes_reach_every_tab(
    live: LiveServer, open_widget: OpenWidget
) -> None:
    first: Widget = await open_widget()
    await first.send("red")
    await first.wait_answered(1)
    await first.page.get_by_role("button", name="New chat").click()
    await first.send("blue")
    await first.wait_answered(1)
    second: Widget = await open_widget()
    await expect(second.threads).to_have_text(["blue", "red"])
    await expect(second.user_messages).to_have_text(["blue"])

    await first.page.get_by_role("button", name="red", exact=True).click()
    await expect(second.user_messages).to_have_text(["red"])
    await expect(second.page.locator(".cs-title")).to_have_text("red")

    await second.page.get_by_role("button", name="Rename “red”").click()
    title = second.page.get_by_role("textbox", name="Conversation title")
    await title.fill("crimson")
    await title.press("Enter")
    await expect(first.threads).to_have_text(["blue", "crimson"])
    await expect(first.page.locator(".cs-title")).to_have_text("crimson")

    await second.page.get_by_role("button", name="Delete “crimson”").click()
    await second.page.get_by_role("button", name="Delete", exact=True).click()
    await expect(first.threads).to_have_text(["blue"])
    await expect(first.page.locator(".cs-empty")).to_be_visible()


async def test_active_tab_wins_tells_the_older_tab_it_continued_elsewhere(
    live: LiveServer, open_widget: OpenWidget, context: BrowserContext
) -> None:
    await serve_embed_page(
        context, live, "/one-tab.html", embed_page(tab_strategy="active_tab_wins")
    )
    older: Widget = await open_widget("/one-tab.html")
    await older.send("who has it")
    await older.wait_answered(1)

    newer: Widget = await open_widget("/one-tab.html")
    await expect(newer.user_messages).to_have_text(["who has it"])

    notice = older.notices.filter(has_text="This conversation continued in another tab.")
    await expect(notice).to_be_visible()
    await expect(older.connection).to_have_attribute("data-state", "superseded")
    await expect(older.send_button).to_be_disabled()
    await expect(newer.connection).to_have_attribute("data-state", "live")

    # Taking it back makes the older tab the active one again.
    await notice.get_by_role("button", name="Continue here").click()
    await expect(older.connection).to_have_attribute("data-state", "live")
    await expect(newer.connection).to_have_attribute("data-state", "superseded")
    await older.send("mine again")
    await older.wait_answered(2)
