"""Tabs of one browser naming one session (`X-Session-Id`) and each its own tab (`X-Tab-Id`):
what `per_tab` changes compared with `shared`."""

from __future__ import annotations

import httpx
import sqlalchemy as sa
from http_harness import LiveServer, add_message, create_thread, request, stream, thread_id_of

from chatserver.store import models

BROWSER = "ses_browser-0123456789"
MINUTE = 60


def tab(number: int, session: str = BROWSER) -> dict[str, str]:
    return {"X-Session-Id": session, "X-Tab-Id": f"tab_{number:012d}"}


async def make_browser_session(client: httpx.AsyncClient, strategy: str) -> None:
    # The widget's way: its first request makes the session, then it sets the metadata.
    await client.post("/chatkit", json=request("threads.list"), headers=tab(0))
    patched = await client.patch(
        f"/sessions/{BROWSER}",
        json={"metadata": {"tab_strategy": strategy, "timeout_policy": "aggressive"}},
    )
    assert patched.status_code == 200


async def sessions_in_db(live: LiveServer) -> dict[str, tuple[str, int, dict[str, object]]]:
    s = models.sessions
    async with live.store.read() as conn:
        rows = await conn.execute(sa.select(s.c.id, s.c.state, s.c.turn_count, s.c.meta))
        return {row.id: (row.state, row.turn_count, row.meta) for row in rows}


async def run_sessions(live: LiveServer, thread_id: str) -> list[str | None]:
    r = models.runs
    query = sa.select(r.c.session_id).where(r.c.thread_id == thread_id).order_by(r.c.created_at)
    async with live.store.read() as conn:
        return list((await conn.execute(query)).scalars())


async def test_shared_tabs_all_run_in_the_one_session_they_name(live: LiveServer) -> None:
    client = live.client()
    await make_browser_session(client, "shared")

    answer, events = await stream(client, create_thread("from tab one"), tab(1))
    thread_id = thread_id_of(events)
    await stream(client, add_message(thread_id, "from tab two"), tab(2))

    assert answer.headers["x-session-id"] == BROWSER
    assert "x-tab-session-id" not in answer.headers
    assert await run_sessions(live, thread_id) == [BROWSER, BROWSER]
    sessions = await sessions_in_db(live)
    assert list(sessions) == [BROWSER]
    assert sessions[BROWSER][:2] == ("active", 2)


async def test_per_tab_gives_each_tab_its_own_session_under_the_named_one(
    live: LiveServer,
) -> None:
    client = live.client()
    await make_browser_session(client, "per_tab")

    first, events = await stream(client, create_thread("from tab one"), tab(1))
    thread_id = thread_id_of(events)
    second, _ = await stream(client, add_message(thread_id, "from tab two"), tab(2))
    again, _ = await stream(client, add_message(thread_id, "tab one again"), tab(1))

    tab_one = first.headers["x-tab-session-id"]
    tab_two = second.headers["x-tab-session-id"]
    # The client keeps naming its own session; the same tab finds its session again.
    assert first.headers["x-session-id"] == second.headers["x-session-id"] == BROWSER
    assert again.headers["x-tab-session-id"] == tab_one != tab_two
    assert await run_sessions(live, thread_id) == [tab_one, tab_two, tab_one]
    sessions = await sessions_in_db(live)
    assert set(sessions) == {BROWSER, tab_one, tab_two}
    # Turns count per tab; a tab session starts with the named session's metadata.
    assert sessions[tab_one][:2] == ("active", 2)
    assert sessions[tab_two][:2] == ("active", 1)
    assert sessions[BROWSER][1] == 0
    assert sessions[tab_two][2] == {
        "timeout_policy": "aggressive",
        "tab_of": BROWSER,
        "tab_id": "tab_000000000002",
    }
    # Both tabs see the one conversation: threads are the user's.
    items = (
        await client.post(
            "/chatkit", json=request("items.list", thread_id=thread_id), headers=tab(2)
        )
    ).json()
    assert len(items["data"]) == 6
    described = (await client.get(f"/sessions/{tab_one}")).json()
    assert (described["turn_count"], described["metadata"]["tab_id"]) == (2, "tab_000000000001")


async def test_per_tab_an_idle_tab_expires_while_a_busy_tab_lives_on(live: LiveServer) -> None:
    client = live.client()
    await make_browser_session(client, "per_tab")
    _, events = await stream(client, create_thread("hello"), tab(1))
    thread_id = thread_id_of(events)
    await stream(client, add_message(thread_id, "me too"), tab(2))

    # Tab one keeps talking every few minutes; tab two says nothing for ten (aggressive).
    for n in range(4):
        live.clock.advance(3 * MINUTE)
        _, turn = await stream(client, add_message(thread_id, f"still here {n}"), tab(1))
        assert turn[-1].type == "run.completed"

    idle = await client.post("/chatkit", json=request("threads.list"), headers=tab(2))
    busy = await client.post("/chatkit", json=request("threads.list"), headers=tab(1))

    assert (idle.status_code, idle.json()["error"]["code"]) == (404, "session_expired")
    assert busy.status_code == 200


async def test_shared_tabs_keep_one_session_alive_together(live: LiveServer) -> None:
    client = live.client()
    await make_browser_session(client, "shared")
    _, events = await stream(client, create_thread("hello"), tab(1))
    thread_id = thread_id_of(events)

    for n in range(4):
        live.clock.advance(3 * MINUTE)
        await stream(client, add_message(thread_id, f"still here {n}"), tab(1))

    # Tab two has been quiet as long as the idle tab above, and is fine: it is the same session.
    quiet = await client.post("/chatkit", json=request("threads.list"), headers=tab(2))
    assert quiet.status_code == 200


async def test_per_tab_closing_one_tab_leaves_the_others_and_closing_the_named_ends_all(
    live: LiveServer,
) -> None:
    client = live.client()
    await make_browser_session(client, "per_tab")
    answers = [
        await client.post("/chatkit", json=request("threads.list"), headers=tab(n)) for n in (1, 2)
    ]
    tab_one, tab_two = (answer.headers["x-tab-session-id"] for answer in answers)

    assert (await client.delete(f"/sessions/{tab_one}")).json()["state"] == "closed"
    refused = await client.post("/chatkit", json=request("threads.list"), headers=tab(1))
    assert refused.json()["error"]["code"] == "session_closed"
    assert (
        await client.post("/chatkit", json=request("threads.list"), headers=tab(2))
    ).status_code == 200

    await client.delete(f"/sessions/{BROWSER}")
    ended = await client.post("/chatkit", json=request("threads.list"), headers=tab(2))
    assert ended.json()["error"]["code"] == "session_closed"
    assert (await client.get(f"/sessions/{tab_two}")).json()["state"] == "created"


async def test_per_tab_without_a_tab_id_runs_in_the_named_session(live: LiveServer) -> None:
    client = live.client()
    await make_browser_session(client, "per_tab")

    answer, events = await stream(client, create_thread("no tab"), {"X-Session-Id": BROWSER})

    assert "x-tab-session-id" not in answer.headers
    assert await run_sessions(live, thread_id_of(events)) == [BROWSER]


async def test_a_tab_stream_opened_with_query_parameters_runs_in_the_tabs_session(
    live: LiveServer,
) -> None:
    client = live.client()
    await make_browser_session(client, "per_tab")
    _, events = await stream(client, create_thread("hello"), tab(1))
    thread_id = thread_id_of(events)

    # EventSource sets no headers: the session and the tab come as query parameters.
    async with client.stream(
        "GET",
        f"/threads/{thread_id}/events",
        params={"session_id": BROWSER, "tab_id": "tab_000000000003", "after": events[-1].seq},
    ) as response:
        assert response.status_code == 200
        tab_three = response.headers["x-tab-session-id"]
    assert (await client.get(f"/sessions/{tab_three}")).json()["metadata"]["tab_id"] == (
        "tab_000000000003"
    )


async def test_a_malformed_tab_id_is_refused(live: LiveServer) -> None:
    client = live.client()

    answer = await client.post(
        "/chatkit",
        json=request("threads.list"),
        headers={"X-Session-Id": BROWSER, "X-Tab-Id": "tab one; two"},
    )

    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_request"
    assert await sessions_in_db(live) == {}
