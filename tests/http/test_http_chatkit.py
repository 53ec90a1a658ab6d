"""POST /chatkit: ChatKit's requests answered in ChatKit's shapes, streams with our ids."""

from __future__ import annotations

import asyncio
import json

import sqlalchemy as sa
from http_harness import (
    LiveServer,
    SseReader,
    add_message,
    chatkit_items_page,
    chatkit_thread,
    chatkit_threads_page,
    create_thread,
    request,
    run_id_of,
    stream,
    thread_id_of,
    validate_event,
)

from chatserver.store import models as tables


async def test_full_exchange_parses_with_chatkit_types(live: LiveServer) -> None:
    client = live.client()

    response, events = await stream(client, create_thread("hello there, echo me"))

    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["x-session-id"].startswith("ses_")
    for event in events:
        validate_event(event)
    seqs = [event.seq for event in events]
    assert seqs == list(range(1, len(events) + 1))
    types = [event.type for event in events]
    assert types[:4] == ["run.started", "thread.created", "thread.item.done", "stream_options"]
    assert types[-2:] == ["thread.updated", "run.completed"]
    thread_id = thread_id_of(events)
    # Forwarded as stored: the same text, byte for byte, under the same seq.
    stored = await live.store.read_events(thread_id, 0, 1000)
    assert [(event.seq, event.data) for event in events] == [(e.seq, e.data) for e in stored]

    items = await client.post("/chatkit", json=request("items.list", thread_id=thread_id))
    page = chatkit_items_page.validate_json(items.content)
    assert [item.type for item in page.data] == ["assistant_message", "user_message"]
    assert page.data[0].content[0].text == "hello there, echo me"

    thread = await client.post("/chatkit", json=request("threads.get_by_id", thread_id=thread_id))
    loaded = chatkit_thread.validate_json(thread.content)
    assert loaded.id == thread_id
    assert [item.type for item in loaded.items.data] == ["user_message", "assistant_message"]

    listed = await client.post("/chatkit", json=request("threads.list"))
    threads = chatkit_threads_page.validate_json(listed.content)
    assert [t.id for t in threads.data] == [thread_id]

    renamed = await client.post(
        "/chatkit", json=request("threads.update", thread_id=thread_id, title="Renamed")
    )
    assert chatkit_thread.validate_json(renamed.content).title == "Renamed"

    deleted = await client.post("/chatkit", json=request("threads.delete", thread_id=thread_id))
    assert (deleted.status_code, deleted.json()) == (200, {})
    gone = await client.post("/chatkit", json=request("threads.get_by_id", thread_id=thread_id))
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "thread_not_found"


async def test_a_turn_creates_a_session_when_absent_and_reuses_the_users_live_one(
    live: LiveServer,
) -> None:
    client = live.client()

    read = await client.post("/chatkit", json=request("threads.list"))
    assert read.status_code == 200 and "x-session-id" not in read.headers
    assert await _session_count(live) == 0  # a read needs no session

    first, _ = await stream(client, create_thread("one"))
    session_id = first.headers["x-session-id"]
    second, _ = await stream(client, create_thread("two"))
    assert second.headers["x-session-id"] == session_id  # named by none, still the same
    assert await _session_count(live) == 1

    named = await client.post(
        "/chatkit", json=request("threads.list"), headers={"X-Session-Id": session_id}
    )
    assert named.headers["x-session-id"] == session_id
    session = (await client.get(f"/sessions/{session_id}")).json()
    assert (session["state"], session["turn_count"]) == ("active", 2)


async def _session_count(live: LiveServer) -> int:
    async with live.store.read() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(tables.sessions)))


async def test_busy_thread_with_reject_policy_is_409_before_any_event(live: LiveServer) -> None:
    client = live.client()
    _, events = await stream(client, create_thread("first"))
    thread_id = thread_id_of(events)
    live.chat.hold.clear()
    async with client.stream("POST", "/chatkit", json=add_message(thread_id, "a b c")) as running:
        await asyncio.wait_for(live.chat.paused.wait(), 5)

        refused = await client.post(
            "/chatkit", json=add_message(thread_id, "second", double_texting="reject")
        )

        assert refused.status_code == 409
        assert refused.headers["content-type"] == "application/json"
        assert refused.json()["error"]["code"] == "thread_busy"
        live.chat.hold.set()
        await SseReader(running).until_run_ends()
    items = await client.post("/chatkit", json=request("items.list", thread_id=thread_id))
    texts = [item["content"][0]["text"] for item in items.json()["data"]]
    assert "second" not in texts


async def test_retry_after_item_answers_again(live: LiveServer) -> None:
    client = live.client()
    _, events = await stream(client, create_thread("say it twice"))
    thread_id = thread_id_of(events)
    user_item = next(e.payload["item"]["id"] for e in events if e.type == "thread.item.done")

    _, retried = await stream(
        client, request("threads.retry_after_item", thread_id=thread_id, item_id=user_item)
    )

    assert retried[-1].type == "run.completed"
    items = (await client.post("/chatkit", json=request("items.list", thread_id=thread_id))).json()
    assert [item["type"] for item in items["data"]] == ["assistant_message", "user_message"]


async def test_retried_post_with_same_idempotency_key_adds_one_message(live: LiveServer) -> None:
    client = live.client()
    _, events = await stream(client, create_thread("start"))
    thread_id = thread_id_of(events)
    body = add_message(thread_id, "only once please")
    key = {"Idempotency-Key": "retry-1"}

    concurrent = await asyncio.gather(stream(client, body, key), stream(client, body, key))
    _, after = await stream(client, body, key)

    streams = [events for _, events in concurrent] + [after]
    assert {run_id_of(events) for events in streams} == {run_id_of(after)}
    assert all(events == after for events in streams)
    items = (await client.post("/chatkit", json=request("items.list", thread_id=thread_id))).json()
    texts = [item["content"][0]["text"] for item in items["data"]]
    assert texts.count("only once please") == 2  # one user message, one answer


async def test_retried_post_with_last_event_id_resumes_after_it(live: LiveServer) -> None:
    client = live.client()
    _, events = await stream(client, create_thread("one two three four"))
    thread_id = thread_id_of(events)
    body = add_message(thread_id, "five six seven")
    key = "resume-1"
    _, whole = await stream(client, body, {"Idempotency-Key": key})

    cut = whole[3]
    _, rest = await stream(client, body, {"Idempotency-Key": key, "Last-Event-ID": cut.id or ""})

    assert rest == whole[4:]


async def test_concurrent_creates_with_one_idempotency_key_make_one_thread(
    live: LiveServer,
) -> None:
    client = live.client()
    key = {"Idempotency-Key": "create-once"}

    answers = await asyncio.gather(*(stream(client, create_thread("once"), key) for _ in range(3)))

    assert {thread_id_of(events) for _, events in answers} == {thread_id_of(answers[0][1])}
    listed = await client.post("/chatkit", json=request("threads.list"))
    assert len(listed.json()["data"]) == 1


async def test_four_concurrent_sends_with_reject_to_an_idle_thread_run_exactly_one(
    live: LiveServer,
) -> None:
    client = live.client()
    _, events = await stream(client, create_thread("first"))
    thread_id = thread_id_of(events)
    live.chat.hold.clear()  # the accepted turn stays running while the others are decided

    async def send(n: int) -> tuple[int, str]:
        async with client.stream(
            "POST", "/chatkit", json=add_message(thread_id, f"m{n}", double_texting="reject")
        ) as response:
            if response.status_code != 200:
                return response.status_code, json.loads(await response.aread())["error"]["code"]
            live.chat.hold.set()
            rest = await SseReader(response).until_run_ends()
            return 200, rest[-1].type

    answers = sorted(await asyncio.gather(*(send(n) for n in range(4))))

    assert answers == [(200, "run.completed")] + [(409, "thread_busy")] * 3
    items = await client.post("/chatkit", json=request("items.list", thread_id=thread_id))
    assert len(items.json()["data"]) == 4  # the first turn and exactly one more


async def test_thread_metadata_never_leaves_the_server(live: LiveServer) -> None:
    client = live.client()
    _, events = await stream(client, create_thread("hello"))
    thread_id = thread_id_of(events)
    await live.store.update_thread(thread_id, {"meta": {"crm_id": "internal-42"}})

    answers = [
        await client.post("/chatkit", json=request("threads.get_by_id", thread_id=thread_id)),
        await client.post("/chatkit", json=request("threads.list")),
        await client.post(
            "/chatkit", json=request("threads.update", thread_id=thread_id, title="Renamed")
        ),
    ]
    _, more = await stream(client, add_message(thread_id, "again"))

    assert all(answer.status_code == 200 for answer in answers)
    assert all("internal-42" not in answer.text for answer in answers)
    assert all("internal-42" not in event.data for event in events + more)
    row = await live.store.get_thread(thread_id)
    assert row is not None and row.meta == {"crm_id": "internal-42"}


async def test_an_idempotency_key_reused_with_a_different_body_is_refused(
    live: LiveServer,
) -> None:
    client = live.client()
    _, events = await stream(client, create_thread("start"))
    thread_id = thread_id_of(events)
    _, other = await stream(client, create_thread("another thread"))
    key = {"Idempotency-Key": "pay-once"}
    await stream(client, add_message(thread_id, "first message"), key)

    reuses = [
        await client.post("/chatkit", json=add_message(thread_id, "second message"), headers=key),
        await client.post(
            "/chatkit", json=add_message(thread_id_of(other), "first message"), headers=key
        ),
        await client.post("/chatkit", json=create_thread("first message"), headers=key),
    ]

    for answer in reuses:
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["code"] == "idempotency_key_reused"
    items = (await client.post("/chatkit", json=request("items.list", thread_id=thread_id))).json()
    texts = [item["content"][0]["text"] for item in items["data"]]
    assert "second message" not in texts and texts.count("first message") == 2
    listed = await client.post("/chatkit", json=request("threads.list"))
    assert len(listed.json()["data"]) == 2  # the refused create made no thread


async def test_reads_and_refused_requests_write_no_session(live: LiveServer) -> None:
    client = live.client()
    anonymous = live.client(user=None)
    for _ in range(50):
        assert (await client.post("/chatkit", json=request("threads.list"))).status_code == 200
    refused = [
        await client.post("/chatkit", json=add_message("thr_01m89c9r72f0dn9p19k1p647b9", "x")),
        await client.post(
            "/chatkit",
            json={"type": "threads.custom_action", "params": {"thread_id": "t", "action": {}}},
        ),
        await client.post("/chatkit", json={"type": "threads.create", "params": {}}),
        await client.get("/threads/thr_01m89c9r72f0dn9p19k1p647b9/events"),
        await anonymous.post("/chatkit", json=add_message("thr_01m89c9r72f0dn9p19k1p647b9", "x")),
    ]
    for _ in range(20):
        await anonymous.post("/chatkit", json=request("threads.list"))

    assert [answer.status_code for answer in refused] == [404, 400, 400, 404, 404]
    assert await _session_count(live) == 0
