"""Every refusal is a 4xx JSON error with a stable code, written before anything is stored;
other users' ids are indistinguishable from missing ones; surprises are a bare 500."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from http_harness import (
    LiveServer,
    SseReader,
    add_message,
    create_thread,
    request,
    stream,
    thread_id_of,
    validate_event,
)

from chatserver.errors import ErrorCode
from chatserver.http.errors import STATUS_BY_CODE
from chatserver.ids import IdKind, new_id
from chatserver.store import Store, StoredEvent, models

MAX_BODY = 1024


@dataclass
class Case:
    name: str
    status: int
    code: str
    method: str = "POST"
    path: str = "/chatkit"
    json: Any = None
    content: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


def chatkit(name: str, status: int, code: str, body: Any, **headers: str) -> Case:
    return Case(name, status, code, json=body, headers=headers)


def raw(name: str, status: int, code: str, content: Any, **headers: str) -> Case:
    return Case(name, status, code, content=content, headers=headers)


async def _chunks() -> AsyncIterator[bytes]:
    for _ in range(4):
        yield b" " * (MAX_BODY // 2)


def creating(content: Any) -> dict[str, Any]:
    return {"type": "threads.create", "params": {"input": {"content": content}}}


def bad_inputs(thread_id: str, item_id: str) -> list[Case]:
    create = create_thread("x")
    message = add_message(thread_id, "x")
    events = f"/threads/{thread_id}/events"
    unknown_session = "/sessions/ses_unknown-000000"
    missing_thread = new_id(IdKind.THREAD)
    return [
        *malformed_ids(thread_id, item_id),
        *unstorable_text(thread_id),
        raw("invalid json", 400, "invalid_json", b'{"type": '),
        raw("empty body", 400, "invalid_json", b""),
        chatkit("json array", 400, "invalid_request", []),
        chatkit("unknown type", 400, "invalid_request", {"type": "threads.nope", "params": {}}),
        chatkit("type not a string", 400, "invalid_request", {"type": 5, "params": {}}),
        chatkit("missing params", 400, "invalid_request", {"type": "threads.get_by_id"}),
        chatkit(
            "params not an object",
            400,
            "invalid_request",
            request("threads.list") | {"params": "x"},
        ),
        chatkit("empty content", 400, "invalid_request", creating([])),
        chatkit("content is a string", 400, "invalid_request", creating("hi")),
        chatkit("unknown content part", 400, "invalid_request", creating([{"type": "picture"}])),
        chatkit(
            "text not a string",
            400,
            "invalid_request",
            creating([{"type": "input_text", "text": 5}]),
        ),
        chatkit(
            "limit zero",
            400,
            "invalid_request",
            request("items.list", thread_id=thread_id, limit=0),
        ),
        chatkit("limit not a number", 400, "invalid_request", request("threads.list", limit="ten")),
        chatkit("limit too large", 400, "invalid_request", request("threads.list", limit=10_000)),
        chatkit(
            "unknown order",
            400,
            "invalid_request",
            request("items.list", thread_id=thread_id, order="up"),
        ),
        chatkit(
            "title too long",
            400,
            "invalid_request",
            request("threads.update", thread_id=thread_id, title="x" * 501),
        ),
        chatkit(
            "missing thread",
            404,
            "thread_not_found",
            request("threads.get_by_id", thread_id=missing_thread),
        ),
        chatkit(
            "message to missing thread",
            404,
            "thread_not_found",
            add_message(missing_thread, "x"),
        ),
        chatkit(
            "items of missing thread",
            404,
            "thread_not_found",
            request("items.list", thread_id=missing_thread),
        ),
        chatkit(
            "delete missing thread",
            404,
            "thread_not_found",
            request("threads.delete", thread_id=missing_thread),
        ),
        chatkit(
            "retry after missing item",
            404,
            "item_not_found",
            request("threads.retry_after_item", thread_id=thread_id, item_id=new_id(IdKind.ITEM)),
        ),
        chatkit(
            "custom action",
            400,
            "not_supported",
            request("threads.custom_action", thread_id=thread_id, action={"type": "x"}),
        ),
        chatkit("attachments", 400, "not_supported", request("attachments.create")),
        chatkit("transcription", 400, "not_supported", request("input.transcribe")),
        raw("declared body too large", 413, "payload_too_large", b"{" + b" " * MAX_BODY + b"}"),
        raw("chunked body too large", 413, "payload_too_large", _chunks()),
        chatkit(
            "malformed session id",
            400,
            "invalid_id",
            request("threads.list"),
            **{"X-Session-Id": "nope"},
        ),
        chatkit(
            "long idempotency key",
            400,
            "invalid_request",
            message,
            **{"Idempotency-Key": "k" * 201},
        ),
        chatkit(
            "bad Last-Event-ID on a POST", 400, "invalid_request", create, **{"Last-Event-ID": "x1"}
        ),
        chatkit(
            "unknown bearer token",
            401,
            "unauthorized",
            request("threads.list"),
            Authorization="Bearer x",
        ),
        Case(
            "bad Last-Event-ID",
            400,
            "invalid_request",
            "GET",
            events,
            headers={"Last-Event-ID": "-1"},
        ),
        Case("bad after", 400, "invalid_request", "GET", events, params={"after": "²"}),
        Case(
            "events of missing thread",
            404,
            "thread_not_found",
            "GET",
            f"/threads/{missing_thread}/events",
        ),
        Case(
            "stop missing thread",
            404,
            "thread_not_found",
            "POST",
            f"/threads/{missing_thread}/stop",
        ),
        Case(
            "unknown policy",
            400,
            "unknown_policy",
            path="/sessions",
            json={"metadata": {"timeout_policy": "forever"}},
        ),
        Case(
            "timeout out of bounds",
            400,
            "invalid_request",
            path="/sessions",
            json={"metadata": {"timeout_seconds": 1}},
        ),
        Case(
            "unknown tab strategy",
            400,
            "invalid_request",
            path="/sessions",
            json={"metadata": {"tab_strategy": "all"}},
        ),
        Case(
            "misspelt session field", 400, "invalid_request", path="/sessions", json={"metadta": {}}
        ),
        Case("session body not json", 400, "invalid_json", path="/sessions", content=b"metadata"),
        Case("unknown session", 404, "session_not_found", "GET", unknown_session),
        Case("patch unknown session", 404, "session_not_found", "PATCH", unknown_session, json={}),
        Case("close unknown session", 404, "session_not_found", "DELETE", unknown_session),
        Case("unknown path", 404, "not_found", "GET", "/nowhere"),
    ]


def malformed_ids(thread_id: str, item_id: str) -> list[Case]:
    """One rule for every id a client sends: a malformed one is 400 invalid_id, on both
    backends, NUL included (PostgreSQL failed on it with a 500)."""
    with_nul = f"{thread_id}\x00"
    item_with_nul = f"{item_id}\x00"

    def by_id(name: str, body: Any) -> Case:
        return chatkit(name, 400, "invalid_id", body)

    return [
        by_id("malformed thread id", request("threads.get_by_id", thread_id="thr_missing")),
        by_id("thread id with NUL", request("threads.get_by_id", thread_id=with_nul)),
        by_id("message to a malformed thread", add_message("thr_missing", "x")),
        by_id("message to a thread id with NUL", add_message(with_nul, "x")),
        by_id("items of a thread id with NUL", request("items.list", thread_id=with_nul)),
        by_id("update of a malformed thread", request("threads.update", thread_id="x", title="t")),
        by_id("delete of a thread id with NUL", request("threads.delete", thread_id=with_nul)),
        by_id(
            "retry after a malformed item",
            request("threads.retry_after_item", thread_id=thread_id, item_id="itm_missing"),
        ),
        by_id(
            "retry after an item id with NUL",
            request("threads.retry_after_item", thread_id=thread_id, item_id=item_with_nul),
        ),
        by_id("threads cursor with NUL", request("threads.list", after=with_nul)),
        by_id("threads cursor not a thread id", request("threads.list", after=item_id)),
        by_id(
            "items cursor with NUL",
            request("items.list", thread_id=thread_id, after=item_with_nul),
        ),
        Case("events of a malformed thread", 400, "invalid_id", "GET", "/threads/thr_x/events"),
        Case(
            "events of a thread id with NUL",
            400,
            "invalid_id",
            "GET",
            f"/threads/{thread_id}%00/events",
        ),
        Case("stop of a malformed thread", 400, "invalid_id", "POST", "/threads/thr_x/stop"),
        Case("session id with NUL", 400, "invalid_id", "GET", "/sessions/ses_abcdefgh%00"),
        Case("patch a malformed session", 400, "invalid_id", "PATCH", "/sessions/x", json={}),
        Case("close a malformed session", 400, "invalid_id", "DELETE", "/sessions/ses_"),
    ]


def unstorable_text(thread_id: str) -> list[Case]:
    """PostgreSQL cannot store U+0000 in text or JSONB: refused on both backends alike."""
    session = "/sessions/ses_unknown-000000"
    return [
        chatkit(
            "title with NUL",
            400,
            "invalid_request",
            request("threads.update", thread_id=thread_id, title="a\x00b"),
        ),
        Case(
            "metadata key with NUL",
            400,
            "invalid_request",
            path="/sessions",
            json={"metadata": {"k\x00": 1}},
        ),
        Case(
            "metadata value with NUL",
            400,
            "invalid_request",
            path="/sessions",
            json={"metadata": {"note": {"deep": ["ok", "a\x00"]}}},
        ),
        Case(
            "patched metadata with NUL",
            400,
            "invalid_request",
            "PATCH",
            session,
            json={"metadata": {"note": "\x00"}},
        ),
    ]


def _message(answer: Any) -> Any:
    # Whatever message an error carries; anything else fails the comparison whole.
    return answer.get("error", {}).get("message") if isinstance(answer, dict) else None


async def row_counts(store: Store) -> dict[str, int]:
    tables = models.ALL_TABLES
    async with store.read() as conn:
        return {
            table.name: int(await conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)
            for table in tables
        }


def test_every_error_code_has_a_status() -> None:
    assert set(STATUS_BY_CODE) == set(ErrorCode)


async def test_malformed_requests_are_4xx_json_errors_and_store_nothing(start_server: Any) -> None:
    live: LiveServer = await start_server(max_body_bytes=MAX_BODY)
    client = live.client()
    session = (await client.post("/sessions", json={})).json()["id"]
    _, events = await stream(client, create_thread("keep me"), {"X-Session-Id": session})
    item_id = next(e.payload["item"]["id"] for e in events if e.type == "thread.item.done")
    cases = bad_inputs(thread_id_of(events), item_id)
    assert len(cases) >= 20
    before = await row_counts(live.store)

    failures = []
    for case in cases:
        answer = await client.request(
            case.method,
            case.path,
            json=case.json,
            content=case.content,
            params=case.params,
            headers={"X-Session-Id": session} | case.headers,
        )
        got = (answer.status_code, answer.headers.get("content-type"), answer.json())
        expected = (
            case.status,
            "application/json",
            {"error": {"code": case.code, "message": _message(got[2])}},
        )
        if got != expected:
            failures.append(f"{case.name}: {got}")

    assert failures == []
    assert await row_counts(live.store) == before


async def test_a_session_id_with_nul_in_the_events_query_is_400_and_stores_nothing(
    live: LiveServer,
) -> None:
    client = live.client()
    _, events = await stream(client, create_thread("hi"))
    before = await row_counts(live.store)

    answer = await client.get(
        f"/threads/{thread_id_of(events)}/events", params={"session_id": "ses_abcdefgh\x00"}
    )

    assert (answer.status_code, answer.json()["error"]["code"]) == (400, "invalid_id")
    assert await row_counts(live.store) == before


async def test_another_users_ids_are_404_on_every_endpoint(live: LiveServer) -> None:
    alice, bob = live.client("alice"), live.client("bob")
    alice_session = (await alice.post("/sessions", json={})).json()["id"]
    _, events = await stream(alice, create_thread("mine"), {"X-Session-Id": alice_session})
    thread_id = thread_id_of(events)
    item_id = next(e.payload["item"]["id"] for e in events if e.type == "thread.item.done")
    bob_session = {"X-Session-Id": (await bob.post("/sessions", json={})).json()["id"]}
    thread = {"thread_id": thread_id}

    attempts = [
        # First: using alice's session id below makes bob a session of his own by that id.
        bob.get(f"/sessions/{alice_session}"),
        bob.patch(f"/sessions/{alice_session}", json={"metadata": {}}),
        bob.delete(f"/sessions/{alice_session}"),
        bob.post("/chatkit", json=request("threads.get_by_id", **thread), headers=bob_session),
        bob.post("/chatkit", json=request("items.list", **thread), headers=bob_session),
        bob.post(
            "/chatkit", json=request("threads.update", title="x", **thread), headers=bob_session
        ),
        bob.post("/chatkit", json=request("threads.delete", **thread), headers=bob_session),
        bob.post("/chatkit", json=add_message(thread_id, "hi"), headers=bob_session),
        bob.post(
            "/chatkit",
            json=request("threads.retry_after_item", item_id=item_id, **thread),
            headers=bob_session,
        ),
        bob.get(f"/threads/{thread_id}/events", headers=bob_session),
        bob.get(f"/threads/{thread_id}/events", params={"session_id": alice_session}),
        bob.post(f"/threads/{thread_id}/stop"),
    ]
    for attempt in attempts:
        answer = await attempt
        assert answer.status_code == 404, (answer.request.url, answer.text)
        assert answer.json()["error"]["code"].endswith("not_found")

    # Alice's session id names a session of bob's own for bob, never alice's.
    listed = await bob.post(
        "/chatkit", json=request("threads.list"), headers={"X-Session-Id": alice_session}
    )
    assert (listed.status_code, listed.json()["data"]) == (200, [])
    assert (await bob.get(f"/sessions/{alice_session}")).json()["turn_count"] == 0

    still = await alice.post("/chatkit", json=request("items.list", **thread))
    assert len(still.json()["data"]) == 2
    alices = (await alice.get(f"/sessions/{alice_session}")).json()
    assert (alices["state"], alices["turn_count"], alices["thread_id"]) == ("active", 1, thread_id)


async def test_an_unexpected_error_is_a_bare_500(
    live: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(live.chat, "list_threads", broken)
    client = live.client()

    answer = await client.post("/chatkit", json=request("threads.list"))

    assert answer.status_code == 500
    assert answer.json() == {
        "error": {"code": "internal_error", "message": "internal server error"}
    }


async def test_a_wrong_method_is_a_json_405(live: LiveServer) -> None:
    answer = await live.client().get("/chatkit")

    assert answer.status_code == 405
    assert answer.headers["allow"] == "POST"
    assert answer.json()["error"]["code"] == "invalid_request"


async def test_health_readiness_and_openapi(
    live: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = live.client(user=None)

    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    schema = (await client.get("/openapi.json")).json()
    assert {
        "/sessions",
        "/sessions/{session_id}",
        "/threads/{thread_id}/events",
        "/threads/{thread_id}/stop",
        "/stats",
        "/metrics",
    } <= set(schema["paths"])

    async def unreachable() -> None:
        raise ConnectionRefusedError("database down")

    monkeypatch.setattr(live.store, "ping", unreachable)
    not_ready = await client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["error"]["code"] == "unavailable"


async def test_openapi_describes_the_session_metadata_keys(live: LiveServer) -> None:
    schema = (await live.client(user=None).get("/openapi.json")).json()["components"]["schemas"]

    for body in ("SessionCreate", "SessionPatch"):
        metadata = schema[body]["properties"]["metadata"]
        keys = metadata["properties"]
        assert set(keys) == {"timeout_policy", "timeout_seconds", "tab_strategy"}
        assert keys["timeout_policy"]["enum"] == list(live.settings.policy_seconds())
        assert keys["timeout_seconds"]["type"] == "integer"
        assert keys["tab_strategy"]["enum"] == ["shared", "per_tab", "active_tab_wins"]
        assert all(key["description"] for key in keys.values())
        assert metadata["additionalProperties"] is True


async def test_an_error_inside_a_running_stream_is_an_error_event(live: LiveServer) -> None:
    client = live.client()
    _, events = await stream(client, create_thread("fine"))
    thread_id = thread_id_of(events)

    async def failing(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("model went away")
        yield  # pragma: no cover - makes this an async generator

    live.chat.respond = failing  # type: ignore[method-assign]
    async with client.stream("POST", "/chatkit", json=add_message(thread_id, "boom")) as r:
        assert r.status_code == 200
        turn = await SseReader(r).rest()

    error = next(event for event in turn if event.type == "error")
    assert error.payload["error_code"] == "responder_failed"
    assert turn[-1].type == "run.failed"


async def test_a_stream_whose_source_fails_ends_with_an_error_event(
    live: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = live.client()
    _, events = await stream(client, create_thread("fine"))
    thread_id = thread_id_of(events)
    original = live.chat.subscribe

    async def breaks_after_one(thread: str, after: int) -> AsyncIterator[StoredEvent]:
        async for event in original(thread, after):
            yield event
            raise OSError("database connection lost")

    monkeypatch.setattr(live.chat, "subscribe", breaks_after_one)
    async with client.stream("GET", f"/threads/{thread_id}/events") as response:
        received = await SseReader(response).rest()

    first, failure = received
    assert first.seq == 1
    assert failure.id is None
    assert (failure.type, failure.payload["error_code"]) == ("error", "internal_error")
    validate_event(failure)
