"""Background cleanup on a running server: sessions expire and are cleaned per the strategy
with no request touching them, just the clock moving; and a thread's event log, compacted as
turns end, still lets every client resume or reattach."""

from __future__ import annotations

from typing import Any

import pytest
from http_harness import (
    LiveServer,
    SseReader,
    add_message,
    create_thread,
    eventually,
    request,
    stream,
    thread_id_of,
)

from chatserver.reaper import ReapReport
from chatserver.sessions import Session
from chatserver.store.models import SessionRow

MINUTE = 60
HOUR = 60 * MINUTE


class Listened:
    def __init__(self, live: LiveServer) -> None:
        self.expired: list[str] = []
        self.cleaned_up: list[str] = []
        self.passes: list[ReapReport] = []
        sessions = live.chat.sessions
        sessions.on_session_expired.append(self._expired)
        sessions.on_session_cleaned_up.append(self._cleaned_up)
        live.running.app.state.services.reaper.on_pass.append(self.passes.append)

    async def _expired(self, session: Session) -> None:
        self.expired.append(session.id)

    async def _cleaned_up(self, session: Session) -> None:
        self.cleaned_up.append(session.id)

    async def passes_after_now(self, count: int = 2) -> None:
        """Let the reaper make `count` more whole passes."""
        target = len(self.passes) + count
        await eventually(lambda: len(self.passes) >= target)


async def row_of(live: LiveServer, session_id: str) -> SessionRow:
    row = await live.store.get_session("alice", session_id)
    assert row is not None
    return row


@pytest.mark.parametrize("strategy", ["immediate", "deferred", "lazy"])
async def test_a_standard_session_idle_31_minutes_is_expired_and_cleaned_with_no_request(
    start_server: Any, strategy: str
) -> None:
    live: LiveServer = await start_server(
        cleanup_strategy=strategy, cleanup_grace_seconds=HOUR, reaper_interval_seconds=0.02
    )
    heard = Listened(live)
    client = live.client()
    standard = (
        await client.post("/sessions", json={"metadata": {"timeout_policy": "standard"}})
    ).json()["id"]
    lenient = (
        await client.post("/sessions", json={"metadata": {"timeout_policy": "lenient"}})
    ).json()["id"]
    _, events = await stream(client, create_thread("hello"), {"X-Session-Id": standard})
    assert events[-1].type == "run.completed"

    live.clock.advance(29 * MINUTE)
    await heard.passes_after_now()
    assert (await row_of(live, standard)).state == "active"

    live.clock.advance(2 * MINUTE)

    async def ended() -> bool:
        return (await row_of(live, standard)).state != "active"

    await eventually(ended)
    row = await row_of(live, standard)
    if strategy == "immediate":
        assert (row.state, row.meta, row.thread_id) == ("cleaned_up", {}, None)
    else:
        assert (row.state, row.thread_id) == ("expired", thread_id_of(events))
    assert (row.end_reason, row.ended_at) == ("expired", live.clock.now())

    # The grace period of `deferred` passes; `lazy` waits for a request.
    live.clock.advance(HOUR)
    await heard.passes_after_now()
    row = await row_of(live, standard)
    assert row.state == ("expired" if strategy == "lazy" else "cleaned_up")
    if strategy == "lazy":
        refused = await client.post(
            "/chatkit", json=request("threads.list"), headers={"X-Session-Id": standard}
        )
        assert refused.json()["error"]["code"] == "session_expired"
        assert (await row_of(live, standard)).state == "cleaned_up"

    assert heard.expired == [standard]
    assert heard.cleaned_up == [standard]
    assert (await row_of(live, lenient)).state == "created"
    assert (await client.get(f"/sessions/{lenient}")).json()["state"] == "created"


async def test_a_resume_from_a_compacted_cursor_gets_resync_and_the_items_are_whole(
    start_server: Any,
) -> None:
    live: LiveServer = await start_server(event_log_max_per_thread=100)
    client = live.client()
    _, first = await stream(client, create_thread("turn 0 of many"))
    thread_id = thread_id_of(first)
    old_cursor = first[-1].seq
    for n in range(1, 20):
        _, events = await stream(client, add_message(thread_id, f"turn {n} of many"))
    last_seq = events[-1].seq

    async def bounded() -> bool:
        return len(await live.store.read_events(thread_id, 0, 10_000)) <= 100

    await eventually(bounded)
    oldest = await live.store.min_seq(thread_id)
    assert oldest > old_cursor + 1

    async with client.stream(
        "GET", f"/threads/{thread_id}/events", headers={"Last-Event-ID": str(old_cursor)}
    ) as response:
        reader = SseReader(response)
        resync = await anext(reader)
        kept = [await anext(reader) for _ in range(100)]
    assert (resync.type, resync.payload["earliest_seq"], resync.seq) == (
        "resync",
        oldest,
        oldest - 1,
    )
    assert kept[0].seq == oldest and kept[-1].seq == last_seq

    items = (
        await client.post(
            "/chatkit", json=request("items.list", thread_id=thread_id, limit=100, order="asc")
        )
    ).json()
    texts = [item["content"][0]["text"] for item in items["data"]]
    assert texts == [text for n in range(20) for text in [f"turn {n} of many"] * 2]
    assert items["has_more"] is False


async def test_a_client_reattaching_from_the_snapshot_seq_misses_nothing_after_compaction(
    start_server: Any,
) -> None:
    live: LiveServer = await start_server(event_log_max_per_thread=100)
    client = live.client()
    _, first = await stream(client, create_thread("warm up"))
    thread_id = thread_id_of(first)
    for n in range(12):
        await stream(client, add_message(thread_id, f"earlier {n}"))

    # A turn in progress: the snapshot's seq is its start, so following from there shows the
    # answer from its first word.
    live.chat.hold.clear()
    async with client.stream(
        "POST", "/chatkit", json=add_message(thread_id, "one two three four")
    ) as answer:
        await eventually(live.chat.paused.is_set)
        snapshot = await client.post(
            "/chatkit", json=request("threads.get_by_id", thread_id=thread_id)
        )
        seq = int(snapshot.headers["X-Event-Seq"])
        async with client.stream(
            "GET", f"/threads/{thread_id}/events", params={"after": seq}
        ) as follow:
            live.chat.hold.set()
            followed = await SseReader(follow).until_run_ends()
        answered = await SseReader(answer).rest()
    assert followed[0].type != "resync"
    assert [e.seq for e in followed] == [e.seq for e in answered]

    # The next turn's end compacts the deltas of this one: a client that stopped in the
    # middle of them still ends up with the whole answer, and no resync.
    mid_answer = next(e.seq for e in answered if e.type == "thread.item.updated")
    await stream(client, add_message(thread_id, "and then"))

    async def compacted() -> bool:
        events = await live.store.read_events(thread_id, mid_answer - 1, 100)
        return all(e.type != "thread.item.updated" for e in events if e.seq <= answered[-1].seq)

    await eventually(compacted)
    async with client.stream(
        "GET", f"/threads/{thread_id}/events", params={"after": mid_answer}
    ) as resumed:
        rest = await SseReader(resumed).until_run_ends()
    assert "resync" not in [e.type for e in rest]
    done = [e.payload["item"] for e in rest if e.type == "thread.item.done"]
    assert done[-1]["type"] == "assistant_message"
    assert done[-1]["content"][0]["text"] == "one two three four"
    assert rest[-1].seq == answered[-1].seq
