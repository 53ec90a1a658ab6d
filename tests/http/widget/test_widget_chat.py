"""The widget as a person uses it: write, watch the answer stream in, stop it, retry what
failed, keep several conversations."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from http_harness import LiveServer
from playwright.async_api import BrowserContext, Route, expect
from widget_harness import (
    Widget,
    embed_page,
    hold_next_turn,
    paused,
    serve_embed_page,
    server_view,
    step,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

OpenWidget = Callable[..., Any]


async def test_answer_streams_in_word_by_word_then_completes(
    live: LiveServer, open_widget: OpenWidget
) -> None:
    tab: Widget = await open_widget()
    await expect(tab.page.locator(".cs-empty")).to_be_visible()
    hold_next_turn(live.chat)

    await tab.send("one two three four")
    await paused(live.chat)
    answer = tab.answers.first
    await expect(tab.user_messages).to_have_text(["one two three four"])
    await expect(answer).to_have_attribute("data-status", "in_progress")
    await expect(answer).to_have_text("")
    # One answer at a time (the widget's default policy is reject): Stop replaces Send.
    await expect(tab.stop_button).to_be_visible()
    await expect(tab.send_button).to_be_disabled()

    await step(live.chat)
    await expect(answer).to_have_text("one")
    await step(live.chat)
    await expect(answer).to_have_text("one two")
    await expect(answer).to_have_attribute("data-status", "in_progress")

    live.chat.hold.set()
    await expect(answer).to_have_text("one two three four")
    await expect(answer).to_have_attribute("data-status", "completed")
    await expect(tab.stop_button).to_be_hidden()
    await expect(tab.send_button).to_be_enabled()
    await expect(tab.connection).to_have_attribute("data-state", "live")
    # The echo titles the thread after the first message; list and header show it.
    await expect(tab.threads).to_have_text(["one two three four"])
    await expect(tab.page.locator(".cs-title")).to_have_text("one two three four")


async def test_assistant_markdown_renders_code_lists_and_links(
    live: LiveServer, open_widget: OpenWidget
) -> None:
    tab: Widget = await open_widget()
    text = (
        "Steps:\n\n- first\n- second\n\n1. one\n2. two\n\n"
        "```python\nprint('hi')\n```\n\nSee [the docs](https://example.com/docs) or `x = 1`."
    )
    await tab.send(text)
    await tab.wait_answered(1)

    answer = tab.answers.first
    await expect(answer.locator("ul > li")).to_have_text(["first", "second"])
    await expect(answer.locator("ol > li")).to_have_text(["one", "two"])
    await expect(answer.locator("pre > code.language-python")).to_have_text("print('hi')")
    link = answer.locator("a")
    await expect(link).to_have_text("the docs")
    await expect(link).to_have_attribute("href", "https://example.com/docs")
    await expect(link).to_have_attribute("target", "_blank")
    await expect(link).to_have_attribute("rel", "noopener noreferrer nofollow")
    await expect(answer.locator("p code")).to_have_text("x = 1")
    # The user's own text stays text: no markdown, no markup.
    await expect(tab.user_messages.first.locator("ul, pre, a")).to_have_count(0)
    await expect(tab.user_messages.first).to_have_text(text, use_inner_text=True)


async def test_shift_enter_makes_a_new_line_and_enter_sends(
    live: LiveServer, open_widget: OpenWidget
) -> None:
    tab: Widget = await open_widget()
    await tab.composer.focus()
    await tab.page.keyboard.type("line one")
    await tab.page.keyboard.press("Shift+Enter")
    await tab.page.keyboard.type("line two")
    await expect(tab.user_messages).to_have_count(0)
    await tab.page.keyboard.press("Enter")

    await tab.wait_answered(1)
    await expect(tab.user_messages.first).to_have_text("line one\nline two", use_inner_text=True)
    await expect(tab.answers.first.locator("br")).to_have_count(1)
    await expect(tab.composer).to_have_value("")


async def test_stop_keeps_the_partial_answer_marked_as_stopped(
    live: LiveServer, open_widget: OpenWidget
) -> None:
    tab: Widget = await open_widget()
    hold_next_turn(live.chat)
    await tab.send("alpha beta gamma")
    await paused(live.chat)
    await step(live.chat)
    await expect(tab.answers.first).to_have_text("alpha")

    await tab.stop_button.click()

    answer = tab.answers.first
    await expect(answer).to_have_attribute("data-status", "incomplete")
    await expect(answer.locator(".cs-markdown")).to_have_text("alpha")
    await expect(answer.locator(".cs-meta")).to_have_text("Stopped before the end")
    await expect(tab.stop_button).to_be_hidden()
    await expect(tab.send_button).to_be_enabled()
    live.chat.hold.set()


async def test_leaving_a_new_conversation_mid_answer_keeps_it_listed_and_titled(
    live: LiveServer, open_widget: OpenWidget
) -> None:
    tab: Widget = await open_widget()
    hold_next_turn(live.chat)
    await tab.send("left behind")
    await paused(live.chat)

    await tab.page.get_by_role("button", name="New chat").click()
    await expect(tab.page.locator(".cs-empty")).to_be_visible()
    # The new conversation does not wait for the other one's answer.
    await tab.composer.fill("meanwhile")
    await expect(tab.send_button).to_be_enabled()
    live.chat.hold.set()

    await expect(tab.threads).to_have_text(["left behind"])
    await tab.send("meanwhile")
    await tab.wait_answered(1)
    await expect(tab.threads).to_have_text(["meanwhile", "left behind"])


async def test_a_message_that_could_not_be_sent_is_sent_once_on_retry(
    live: LiveServer, open_widget: OpenWidget, context: BrowserContext
) -> None:
    tab: Widget = await open_widget()
    await tab.send("first")
    await tab.wait_answered(1)
    thread_id = await tab.storage("thread")

    async def cut(route: Route) -> None:
        await route.abort("connectionreset")

    await context.route(live.url + "/chatkit", cut)
    await tab.send("second try")
    pending = tab.page.locator(".cs-msg[data-pending=failed]")
    await expect(pending).to_have_text("second tryNot sent. Retry")
    notice = tab.notices.filter(has_text="Your message was not sent")
    await expect(notice).to_contain_text("the server cannot be reached")

    await context.unroute(live.url + "/chatkit")
    await notice.get_by_role("button", name="Retry").click()

    await tab.wait_answered(2)
    await expect(tab.user_messages).to_have_text(["first", "second try"])
    await expect(tab.answers).to_have_text(["first", "second try"])
    await expect(tab.notices).to_have_count(0)
    assert thread_id is not None
    items = await server_view(context, live, "items.list", thread_id=thread_id, order="asc")
    assert [i["type"] for i in items["data"]] == ["user_message", "assistant_message"] * 2


async def test_a_failed_answer_shows_an_error_and_retry_answers_the_same_message(
    live: LiveServer, open_widget: OpenWidget, context: BrowserContext
) -> None:
    tab: Widget = await open_widget()

    async def broken(_text: str) -> AsyncIterator[str]:
        yield "half "
        raise RuntimeError("the model went away")

    live.chat._words = broken  # type: ignore[method-assign]
    await tab.send("please answer")
    notice = tab.notices.filter(has_text="The assistant could not finish this answer.")
    await expect(notice).to_be_visible()
    await expect(tab.answers.locator(".cs-markdown")).to_have_text(["half"])
    await expect(tab.answers.first).to_have_attribute("data-status", "incomplete")
    await expect(tab.send_button).to_be_enabled()

    del live.chat._words  # the responder works again
    await notice.get_by_role("button", name="Retry").click()

    await tab.wait_answered(1)
    await expect(tab.user_messages).to_have_text(["please answer"])
    await expect(tab.answers).to_have_text(["please answer"])
    await expect(tab.notices).to_have_count(0)
    thread_id = await tab.storage("thread")
    assert thread_id is not None
    items = await server_view(context, live, "items.list", thread_id=thread_id, order="asc")
    assert [i["type"] for i in items["data"]] == ["user_message", "assistant_message"]


async def test_thread_list_creates_switches_renames_and_deletes(
    live: LiveServer, open_widget: OpenWidget, context: BrowserContext
) -> None:
    tab: Widget = await open_widget()
    await tab.send("apples")
    await tab.wait_answered(1)
    await tab.page.get_by_role("button", name="New chat").click()
    await expect(tab.page.locator(".cs-empty")).to_be_visible()
    await expect(tab.answers).to_have_count(0)
    await tab.send("bananas")
    await tab.wait_answered(1)
    await expect(tab.threads).to_have_text(["bananas", "apples"])

    # Switch back: the other conversation's history.
    await tab.page.get_by_role("button", name="apples", exact=True).click()
    await expect(tab.user_messages).to_have_text(["apples"])
    await expect(tab.page.locator(".cs-title")).to_have_text("apples")

    # Rename with the keyboard only.
    await tab.page.get_by_role("button", name="Rename “apples”").focus()
    await tab.page.keyboard.press("Enter")
    title = tab.page.get_by_role("textbox", name="Conversation title")
    await expect(title).to_be_focused()
    await tab.page.keyboard.press("ControlOrMeta+a")
    await tab.page.keyboard.type("Fruit notes")
    await tab.page.keyboard.press("Enter")
    await expect(tab.threads).to_have_text(["bananas", "Fruit notes"])
    await expect(tab.page.locator(".cs-title")).to_have_text("Fruit notes")

    # Delete asks first.
    await tab.page.get_by_role("button", name="Delete “bananas”").click()
    await tab.page.get_by_role("button", name="Delete", exact=True).click()
    await expect(tab.threads).to_have_text(["Fruit notes"])
    await expect(tab.user_messages).to_have_text(["apples"])

    thread_id = await tab.storage("thread")
    assert thread_id is not None
    threads = await server_view(context, live, "threads.list", limit=10)
    assert [t["title"] for t in threads["data"]] == ["Fruit notes"]


async def test_older_messages_page_in_above_in_order_and_once(
    live: LiveServer, open_widget: OpenWidget, context: BrowserContext
) -> None:
    await serve_embed_page(context, live, "/small-pages.html", embed_page(page_size="3"))
    tab: Widget = await open_widget("/small-pages.html")
    words = ["ant", "bee", "cat", "dog", "eel"]
    for count, word in enumerate(words, start=1):
        await tab.send(word)
        await tab.wait_answered(count)

    cursors: list[Any] = []

    def record(request: Any) -> None:
        if request.url.endswith("/chatkit") and '"items.list"' in (request.post_data or ""):
            cursors.append(request.post_data_json["params"].get("after"))

    tab.page.on("request", record)
    await tab.page.reload()
    await tab.ready()

    # The newest page first, then the pages above it, until the first message.
    await expect(tab.user_messages).to_have_text(words)
    await expect(tab.answers).to_have_text(words)
    await expect(tab.page.locator(".cs-older")).to_be_hidden()
    assert cursors[0] is None
    assert len(cursors) >= 4 and all(cursors[1:]), cursors
