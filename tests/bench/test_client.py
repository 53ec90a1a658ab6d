"""The bench's HTTP client: chunked SSE bodies, and idle keep-alive connections the server
closed (uvicorn does after 5 s), which a client must replace, not write into."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from bench.client import Connection

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


@pytest.fixture
async def closing_server() -> AsyncIterator[int]:
    """Answers one request per connection, then closes it."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    async for port in _serve(handle):
        yield port


@pytest.fixture
async def sse_server() -> AsyncIterator[int]:
    """Streams two events in chunks that split lines, with a heartbeat comment."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for part in (b": ping\r\n\r\nid: 1\r", b"\ndata: {}\r\n\r\nda", b"ta: two\r\n\r\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    async for port in _serve(handle):
        yield port


async def test_a_connection_the_server_closed_while_idle_is_replaced(closing_server: int) -> None:
    connection = Connection("127.0.0.1", closing_server)
    first = await connection.request("GET", "/")
    await asyncio.sleep(0.05)  # the server's close arrives while the connection is idle

    second = await connection.request("GET", "/")
    await connection.close()

    assert (first.status, first.body, second.status, second.body) == (200, b"ok", 200, b"ok")


async def test_a_chunked_event_stream_is_split_into_its_events(sse_server: int) -> None:
    connection = Connection("127.0.0.1", sse_server)

    response = await connection.request("POST", "/chatkit", b"{}")
    await connection.close()

    assert [(e.id, e.data) for e in response.events] == [("1", "{}"), (None, "two")]
    assert response.started <= response.events[0].at <= response.finished
