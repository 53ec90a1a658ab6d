"""Instances sharing one database, at the engine: a turn survives another instance appending
to its thread (a queued run that gave up there), stops when its own run was closed by another
instance, and runs of a gone owner are closed at once while a live owner's are left alone."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from chatserver.clock import ManualClock
from chatserver.config import Settings
from chatserver.events import EventLog, LocalBroker
from chatserver.statuses import RunStatus
from chatserver.store import NewEvent, RunEnd, Store
from chatserver.types import RunCancelledEvent, RunFailedEvent, dump_json
from tests.engine.conftest import ScriptedServer, collect, user_input
from tests.engine.test_turns import _die_without_cleanup, assistant_items, types_of


@pytest.fixture
async def other_store(database_url: str) -> AsyncIterator[Store]:
    """The same database through another pool: what another process has."""
    store = Store(database_url)
    try:
        yield store
    finally:
        await store.close()


async def test_a_turn_writes_on_after_another_instance_ended_a_queued_run_in_its_log(
    server: ScriptedServer, other_store: Store, settings: Settings, clock: ManualClock
) -> None:
    server.script.deltas = 6
    server.script.pause_after = 3
    ctx = await server.sessions.context("alice", None)
    handle = await server.create_thread_and_start_turn(ctx, user_input("on"))
    await server.script.paused.wait()
    # What a queued run that times out on another instance does (TurnRunner.finish_unstarted):
    # its terminal event takes the next seq, which this turn's writer holds in memory.
    other = EventLog(other_store, LocalBroker(100), clock, settings)
    gave_up = RunCancelledEvent(run_id="run_queuedelsewhere", reason="queue_timeout")
    taken = await other.append(handle.thread_id, gave_up.run_id, gave_up.type, dump_json(gave_up))

    server.script.resume.set()
    events = await asyncio.wait_for(collect(server, handle), 10)

    assert types_of(events)[-1] == "run.completed"
    logged = await server.store.read_events(handle.thread_id, 0, 1000)
    assert [e.seq for e in logged] == list(range(1, len(logged) + 1))
    assert [e.run_id for e in logged if e.seq == taken] == [gave_up.run_id]
    assert [e for e in logged if e.run_id == handle.run_id] == events
    [answer] = await assistant_items(server, handle.thread_id)
    assert answer.status == "completed"
    assert answer.content[0].text == "".join(f"on:{n} " for n in range(6))


async def test_a_turn_whose_run_another_instance_closed_writes_nothing_more(
    server: ScriptedServer, other_store: Store, clock: ManualClock
) -> None:
    server.script.pause_after = 2
    ctx = await server.sessions.context("alice", None)
    handle = await server.create_thread_and_start_turn(ctx, user_input("fenced"))
    await server.script.paused.wait()
    # Another instance took this one for dead and closed its run (TurnRunner.close_orphan).
    closed = RunFailedEvent(run_id=handle.run_id, error_code="run_interrupted")
    await other_store.append_events(
        handle.thread_id,
        [NewEvent(handle.run_id, closed.type, dump_json(closed))],
        run_end=RunEnd(handle.run_id, RunStatus.FAILED, clock.now(), {}),
        created_at=clock.now(),
    )

    server.script.resume.set()
    async with asyncio.timeout(10):
        await collect(server, handle)
        await asyncio.gather(*(local.task for local in server.runs._local.values() if local.task))

    logged = await server.store.read_events(handle.thread_id, 0, 1000)
    assert [e.seq for e in logged] == list(range(1, len(logged) + 1))
    terminals = [e.type for e in logged if e.type.startswith("run.") and e.type != "run.started"]
    assert terminals == ["run.failed"]
    assert logged[-1].type == "run.failed"
    run = await server.store.get_run(handle.run_id)
    assert run is not None and run.status == "failed"


async def _paused_turn(server: ScriptedServer) -> tuple[str, str]:
    server.script.pause_after = 2
    ctx = await server.sessions.context("alice", None)
    handle = await server.create_thread_and_start_turn(ctx, user_input("orphan"))
    await server.script.paused.wait()
    return handle.thread_id, handle.run_id


async def test_a_run_of_an_instance_that_shut_down_is_closed_at_once(
    store: Store, other_store: Store, settings: Settings, clock: ManualClock
) -> None:
    gone = ScriptedServer(store, settings, clock=clock)
    await gone.start()
    thread_id, run_id = await _paused_turn(gone)
    await _die_without_cleanup(gone)
    await gone.instances.close()  # its last act: marked stopped, with a run left open

    survivor = ScriptedServer(other_store, settings, clock=clock)
    await survivor.start()  # start-up recovery; the run's lease has not lapsed
    try:
        await _assert_closed_as_orphan(other_store, thread_id, run_id)
    finally:
        await survivor.close(grace_seconds=1)
        await gone.broker.close()


async def test_a_run_of_an_instance_that_died_is_closed_at_once_on_postgresql(
    postgres_database_url: str, clock: ManualClock
) -> None:
    settings = Settings(database_url=postgres_database_url, commit_window_ms=2)
    first, second = Store(postgres_database_url), Store(postgres_database_url)
    died = ScriptedServer(first, settings, clock=clock)
    survivor = ScriptedServer(second, settings, clock=clock)
    try:
        await died.start()
        await survivor.start()
        thread_id, run_id = await _paused_turn(died)
        await _die_without_cleanup(died)
        # kill -9: the database sees its connections close, its presence lock is free.
        await died.broker.close()
        assert died.instances._presence is not None
        died.instances._presence.cancel()
        await asyncio.gather(died.instances._presence, return_exceptions=True)

        assert await survivor.recover() == 1  # no lease lapsed: the owner is gone
        await _assert_closed_as_orphan(second, thread_id, run_id)
    finally:
        await survivor.close(grace_seconds=1)
        await first.close()
        await second.close()


async def test_runs_of_a_live_instance_are_left_alone_by_the_others(
    server: ScriptedServer, other_store: Store, settings: Settings, clock: ManualClock
) -> None:
    thread_id, run_id = await _paused_turn(server)
    other = ScriptedServer(other_store, settings, clock=clock)
    await other.start()
    try:
        assert await other.recover() == 0
        server.script.resume.set()
        events = await server.store.read_events(thread_id, 0, 1000)
        while not events or events[-1].type != "run.completed":
            await asyncio.sleep(0.01)
            events = await server.store.read_events(thread_id, 0, 1000)
        run = await server.store.get_run(run_id)
        assert run is not None and run.status == "completed" and run.owner == server.instance_id
    finally:
        await other.close(grace_seconds=1)


async def _assert_closed_as_orphan(store: Store, thread_id: str, run_id: str) -> None:
    events = await store.read_events(thread_id, 0, 1000)
    assert types_of(events)[-3:] == ["thread.item.done", "error", "run.failed"]
    assert json.loads(events[-2].data)["error_code"] == "run_interrupted"
    assert {e.run_id for e in events} == {run_id}
    run = await store.get_run(run_id)
    assert run is not None and run.status == "failed"
    thread = await store.get_thread(thread_id)
    assert thread is not None and thread.status == "idle"
