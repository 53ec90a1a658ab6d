"""Two real server processes on two ports, one PostgreSQL database: what a deployment of N
instances behind any load balancer (no sticky sessions) must do. The fan-out cases run with
the PostgreSQL broker (NOTIFY) and with the Redis one."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.http.http_harness import (
    Event,
    SseReader,
    add_message,
    create_thread,
    request,
    run_id_of,
    thread_id_of,
)
from tests.http.instances import Instance, instances, start

pytestmark = pytest.mark.slow

# An answer of this many words takes 0.05 s a word: still running while the test acts.
LONG = " ".join(f"w{n}" for n in range(120))


@pytest.fixture(params=["postgresql", "redis"])
def broker(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The broker settings of the instances; a channel of the test's own either way."""
    channel = {"broker_channel": f"test_{uuid.uuid4().hex[:12]}"}
    if request.param == "redis":
        return channel | {"broker_url": request.getfixturevalue("redis_url")}
    return channel


@pytest.fixture
async def pair(
    postgres_database_url: str, broker: dict[str, Any]
) -> AsyncIterator[tuple[Instance, Instance]]:
    async with instances(postgres_database_url, 2, **broker) as (a, b):
        yield a, b


async def events_of(client: httpx.AsyncClient, thread_id: str, after: int = 0) -> list[Event]:
    """The thread's whole log from `after`, up to the end of its last run."""
    async with client.stream(
        "GET", f"/threads/{thread_id}/events", headers={"Last-Event-ID": str(after)}
    ) as response:
        assert response.status_code == 200
        reader = SseReader(response)
        log: list[Event] = []
        while True:
            log += await reader.until_run_ends()
            if not await _more_after(client, thread_id, log[-1].seq):
                return log


async def _more_after(client: httpx.AsyncClient, thread_id: str, seq: int) -> bool:
    # threads.get_by_id answers the seq its snapshot reflects: the log's end when idle.
    response = await client.post("/chatkit", json=request("threads.get_by_id", thread_id=thread_id))
    return int(response.headers["X-Event-Seq"]) > seq


# -- fan-out and resume ------------------------------------------------------------------------


async def test_a_turn_on_one_instance_streams_live_complete_and_in_order_on_another(
    pair: tuple[Instance, Instance],
) -> None:
    a, b = pair
    async with a.client().stream("POST", "/chatkit", json=create_thread(LONG)) as answer:
        on_a = SseReader(answer)
        first = [await anext(on_a)]
        thread_id = thread_id_of([*first, await anext(on_a)])
        async with b.client().stream(
            "GET", f"/threads/{thread_id}/events", headers={"Last-Event-ID": "0"}
        ) as followed:
            on_b = await SseReader(followed).until_run_ends()
        rest_on_a = await on_a.until_run_ends()

    streamed_on_a = first + [e for e in rest_on_a if e.seq > first[0].seq]
    assert on_b[-1].type == "run.completed"
    assert [(e.seq, e.data) for e in on_b] == [(e.seq, e.data) for e in await _full(a, thread_id)]
    assert [e.seq for e in on_b] == list(range(1, len(on_b) + 1))
    assert len([e for e in on_b if "text_delta" in e.data]) == 120
    assert on_b[-1].data == streamed_on_a[-1].data


async def _full(instance: Instance, thread_id: str) -> list[Event]:
    return await events_of(instance.client(), thread_id)


async def test_a_client_cut_off_on_one_instance_resumes_on_another_and_misses_nothing(
    pair: tuple[Instance, Instance],
) -> None:
    a, b = pair
    async with a.client().stream("POST", "/chatkit", json=create_thread(LONG)) as answer:
        reader = SseReader(answer)
        seen: list[Event] = []
        while len([e for e in seen if "text_delta" in e.data]) < 10:
            seen.append(await anext(reader))
    # The connection is gone mid-answer; the client reconnects wherever the balancer says.
    thread_id, run_id = thread_id_of(seen), run_id_of(seen)
    async with b.client().stream(
        "GET", f"/threads/{thread_id}/events", headers={"Last-Event-ID": seen[-1].id or ""}
    ) as resumed:
        rest = await SseReader(resumed).until_run_ends(run_id)

    whole = seen + rest
    assert [e.seq for e in whole] == list(range(1, len(whole) + 1))
    assert [(e.seq, e.data) for e in whole] == [(e.seq, e.data) for e in await _full(b, thread_id)]
    assert whole[-1].type == "run.completed"
    text = "".join(e.payload["update"]["delta"] for e in whole if "text_delta" in e.data)
    assert text == LONG


async def test_a_tab_taking_its_session_over_on_one_instance_ends_the_tab_on_another(
    pair: tuple[Instance, Instance],
) -> None:
    a, b = pair
    client_a, client_b = a.client(), b.client()
    created = await client_a.post(
        "/sessions", json={"metadata": {"tab_strategy": "active_tab_wins"}}
    )
    session = created.json()["id"]
    tab = {"X-Session-Id": session}
    async with client_a.stream("POST", "/chatkit", json=create_thread("hi"), headers=tab) as r:
        thread_id = thread_id_of(await SseReader(r).until_run_ends())
    url = f"/threads/{thread_id}/events"

    async with client_a.stream("GET", url, headers=tab) as older:
        older_reader = SseReader(older)
        await older_reader.until_run_ends()  # replayed: the tab is open on a
        async with client_b.stream("GET", url, headers=tab) as newer:
            farewell = await asyncio.wait_for(older_reader.rest(), 10)
            assert [(e.id, e.payload) for e in farewell] == [
                (None, {"type": "session.superseded", "session_id": session})
            ]
            assert newer.status_code == 200


# -- stop --------------------------------------------------------------------------------------


async def test_stop_sent_to_one_instance_cancels_the_turn_running_on_another(
    postgres_database_url: str, broker: dict[str, Any], record_property: Any
) -> None:
    # A lease of 10 minutes: the owner would poll for stop requests every 200 s, so only the
    # broker can bring this one in time.
    async with instances(postgres_database_url, 2, run_lease_seconds=600, **broker) as (a, b):
        async with a.client().stream("POST", "/chatkit", json=create_thread(LONG)) as answer:
            reader = SseReader(answer)
            seen: list[Event] = []
            while len([e for e in seen if "text_delta" in e.data]) < 5:
                seen.append(await anext(reader))
            thread_id = thread_id_of(seen)
            sent = time.monotonic()
            stopped = await b.client().post(f"/threads/{thread_id}/stop")
            answered = time.monotonic()
            rest = await reader.until_run_ends()
            ended = time.monotonic()

        assert stopped.status_code == 200 and stopped.json() == {"stopped": True}
        assert rest[-1].type == "run.cancelled" and rest[-1].payload["reason"] == "stopped"
        items = await a.client().post("/chatkit", json=request("items.list", thread_id=thread_id))
        answer_item = next(i for i in items.json()["data"] if i["type"] == "assistant_message")
        assert answer_item["status"] == "incomplete"
        assert len(answer_item["content"][0]["text"].split()) < 120
        # b answers once the run has ended on a: the client can send its next message at once.
        run = (await _runs(postgres_database_url, thread_id))[0]
        assert run["status"] == "cancelled"
        record_property("stop_answered_seconds", round(answered - sent, 3))
        record_property("stop_to_cancelled_seen_on_a_seconds", round(ended - sent, 3))


async def _runs(database_url: str, thread_id: str) -> list[dict[str, Any]]:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT * FROM runs WHERE thread_id = :t ORDER BY created_at"),
                {"t": thread_id},
            )
            return [dict(row._mapping) for row in rows]
    finally:
        engine.dispose()


# -- locks across processes --------------------------------------------------------------------


async def test_fifty_concurrent_create_or_resume_requests_over_two_instances_make_one_session(
    postgres_database_url: str,
) -> None:
    session = f"ses_{uuid.uuid4().hex}"
    async with instances(postgres_database_url, 2) as (a, b):
        clients = [a.client(), b.client()]
        answers = await asyncio.gather(
            *(
                clients[n % 2].post(
                    "/chatkit", json=request("threads.list"), headers={"X-Session-Id": session}
                )
                for n in range(50)
            )
        )
        assert [r.status_code for r in answers] == [200] * 50
        assert {r.headers["X-Session-Id"] for r in answers} == {session}
        got = await clients[1].get(f"/sessions/{session}")
        assert got.status_code == 200 and got.json()["id"] == session
    engine = sa.create_engine(postgres_database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id FROM sessions")).scalars().all()
    finally:
        engine.dispose()
    assert rows == [session]


async def _thread_with_one_turn(instance: Instance) -> str:
    async with instance.client().stream("POST", "/chatkit", json=create_thread("hi")) as r:
        return thread_id_of(await SseReader(r).until_run_ends())


async def _send(
    instance: Instance, thread_id: str, text: str, **metadata: Any
) -> tuple[int, list[Event] | dict[str, Any]]:
    async with instance.client().stream(
        "POST", "/chatkit", json=add_message(thread_id, text, **metadata)
    ) as response:
        if response.status_code != 200:
            return response.status_code, (await response.aread()) and response.json()
        return 200, await SseReader(response).until_run_ends()


async def test_two_turns_sent_to_two_instances_at_once_with_reject_one_is_refused(
    postgres_database_url: str,
) -> None:
    async with instances(postgres_database_url, 2) as (a, b):
        thread_id = await _thread_with_one_turn(a)
        answers = await asyncio.gather(
            _send(a, thread_id, "one two three", double_texting="reject"),
            _send(b, thread_id, "four five six", double_texting="reject"),
        )
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200, 409]
    refused = next(body for status, body in answers if status == 409)
    assert isinstance(refused, dict) and refused["error"]["code"] == "thread_busy"
    streamed = next(body for status, body in answers if status == 200)
    assert isinstance(streamed, list) and streamed[-1].type == "run.completed"


async def test_two_turns_sent_to_two_instances_at_once_with_queue_both_run_one_after_the_other(
    postgres_database_url: str,
) -> None:
    async with instances(postgres_database_url, 2) as (a, b):
        thread_id = await _thread_with_one_turn(a)
        answers = await asyncio.gather(
            _send(a, thread_id, " ".join(f"a{n}" for n in range(20))),
            _send(b, thread_id, " ".join(f"b{n}" for n in range(20))),
        )
        log = await events_of(a.client(), thread_id)

    assert [status for status, _ in answers] == [200, 200]
    runs = [run_id_of(body) for _, body in answers if isinstance(body, list)]
    assert all(body[-1].type == "run.completed" for _, body in answers if isinstance(body, list))
    order = [e.payload.get("run_id") or "" for e in log if e.type.startswith("run.")]
    turns = [run_id for run_id in order if run_id in runs]
    # Never interleaved: each run's events lie between its run.started and its run.completed.
    assert turns in ([runs[0]] * 2 + [runs[1]] * 2, [runs[1]] * 2 + [runs[0]] * 2)
    spans = {run_id: [n for n, e in enumerate(log) if _run_of(e) == run_id] for run_id in runs}
    first, second = sorted(spans.values(), key=min)
    assert max(first) < min(second)
    # In order; the earlier turns' deltas were compacted away once a later turn ended.
    seqs = [e.seq for e in log]
    assert seqs == sorted(set(seqs))


async def test_a_turn_sent_to_one_instance_with_interrupt_stops_the_turn_running_on_another(
    postgres_database_url: str,
) -> None:
    async with instances(postgres_database_url, 2, run_lease_seconds=600) as (a, b):
        async with a.client().stream("POST", "/chatkit", json=create_thread(LONG)) as answer:
            reader = SseReader(answer)
            seen = [await anext(reader), await anext(reader)]
            thread_id = thread_id_of(seen)
            status, interrupting = await _send(b, thread_id, "instead", double_texting="interrupt")
            interrupted = await reader.until_run_ends()
        log = await events_of(a.client(), thread_id)

    assert interrupted[-1].type == "run.cancelled"
    assert interrupted[-1].payload["reason"] == "interrupted"
    assert status == 200 and isinstance(interrupting, list)
    assert interrupting[-1].type == "run.completed"
    # The second turn starts after the first one's end, never beside it.
    ends = [n for n, e in enumerate(log) if e.type == "run.cancelled"]
    starts = [n for n, e in enumerate(log) if e.type == "run.started"]
    assert len(ends) == 1 and len(starts) == 2 and starts[1] > ends[0]
    # In order; the interrupted turn's deltas were compacted away once the next one ended.
    seqs = [e.seq for e in log]
    assert seqs == sorted(set(seqs))


def _run_of(event: Event) -> str | None:
    payload = event.payload
    if "run_id" in payload:
        return str(payload["run_id"])
    return None


async def test_a_queued_run_giving_up_on_one_instance_leaves_the_turn_on_another_running(
    postgres_database_url: str,
) -> None:
    a = await start(postgres_database_url)
    b = await start(postgres_database_url, queue_wait_seconds=0.5)
    try:
        async with a.client().stream("POST", "/chatkit", json=create_thread(LONG)) as answer:
            reader = SseReader(answer)
            seen = [await anext(reader), await anext(reader)]
            thread_id = thread_id_of(seen)
            status, queued = await _send(b, thread_id, "me too")
            rest = await reader.until_run_ends()
        log = await events_of(a.client(), thread_id)
    finally:
        await a.stop()
        await b.stop()

    assert status == 200 and isinstance(queued, list)
    assert [e.type for e in queued] == ["run.cancelled"]
    assert queued[0].payload["reason"] == "queue_timeout"
    assert rest[-1].type == "run.completed"
    assert [e.seq for e in log] == list(range(1, len(log) + 1))
    assert queued[0].seq in [e.seq for e in log]
    text = "".join(e.payload["update"]["delta"] for e in log if "text_delta" in e.data)
    assert text == LONG


# -- a dead instance ---------------------------------------------------------------------------


async def test_kill_9_of_the_instance_running_a_turn_leaves_the_thread_to_the_other(
    postgres_database_url: str,
) -> None:
    # Ten-minute leases: the orphan can only be closed because its owner is seen gone.
    async with instances(postgres_database_url, 2, run_lease_seconds=600) as (a, b):
        seen = await _streamed_until_killed(a)
        thread_id = thread_id_of(seen)
        on_b = b.client()
        async with on_b.stream(
            "GET", f"/threads/{thread_id}/events", headers={"Last-Event-ID": str(seen[-1].seq)}
        ) as followed:
            closing = await asyncio.wait_for(SseReader(followed).until_run_ends(), 30)
        await _assert_recovered(on_b, thread_id, seen, closing)


async def test_kill_9_then_restart_the_restarted_instance_closes_the_orphan_at_start(
    postgres_database_url: str,
) -> None:
    a = await start(postgres_database_url, run_lease_seconds=600)
    try:
        seen = await _streamed_until_killed(a)
    finally:
        await a.stop()
    restarted = await start(postgres_database_url, run_lease_seconds=600)
    try:
        client = restarted.client()
        thread_id = thread_id_of(seen)
        closing = await asyncio.wait_for(events_of(client, thread_id, seen[-1].seq), 30)
        await _assert_recovered(client, thread_id, seen, closing)
    finally:
        await restarted.stop()


async def _streamed_until_killed(instance: Instance) -> list[Event]:
    async with instance.client().stream("POST", "/chatkit", json=create_thread(LONG)) as answer:
        reader = SseReader(answer)
        seen: list[Event] = []
        while len([e for e in seen if "text_delta" in e.data]) < 10:
            seen.append(await anext(reader))
        instance.kill()
    return seen


async def _assert_recovered(
    client: httpx.AsyncClient, thread_id: str, seen: list[Event], closing: list[Event]
) -> None:
    assert [e.type for e in closing[-3:]] == ["thread.item.done", "error", "run.failed"]
    assert closing[-2].payload["error_code"] == "run_interrupted"
    log = await events_of(client, thread_id)
    assert [e.seq for e in log] == list(range(1, len(log) + 1))
    assert [e.data for e in log[: len(seen)]] == [e.data for e in seen]
    streamed = "".join(e.payload["update"]["delta"] for e in seen if "text_delta" in e.data)
    items = await client.post("/chatkit", json=request("items.list", thread_id=thread_id))
    answer = next(i for i in items.json()["data"] if i["type"] == "assistant_message")
    assert answer["status"] == "incomplete"
    assert answer["content"][0]["text"].startswith(streamed)

    async with client.stream("POST", "/chatkit", json=add_message(thread_id, "still there?")) as r:
        assert r.status_code == 200
        assert (await SseReader(r).until_run_ends())[-1].type == "run.completed"


async def test_deleting_a_thread_on_one_instance_stops_its_turn_and_ends_its_streams_on_another(
    postgres_database_url: str,
) -> None:
    async with instances(postgres_database_url, 2, run_lease_seconds=600) as (a, b):
        client_a = a.client()
        async with client_a.stream("POST", "/chatkit", json=create_thread(LONG)) as answer:
            reader = SseReader(answer)
            seen = [await anext(reader), await anext(reader)]
            thread_id = thread_id_of(seen)
            async with client_a.stream(
                "GET", f"/threads/{thread_id}/events", headers={"Last-Event-ID": "0"}
            ) as tab:
                tab_reader = SseReader(tab)
                await anext(tab_reader)  # the tab on a is open
                deleted = await b.client().post(
                    "/chatkit", json=request("threads.delete", thread_id=thread_id)
                )
                assert deleted.status_code == 200 and deleted.json() == {}
                tab_rest = await asyncio.wait_for(tab_reader.rest(), 10)
            answer_rest = await asyncio.wait_for(reader.rest(), 10)

        assert tab_rest[-1].id is None
        assert tab_rest[-1].payload["error_code"] == "thread_not_found"
        assert answer_rest[-1].type == "run.cancelled"
        assert answer_rest[-1].payload["reason"] == "thread_deleted"
        gone = await b.client().post("/chatkit", json=request("items.list", thread_id=thread_id))
        assert gone.status_code == 404
    assert await _runs(postgres_database_url, thread_id) == []
