"""`/stats` and `/metrics`: only with the admin token, and their numbers are the rows' after a
scripted scenario (sessions of three users, turns, a resume, a close, an expiry and cleanups
by the reaper)."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from http_harness import (
    TOKENS,
    LiveServer,
    SseReader,
    add_message,
    create_thread,
    eventually,
    request,
    stream,
    thread_id_of,
)
from prometheus_client.parser import text_string_to_metric_families

from chatserver.store import models

ADMIN = "admin-secret-token"
MINUTE = 60


def as_admin(live: LiveServer) -> httpx.AsyncClient:
    return live.client(user=None, headers={"Authorization": f"Bearer {ADMIN}"})


@pytest.mark.parametrize("path", ["/stats", "/metrics"])
async def test_without_an_admin_token_configured_the_endpoint_does_not_exist(
    live: LiveServer, path: str
) -> None:
    client = live.client(user=None, headers={"Authorization": f"Bearer {ADMIN}"})

    answer = await client.get(path)
    unknown = await client.get("/no-such-path")

    assert answer.status_code == unknown.status_code == 404
    assert (
        answer.json() == unknown.json() == {"error": {"code": "not_found", "message": "Not Found"}}
    )


@pytest.mark.parametrize("path", ["/stats", "/metrics"])
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", f"Bearer {TOKENS['alice']}", f"Basic {ADMIN}", "Bearer"],
)
async def test_the_admin_endpoints_need_the_admin_token(
    start_server: Any, path: str, authorization: str | None
) -> None:
    live: LiveServer = await start_server(admin_token=ADMIN)
    headers = {} if authorization is None else {"Authorization": authorization}
    client = live.client(user=None, headers=headers)

    refused = await client.get(path)

    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthorized"
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert (await as_admin(live).get(path)).status_code == 200


@pytest.mark.parametrize("query", ["hours=0", "hours=745", "hours=x", "top=0", "top=-1"])
async def test_stats_refuses_a_bad_window_or_top(start_server: Any, query: str) -> None:
    live: LiveServer = await start_server(admin_token=ADMIN)

    answer = await as_admin(live).get(f"/stats?{query}")

    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_request"


@dataclass
class Scenario:
    sent: collections.Counter[tuple[str, str, str]]
    alice: list[str]
    bob: str
    carol: str


async def play(live: LiveServer) -> Scenario:
    """Three users; every request counted by (route, method, status)."""
    sent: collections.Counter[tuple[str, str, str]] = collections.Counter()

    async def call(client: httpx.AsyncClient, method: str, url: str, route: str, **kw: Any) -> Any:
        answer = await client.request(method, url, **kw)
        sent[(route, method, str(answer.status_code))] += 1
        return answer

    async def new_session(client: httpx.AsyncClient, policy: str) -> str:
        created = await call(
            client,
            "POST",
            "/sessions",
            "/sessions",
            json={"metadata": {"timeout_policy": policy}},
        )
        return str(created.json()["id"])

    async def turn(client: httpx.AsyncClient, body: dict[str, Any], session: str) -> str:
        _, events = await stream(client, body, {"X-Session-Id": session})
        sent[("/chatkit", "POST", "200")] += 1
        assert events[-1].type == "run.completed"
        return str(events[0].payload["run_id"])

    # Carol is an anonymous browser: her identity is the signed cookie she is given.
    alice, bob, carol = live.client("alice"), live.client("bob"), live.client(None)
    alice_sessions = [await new_session(alice, "standard") for _ in range(3)]
    bob_session = await new_session(bob, "lenient")
    carol_session = await new_session(carol, "aggressive")

    _, first = await stream(alice, create_thread("first"), {"X-Session-Id": alice_sessions[0]})
    sent[("/chatkit", "POST", "200")] += 1
    thread = thread_id_of(first)
    await turn(alice, add_message(thread, "second"), alice_sessions[0])
    await turn(alice, create_thread("elsewhere"), alice_sessions[1])
    await turn(bob, create_thread("bob here"), bob_session)

    live.clock.advance(2 * MINUTE)
    # A request after more than the resume gap: alice's first session is resumed.
    await call(
        alice,
        "POST",
        "/chatkit",
        "/chatkit",
        json=request("threads.list"),
        headers={"X-Session-Id": alice_sessions[0]},
    )
    await call(alice, "DELETE", f"/sessions/{alice_sessions[2]}", "/sessions/{session_id}")
    await call(alice, "GET", f"/sessions/{alice_sessions[0]}", "/sessions/{session_id}")
    await call(alice, "GET", "/sessions/ses_nobody-at-all", "/sessions/{session_id}")
    live.clock.advance(11 * MINUTE)
    return Scenario(sent, alice_sessions, bob_session, carol_session)


async def session_rows(live: LiveServer) -> list[Any]:
    async with live.store.read() as conn:
        return list(await conn.execute(sa.select(models.sessions)))


async def test_stats_and_metrics_report_what_the_rows_say_after_a_scripted_scenario(
    start_server: Any,
) -> None:
    live: LiveServer = await start_server(
        admin_token=ADMIN,
        cleanup_strategy="deferred",
        cleanup_grace_seconds=0,
        reaper_interval_seconds=0.02,
    )
    scenario = await play(live)

    # The reaper expires carol's aggressive session and makes tombstones of it and of the
    # session alice closed (no grace), with no request.
    async def reaped() -> bool:
        rows = {row.id: row for row in await session_rows(live)}
        return [rows[scenario.carol].state, rows[scenario.alice[2]].state] == ["cleaned_up"] * 2

    await eventually(reaped)
    rows = await session_rows(live)
    stats = (await as_admin(live).get("/stats", params={"hours": 3, "top": 2})).json()

    by_state = collections.Counter(row.state for row in rows)
    assert (
        stats["sessions"]["by_state"]
        == {
            state: by_state[state]
            for state in ("created", "active", "resumed", "expired", "closed", "cleaned_up")
        }
        == {"created": 0, "active": 2, "resumed": 1, "expired": 0, "closed": 0, "cleaned_up": 2}
    )
    assert stats["sessions"]["by_policy"] == {
        "aggressive": 1,
        "standard": 3,
        "lenient": 1,
        "persistent": 0,
        "custom": 0,
    }
    now = live.clock.now()
    assert stats["sessions"]["total"] == len(rows) == 5
    assert (
        stats["sessions"]["active_now"]
        == 3
        == sum(
            row.state in ("created", "active", "resumed") and row.expires_at > now for row in rows
        )
    )
    assert stats["sessions"]["resumes"] == sum(row.resume_count for row in rows) == 1
    assert stats["sessions"]["turns"] == sum(row.turn_count for row in rows) == 4
    # Ended in the window: alice's closed session (2 minutes from start to close) and carol's
    # (never active after it was made: 0 s). Nearest-rank percentiles.
    assert stats["sessions"]["duration_seconds"] == {
        "ended_in_window": 2,
        "average": 60.0,
        "p50": 0.0,
        "p95": 120.0,
    }
    anonymous = next(row.user_id for row in rows if row.id == scenario.carol)
    assert anonymous.startswith("anon_")
    # Ties (one session each) go by user id: "anon_..." before "bob".
    assert stats["top_users"] == [
        {"user_id": "alice", "sessions": 3, "turns": 3, "resumes": 1},
        {"user_id": anonymous, "sessions": 1, "turns": 0, "resumes": 0},
    ]
    start = datetime.fromisoformat(stats["window"]["start"])
    assert datetime.fromisoformat(stats["hourly"][0]["hour"]) == start
    assert [(h["expired"], h["closed"], h["cleaned_up"]) for h in stats["hourly"]] == [
        (0, 0, 0),
        (0, 0, 0),
        (1, 1, 2),
    ]

    metrics = await scrape(live)
    assert metrics.value("chatserver_sessions", state="cleaned_up") == 2
    assert metrics.value("chatserver_sessions", state="active") == 2
    assert metrics.value("chatserver_sessions", state="resumed") == 1
    assert metrics.value("chatserver_sessions_active") == 3
    assert metrics.value("chatserver_reaper_rows_total", action="expired") == 1
    assert metrics.value("chatserver_reaper_rows_total", action="cleaned_up") == 2
    assert metrics.value("chatserver_reaper_rows_total", action="thread_deleted") == 0
    assert metrics.value("chatserver_reaper_runs_total", result="reaped") >= 1
    assert metrics.value("chatserver_turns_running") == 0
    assert metrics.value("chatserver_streams_open") == 0
    assert metrics.value("chatserver_events_appended_total") == await appended_events(live)
    # Every request the scenario sent, and the admin's /stats, by route template.
    expected = scenario.sent + collections.Counter({("/stats", "GET", "200"): 1})
    assert metrics.requests() == dict(expected)
    by_route = collections.Counter()
    for (route, method, _), count in expected.items():
        by_route[(route, method)] += count
    for (route, method), count in by_route.items():
        assert (
            metrics.value(
                "chatserver_http_request_duration_seconds_count", route=route, method=method
            )
            == count
        )


async def appended_events(live: LiveServer) -> int:
    """Seqs are dense per thread, so the last seq of each thread counts what it appended,
    compaction or not."""
    e = models.events
    per_thread = sa.select(sa.func.max(e.c.seq).label("last")).group_by(e.c.thread_id).subquery()
    async with live.store.read() as conn:
        return int(await conn.scalar(sa.select(sa.func.sum(per_thread.c.last))) or 0)


async def test_metrics_show_the_streams_and_turns_open_now(start_server: Any) -> None:
    live: LiveServer = await start_server(admin_token=ADMIN)
    client = live.client()
    _, events = await stream(client, create_thread("hello"))
    thread_id = thread_id_of(events)
    live.chat.hold.clear()

    async with (
        client.stream("GET", f"/threads/{thread_id}/events", params={"after": events[-1].seq}),
        client.stream("POST", "/chatkit", json=add_message(thread_id, "a b c")) as answer,
    ):
        await eventually(live.chat.paused.is_set)
        during = await scrape(live)
        live.chat.hold.set()
        await SseReader(answer).rest()

    assert during.value("chatserver_streams_open") == 2
    assert during.value("chatserver_turns_running") == 1

    # Both go back to zero: the streams once closed, the turn once it wrapped up.
    async def all_over() -> bool:
        after = await scrape(live)
        return (
            after.value("chatserver_streams_open"),
            after.value("chatserver_turns_running"),
        ) == (0, 0)

    await eventually(all_over)


class Scraped:
    def __init__(self, text: str) -> None:
        self.samples = [
            sample for family in text_string_to_metric_families(text) for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        found = [s.value for s in self.samples if s.name == name and s.labels == labels]
        assert len(found) == 1, (name, labels, found)
        return found[0]

    def requests(self) -> dict[tuple[str, str, str], int]:
        return {
            (s.labels["route"], s.labels["method"], s.labels["status"]): int(s.value)
            for s in self.samples
            if s.name == "chatserver_http_requests_total"
        }


async def scrape(live: LiveServer) -> Scraped:
    answer = await as_admin(live).get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return Scraped(answer.text)
