"""A lean HTTP/1.1 client for the load: keep-alive, chunked bodies, SSE framing.

The load runs on the same two cores as the servers it measures, so the client does as little
as it can while a turn streams: it splits the body into SSE events and stamps each one with
its arrival time, and nothing else. Decoding and checking happen after the timed window
(`bench.transcript`). httpx costs several times more CPU per event, which would cap the
fastest servers at the client's speed rather than theirs.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any


class HttpError(Exception):
    """The server answered, but not with what the client asked for."""


@dataclass(slots=True)
class SseEvent:
    data: str
    id: str | None
    # perf_counter() when the chunk holding the event's end arrived.
    at: float


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    events: list[SseEvent] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """One keep-alive connection; requests on it run one after another."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host = host
        self.port = port
        self.headers = dict(headers or {})
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Send one request; a `text/event-stream` answer is read to its end as events."""
        if self._reader is not None and self._reader.at_eof():
            # The server closed the idle keep-alive connection (uvicorn does after 5 s):
            # as any HTTP client, open a new one rather than write into a closed one.
            await self.close()
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._reader, self._writer
        assert reader is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in {**self.headers, **(headers or {})}.items()]
        if body or method == "POST":
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        started = time.perf_counter()
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        try:
            response = await self._read_response(reader, started)
        except BaseException:
            # Whatever is left of this answer would be read as the next one's start.
            await self.close()
            raise
        if response.headers.get("connection", "").lower() == "close":
            await self.close()
        return response

    async def _read_response(self, reader: asyncio.StreamReader, started: float) -> Response:
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(status_line.split(" ", 2)[1])
        except (IndexError, ValueError):
            raise HttpError(f"not an HTTP response: {status_line!r}") from None
        headers: dict[str, str] = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        response = Response(status, headers, started=started)
        chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        if headers.get("content-type", "").startswith("text/event-stream") and status == 200:
            events = _SseParser(response.events)
            async for chunk in _body_chunks(reader, headers, chunked):
                events.feed(chunk, time.perf_counter())
            events.end(time.perf_counter())
        else:
            response.body = b"".join([c async for c in _body_chunks(reader, headers, chunked)])
        response.finished = time.perf_counter()
        return response


async def _body_chunks(reader: asyncio.StreamReader, headers: dict[str, str], chunked: bool) -> Any:
    if not chunked:
        length = int(headers.get("content-length", "0"))
        if length:
            yield await reader.readexactly(length)
        return
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            # Trailers (none expected), then the blank line that ends the body.
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return
        chunk = await reader.readexactly(size + 2)
        yield chunk[:-2]


class _SseParser:
    """Splits a byte stream into events at blank lines; `\\r\\n` and `\\n` line ends alike
    (sse-starlette writes `\\r\\n`, ChatKit's server `\\n`). Comments (heartbeats) are skipped."""

    def __init__(self, out: list[SseEvent]) -> None:
        self._out = out
        self._pending = b""

    def feed(self, chunk: bytes, at: float) -> None:
        buffer = self._pending + chunk
        # A `\r` at the end may be the first half of a `\r\n` split across chunks.
        keep = 1 if buffer.endswith(b"\r") else 0
        text = buffer[: len(buffer) - keep] if keep else buffer
        text = text.replace(b"\r\n", b"\n")
        *blocks, rest = text.split(b"\n\n")
        self._pending = rest + (buffer[-1:] if keep else b"")
        for block in blocks:
            self._block(block, at)

    def end(self, at: float) -> None:
        if self._pending.strip():
            self._block(self._pending.replace(b"\r\n", b"\n").rstrip(b"\n"), at)
        self._pending = b""

    def _block(self, block: bytes, at: float) -> None:
        data: list[str] = []
        event_id: str | None = None
        for raw in block.decode().split("\n"):
            if not raw or raw.startswith(":"):
                continue
            name, _, value = raw.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if name == "data":
                data.append(value)
            elif name == "id":
                event_id = value
        if data:
            self._out.append(SseEvent("\n".join(data), event_id, at))
