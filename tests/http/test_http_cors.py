"""CORS: browsers on the configured origins may call every endpoint with credentials and read
our headers; other origins get nothing; with no origin configured there is no CORS at all."""

from __future__ import annotations

from typing import Any

import pytest
from http_harness import LiveServer, create_thread, request, stream, thread_id_of

APP = "https://app.example.com"
REQUEST_HEADERS = (
    "authorization, content-type, x-session-id, x-tab-id, idempotency-key, last-event-id"
)


def preflight(method: str, origin: str = APP) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": REQUEST_HEADERS,
    }


async def test_preflights_from_a_configured_origin_are_allowed_on_every_endpoint(
    start_server: Any,
) -> None:
    live: LiveServer = await start_server(cors_origins=f"{APP}, https://other.example.com")
    client = live.client(user=None)
    thread = "thr_01m87zj0xvz3r7gj4dyrhs3x7x"
    session = "ses_01m87zj0xvz3r7gj4dyrhs3x7x"
    routes = [
        ("POST", "/chatkit"),
        ("GET", f"/threads/{thread}/events"),
        ("POST", f"/threads/{thread}/stop"),
        ("POST", "/sessions"),
        ("GET", f"/sessions/{session}"),
        ("PATCH", f"/sessions/{session}"),
        ("DELETE", f"/sessions/{session}"),
    ]

    for method, path in routes:
        answer = await client.options(path, headers=preflight(method))

        assert answer.status_code == 200, (method, path, answer.text)
        assert answer.headers["access-control-allow-origin"] == APP
        assert answer.headers["access-control-allow-credentials"] == "true"
        assert method in answer.headers["access-control-allow-methods"].split(", ")
        allowed = {
            h.strip().lower() for h in answer.headers["access-control-allow-headers"].split(",")
        }
        assert set(REQUEST_HEADERS.split(", ")) <= allowed


async def test_answers_to_a_configured_origin_expose_the_session_and_seq_headers(
    start_server: Any,
) -> None:
    live: LiveServer = await start_server(cors_origins=APP)
    client = live.client(headers={"Origin": APP})
    created, events = await stream(client, create_thread("hi"))
    session = {"X-Session-Id": created.headers["x-session-id"]}

    answer = await client.post(
        "/chatkit",
        json=request("threads.get_by_id", thread_id=thread_id_of(events)),
        headers=session,
    )
    refused = await live.client(user=None, headers={"Origin": APP}).post(
        "/chatkit", json=request("threads.list"), headers={"Authorization": "Basic eDp5"}
    )

    assert answer.headers["access-control-allow-origin"] == APP
    assert answer.headers["access-control-allow-credentials"] == "true"
    exposed = {
        h.strip().lower() for h in answer.headers["access-control-expose-headers"].split(",")
    }
    assert {"x-session-id", "x-event-seq"} <= exposed
    assert {"x-session-id", "x-event-seq"} <= set(answer.headers)
    # Errors too, so the page can read why it was refused.
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == APP


async def test_an_origin_not_configured_gets_no_cors_headers(start_server: Any) -> None:
    live: LiveServer = await start_server(cors_origins=APP)
    client = live.client(user=None)

    refused = await client.options("/chatkit", headers=preflight("POST", "https://evil.example"))
    answer = await client.post(
        "/chatkit", json=request("threads.list"), headers={"Origin": "https://evil.example"}
    )

    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers


async def test_without_configured_origins_there_is_no_cors(live: LiveServer) -> None:
    client = live.client(user=None)

    answer = await client.options("/chatkit", headers=preflight("POST"))

    assert answer.status_code == 405
    assert not any(name.startswith("access-control-") for name in answer.headers)


@pytest.mark.parametrize("cookie", [False, True])
async def test_any_origin_is_allowed_only_without_credentials(
    start_server: Any, cookie: bool
) -> None:
    live: LiveServer = await start_server(cors_origins="*")
    headers = {"Origin": "https://anywhere.example"}
    if cookie:
        headers["Cookie"] = "chatserver_user=x"
    client = live.client(user=None)

    answer = await client.post("/chatkit", json=request("threads.list"), headers=headers)
    pre = await client.options("/chatkit", headers=preflight("POST", "https://anywhere.example"))

    assert answer.status_code == 200
    assert "access-control-allow-credentials" not in answer.headers
    assert "access-control-allow-credentials" not in pre.headers
    assert pre.status_code == 200
