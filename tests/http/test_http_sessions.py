"""/sessions and the session every ChatKit request runs in: created once, expired by the
clock, never silently re-created; identity from bearer tokens or a signed cookie."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import sqlalchemy as sa
from http_harness import (
    LiveServer,
    SseReader,
    add_message,
    create_thread,
    request,
    stream,
    thread_id_of,
)

from chatserver.store import models

SESSION_FIELDS = {
    "id",
    "state",
    "timeout_policy",
    "timeout_seconds",
    "expires_at",
    "created_at",
    "last_activity_at",
    "resume_count",
    "turn_count",
    "metadata",
    "thread_id",
}


def when(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def test_a_session_is_created_updated_and_closed(live: LiveServer) -> None:
    client = live.client()

    created = await client.post(
        "/sessions", json={"metadata": {"timeout_policy": "lenient", "tab_strategy": "per_tab"}}
    )
    session = created.json()
    assert created.status_code == 201
    assert set(session) == SESSION_FIELDS
    assert created.headers["x-session-id"] == session["id"]
    assert (session["state"], session["timeout_policy"]) == ("created", "lenient")
    assert when(session["expires_at"]) - when(session["created_at"]) == timedelta(hours=4)
    url = f"/sessions/{session['id']}"
    assert (await client.get(url)).json() == session

    live.clock.advance(60)
    patched = await client.patch(url, json={"metadata": {"timeout_policy": "aggressive"}})
    updated = patched.json()
    assert updated["metadata"] == {"timeout_policy": "aggressive", "tab_strategy": "per_tab"}
    assert updated["timeout_seconds"] == 600
    assert when(updated["expires_at"]) == when(updated["last_activity_at"]) + timedelta(minutes=10)
    removed = await client.patch(url, json={"metadata": {"tab_strategy": None}})
    assert removed.json()["metadata"] == {"timeout_policy": "aggressive"}

    closed = await client.delete(url)
    assert closed.json()["state"] == "closed"
    used = await client.post(
        "/chatkit", json=request("threads.list"), headers={"X-Session-Id": session["id"]}
    )
    assert used.status_code == 404
    assert used.json()["error"]["code"] == "session_closed"


async def test_fifty_concurrent_requests_with_one_new_session_id_create_one_session(
    live: LiveServer,
) -> None:
    client = live.client()
    session_id = "ses_browser-tab-0123456789"

    answers = await asyncio.gather(
        *(
            client.post(
                "/chatkit", json=request("threads.list"), headers={"X-Session-Id": session_id}
            )
            for _ in range(50)
        )
    )

    assert {answer.status_code for answer in answers} == {200}
    assert {answer.headers["x-session-id"] for answer in answers} == {session_id}
    assert (await client.get(f"/sessions/{session_id}")).json()["id"] == session_id
    async with live.store.read() as conn:
        rows = (await conn.execute(sa.select(models.sessions.c.id))).scalars().all()
    assert rows == [session_id]


async def test_an_expired_session_is_404_and_a_new_one_continues_the_thread(
    live: LiveServer,
) -> None:
    client = live.client()
    old = (
        await client.post("/sessions", json={"metadata": {"timeout_policy": "aggressive"}})
    ).json()
    _, events = await stream(client, create_thread("before the break"), {"X-Session-Id": old["id"]})
    thread_id = thread_id_of(events)

    live.clock.advance(10 * 60 + 1)
    refused = await client.post(
        "/chatkit",
        json=add_message(thread_id, "after the break"),
        headers={"X-Session-Id": old["id"]},
    )

    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "session_expired"
    assert (await client.get(f"/sessions/{old['id']}")).json()["state"] == "expired"
    new = (await client.post("/sessions", json={})).json()
    _, turn = await stream(
        client, add_message(thread_id, "after the break"), {"X-Session-Id": new["id"]}
    )
    assert turn[-1].type == "run.completed"
    items = (
        await client.post("/chatkit", json=request("items.list", thread_id=thread_id, order="asc"))
    ).json()
    texts = [item["content"][0]["text"] for item in items["data"]]
    assert texts == ["before the break"] * 2 + ["after the break"] * 2
    resumed = (await client.get(f"/sessions/{new['id']}")).json()
    assert (resumed["thread_id"], resumed["turn_count"]) == (thread_id, 1)


async def test_anonymous_users_are_kept_apart_by_a_signed_cookie(live: LiveServer) -> None:
    browser = live.client(user=None)

    created = await browser.post("/sessions", json={})

    cookie = created.headers["set-cookie"]
    assert cookie.startswith("chatserver_user=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    session_url = f"/sessions/{created.json()['id']}"
    again = await browser.get(session_url)
    assert again.status_code == 200
    assert "set-cookie" not in again.headers
    stranger = live.client(user=None)
    assert (await stranger.get(session_url)).status_code == 404
    forger = live.client(user=None, cookies={"chatserver_user": "anon_someone.forged"})
    forged = await forger.get(session_url)
    assert forged.status_code == 404
    assert forged.headers["set-cookie"].startswith("chatserver_user=")


async def test_an_unknown_bearer_token_is_401(live: LiveServer) -> None:
    client = live.client(user=None, headers={"Authorization": "Bearer nobody"})

    answer = await client.post("/chatkit", json=request("threads.list"))

    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "unauthorized"


async def test_a_session_id_bob_took_first_is_free_for_alice_and_neither_sees_the_other(
    live: LiveServer,
) -> None:
    alice, bob = live.client("alice"), live.client("bob")
    chosen = {"X-Session-Id": "ses_alicefuture01"}
    url = "/sessions/ses_alicefuture01"
    squat = await bob.post("/chatkit", json=request("threads.list"), headers=chosen)
    await bob.patch(url, json={"metadata": {"tab_strategy": "active_tab_wins", "who": "bob"}})
    _, bobs = await stream(bob, create_thread("bob here"), chosen)

    _, events = await stream(alice, create_thread("alice here"), chosen)
    thread_id = thread_id_of(events)
    alices_view, bobs_view = (await alice.get(url)).json(), (await bob.get(url)).json()

    assert squat.status_code == 200
    assert (alices_view["metadata"], alices_view["turn_count"], alices_view["thread_id"]) == (
        {},
        1,
        thread_id,
    )
    assert (bobs_view["metadata"], bobs_view["thread_id"]) == (
        {"tab_strategy": "active_tab_wins", "who": "bob"},
        thread_id_of(bobs),
    )
    # Bob's tab taking his session over leaves alice's tab of her session streaming.
    bobs_events = f"/threads/{thread_id_of(bobs)}/events"
    async with alice.stream("GET", f"/threads/{thread_id}/events", headers=chosen) as tab:
        reader = SseReader(tab)
        await reader.until_run_ends()
        async with bob.stream("GET", bobs_events, headers=chosen) as bobs_tab:
            await SseReader(bobs_tab).until_run_ends()
            _, turn = await stream(alice, add_message(thread_id, "still mine"), chosen)
            assert await reader.until_run_ends() == turn
    closed = await bob.delete(url)
    assert closed.json()["state"] == "closed"
    assert (await alice.get(url)).json()["state"] == "active"
