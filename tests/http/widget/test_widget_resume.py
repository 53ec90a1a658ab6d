"""The widget picks up where it was: after a reload (mid-answer too), after the event stream
broke, and after its session expired."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from http_harness import LiveServer, SseReader, add_message, request
from playwright.async_api import BrowserContext, expect
from widget_harness import (
    Widget,
    embed_page,
    hold_next_turn,
    paused,
    same_user,
    serve_embed_page,
    server_view,
    step,
)

from chatserver.http.services import Services

pytestmark = [pytest.mark.browser, pytest.mark.slow]

OpenWidget = Callable[..., Any]


async def test_reload_mid_answer_shows_the_whole_answer_exactly_once(
    live: LiveServer, open_widget: OpenWidget
) -> None:
    tab: Widget = await open_widget()
    await tab.send("warm up")
    await tab.wait_answered(1)
    hold_next_turn(live.chat)
    await tab.send("alpha beta gamma delta")
    await paused(live.chat)
    await step(live.chat)
    await step(live.chat)
    await expect(tab.answers.nth(1)).to_have_text("alpha beta")
    session_id = await tab.storage("session")
    thread_id = await tab.storage("thread")
    snapshot_seqs: list[int] = []
    followed_from: list[str] = []

    async def on_response(response: Any) -> None:
        if response.url.endswith("/chatkit") and "threads.get_by_id" in (
            response.request.post_data or ""
        ):
            snapshot_seqs.append(int(await response.header_value("x-event-seq") or -1))

    tab.page.on("response", on_response)
    tab.page.on(
        "request",
        lambda r: followed_from.append(r.url.partition("?")[2]) if "/events?" in r.url else None,
    )

    await tab.page.reload()
    await tab.ready()

    # Same session and thread; history back, and the running answer picked up mid-way.
    assert await tab.storage("session") == session_id
    assert await tab.storage("thread") == thread_id
    await expect(tab.user_messages).to_have_text(["warm up", "alpha beta gamma delta"])
    await expect(tab.answers).to_have_text(["warm up", "alpha beta"])
    await expect(tab.answers.nth(1)).to_have_attribute("data-status", "in_progress")
    await expect(tab.stop_button).to_be_visible()
    # It followed the thread from the seq its snapshot reflects (the running turn's start),
    # not from the beginning of the log.
    assert len(snapshot_seqs) == 1 and snapshot_seqs[0] > 0
    assert followed_from == [f"after={snapshot_seqs[0]}"]

    await step(live.chat)
    await expect(tab.answers.nth(1)).to_have_text("alpha beta gamma")
    live.chat.hold.set()
    await tab.wait_answered(2)
    await expect(tab.answers).to_have_text(["warm up", "alpha beta gamma delta"])
    await expect(tab.user_messages).to_have_count(2)


async def test_reconnects_after_the_stream_drops_and_shows_what_it_missed_once(
    live: LiveServer, open_widget: OpenWidget, context: BrowserContext
) -> None:
    tab: Widget = await open_widget()
    await tab.send("before the break")
    await tab.wait_answered(1)
    await expect(tab.connection).to_have_attribute("data-state", "live")
    thread_id = await tab.storage("thread")
    assert thread_id is not None
    streams = _services(live).streams

    # The server drops every stream and refuses new ones for a while (as while restarting).
    streams.close_all()
    await expect(tab.connection).to_have_attribute("data-state", "reconnecting")
    await expect(tab.connection).to_contain_text("Reconnecting")
    streams.closing = False

    # Meanwhile the same user writes from elsewhere (another device with the same cookie).
    async with await same_user(context, live) as other_device:
        body = add_message(thread_id, "while you were away")
        async with other_device.stream("POST", "/chatkit", json=body) as response:
            assert response.status_code == 200
            await SseReader(response).until_run_ends()

    await expect(tab.connection).to_have_attribute("data-state", "live", timeout=20_000)
    await expect(tab.user_messages).to_have_text(["before the break", "while you were away"])
    await expect(tab.answers).to_have_text(["before the break", "while you were away"])


async def test_a_saved_thread_deleted_elsewhere_gives_a_new_chat_and_a_notice(
    live: LiveServer, open_widget: OpenWidget, context: BrowserContext
) -> None:
    tab: Widget = await open_widget()
    await tab.send("soon gone")
    await tab.wait_answered(1)
    thread_id = await tab.storage("thread")
    async with await same_user(context, live) as other_device:
        deleted = await other_device.post(
            "/chatkit", json=request("threads.delete", thread_id=thread_id)
        )
        assert deleted.status_code == 200

    await tab.page.reload()

    await expect(tab.notices).to_have_text(["That conversation no longer exists."])
    await expect(tab.page.locator(".cs-empty")).to_be_visible()
    await expect(tab.threads).to_have_count(0)
    assert await tab.storage("thread") is None


async def test_expired_session_continues_the_thread_in_a_new_session_with_a_notice(
    live: LiveServer, open_widget: OpenWidget, context: BrowserContext
) -> None:
    tab: Widget = await open_widget()
    await tab.send("before expiry")
    await tab.wait_answered(1)
    old_session = await tab.storage("session")
    thread_id = await tab.storage("thread")
    assert old_session is not None and thread_id is not None

    live.clock.advance(live.settings.policy_standard_seconds + 1)
    await tab.send("after expiry")

    await tab.wait_answered(2)
    notice = tab.notices.filter(has_text="Your session expired")
    await expect(notice).to_contain_text("The conversation continues")
    await expect(tab.user_messages).to_have_text(["before expiry", "after expiry"])
    new_session = await tab.storage("session")
    assert new_session not in (None, old_session)
    assert await tab.storage("thread") == thread_id

    old = await server_view(context, live, f"/sessions/{old_session}")
    new = await server_view(context, live, f"/sessions/{new_session}")
    assert old["state"] == "expired"
    assert (new["state"], new["thread_id"], new["turn_count"]) == ("active", thread_id, 1)
    items = await server_view(context, live, "items.list", thread_id=thread_id, order="asc")
    assert [i["type"] for i in items["data"]] == ["user_message", "assistant_message"] * 2


async def test_session_settings_from_data_attributes_reach_the_session(
    live: LiveServer, open_widget: OpenWidget, context: BrowserContext
) -> None:
    html = embed_page(policy="lenient", tab_strategy="active_tab_wins")
    await serve_embed_page(context, live, "/configured.html", html)
    tab: Widget = await open_widget("/configured.html")
    await tab.send("hello")
    await tab.wait_answered(1)

    session_id = await tab.storage("session")
    thread_id = await tab.storage("thread")
    assert session_id is not None and thread_id is not None
    session = await server_view(context, live, f"/sessions/{session_id}")
    assert session["timeout_policy"] == "lenient"
    assert session["timeout_seconds"] == live.settings.policy_lenient_seconds
    assert session["metadata"] == {"timeout_policy": "lenient", "tab_strategy": "active_tab_wins"}
    assert session["thread_id"] == thread_id


def _services(live: LiveServer) -> Services:
    services: Services = live.running.app.state.services
    return services
