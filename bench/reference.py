"""The reference: what a ChatKit user would run instead of us, built on `openai-chatkit`.

Its `ChatKitServer` answers `POST /chatkit` as ChatKit's own samples mount it (the raw body
into `process()`, a `StreamingResult` into a `StreamingResponse`). Its store is a `Store`
subclass in the shape of ChatKit's sample SQLite store: a threads table and an items table
holding each object's JSON, items saved when ChatKit saves them (on `thread.item.done`), never
the deltas. Written to be fair, not a straw man: async (aiosqlite, so the event loop never
waits on the disk), one long-lived writer connection as ours has, WAL with
`synchronous=FULL` (the durability ours promises), a small pool of reader connections, and
indexes for every query. Writes are single statements in autocommit, one durable commit each.
Its echo streams exactly what ours does: one `text_delta` per word, and the thread's title
set on the first turn.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiosqlite
from chatkit.server import ChatKitServer, StreamingResult
from chatkit.store import NotFoundError, Store
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageContentPartAdded,
    AssistantMessageContentPartDone,
    AssistantMessageContentPartTextDelta,
    AssistantMessageItem,
    Attachment,
    Page,
    ThreadItem,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
    ThreadMetadata,
    ThreadStreamEvent,
    UserMessageItem,
    UserMessageTextContent,
)
from pydantic import TypeAdapter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

_TITLE_LENGTH = 40
_WORD = re.compile(r"\S+\s*")
_READERS = 4

_items = TypeAdapter[ThreadItem](ThreadItem)
_attachments = TypeAdapter[Attachment](Attachment)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS threads (
        id TEXT PRIMARY KEY, user_id TEXT NOT NULL, created_at TEXT NOT NULL,
        data TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS threads_by_user ON threads (user_id, created_at)",
    """CREATE TABLE IF NOT EXISTS items (
        id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, user_id TEXT NOT NULL,
        created_at TEXT NOT NULL, data TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS items_by_thread ON items (thread_id, created_at)",
    """CREATE TABLE IF NOT EXISTS attachments (
        id TEXT PRIMARY KEY, user_id TEXT NOT NULL, data TEXT NOT NULL)""",
)


@dataclass(frozen=True, slots=True)
class Caller:
    user_id: str


async def _connect(path: str) -> aiosqlite.Connection:
    # isolation_level=None: autocommit, so each single-statement write is its own commit.
    conn = await aiosqlite.connect(path, isolation_level=None)
    await conn.execute("PRAGMA journal_mode=WAL")
    await conn.execute("PRAGMA synchronous=FULL")
    await conn.execute("PRAGMA busy_timeout=10000")
    return conn


class SQLiteStore(Store[Caller]):
    def __init__(self, path: str) -> None:
        self.path = path
        self._writer: aiosqlite.Connection | None = None
        # Multi-statement writes (deleting a thread) must not interleave with others.
        self._write_lock = asyncio.Lock()
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()

    async def open(self) -> None:
        self._writer = await _connect(self.path)
        for statement in _SCHEMA:
            await self._writer.execute(statement)
        for _ in range(_READERS):
            self._readers.put_nowait(await _connect(self.path))

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()
        while not self._readers.empty():
            await self._readers.get_nowait().close()

    async def ping(self) -> None:
        async with self._reading() as conn:
            await conn.execute_fetchall("SELECT 1")

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[aiosqlite.Connection]:
        conn = await self._readers.get()
        try:
            yield conn
        finally:
            self._readers.put_nowait(conn)

    async def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        assert self._writer is not None
        async with self._write_lock:
            await self._writer.execute(sql, params)

    async def _one(self, sql: str, params: tuple[Any, ...]) -> Any:
        async with self._reading() as conn:
            rows = list(await conn.execute_fetchall(sql, params))
        return rows[0][0] if rows else None

    async def _column(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        async with self._reading() as conn:
            return [row[0] for row in await conn.execute_fetchall(sql, params)]

    # -- threads ---------------------------------------------------------------------------

    async def load_thread(self, thread_id: str, context: Caller) -> ThreadMetadata:
        data = await self._one(
            "SELECT data FROM threads WHERE id = ? AND user_id = ?", (thread_id, context.user_id)
        )
        if data is None:
            raise NotFoundError(f"thread {thread_id} not found")
        return ThreadMetadata.model_validate_json(data)

    async def save_thread(self, thread: ThreadMetadata, context: Caller) -> None:
        await self._write(
            "INSERT INTO threads (id, user_id, created_at, data) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET data = excluded.data",
            (
                thread.id,
                context.user_id,
                thread.created_at.isoformat(),
                # Only the metadata: a Thread passed in would drag its items page along.
                thread.model_dump_json(exclude={"items"}),
            ),
        )

    async def load_threads(
        self, limit: int, after: str | None, order: str, context: Caller
    ) -> Page[ThreadMetadata]:
        rows = await self._page(
            "threads", "user_id = ?", (context.user_id,), after, limit, order, context
        )
        threads = [ThreadMetadata.model_validate_json(r) for r in rows[:limit]]
        return Page(
            data=threads,
            has_more=len(rows) > limit,
            after=threads[-1].id if threads else None,
        )

    async def delete_thread(self, thread_id: str, context: Caller) -> None:
        assert self._writer is not None
        async with self._write_lock:
            await self._writer.execute("BEGIN IMMEDIATE")
            try:
                await self._writer.execute(
                    "DELETE FROM items WHERE thread_id = ? AND user_id = ?",
                    (thread_id, context.user_id),
                )
                await self._writer.execute(
                    "DELETE FROM threads WHERE id = ? AND user_id = ?",
                    (thread_id, context.user_id),
                )
            except BaseException:
                await self._writer.execute("ROLLBACK")
                raise
            await self._writer.execute("COMMIT")

    # -- items -----------------------------------------------------------------------------

    async def load_thread_items(
        self, thread_id: str, after: str | None, limit: int, order: str, context: Caller
    ) -> Page[ThreadItem]:
        rows = await self._page(
            "items",
            "thread_id = ? AND user_id = ?",
            (thread_id, context.user_id),
            after,
            limit,
            order,
            context,
        )
        items = [_items.validate_json(r) for r in rows[:limit]]
        return Page(data=items, has_more=len(rows) > limit, after=items[-1].id if items else None)

    async def _page(
        self,
        table: str,
        where: str,
        params: tuple[Any, ...],
        after: str | None,
        limit: int,
        order: str,
        context: Caller,
    ) -> list[str]:
        direction = "ASC" if order == "asc" else "DESC"
        if after is not None:
            cursor = await self._one(
                f"SELECT created_at FROM {table} WHERE id = ? AND user_id = ?",
                (after, context.user_id),
            )
            if cursor is None:
                raise NotFoundError(f"{after} not found")
            where += " AND created_at > ?" if direction == "ASC" else " AND created_at < ?"
            params = (*params, cursor)
        return await self._column(
            f"SELECT data FROM {table} WHERE {where} ORDER BY created_at {direction} LIMIT ?",
            (*params, limit + 1),
        )

    async def add_thread_item(self, thread_id: str, item: ThreadItem, context: Caller) -> None:
        await self.save_item(thread_id, item, context)

    async def save_item(self, thread_id: str, item: ThreadItem, context: Caller) -> None:
        await self._write(
            "INSERT INTO items (id, thread_id, user_id, created_at, data) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET data = excluded.data",
            (
                item.id,
                thread_id,
                context.user_id,
                item.created_at.isoformat(),
                item.model_dump_json(),
            ),
        )

    async def load_item(self, thread_id: str, item_id: str, context: Caller) -> ThreadItem:
        data = await self._one(
            "SELECT data FROM items WHERE id = ? AND thread_id = ? AND user_id = ?",
            (item_id, thread_id, context.user_id),
        )
        if data is None:
            raise NotFoundError(f"item {item_id} not found")
        return _items.validate_json(data)

    async def delete_thread_item(self, thread_id: str, item_id: str, context: Caller) -> None:
        await self._write(
            "DELETE FROM items WHERE id = ? AND thread_id = ? AND user_id = ?",
            (item_id, thread_id, context.user_id),
        )

    # -- attachments (ChatKit requires them of a Store; the echo never uses them) ----------

    async def save_attachment(self, attachment: Attachment, context: Caller) -> None:
        await self._write(
            "INSERT INTO attachments (id, user_id, data) VALUES (?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET data = excluded.data",
            (attachment.id, context.user_id, attachment.model_dump_json()),
        )

    async def load_attachment(self, attachment_id: str, context: Caller) -> Attachment:
        data = await self._one(
            "SELECT data FROM attachments WHERE id = ? AND user_id = ?",
            (attachment_id, context.user_id),
        )
        if data is None:
            raise NotFoundError(f"attachment {attachment_id} not found")
        return _attachments.validate_json(data)

    async def delete_attachment(self, attachment_id: str, context: Caller) -> None:
        await self._write(
            "DELETE FROM attachments WHERE id = ? AND user_id = ?",
            (attachment_id, context.user_id),
        )


class EchoReference(ChatKitServer[Caller]):
    """Streams the user's words back, as ours does (`chatserver.responders.echo`)."""

    def __init__(self, store: SQLiteStore, word_delay: float) -> None:
        super().__init__(store)
        self.word_delay = word_delay

    async def respond(
        self, thread: ThreadMetadata, input_user_message: UserMessageItem | None, context: Caller
    ) -> AsyncIterator[ThreadStreamEvent]:
        text = " ".join(
            part.text
            for part in (input_user_message.content if input_user_message else [])
            if isinstance(part, UserMessageTextContent)
        )
        if thread.title is None:
            thread.title = text[:_TITLE_LENGTH]
        item = AssistantMessageItem(
            id=self.store.generate_item_id("message", thread, context),
            thread_id=thread.id,
            created_at=datetime.now(),
            content=[],
        )
        yield ThreadItemAddedEvent(item=item)
        yield ThreadItemUpdatedEvent(
            item_id=item.id,
            update=AssistantMessageContentPartAdded(
                content_index=0, content=AssistantMessageContent(text="")
            ),
        )
        words: list[str] = []
        for word in _WORD.findall(text):
            if self.word_delay:
                await asyncio.sleep(self.word_delay)
            words.append(word)
            yield ThreadItemUpdatedEvent(
                item_id=item.id,
                update=AssistantMessageContentPartTextDelta(content_index=0, delta=word),
            )
        content = AssistantMessageContent(text="".join(words))
        yield ThreadItemUpdatedEvent(
            item_id=item.id,
            update=AssistantMessageContentPartDone(content_index=0, content=content),
        )
        yield ThreadItemDoneEvent(item=item.model_copy(update={"content": [content]}))


def app(database_path: str, *, word_delay: float, tokens: dict[str, str]) -> Starlette:
    store = SQLiteStore(database_path)
    server = EchoReference(store, word_delay)

    def caller(request: Request) -> Caller | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        user_id = tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        return Caller(user_id) if user_id is not None else None

    async def chatkit(request: Request) -> Response:
        who = caller(request)
        if who is None:
            return _error(401, "unauthorized")
        try:
            result = await server.process(await request.body(), who)
        except NotFoundError as exc:
            return _error(404, str(exc))
        if isinstance(result, StreamingResult):
            return StreamingResponse(result, media_type="text/event-stream")
        return Response(result.json, media_type="application/json")

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_request: Request) -> Response:
        await store.ping()
        return JSONResponse({"status": "ready"})

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await store.open()
        try:
            yield
        finally:
            await store.close()

    return Starlette(
        routes=[
            Route("/chatkit", chatkit, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": {"code": "error", "message": message}}, status_code=status)
