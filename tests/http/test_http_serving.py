"""Served as `chatserver serve` serves: clients that stall cannot hold connections forever.

A body announced and not sent gets 408 within `body_read_timeout_seconds`; a request head not
complete within `header_read_timeout_seconds` (or too large) loses its connection; an idle
keep-alive connection is closed after `keep_alive_seconds`. Streams and honest slow clients
are untouched, and stalled connections never keep others from being served. Raw sockets:
HTTP clients cannot be made to stall on purpose."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from http_harness import (
    LiveServer,
    SseReader,
    add_message,
    create_thread,
    request,
    stream,
    thread_id_of,
)

BOUND = 0.5
# Slack on top of a bound before the test calls it missed: a loaded CI machine is slow.
SLACK = 5.0

STALLED_BODY = (
    b"POST /chatkit HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer tok-alice\r\n"
    b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    b'{"type":'
)
STALLED_HEAD = b"POST /chatkit HTTP/1.1\r\nHost: test\r\nContent-Ty"


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    address = urlsplit(url)
    assert address.hostname is not None and address.port is not None
    return await asyncio.open_connection(address.hostname, address.port)


async def read_until_closed(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything the server sends until it closes the connection; fails if it does not."""
    return await asyncio.wait_for(reader.read(), within)


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


async def served(start_server: Any, **overrides: Any) -> LiveServer:
    settings: dict[str, Any] = {
        "body_read_timeout_seconds": BOUND,
        "header_read_timeout_seconds": BOUND,
    }
    live: LiveServer = await start_server(as_served=True, **(settings | overrides))
    return live


async def test_a_body_announced_and_not_sent_is_408_within_the_bound(start_server: Any) -> None:
    live = await served(start_server, body_read_timeout_seconds=1.0)
    reader, writer = await connect(live.url)
    writer.write(STALLED_BODY)
    started = time.monotonic()

    raw = await read_until_closed(reader, 1.0 + SLACK)

    waited = time.monotonic() - started
    status, headers, body = parse_response(raw)
    assert status == 408
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert waited >= 1.0
    writer.close()


async def test_a_session_body_announced_and_not_sent_is_408_too(start_server: Any) -> None:
    live = await served(start_server)
    reader, writer = await connect(live.url)
    writer.write(
        b"PATCH /sessions/ses_abcdefgh HTTP/1.1\r\nHost: test\r\n"
        b"Authorization: Bearer tok-alice\r\nContent-Length: 50\r\n\r\n{"
    )

    status, _, body = parse_response(await read_until_closed(reader, BOUND + SLACK))

    assert (status, json.loads(body)["error"]["code"]) == (408, "request_timeout")
    writer.close()


@pytest.mark.parametrize(
    "sent",
    [b"", STALLED_HEAD, b"GET /healthz HTTP/1.1\r\nHost: test\r\n"],
    ids=["nothing", "mid-headers", "headers-unfinished"],
)
async def test_a_request_head_not_complete_in_time_loses_its_connection(
    start_server: Any, sent: bytes
) -> None:
    live = await served(start_server)
    reader, writer = await connect(live.url)
    writer.write(sent)

    assert await read_until_closed(reader, BOUND + SLACK) == b""
    writer.close()


async def test_a_head_sent_a_byte_at_a_time_still_has_one_deadline(start_server: Any) -> None:
    # uvicorn's own idle timer restarts on every byte; the head's deadline does not.
    live = await served(start_server)
    reader, writer = await connect(live.url)
    closed = asyncio.ensure_future(reader.read())
    started = time.monotonic()
    for byte in STALLED_HEAD:
        if closed.done():
            break
        writer.write(bytes([byte]))
        await asyncio.sleep(BOUND / 10)

    assert await asyncio.wait_for(closed, BOUND + SLACK) == b""
    assert time.monotonic() - started < len(STALLED_HEAD) * BOUND / 10
    writer.close()


async def test_an_oversized_request_head_is_refused(start_server: Any) -> None:
    live = await served(start_server, header_read_timeout_seconds=30)
    reader, writer = await connect(live.url)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
    for _ in range(40):
        writer.write(b"X-Padding: " + b"x" * 1000 + b"\r\n")

    # Closed with data still unread, the connection may be reset before the 400 is read.
    try:
        answer = await read_until_closed(reader, SLACK)
    except ConnectionResetError:
        answer = b"HTTP/1.1 400 (reset)"
    assert answer.startswith(b"HTTP/1.1 400")
    writer.close()


async def test_an_idle_keep_alive_connection_is_closed(start_server: Any) -> None:
    live = await served(start_server, keep_alive_seconds=1, header_read_timeout_seconds=30)
    reader, writer = await connect(live.url)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")

    raw = await read_until_closed(reader, 1 + SLACK)

    assert parse_response(raw)[0] == 200
    writer.close()


async def test_streams_and_slow_honest_clients_are_not_cut(start_server: Any) -> None:
    live = await served(start_server)
    client = live.client()
    _, events = await stream(client, create_thread("hello"))
    thread_id = thread_id_of(events)

    async with client.stream(
        "GET", f"/threads/{thread_id}/events", params={"after": events[-1].seq}
    ) as listening:
        await asyncio.sleep(BOUND * 3)  # well past the head's deadline
        _, turn = await stream(client, add_message(thread_id, "still streaming"))
        assert await SseReader(listening).until_run_ends() == turn

    # A body that keeps coming within the bound is read whole.
    body = json.dumps(request("threads.list")).encode()
    reader, writer = await connect(live.url)
    writer.write(
        b"POST /chatkit HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer tok-alice\r\n"
        b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    for start in range(0, len(body), 8):
        writer.write(body[start : start + 8])
        await asyncio.sleep(BOUND / 20)
    status, _, answer = parse_response(await read_until_closed(reader, SLACK))
    assert (status, len(json.loads(answer)["data"])) == (200, 1)
    writer.close()


async def test_many_stalled_connections_do_not_keep_others_from_being_served(
    start_server: Any,
) -> None:
    live = await served(start_server, body_read_timeout_seconds=2, header_read_timeout_seconds=2)
    stalled = []
    for n in range(300):
        reader, writer = await connect(live.url)
        writer.write(STALLED_BODY if n % 2 else STALLED_HEAD)
        stalled.append((reader, writer))

    client = live.client()
    answers = await asyncio.wait_for(
        asyncio.gather(*(client.post("/chatkit", json=request("threads.list")) for _ in range(20))),
        SLACK,
    )
    assert {answer.status_code for answer in answers} == {200}

    ends = await asyncio.gather(*(read_until_closed(r, 2 + SLACK) for r, _ in stalled))
    assert sum(1 for end in ends if end == b"") == 150  # heads: dropped
    assert sum(1 for end in ends if end.startswith(b"HTTP/1.1 408")) == 150  # bodies: 408
    for _, writer in stalled:
        writer.close()


# -- the real command ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def chatserver_serve(tmp_path: Path, **env: str) -> Iterator[str]:
    port = _free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CHATSERVER_")}
    url = f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}"
    process = subprocess.Popen(
        [sys.executable, "-m", "chatserver", "serve", "--port", str(port), "--database-url", url],
        env=environment | {"CHATSERVER_LOG_LEVEL": "WARNING"} | env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, "server exited during start-up"
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=15)


@pytest.mark.slow
async def test_chatserver_serve_drops_stalled_heads_and_answers_stalled_bodies_408(
    tmp_path: Path,
) -> None:
    with chatserver_serve(
        tmp_path,
        CHATSERVER_HEADER_READ_TIMEOUT_SECONDS=str(BOUND),
        CHATSERVER_BODY_READ_TIMEOUT_SECONDS=str(BOUND),
        CHATSERVER_BEARER_TOKENS="tok-alice:alice",
    ) as base:
        head_reader, head_writer = await connect(base)
        head_writer.write(STALLED_HEAD)
        body_reader, body_writer = await connect(base)
        body_writer.write(STALLED_BODY)

        dropped = await read_until_closed(head_reader, BOUND + SLACK)
        answered = await read_until_closed(body_reader, BOUND + SLACK)

        assert dropped == b""
        assert parse_response(answered)[0] == 408
        head_writer.close()
        body_writer.close()
