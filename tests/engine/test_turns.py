"""Turns on SQLite and PostgreSQL: streaming, ordering, double-texting, stop, failure, crash."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import timedelta

import pytest
import sqlalchemy as sa

from chatserver.clock import ManualClock
from chatserver.config import Settings
from chatserver.errors import ErrorCode, ServiceUnavailable, ThreadBusy
from chatserver.store import Store, StoredEvent
from chatserver.store import models as tables
from chatserver.types import TERMINAL_RUN_EVENT_TYPES, AssistantMessageItem, parse_thread_item
from tests.engine.conftest import ScriptedServer, collect, user_input


def types_of(events: list[StoredEvent]) -> list[str]:
    return [e.type for e in events]


async def assistant_items(server: ScriptedServer, thread_id: str) -> list[AssistantMessageItem]:
    rows, _ = await server.store.list_items(thread_id, limit=100)
    items = [parse_thread_item(r.data) for r in rows]
    return [i for i in items if isinstance(i, AssistantMessageItem)]


async def item_statuses(server: ScriptedServer, thread_id: str) -> list[tuple[str, str]]:
    rows, _ = await server.store.list_items(thread_id, limit=100)
    return [(r.type, r.status) for r in rows]


async def new_context(server: ScriptedServer, user: str = "alice"):  # type: ignore[no-untyped-def]
    return await server.sessions.context(user, None, {"timeout_policy": "standard"})


async def test_turn_streams_chatkit_events_with_dense_seq_and_persists_items(
    server: ScriptedServer,
) -> None:
    ctx = await new_context(server)
    handle = await server.create_thread_and_start_turn(ctx, user_input("hi"))
    events = await collect(server, handle)

    assert types_of(events)[:4] == [
        "run.started",
        "thread.created",
        "thread.item.done",
        "stream_options",
    ]
    assert types_of(events)[-2:] == ["thread.item.done", "run.completed"]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert await item_statuses(server, handle.thread_id) == [
        ("user_message", "completed"),
        ("assistant_message", "completed"),
    ]
    [answer] = await assistant_items(server, handle.thread_id)
    assert answer.content[0].text == "hi:0 hi:1 hi:2 hi:3 hi:4 "
    thread = await server.store.get_thread(handle.thread_id)
    assert thread is not None and thread.status == "idle" and thread.active_run_id is None


async def test_subscriber_joining_at_any_cursor_gets_exactly_the_rest_then_live(
    server: ScriptedServer,
) -> None:
    server.script.deltas = 60
    server.script.pause_after = 20
    ctx = await new_context(server)
    handle = await server.create_thread_and_start_turn(ctx, user_input("x"))
    full_task = asyncio.create_task(collect(server, handle))
    await server.script.paused.wait()
    await asyncio.sleep(0.05)  # let the writer commit what was emitted before the pause
    committed = await server.store.max_seq(handle.thread_id)

    rng = random.Random(7)
    joins = [rng.randint(0, committed) for _ in range(25)]
    paused_subscribers = [
        asyncio.create_task(collect_after(server, handle, cursor)) for cursor in joins
    ]
    server.script.resume.set()
    # More subscribers join while the rest of the turn is being written.
    live_subscribers = []
    for _ in range(15):
        for _ in range(rng.randint(0, 5)):
            await asyncio.sleep(0)
        cursor = await server.store.max_seq(handle.thread_id) - rng.randint(0, 3)
        live_subscribers.append(
            (cursor, asyncio.create_task(collect_after(server, handle, cursor)))
        )

    full = await full_task
    by_seq = {e.seq: e for e in full}
    for cursor, got in zip(joins, await asyncio.gather(*paused_subscribers), strict=True):
        assert got == [by_seq[s] for s in sorted(by_seq) if s > cursor]
    for cursor, task in live_subscribers:
        assert await task == [by_seq[s] for s in sorted(by_seq) if s > max(cursor, 0)]


async def collect_after(server: ScriptedServer, handle, cursor: int) -> list[StoredEvent]:  # type: ignore[no-untyped-def]
    return [event async for event in server.stream_run(handle, after=cursor)]


async def test_slow_subscriber_that_overflows_its_buffer_still_gets_every_event(
    store: Store, database_url: str, clock: ManualClock
) -> None:
    settings = Settings(database_url=database_url, subscriber_queue_size=3, commit_max_events=2)
    server = ScriptedServer(store, settings, clock=clock)
    server.script.deltas = 80
    try:
        ctx = await new_context(server)
        handle = await server.create_thread_and_start_turn(ctx, user_input("slow"))
        received = []
        async for event in server.stream_run(handle):
            received.append(event)
            await asyncio.sleep(0.001)  # a slow client
        assert [e.seq for e in received] == list(range(1, len(received) + 1))
        assert received[-1].type == "run.completed"
    finally:
        await server.close(grace_seconds=1)


async def test_queued_turns_on_one_thread_never_interleave(server: ScriptedServer) -> None:
    server.script.deltas = 30
    ctx = await new_context(server)
    thread = await server.create_thread(ctx)
    first, second = await asyncio.gather(
        server.start_turn(ctx, thread.id, user_input("one")),
        server.start_turn(ctx, thread.id, user_input("two")),
    )
    await asyncio.gather(collect(server, first), collect(server, second))

    events = await server.store.read_events(thread.id, 0, 1000)
    runs_in_order = [e.run_id for e in events]
    boundary = runs_in_order.index(runs_in_order[-1])
    assert set(runs_in_order[:boundary]) == {runs_in_order[0]}
    assert set(runs_in_order[boundary:]) == {runs_in_order[-1]}
    assert types_of(events).count("run.completed") == 2
    texts = [a.content[0].text.split(":")[0] for a in await assistant_items(server, thread.id)]
    assert sorted(texts) == ["one", "two"]
    assert [t for t, _ in await item_statuses(server, thread.id)] == [
        "user_message",
        "assistant_message",
        "user_message",
        "assistant_message",
    ]


async def test_reject_policy_refuses_a_second_turn_with_thread_busy(
    server: ScriptedServer,
) -> None:
    server.script.pause_after = 2
    ctx = await new_context(server)
    handle = await server.create_thread_and_start_turn(ctx, user_input("first"))
    await server.script.paused.wait()

    with pytest.raises(ThreadBusy) as refused:
        await server.start_turn(ctx, handle.thread_id, user_input("again"), double_texting="reject")
    assert refused.value.code is ErrorCode.THREAD_BUSY

    server.script.resume.set()
    assert types_of(await collect(server, handle))[-1] == "run.completed"
    async with server.store.read() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(tables.runs)) == 1
    assert len(await item_statuses(server, handle.thread_id)) == 2


async def test_interrupt_policy_cancels_the_running_turn_and_keeps_its_partial_answer(
    server: ScriptedServer,
) -> None:
    server.script.pause_after = 3
    ctx = await new_context(server)
    first = await server.create_thread_and_start_turn(ctx, user_input("first"))
    await server.script.paused.wait()

    server.script.pause_after = None
    second = await server.start_turn(
        ctx, first.thread_id, user_input("second"), double_texting="interrupt"
    )
    first_events, second_events = await asyncio.gather(
        collect(server, first), collect(server, second)
    )

    assert first_events[-1].type == "run.cancelled"
    assert json.loads(first_events[-1].data)["reason"] == "interrupted"
    assert second_events[-1].type == "run.completed"
    assert await item_statuses(server, first.thread_id) == [
        ("user_message", "completed"),
        ("assistant_message", "incomplete"),
        ("user_message", "completed"),
        ("assistant_message", "completed"),
    ]
    partial = (await assistant_items(server, first.thread_id))[0]
    assert partial.content[0].text == "first:0 first:1 first:2 "
    assert partial.status == "incomplete"


async def test_stop_mid_stream_keeps_the_partial_answer_and_the_thread_usable(
    server: ScriptedServer,
) -> None:
    server.script.pause_after = 4
    ctx = await new_context(server)
    handle = await server.create_thread_and_start_turn(ctx, user_input("stop me"))
    await server.script.paused.wait()

    assert await server.stop(ctx.user_id, handle.thread_id) is True
    events = await collect(server, handle)

    assert types_of(events)[-2:] == ["thread.item.done", "run.cancelled"]
    done = parse_thread_item(json.dumps(json.loads(events[-2].data)["item"]))
    assert isinstance(done, AssistantMessageItem) and done.status == "incomplete"
    assert done.content[0].text == "stop me:0 stop me:1 stop me:2 stop me:3 "
    assert await server.stop(ctx.user_id, handle.thread_id) is False

    server.script.pause_after = None
    follow_up = await server.start_turn(ctx, handle.thread_id, user_input("next"))
    assert types_of(await collect(server, follow_up))[-1] == "run.completed"


async def test_respond_raising_mid_stream_emits_an_error_event_and_the_thread_recovers(
    server: ScriptedServer,
) -> None:
    server.script.fail_after = 3
    ctx = await new_context(server)
    handle = await server.create_thread_and_start_turn(ctx, user_input("boom"))
    events = await collect(server, handle)

    assert types_of(events)[-3:] == ["thread.item.done", "error", "run.failed"]
    error = json.loads(events[-2].data)
    assert error["code"] == "stream.error"
    assert error["error_code"] == "responder_failed"
    assert "model went away" not in events[-2].data  # no internals reach the client
    assert await item_statuses(server, handle.thread_id) == [
        ("user_message", "completed"),
        ("assistant_message", "incomplete"),
    ]

    server.script.fail_after = None
    retry = await server.start_turn(ctx, handle.thread_id, user_input("again"))
    assert types_of(await collect(server, retry))[-1] == "run.completed"


async def test_closing_the_stream_does_not_cancel_the_turn(server: ScriptedServer) -> None:
    server.script.deltas = 20
    ctx = await new_context(server)
    handle = await server.create_thread_and_start_turn(ctx, user_input("keep going"))
    stream = server.stream_run(handle)
    async for _ in stream:
        break
    await stream.aclose()  # type: ignore[attr-defined]

    rest = await collect(server, handle)
    assert rest[-1].type == "run.completed"
    [answer] = await assistant_items(server, handle.thread_id)
    assert answer.content[0].text.count("keep going:") == 20


async def test_a_crashed_turn_is_closed_by_start_up_recovery_and_the_thread_is_usable(
    store: Store, settings: Settings, clock: ManualClock
) -> None:
    crashed = ScriptedServer(store, settings, clock=clock)
    crashed.script.pause_after = 3
    ctx = await crashed.sessions.context("alice", None)
    handle = await crashed.create_thread_and_start_turn(ctx, user_input("crash"))
    seen = []
    async for event in crashed.stream_run(handle):
        seen.append(event)
        if event.type == "thread.item.updated" and event.data.count("crash:2"):
            break
    await _die_without_cleanup(crashed)

    thread = await store.get_thread(handle.thread_id)
    assert thread is not None and thread.status == "running"  # what a dead process leaves

    clock.advance(settings.run_lease_seconds + 1)
    survivor = ScriptedServer(store, settings, clock=clock)
    await survivor.start()
    try:
        events = await store.read_events(handle.thread_id, 0, 1000)
        assert types_of(events)[-3:] == ["thread.item.done", "error", "run.failed"]
        assert json.loads(events[-2].data)["error_code"] == ErrorCode.RUN_INTERRUPTED
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        partial = (await assistant_items(survivor, handle.thread_id))[0]
        assert partial.status == "incomplete"
        assert partial.content[0].text.startswith("crash:0 crash:1 crash:2 ")
        thread = await store.get_thread(handle.thread_id)
        assert thread is not None and thread.status == "idle"

        ctx = await survivor.sessions.context("alice", ctx.session.id)
        follow_up = await survivor.start_turn(ctx, handle.thread_id, user_input("after"))
        assert types_of(await collect(survivor, follow_up))[-1] == "run.completed"
        items = [item.id for item in await _items(survivor, handle.thread_id)]
        # The follow-up saw the whole thread up to its own message: not its own answer.
        assert len(items) == 4
        assert survivor.histories[-1] == items[:3]
    finally:
        await survivor.close(grace_seconds=1)


async def test_recovery_leaves_runs_with_a_live_lease_alone(
    server: ScriptedServer, clock: ManualClock
) -> None:
    server.script.pause_after = 1
    ctx = await new_context(server)
    handle = await server.create_thread_and_start_turn(ctx, user_input("alive"))
    await server.script.paused.wait()
    clock.advance(server.settings.run_lease_seconds / 2)
    assert await server.recover() == 0
    server.script.resume.set()
    assert (await collect(server, handle))[-1].type == "run.completed"


async def _items(server: ScriptedServer, thread_id: str):  # type: ignore[no-untyped-def]
    rows, _ = await server.store.list_items(thread_id, limit=100)
    return rows


async def _die_without_cleanup(server: ScriptedServer) -> None:
    """What kill -9 does to a process: its tasks stop and nothing more is written."""

    async def nothing(*_: object, **__: object) -> None:
        return None

    runner = server.runs.runner
    runner._end = nothing  # type: ignore[method-assign]
    runner._release = nothing  # type: ignore[method-assign]
    tasks = [local.task for local in server.runs._local.values() if local.task is not None]
    await asyncio.sleep(0.05)  # the writer commits what the turn emitted before the "kill"
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in asyncio.all_tasks():
        if task.get_name().startswith("event-writer:"):
            task.cancel()


assert TERMINAL_RUN_EVENT_TYPES  # the stream helpers above stop on these
_ = timedelta


async def test_concurrent_creates_with_one_idempotency_key_across_two_servers_make_one_turn(
    store: Store, settings: Settings, clock: ManualClock
) -> None:
    other_store = Store(settings.database_url)
    first = ScriptedServer(store, settings, clock=clock)
    second = ScriptedServer(other_store, settings, clock=clock)
    try:
        ctx_a = await first.sessions.context("alice", "ses_sharedsession1")
        ctx_b = await second.sessions.context("alice", "ses_sharedsession1")
        attempts = [
            server.create_thread_and_start_turn(ctx, user_input("once"), idempotency_key="k-1")
            for server, ctx in [(first, ctx_a), (second, ctx_b)] * 3
        ]
        handles = await asyncio.gather(*attempts)

        assert len({h.run_id for h in handles}) == 1
        run = await store.get_run(handles[0].run_id)
        assert run is not None
        # Live events reach subscribers of the instance that runs the turn.
        owner = first if run.owner == first.instance_id else second
        assert types_of(await collect(owner, handles[0]))[-1] == "run.completed"
        threads, _ = await store.list_threads("alice", limit=10)
        assert [t.id for t in threads] == [handles[0].thread_id]
        assert [t for t, _ in await item_statuses(first, handles[0].thread_id)] == [
            "user_message",
            "assistant_message",
        ]
    finally:
        await first.close(grace_seconds=1)
        await second.close(grace_seconds=1)
        await other_store.close()


async def test_a_message_to_a_thread_orphaned_by_a_crash_runs_once_the_lease_lapses(
    store: Store, database_url: str, clock: ManualClock
) -> None:
    # Maintenance every 0.1 s of real time; leases measured on the manual clock.
    settings = Settings(database_url=database_url, commit_window_ms=2, run_lease_seconds=0.3)
    crashed = ScriptedServer(store, settings, clock=clock)
    crashed.script.pause_after = 3
    ctx = await crashed.sessions.context("alice", None)
    orphan = await crashed.create_thread_and_start_turn(ctx, user_input("crash"))
    await crashed.script.paused.wait()
    await _die_without_cleanup(crashed)

    survivor = ScriptedServer(store, settings, clock=clock)
    await survivor.start()
    try:
        ctx = await survivor.sessions.context("alice", ctx.session.id)
        # A healthy turn elsewhere, whose lease must keep being renewed meanwhile.
        survivor.script.pause_after = 1
        healthy = await survivor.create_thread_and_start_turn(ctx, user_input("healthy"))
        await survivor.script.paused.wait()
        survivor.script.pause_after = None
        follow_up = await survivor.start_turn(ctx, orphan.thread_id, user_input("after"))
        await asyncio.sleep(0.3)  # several maintenance rounds: none may get stuck
        run = await store.get_run(follow_up.run_id)
        assert run is not None and run.status == "queued"  # the orphan's lease still runs

        clock.advance(settings.run_lease_seconds + 1)
        # A bound on a hang, not a speed claim: before the fix this waited 300 s.
        events = await asyncio.wait_for(collect(survivor, follow_up), timeout=5)

        assert types_of(events)[0] == "run.started" and types_of(events)[-1] == "run.completed"
        logged = await store.read_events(orphan.thread_id, 0, 1000)
        orphan_terminals = [
            e.type for e in logged if e.run_id == orphan.run_id and e.type.startswith("run.")
        ]
        assert orphan_terminals == ["run.started", "run.failed"]  # closed exactly once
        assert [e.seq for e in logged] == list(range(1, len(logged) + 1))

        async def healthy_lease_renewed() -> bool:
            row = await store.get_run(healthy.run_id)
            return (
                row is not None and row.lease_until is not None and (row.lease_until > clock.now())
            )

        deadline = asyncio.get_running_loop().time() + 5
        while not await healthy_lease_renewed():
            assert asyncio.get_running_loop().time() < deadline, "lease renewal is stuck"
            await asyncio.sleep(0.05)
        survivor.script.resume.set()
        assert types_of(await collect(survivor, healthy))[-1] == "run.completed"
    finally:
        survivor.script.resume.set()
        await survivor.close(grace_seconds=1)


async def test_a_busy_threads_log_stays_bounded_while_its_items_keep_every_turn(
    store: Store, database_url: str, clock: ManualClock
) -> None:
    settings = Settings(database_url=database_url, commit_window_ms=2, event_log_max_per_thread=100)
    server = ScriptedServer(store, settings, clock=clock)
    server.script.deltas = 5
    try:
        ctx = await new_context(server)
        first = await server.create_thread_and_start_turn(ctx, user_input("t0"))
        emitted = len(await collect(server, first))
        thread_id = first.thread_id
        for n in range(1, 30):
            handle = await server.start_turn(ctx, thread_id, user_input(f"t{n}"))
            emitted += len(await collect(server, handle))

        # The last turn compacts right after its last event, which the test has already seen.
        async def compacted() -> list[StoredEvent]:
            for _ in range(500):
                stored = await store.read_events(thread_id, 0, 10_000)
                if len(stored) <= 100:
                    return stored
                await asyncio.sleep(0.01)
            raise AssertionError(f"{len(stored)} events kept")

        stored = await compacted()
        assert len(stored) == 100
        assert stored[-1].seq == emitted
        # Only the last turn keeps its deltas (a client may still be reading it).
        assert {e.run_id for e in stored if e.type == "thread.item.updated"} == {handle.run_id}
        answers = await assistant_items(server, thread_id)
        assert [a.content[0].text for a in answers] == [
            " ".join(f"t{n}:{d}" for d in range(5)) + " " for n in range(30)
        ]

        # A cursor behind what is kept: `resync` (reload the items), then everything kept.
        replay = []
        async for event in server.events.subscribe(thread_id, 0, until=lambda e: e.seq == emitted):
            replay.append(event)
        assert replay[0].type == "resync"
        assert json.loads(replay[0].data)["earliest_seq"] == stored[0].seq
        assert replay[1:] == stored
    finally:
        await server.close(grace_seconds=1)


async def test_a_turn_longer_than_the_log_keeps_all_its_events_while_it_runs(
    store: Store, database_url: str, clock: ManualClock
) -> None:
    settings = Settings(database_url=database_url, commit_window_ms=2, event_log_max_per_thread=100)
    server = ScriptedServer(store, settings, clock=clock)
    try:
        ctx = await new_context(server)
        server.script.deltas = 150
        handle = await server.create_thread_and_start_turn(ctx, user_input("one"))
        await collect(server, handle)
        handle = await server.start_turn(ctx, handle.thread_id, user_input("two"))
        await collect(server, handle)
        server.script.deltas, server.script.pause_after = 300, 250
        long = await server.start_turn(ctx, handle.thread_id, user_input("long"))
        follower = asyncio.create_task(collect(server, long))
        await server.script.paused.wait()
        server.script.resume.set()

        events = await follower
        # Every delta of the running turn reached its follower, 300 > 100 kept events.
        assert sum("content_part.text_delta" in e.data for e in events) == 300
        assert [e.seq for e in events] == list(range(long.start_seq + 1, events[-1].seq + 1))
        # Once it ended, the log is bounded again: its beginning is behind what is kept.
        for _ in range(500):
            if len(await store.read_events(long.thread_id, 0, 10_000)) <= 100:
                break
            await asyncio.sleep(0.01)
        again = await collect(server, long)
        assert again[0].type == "resync"
        assert again[1:] == events[-100:]
    finally:
        await server.close(grace_seconds=1)


async def test_a_compaction_that_fails_leaves_the_turn_and_the_next_one_whole(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unreachable(*_args: object, **_kwargs: object) -> int:
        raise ServiceUnavailable("the database is unavailable; retry shortly")

    monkeypatch.setattr(server.store, "compact_events", unreachable)
    ctx = await new_context(server)
    first = await server.create_thread_and_start_turn(ctx, user_input("one"))
    assert (await collect(server, first))[-1].type == "run.completed"
    second = await server.start_turn(ctx, first.thread_id, user_input("two"))

    assert (await collect(server, second))[-1].type == "run.completed"
    assert len(await assistant_items(server, first.thread_id)) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert f"event log of thread {first.thread_id} not compacted" in " ".join(warnings)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
