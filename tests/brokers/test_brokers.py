"""Brokers shared by instances: two brokers on one PostgreSQL database (and one Redis) stand
for two processes. What one commits reaches the other's subscribers, complete and in order,
also across a lost link; requests (stop, tab takeover, ended streams) reach the other."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
import pytest

from chatserver.brokers.postgres import PostgresBroker
from chatserver.brokers.redis import RedisBroker
from chatserver.brokers.shared import SharedBroker
from chatserver.clock import SystemClock
from chatserver.config import Settings
from chatserver.errors import ErrorCode, NotFound
from chatserver.events import EventLog
from chatserver.store import Store, StoredEvent
from chatserver.store.models import ThreadRow

T0 = datetime(2026, 1, 1, tzinfo=UTC)
# Bounds on hangs, not speed claims.
WITHIN = 10.0


@dataclass
class Node:
    """One process's share: its own Store (pool), broker and event log."""

    store: Store
    broker: SharedBroker
    log: EventLog


@pytest.fixture(params=["postgresql", "redis"])
async def nodes(
    request: pytest.FixtureRequest, postgres_database_url: str
) -> AsyncIterator[tuple[Node, Node]]:
    channel = f"test_{uuid.uuid4().hex[:12]}"
    made: list[Node] = []
    for _ in range(2):
        store = Store(postgres_database_url)
        instance_id = f"ins_{uuid.uuid4().hex[:16]}"
        broker: SharedBroker
        if request.param == "postgresql":
            broker = PostgresBroker(store, channel, 1000, instance_id)
        else:
            broker = RedisBroker(request.getfixturevalue("redis_url"), channel, 1000, instance_id)
        await broker.start()
        settings = Settings(database_url=postgres_database_url, commit_window_ms=2)
        made.append(Node(store, broker, EventLog(store, broker, SystemClock(), settings)))
    try:
        yield made[0], made[1]
    finally:
        for node in made:
            await node.broker.close()
            await node.store.close()


async def new_thread(store: Store) -> str:
    thread_id = f"thr_{uuid.uuid4().hex[:26]}"
    await store.insert_thread(ThreadRow(id=thread_id, user_id="u", created_at=T0, updated_at=T0))
    return thread_id


async def write(node: Node, thread_id: str, count: int, label: str = "e") -> None:
    writer = await node.log.open_writer(thread_id)
    for n in range(count):
        data = json.dumps({"type": "test.event", "n": f"{label}{n}"})
        await writer.emit(None, "test.event", data)
    await writer.close()


async def follow(node: Node, thread_id: str, after: int, last: int) -> list[StoredEvent]:
    events = node.log.subscribe(thread_id, after, until=lambda e: e.seq == last)
    return [event async for event in events]


async def eventually(check: Callable[[], bool | Awaitable[bool]]) -> None:
    deadline = asyncio.get_running_loop().time() + WITHIN
    while True:
        met = check()
        if not isinstance(met, bool):
            met = await met
        if met:
            return
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.01)


def labels(events: list[StoredEvent]) -> list[str]:
    return [json.loads(e.data)["n"] for e in events]


async def test_events_committed_by_one_instance_reach_a_live_subscriber_of_another(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    thread_id = await new_thread(a.store)
    following = asyncio.create_task(follow(b, thread_id, 0, 200))
    await asyncio.sleep(0.05)  # b is past its replay, waiting live (not required: gapless)

    for round_ in range(4):
        await write(a, thread_id, 50, f"r{round_}-")

    events = await asyncio.wait_for(following, WITHIN)
    assert [e.seq for e in events] == list(range(1, 201))
    assert labels(events) == [f"r{r}-{n}" for r in range(4) for n in range(50)]


async def test_a_subscriber_of_the_writing_instance_gets_each_event_once_in_process(
    nodes: tuple[Node, Node],
) -> None:
    a, _ = nodes
    thread_id = await new_thread(a.store)
    following = asyncio.create_task(follow(a, thread_id, 0, 100))
    await asyncio.sleep(0.05)
    # Without its link to the others, a's own subscribers still get a's events: they are
    # pushed in process, not fetched back through the database or Redis.
    await a.broker.close()

    await write(a, thread_id, 100)

    events = await asyncio.wait_for(following, WITHIN)
    assert [e.seq for e in events] == list(range(1, 101))


async def test_events_whose_notice_was_lost_are_read_once_the_link_is_back(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    thread_id = await new_thread(a.store)
    received: list[StoredEvent] = []

    async def collect() -> None:
        async for event in b.log.subscribe(thread_id, 0, until=lambda e: e.seq == 30):
            received.append(event)

    following = asyncio.create_task(collect())
    await write(a, thread_id, 10)
    await eventually(lambda: len(received) == 10)

    # The notices of the next events are lost: b hears nothing while its link is "down".
    lost: list[str] = []
    b.broker._received = lost.append  # type: ignore[method-assign]
    await write(a, thread_id, 20, "late")
    await eventually(lambda: len(lost) >= 1)
    assert len(received) == 10
    del b.broker._received  # type: ignore[attr-defined]

    await _break_link(b.broker)

    await asyncio.wait_for(following, WITHIN)
    assert [e.seq for e in received] == list(range(1, 31))
    assert labels(received)[10:] == [f"late{n}" for n in range(20)]


async def test_a_stop_request_sent_to_one_instance_reaches_the_other(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    requests: list[tuple[str, str]] = []
    a.broker.on_stop_run(lambda run_id, reason: requests.append((run_id, reason)))

    b.broker.stop_run("run_0123456789", "stopped")

    await eventually(lambda: requests == [("run_0123456789", "stopped")])


async def test_a_tab_takeover_on_one_instance_reaches_the_other(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    takeovers: list[tuple[str, float]] = []
    a.broker.on_supersede_tabs(lambda session_id, at: takeovers.append((session_id, at)))

    b.broker.supersede_tabs("ses_0123456789", 1234.5)

    await eventually(lambda: takeovers == [("ses_0123456789", 1234.5)])


async def test_ending_a_thread_s_streams_ends_them_on_every_instance(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    thread_id = await new_thread(a.store)
    await write(a, thread_id, 3)
    seen: list[int] = []

    async def tail() -> None:
        async for event in a.log.subscribe(thread_id, 0):
            seen.append(event.seq)

    following = asyncio.create_task(tail())
    await eventually(lambda: seen == [1, 2, 3])

    b.broker.end_streams(thread_id, NotFound("thread was deleted", ErrorCode.THREAD_NOT_FOUND))

    with pytest.raises(Exception) as ended:
        await asyncio.wait_for(following, WITHIN)
    assert getattr(ended.value, "code", None) == ErrorCode.THREAD_NOT_FOUND
    assert ended.value.args == ("thread was deleted",)


async def _break_link(broker: SharedBroker) -> None:
    """Cut the broker's listening connection from the server side, as a network failure or
    a server restart would; it reconnects by itself."""
    if isinstance(broker, PostgresBroker):
        url = broker.store.url.replace("postgresql+psycopg://", "postgresql://", 1)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
            cursor = await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (f"chatserver listener {broker.instance_id}",),
            )
            assert [row[0] for row in await cursor.fetchall()] == [True]
        return
    assert isinstance(broker, RedisBroker)
    admin = broker._redis  # its command connections; the subscription has its own
    clients = await admin.client_list(_type="pubsub")
    mine = [c for c in clients if c["name"] == f"chatserver-{broker.instance_id}"]
    assert len(mine) == 1
    await admin.client_kill_filter(_id=mine[0]["id"])
