"""GET /threads/{id}/events and the run streams: resumable, shared by tabs, independent of the
turn they show, and quick to end when the server stops."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import httpx
from http_harness import (
    Event,
    LiveServer,
    SseReader,
    add_message,
    create_thread,
    eventually,
    request,
    run_id_of,
    stream,
    thread_id_of,
    validate_event,
)

EIGHT_WORDS = "one two three four five six seven eight"


async def new_thread(client: httpx.AsyncClient, text: str = "hello") -> tuple[str, list[Event]]:
    _, events = await stream(client, create_thread(text))
    return thread_id_of(events), events


async def new_session(client: httpx.AsyncClient, **metadata: Any) -> str:
    created = await client.post("/sessions", json={"metadata": metadata})
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def open_streams(live: LiveServer) -> int:
    return len(live.running.app.state.services.streams)


async def test_reconnecting_with_last_event_id_continues_the_stream_exactly(
    live: LiveServer,
) -> None:
    live.chat.word_delay = 0.005
    client = live.client()
    thread_id, first = await new_thread(client)
    events_url = f"/threads/{thread_id}/events"
    # A listener that never disconnects: what every interrupted client must end up with.
    async with client.stream("GET", events_url, params={"after": first[-1].seq}) as listening:
        reference = SseReader(listening)
        _, whole = await stream(client, add_message(thread_id, EIGHT_WORDS))
        assert await reference.until_run_ends() == whole
        cut_points = range(1, len(whole))
        assert len(cut_points) >= 15

        for k in cut_points:
            async with client.stream(
                "POST", "/chatkit", json=add_message(thread_id, EIGHT_WORDS)
            ) as r:
                interrupted = await SseReader(r).take(k)
            run_id = run_id_of(interrupted)
            headers = {"Last-Event-ID": interrupted[-1].id or ""}
            async with client.stream("GET", events_url, headers=headers) as resumed:
                rest = await SseReader(resumed).until_run_ends(run_id)

            expected = await reference.until_run_ends(run_id)
            assert interrupted + rest == expected, f"cut after {k} events"
    for event in expected:
        validate_event(event)


async def test_after_query_parameter_is_a_cursor_too(live: LiveServer) -> None:
    client = live.client()
    thread_id, events = await new_thread(client)

    async with client.stream(
        "GET", f"/threads/{thread_id}/events", params={"after": events[4].seq}
    ) as response:
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        replayed = await SseReader(response).until_run_ends()

    assert replayed == events[5:]


async def test_closing_the_stream_does_not_cancel_the_turn(live: LiveServer) -> None:
    client = live.client()
    thread_id, _ = await new_thread(client)
    live.chat.hold.clear()

    async with client.stream("POST", "/chatkit", json=add_message(thread_id, EIGHT_WORDS)) as r:
        started = await SseReader(r).take(2)
        await asyncio.wait_for(live.chat.paused.wait(), 5)
    live.chat.hold.set()

    async with client.stream(
        "GET", f"/threads/{thread_id}/events", params={"after": started[-1].seq}
    ) as resumed:
        rest = await SseReader(resumed).until_run_ends(run_id_of(started))
    assert rest[-1].type == "run.completed"
    items = await client.post(
        "/chatkit", json=request("items.list", thread_id=thread_id, order="desc", limit=1)
    )
    answer = items.json()["data"][0]
    assert answer["status"] == "completed"
    assert answer["content"][0]["text"] == EIGHT_WORDS


async def test_every_stream_of_the_user_sees_every_event_of_each_turn(live: LiveServer) -> None:
    client = live.client()
    thread_id, first = await new_thread(client)
    tab_a, tab_b = await new_session(client), await new_session(client)
    url = f"/threads/{thread_id}/events"
    after = {"after": first[-1].seq}

    async with (
        client.stream("GET", url, params=after, headers={"X-Session-Id": tab_a}) as stream_a,
        client.stream("GET", url, params=after | {"session_id": tab_b}) as stream_b,
    ):
        reader_a, reader_b = SseReader(stream_a), SseReader(stream_b)
        for session in (tab_a, tab_b):
            _, turn = await stream(
                client, add_message(thread_id, f"from {session}"), {"X-Session-Id": session}
            )
            assert await reader_a.until_run_ends() == turn
            assert await reader_b.until_run_ends() == turn
    # The registry of open streams forgets each one as it closes.
    await eventually(lambda: open_streams(live) == 0)


async def test_active_tab_wins_ends_the_older_stream_of_the_session(live: LiveServer) -> None:
    client = live.client()
    thread_id, _ = await new_thread(client)
    session = await new_session(client, tab_strategy="active_tab_wins")
    url = f"/threads/{thread_id}/events"
    tab = {"X-Session-Id": session}

    async with client.stream("GET", url, headers=tab) as older:
        older_reader = SseReader(older)
        await older_reader.until_run_ends()  # replayed: the stream is open
        async with client.stream("GET", url, headers=tab) as newer:
            farewell = await older_reader.rest()
            assert [(e.id, e.payload) for e in farewell] == [
                (None, {"type": "session.superseded", "session_id": session})
            ]
            validate_event(farewell[0])
            newer_reader = SseReader(newer)
            await newer_reader.until_run_ends()
            _, turn = await stream(client, add_message(thread_id, "still here"), tab)
            assert await newer_reader.until_run_ends() == turn


async def test_shared_sessions_keep_every_tab_streaming(live: LiveServer) -> None:
    client = live.client()
    thread_id, _ = await new_thread(client)
    session = await new_session(client)
    url = f"/threads/{thread_id}/events"
    tab = {"X-Session-Id": session}

    async with (
        client.stream("GET", url, headers=tab) as one,
        client.stream("GET", url, headers=tab) as two,
    ):
        readers = [SseReader(one), SseReader(two)]
        for reader in readers:
            await reader.until_run_ends()
        _, turn = await stream(client, add_message(thread_id, "both of you"), tab)
        for reader in readers:
            assert await reader.until_run_ends() == turn


async def test_stop_cancels_the_turn_and_keeps_the_partial_answer(live: LiveServer) -> None:
    client = live.client()
    thread_id, _ = await new_thread(client)
    live.chat.hold.clear()

    async with client.stream("POST", "/chatkit", json=add_message(thread_id, EIGHT_WORDS)) as r:
        reader = SseReader(r)
        await asyncio.wait_for(live.chat.paused.wait(), 5)
        stopped = await client.post(f"/threads/{thread_id}/stop")
        events = await reader.rest()

    assert stopped.json() == {"stopped": True}
    assert events[-1].type == "run.cancelled"
    items = await client.post(
        "/chatkit", json=request("items.list", thread_id=thread_id, order="desc", limit=1)
    )
    assert items.json()["data"][0]["status"] == "incomplete"
    again = await client.post(f"/threads/{thread_id}/stop")
    assert again.json() == {"stopped": False}


async def test_idle_stream_sends_heartbeat_comments(start_server: Any) -> None:
    live = await start_server(heartbeat_seconds=0.05)
    client = live.client()
    thread_id, events = await new_thread(client)

    async with client.stream(
        "GET", f"/threads/{thread_id}/events", params={"after": events[-1].seq}
    ) as response:
        lines = response.aiter_lines()
        first = await asyncio.wait_for(anext(lines), 5)

    assert first.startswith(": ping")


async def test_cursor_older_than_the_log_gets_resync(start_server: Any) -> None:
    live = await start_server(event_log_max_per_thread=100)
    client = live.client()
    thread_id, _ = await new_thread(client, " ".join(f"w{n}" for n in range(120)))

    async def trimmed() -> bool:
        return await live.store.min_seq(thread_id) > 1

    await eventually(trimmed)
    oldest = await live.store.min_seq(thread_id)

    async with client.stream("GET", f"/threads/{thread_id}/events") as response:
        resync, first_kept = await SseReader(response).take(2)

    assert resync.type == "resync"
    assert resync.payload["earliest_seq"] == oldest
    assert (resync.seq, first_kept.seq) == (oldest - 1, oldest)
    validate_event(resync)


async def test_shutdown_with_twenty_open_streams_finishes_quickly(live: LiveServer) -> None:
    client = live.client(limits=httpx.Limits(max_connections=40))
    thread_id, events = await new_thread(client)
    live.chat.hold.clear()
    async with AsyncExitStack() as stack:
        answer = await stack.enter_async_context(
            client.stream("POST", "/chatkit", json=add_message(thread_id, EIGHT_WORDS))
        )
        streams = [answer]
        for n in range(19):
            params = {"after": events[-1].seq}
            headers = {"X-Session-Id": await new_session(client)} if n % 2 else {}
            streams.append(
                await stack.enter_async_context(
                    client.stream(
                        "GET", f"/threads/{thread_id}/events", params=params, headers=headers
                    )
                )
            )
        await asyncio.wait_for(live.chat.paused.wait(), 5)
        await eventually(lambda: open_streams(live) == 20)

        elapsed = await live.running.stop()

        # Every stream ended cleanly (a cut chunked body would raise here).
        endings = [await SseReader(response).rest() for response in streams]
    assert elapsed < 5, f"shutdown took {elapsed:.2f}s"
    assert len(endings) == 20
    run = await live.store.get_run(run_id_of(endings[0]))
    assert run is not None and run.status == "cancelled"


async def test_get_by_id_tells_the_seq_its_snapshot_reflects_so_following_misses_nothing(
    live: LiveServer,
) -> None:
    client = live.client()
    thread_id, first = await new_thread(client, "done already")
    idle = await client.post("/chatkit", json=request("threads.get_by_id", thread_id=thread_id))
    assert int(idle.headers["x-event-seq"]) == first[-1].seq

    # Mid-answer: the items hold the user message and an empty answer in progress, so the
    # snapshot's seq is the run's start and following from it rebuilds the answer once.
    live.chat.hold.clear()
    live.chat.paused.clear()
    async with client.stream("POST", "/chatkit", json=add_message(thread_id, EIGHT_WORDS)) as r:
        run_events = SseReader(r)
        await eventually(live.chat.paused.is_set)
        await eventually(lambda: _committed_deltas(live, thread_id, first[-1].seq), within=5)
        snapshot = await client.post(
            "/chatkit", json=request("threads.get_by_id", thread_id=thread_id)
        )
        seq = int(snapshot.headers["x-event-seq"])
        assert seq == first[-1].seq
        async with client.stream("GET", f"/threads/{thread_id}/events?after={seq}") as follow:
            live.chat.hold.set()
            followed = await SseReader(follow).until_run_ends()
        whole = await run_events.until_run_ends()
    assert followed == whole
    text = "".join(
        e.payload["update"]["delta"]
        for e in followed
        if e.type == "thread.item.updated" and "delta" in e.payload["update"]
    )
    assert text == EIGHT_WORDS


async def _committed_deltas(live: LiveServer, thread_id: str, after: int) -> bool:
    events = await live.store.read_events(thread_id, after, 100)
    return any(e.type == "thread.item.updated" for e in events)


async def test_a_cursor_beyond_the_log_is_a_400_not_a_stream_that_never_ends(
    live: LiveServer,
) -> None:
    client = live.client()
    thread_id, first = await new_thread(client)
    last = first[-1].seq
    beyond = {"Last-Event-ID": str(last + 1)}

    answers = [
        await client.post("/chatkit", json=add_message(thread_id, "x"), headers=beyond),
        await client.post("/chatkit", json=create_thread("x"), headers=beyond),
        await client.post(
            "/chatkit", json=create_thread("x"), headers={**beyond, "Idempotency-Key": "k1"}
        ),
        await client.get(f"/threads/{thread_id}/events", params={"after": last + 1}),
        await client.get(f"/threads/{thread_id}/events", headers={"Last-Event-ID": "99999"}),
    ]

    for answer in answers:
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "invalid_cursor"
    # Nothing was accepted: one thread, its one turn.
    threads = await client.post("/chatkit", json=request("threads.list"))
    assert [t["id"] for t in threads.json()["data"]] == [thread_id]
    assert await live.store.max_seq(thread_id) == last
    # The last event itself is a fine cursor: the stream opens and waits for what comes.
    async with client.stream("GET", f"/threads/{thread_id}/events?after={last}") as follow:
        assert follow.status_code == 200


async def test_deleting_a_thread_ends_every_stream_on_it_with_thread_not_found(
    live: LiveServer,
) -> None:
    client = live.client()
    thread_id, first = await new_thread(client)
    live.chat.hold.clear()
    async with AsyncExitStack() as streams:
        tab = SseReader(
            await streams.enter_async_context(
                client.stream("GET", f"/threads/{thread_id}/events?after={first[-1].seq}")
            )
        )
        running = SseReader(
            await streams.enter_async_context(
                client.stream("POST", "/chatkit", json=add_message(thread_id, "a b c"))
            )
        )
        await eventually(live.chat.paused.is_set)
        queued = SseReader(
            await streams.enter_async_context(
                client.stream("POST", "/chatkit", json=add_message(thread_id, "queued"))
            )
        )

        deleted = await client.post("/chatkit", json=request("threads.delete", thread_id=thread_id))
        assert deleted.status_code == 200

        # The running turn's own stream ends with its run, stopped by the deletion.
        rest = await asyncio.wait_for(running.rest(), timeout=5)
        assert (rest[-1].type, rest[-1].payload["reason"]) == ("run.cancelled", "thread_deleted")
        for reader in (tab, queued):
            # Every other stream ends (rest() returns), and its last word says why.
            rest = await asyncio.wait_for(reader.rest(), timeout=5)
            assert rest, "the stream ended without a word"
            assert rest[-1].id is None
            assert rest[-1].payload["error_code"] == "thread_not_found"
    live.chat.hold.set()
