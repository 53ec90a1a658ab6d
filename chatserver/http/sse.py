"""SSE streams: engine events forwarded exactly as stored, each with `id: <seq>`.

A stream ends when its source ends (a run's last event), when the client leaves, when a newer
tab takes its session over (`active_tab_wins`), or when the server shuts down. The last two
end it from outside, so the events pass through a small bounded queue that a signal can
overtake: the stream then sends its farewell (if any) and closes cleanly, never cut mid-chunk.

Shutdown: uvicorn waits for open connections before it runs the lifespan shutdown, so the
lifespan alone cannot end the streams. sse-starlette notices uvicorn stopping (its patched
signal handler, or uvicorn's `should_exit` found through the installed SIGTERM handler) and
sets each response's `shutdown_event`; the first stream to see it ends every stream of the app
at once. Where uvicorn does not own the signals (a supervisor that stops it another way), call
`app.state.services.streams.close_all()` first, or uvicorn waits for the streams until its
`timeout_graceful_shutdown`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import suppress
from typing import NamedTuple

import anyio
from pydantic import BaseModel
from sse_starlette import EventSourceResponse

from chatserver.errors import BadRequest, ChatServerError, ErrorCode
from chatserver.events import Broker
from chatserver.store import StoredEvent
from chatserver.types import ErrorEvent, SessionSupersededEvent, dump_json

logger = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# Per-connection buffer: a slow client holds back its own stream only; the engine's
# subscription behind it is bounded too and re-reads from the store when it overflows.
_QUEUE_SIZE = 64
# How long sse-starlette lets a stream end by itself on shutdown before it cancels it.
_SHUTDOWN_GRACE_SECONDS = 2.0
# A client that accepts nothing for this long is dropped; it resumes from its cursor.
_SEND_TIMEOUT_SECONDS = 30.0
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def encode_event(event: StoredEvent) -> bytes:
    """The stored JSON text goes into `data:` untouched: no decode, no re-encode."""
    data = event.data
    if "\n" in data or "\r" in data:
        # Compact JSON has no raw line breaks; should one appear, keep the framing intact.
        data = "\r\ndata: ".join(_LINE_BREAK.split(data))
    return f"id: {event.seq}\r\ndata: {data}\r\n\r\n".encode()


def encode_unnumbered(event: BaseModel) -> bytes:
    """An event that is not in the thread's log (no `id:`, so the client's cursor stays)."""
    return f"data: {dump_json(event)}\r\n\r\n".encode()


def parse_cursor(value: str | None, name: str) -> int | None:
    """An SSE cursor (`Last-Event-ID`, `?after=`): a seq, so a non-negative integer."""
    if value is None or value == "":
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise BadRequest(f"{name} must be a non-negative integer event id")
    return int(value)


class OpenStream:
    def __init__(
        self,
        registry: StreamRegistry,
        source: AsyncIterator[StoredEvent],
        *,
        session: SessionKey | None,
        is_tab: bool,
        takes_over: bool,
    ) -> None:
        self.session = session
        # A tab's long-lived stream, which a newer tab of its session may supersede; a run's
        # answer to a POST is not a tab and is never superseded.
        self.is_tab = is_tab
        self.takes_over = takes_over
        # Wall-clock time, comparable across instances: the newest tab of a session wins.
        self.opened_at = time.time()
        self.shutdown = anyio.Event()
        self._registry = registry
        self._source = source
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(_QUEUE_SIZE)
        self._ended = False
        self._farewell: bytes | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def end(self, farewell: bytes | None = None) -> None:
        """Stop forwarding; send `farewell` (if any) and close."""
        if self._ended:
            return
        self._ended = True
        self._farewell = farewell
        for task in self._tasks:
            task.cancel()
        # Wakes a waiting body(); a full queue means body() is not waiting and sees the flag.
        with suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    async def body(self) -> AsyncIterator[bytes]:
        # Registered only once the response runs, so a stream that never started cannot leak.
        self._registry.add(self)
        try:
            if self._ended:
                return
            self._tasks = [
                asyncio.create_task(self._pump(), name="sse-pump"),
                asyncio.create_task(self._watch_shutdown(), name="sse-shutdown-watch"),
            ]
            while True:
                chunk = await self._queue.get()
                if self._ended:
                    if self._farewell is not None:
                        yield self._farewell
                    return
                if chunk is None:
                    return
                yield chunk
        finally:
            # No await here: under a cancelled scope it would be cancelled again. The pump's
            # own cleanup closes the engine subscription.
            self._registry.discard(self)
            for task in self._tasks:
                task.cancel()

    async def _pump(self) -> None:
        source = self._source
        try:
            async for event in source:
                await self._queue.put(encode_event(event))
        except ChatServerError as exc:
            # The source ended for a reason the client must hear (a deleted thread).
            ending = ErrorEvent(code="custom", message=exc.message, error_code=exc.code.value)
            await self._queue.put(encode_unnumbered(ending))
        except Exception:
            logger.exception("event stream failed")
            failure = ErrorEvent(
                code="stream.error",
                message="The event stream broke; reconnect with Last-Event-ID.",
                allow_retry=True,
                error_code=ErrorCode.INTERNAL.value,
            )
            await self._queue.put(encode_unnumbered(failure))
        finally:
            close = getattr(source, "aclose", None)
            if close is not None:
                await close()
        await self._queue.put(None)

    async def _watch_shutdown(self) -> None:
        await self.shutdown.wait()
        self._registry.close_all()


class SessionKey(NamedTuple):
    """Session ids are unique per user only: two users' sessions may share an id."""

    user_id: str
    session_id: str

    @property
    def wire(self) -> str:
        """The key as one string for the broker (a session id never holds a "/")."""
        return f"{self.session_id}/{self.user_id}"

    @classmethod
    def from_wire(cls, wire: str) -> SessionKey:
        session_id, _, user_id = wire.partition("/")
        return cls(user_id, session_id)


class StreamRegistry:
    """The app's open streams, by session: bounded by what is open, entries leave on close.
    A tab that takes its session over (`active_tab_wins`) supersedes the session's older tab
    streams on every instance, through the broker."""

    def __init__(self, broker: Broker) -> None:
        self.closing = False
        self._open: dict[OpenStream, None] = {}
        self._by_session: dict[SessionKey, dict[OpenStream, None]] = {}
        self._broker = broker
        self._unregister = broker.on_supersede_tabs(self._supersede)

    def open(
        self,
        source: AsyncIterator[StoredEvent],
        *,
        session: SessionKey | None,
        is_tab: bool = False,
        takes_over: bool = False,
    ) -> OpenStream:
        return OpenStream(self, source, session=session, is_tab=is_tab, takes_over=takes_over)

    def add(self, stream: OpenStream) -> None:
        if self.closing:
            stream.end()
            return
        self._open[stream] = None
        if stream.session is not None:
            self._by_session.setdefault(stream.session, {})[stream] = None
            if stream.takes_over:
                self._broker.supersede_tabs(stream.session.wire, stream.opened_at)

    def _supersede(self, session: str, opened_at: float) -> None:
        key = SessionKey.from_wire(session)
        farewell = encode_unnumbered(SessionSupersededEvent(session_id=key.session_id))
        for older in list(self._by_session.get(key, ())):
            if older.is_tab and older.opened_at < opened_at:
                older.end(farewell)

    def discard(self, stream: OpenStream) -> None:
        self._open.pop(stream, None)
        if stream.session is None:
            return
        streams = self._by_session.get(stream.session)
        if streams is not None:
            streams.pop(stream, None)
            if not streams:
                del self._by_session[stream.session]

    def close_all(self) -> None:
        """Shutdown: end every open stream now and refuse new ones."""
        if not self.closing:
            self.closing = True
            self._unregister()
        for stream in list(self._open):
            stream.end()

    def __len__(self) -> int:
        return len(self._open)


def sse_response(stream: OpenStream, heartbeat_seconds: float) -> EventSourceResponse:
    return EventSourceResponse(
        stream.body(),
        headers=SSE_HEADERS,
        ping=heartbeat_seconds,
        send_timeout=_SEND_TIMEOUT_SECONDS,
        shutdown_event=stream.shutdown,
        shutdown_grace_period=_SHUTDOWN_GRACE_SECONDS,
    )
