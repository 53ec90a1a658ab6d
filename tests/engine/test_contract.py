"""The respond() contract, on SQLite and PostgreSQL: what respond() sees (history), what it may
yield, and how what it yields is persisted and streamed (ChatKit's rules)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import sqlalchemy as sa

from chatserver.clock import ManualClock
from chatserver.config import Settings
from chatserver.errors import ErrorCode, ThreadBusy
from chatserver.ids import IdKind, new_id
from chatserver.responders.messages import stream_assistant_message
from chatserver.server import ChatServer
from chatserver.sessions import RequestContext
from chatserver.store import Store, StoredEvent
from chatserver.store import models as tables
from chatserver.types import (
    ChatKitEvent,
    HiddenContextItem,
    RunCompletedEvent,
    ThreadItemDoneEvent,
    ThreadItemRemovedEvent,
    ThreadMetadata,
    UserMessageItem,
    parse_thread_item,
)
from tests.engine.conftest import collect, user_input

Respond = Callable[[ThreadMetadata, UserMessageItem | None, RequestContext], AsyncIterator[Any]]


class PluggableServer(ChatServer):
    """A server whose respond() each test sets; records what respond() saw."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.histories: list[list[str]] = []
        self.answer: Respond = self.echo

    async def respond(
        self, thread: ThreadMetadata, input: UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[ChatKitEvent]:
        self.histories.append([item.id for item in await context.history()])
        async for event in self.answer(thread, input, context):
            yield event

    async def echo(
        self, thread: ThreadMetadata, input: UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[ChatKitEvent]:
        async for event in stream_assistant_message(
            thread.id, _words("a b c"), created_at=context.clock.now()
        ):
            yield event


async def _words(text: str) -> AsyncIterator[str]:
    for word in text.split():
        yield word + " "


@pytest.fixture
async def server(
    store: Store, settings: Settings, clock: ManualClock
) -> AsyncIterator[PluggableServer]:
    server = PluggableServer(store, settings, clock=clock)
    await server.start()
    try:
        yield server
    finally:
        await server.close(grace_seconds=1)


async def stored_item_ids(store: Store, thread_id: str) -> list[str]:
    rows, _ = await store.list_items(thread_id, limit=1000)
    return [row.id for row in rows]


async def new_context(server: ChatServer) -> RequestContext:
    return await server.sessions.context("alice", None)


def types_of(events: list[StoredEvent]) -> list[str]:
    return [e.type for e in events]


# -- history ---------------------------------------------------------------------------------


async def test_history_inside_respond_ends_with_the_turns_own_user_message(
    server: PluggableServer,
) -> None:
    ctx = await new_context(server)
    first = await server.create_thread_and_start_turn(ctx, user_input("one"))
    await collect(server, first)
    second = await server.start_turn(ctx, first.thread_id, user_input("two"))
    await collect(server, second)

    items = await stored_item_ids(server.store, first.thread_id)
    assert len(items) == 4  # user, answer, user, answer
    # Exactly the committed items up to the turn's own message, oldest first.
    assert server.histories == [items[:1], items[:3]]


async def test_history_is_bounded_to_the_newest_items(
    store: Store, database_url: str, clock: ManualClock
) -> None:
    settings = Settings(database_url=database_url, commit_window_ms=2, history_limit=3)
    server = PluggableServer(store, settings, clock=clock)
    try:
        ctx = await new_context(server)
        handle = await server.create_thread_and_start_turn(ctx, user_input("0"))
        await collect(server, handle)
        for n in range(1, 4):
            await collect(
                server, await server.start_turn(ctx, handle.thread_id, user_input(f"{n}"))
            )
        items = await stored_item_ids(store, handle.thread_id)
        assert len(items) == 8
        # The last turn saw the 3 newest committed items, ending with its own message.
        assert server.histories[-1] == items[4:7]
    finally:
        await server.close(grace_seconds=1)


# -- what respond() may yield ----------------------------------------------------------------


@pytest.mark.parametrize(
    "server_event",
    [
        {"type": "run.completed", "run_id": "run_fake"},
        {"type": "session.superseded", "session_id": "ses_whatever01"},
        {"type": "resync", "reason": "fake"},
    ],
)
async def test_respond_yielding_a_server_event_fails_the_turn_with_a_clear_error(
    server: PluggableServer, server_event: dict[str, Any]
) -> None:
    from chatserver.types import parse_stream_event

    forged = parse_stream_event(json.dumps(server_event))

    async def impostor(
        thread: ThreadMetadata, input: UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[Any]:
        yield forged
        yield RunCompletedEvent(run_id="run_other")

    server.answer = impostor
    ctx = await new_context(server)
    handle = await server.create_thread_and_start_turn(ctx, user_input("x"))
    events = await collect(server, handle)

    assert types_of(events)[-2:] == ["error", "run.failed"]
    error = json.loads(events[-2].data)
    assert (
        error["error_code"] == ErrorCode.INVALID_EVENT == json.loads(events[-1].data)["error_code"]
    )
    assert server_event["type"] in error["message"]
    logged = await server.store.read_events(handle.thread_id, 0, 100)
    # Nothing respond() forged reached the log: one run, one terminal event, its own.
    run_events = [json.loads(e.data) for e in logged if e.type.startswith("run.")]
    assert [(e["type"], e["run_id"]) for e in run_events] == [
        ("run.started", handle.run_id),
        ("run.failed", handle.run_id),
    ]
    assert all(e.type not in ("session.superseded", "resync") for e in logged)


async def test_respond_yielding_a_non_event_fails_the_turn(server: PluggableServer) -> None:
    async def junk(
        thread: ThreadMetadata, input: UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[Any]:
        yield {"type": "thread.item.done"}

    server.answer = junk
    ctx = await new_context(server)
    events = await collect(server, await server.create_thread_and_start_turn(ctx, user_input("x")))
    assert types_of(events)[-2:] == ["error", "run.failed"]
    assert json.loads(events[-1].data)["error_code"] == ErrorCode.INVALID_EVENT


# -- ChatKit's persistence rules ---------------------------------------------------------------


async def test_thread_item_removed_deletes_the_item_and_tells_every_client(
    server: PluggableServer,
) -> None:
    ctx = await new_context(server)
    first = await server.create_thread_and_start_turn(ctx, user_input("keep"))
    await collect(server, first)
    [_, doomed] = await stored_item_ids(server.store, first.thread_id)

    async def remover(
        thread: ThreadMetadata, input: UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[ChatKitEvent]:
        yield ThreadItemRemovedEvent(item_id=doomed)

    server.answer = remover
    events = await collect(server, await server.start_turn(ctx, first.thread_id, user_input("x")))

    removed = [json.loads(e.data) for e in events if e.type == "thread.item.removed"]
    assert removed == [{"type": "thread.item.removed", "item_id": doomed}]
    assert doomed not in await stored_item_ids(server.store, first.thread_id)
    assert await server.store.get_item(doomed) is None


async def test_hidden_context_is_saved_for_the_model_but_never_streamed(
    server: PluggableServer,
) -> None:
    hidden_id = new_id(IdKind.ITEM)

    async def with_hidden_context(
        thread: ThreadMetadata, input: UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[ChatKitEvent]:
        hidden = HiddenContextItem(
            id=hidden_id,
            thread_id=thread.id,
            created_at=context.clock.now(),
            content="the user prefers metric units",
        )
        yield ThreadItemDoneEvent(item=hidden)
        async for event in server.echo(thread, input, context):
            yield event

    server.answer = with_hidden_context
    ctx = await new_context(server)
    handle = await server.create_thread_and_start_turn(ctx, user_input("x"))
    events = await collect(server, handle)

    assert all(hidden_id not in e.data for e in events)
    logged = await server.store.read_events(handle.thread_id, 0, 1000)
    assert all(hidden_id not in e.data for e in logged)
    assert [e.seq for e in logged] == list(range(1, len(logged) + 1))
    saved = await server.store.get_item(hidden_id)
    assert saved is not None
    assert parse_thread_item(saved.data) == HiddenContextItem(
        id=hidden_id,
        thread_id=handle.thread_id,
        created_at=saved.created_at,
        content="the user prefers metric units",
    )
    # The next turn's respond() sees it in its history: it is for the model.
    server.answer = server.echo
    await collect(server, await server.start_turn(ctx, handle.thread_id, user_input("y")))
    assert hidden_id in server.histories[-1]
    # Clients listing the thread never see it.
    page = await server.list_items("alice", handle.thread_id, limit=100)
    assert hidden_id in [item.id for item in page.data]  # the engine keeps it...
    thread, _ = await server.load_thread("alice", handle.thread_id, item_limit=100)
    assert thread.items.data  # ...and the HTTP layer filters it (tests/http)


async def test_thread_metadata_set_by_respond_is_saved_but_never_sent(
    server: PluggableServer,
) -> None:
    async def tagger(
        thread: ThreadMetadata, input: UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[ChatKitEvent]:
        thread.title = "Tagged"
        thread.metadata["secret_plan"] = "internal-42"
        async for event in server.echo(thread, input, context):
            yield event

    server.answer = tagger
    ctx = await new_context(server)
    handle = await server.create_thread_and_start_turn(ctx, user_input("x"))
    events = await collect(server, handle)

    assert "thread.updated" in types_of(events)
    assert all("internal-42" not in e.data for e in events)
    row = await server.store.get_thread(handle.thread_id)
    assert row is not None and (row.title, row.meta) == ("Tagged", {"secret_plan": "internal-42"})


async def test_retry_after_item_removes_the_later_items_with_events_and_answers_again(
    server: PluggableServer,
) -> None:
    ctx = await new_context(server)
    first = await server.create_thread_and_start_turn(ctx, user_input("one"))
    await collect(server, first)
    await collect(server, await server.start_turn(ctx, first.thread_id, user_input("two")))
    user_one, answer_one, user_two, answer_two = await stored_item_ids(
        server.store, first.thread_id
    )

    retry = await server.start_turn(ctx, first.thread_id, None, retry_after_item_id=user_one)
    events = await collect(server, retry)

    removed = [json.loads(e.data)["item_id"] for e in events if e.type == "thread.item.removed"]
    assert removed == [answer_one, user_two, answer_two]
    items = await stored_item_ids(server.store, first.thread_id)
    assert items[0] == user_one and len(items) == 2 and items[1] not in removed
    # respond() answered the retried message, with the history as it is now.
    assert server.histories[-1] == [user_one]


async def test_retry_after_an_item_that_is_not_a_user_message_is_refused(
    server: PluggableServer,
) -> None:
    ctx = await new_context(server)
    first = await server.create_thread_and_start_turn(ctx, user_input("one"))
    await collect(server, first)
    [_, answer] = await stored_item_ids(server.store, first.thread_id)
    from chatserver.errors import BadRequest

    with pytest.raises(BadRequest):
        await server.start_turn(ctx, first.thread_id, None, retry_after_item_id=answer)
    assert len(await server.store.read_events(first.thread_id, 0, 1000)) == len(
        await collect(server, first)
    )


# -- double-texting: reject ------------------------------------------------------------------


async def _runs_of(store: Store, thread_id: str) -> int:
    async with store.read() as conn:
        query = sa.select(sa.func.count()).where(tables.runs.c.thread_id == thread_id)
        return int(await conn.scalar(query) or 0)


def held(server: PluggableServer) -> asyncio.Event:
    """Answers wait for the returned event: an accepted turn stays running meanwhile."""
    release = asyncio.Event()

    async def waiting(
        thread: ThreadMetadata, input: UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[ChatKitEvent]:
        await release.wait()
        async for event in server.echo(thread, input, context):
            yield event

    server.answer = waiting
    return release


async def test_reject_accepts_exactly_one_of_concurrent_sends_to_an_idle_thread(
    server: PluggableServer,
) -> None:
    release = held(server)
    ctx = await new_context(server)
    thread = await server.create_thread(ctx)

    attempts = await asyncio.gather(
        *(
            server.start_turn(ctx, thread.id, user_input(f"m{n}"), double_texting="reject")
            for n in range(4)
        ),
        return_exceptions=True,
    )

    accepted = [a for a in attempts if not isinstance(a, BaseException)]
    refused = [a for a in attempts if isinstance(a, ThreadBusy)]
    assert (len(accepted), len(refused)) == (1, 3)
    release.set()
    assert types_of(await collect(server, accepted[0]))[-1] == "run.completed"
    assert await _runs_of(server.store, thread.id) == 1
    assert len(await stored_item_ids(server.store, thread.id)) == 2


async def test_reject_holds_across_two_store_objects(
    store: Store, settings: Settings, clock: ManualClock
) -> None:
    other_store = Store(settings.database_url)
    first = PluggableServer(store, settings, clock=clock)
    second = PluggableServer(other_store, settings, clock=clock)
    releases = [held(first), held(second)]
    try:
        ctx_a = await first.sessions.context("alice", "ses_sharedsession1")
        ctx_b = await second.sessions.context("alice", "ses_sharedsession1")
        thread = await first.create_thread(ctx_a)
        attempts = await asyncio.gather(
            *(
                server.start_turn(ctx, thread.id, user_input("m"), double_texting="reject")
                for server, ctx in [(first, ctx_a), (second, ctx_b)] * 2
            ),
            return_exceptions=True,
        )
        accepted = [a for a in attempts if not isinstance(a, BaseException)]
        assert len(accepted) == 1
        assert sum(isinstance(a, ThreadBusy) for a in attempts) == 3
        assert await _runs_of(store, thread.id) == 1
    finally:
        for release in releases:
            release.set()
        await first.close(grace_seconds=1)
        await second.close(grace_seconds=1)
        await other_store.close()


# -- snapshots -------------------------------------------------------------------------------


async def test_a_thread_snapshot_never_precedes_deltas_of_items_it_holds_as_done(
    server: PluggableServer,
) -> None:
    """Read while turns run and end: following the events after a snapshot's seq must never
    bring deltas for an item the snapshot already holds as done (a client would apply them
    twice), nor skip deltas of one it holds in progress."""

    async def many_words(
        thread: ThreadMetadata, input: UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[ChatKitEvent]:
        async def words() -> AsyncIterator[str]:
            for n in range(40):
                await asyncio.sleep(0)
                yield f"w{n} "

        async for event in stream_assistant_message(
            thread.id, words(), created_at=context.clock.now()
        ):
            yield event

    server.answer = many_words
    ctx = await new_context(server)
    first = await server.create_thread_and_start_turn(ctx, user_input("go"))
    thread_id = first.thread_id

    async def turns() -> None:
        await collect(server, first)
        for n in range(6):
            await collect(server, await server.start_turn(ctx, thread_id, user_input(f"{n}")))

    driving = asyncio.create_task(turns())
    checked = 0
    while not driving.done():
        thread, seq = await server.load_thread("alice", thread_id, item_limit=1000)
        done = {
            item.id
            for item in thread.items.data
            if getattr(item, "status", "completed") != "in_progress"
        }
        later = await server.store.read_events(thread_id, seq, 100_000)
        for event in later:
            if event.type == "thread.item.updated":
                assert json.loads(event.data)["item_id"] not in done, (seq, event.seq)
        checked += 1
    await driving
    assert checked > 10
