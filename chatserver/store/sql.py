"""The one Store: SQLAlchemy 2 async on SQLite (embedded default) or PostgreSQL (production).

Writes run in short transactions under the key's lock: in process a KeyedLock, across
processes `pg_advisory_xact_lock` on PostgreSQL; SQLite has one writer connection whose
transactions start with BEGIN IMMEDIATE, so writers queue instead of failing "database is locked".
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple, ParamSpec, TypeVar

import aiosqlite
import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlmodel import SQLModel

from chatserver.errors import Conflict
from chatserver.locks import KeyedLock
from chatserver.store import models
from chatserver.store.models import ItemRow, RunRow, SessionRow, ThreadRow

logger = logging.getLogger(__name__)

Order = Literal["asc", "desc"]
Model = TypeVar("Model", bound=SQLModel)
Outcome = TypeVar("Outcome")
Params = ParamSpec("Params")
Result = TypeVar("Result")

# Write transactions still finishing for callers that were cancelled (kept referenced).
_detached_writes: set[asyncio.Task[Any]] = set()


def _whole(
    write: Callable[Params, Coroutine[Any, Any, Result]],
) -> Callable[Params, Coroutine[Any, Any, Result]]:
    """Run a write transaction to its end even if its caller is cancelled (a client that
    disconnects, a stopped turn): the caller stops waiting, the transaction still commits
    or rolls back whole and gives its connection back. Interrupted mid-statement, SQLite's
    single writer connection was lost with its write lock held, and every later write hung.
    """

    @functools.wraps(write)
    async def run_whole(*args: Params.args, **kwargs: Params.kwargs) -> Result:
        task = asyncio.ensure_future(write(*args, **kwargs))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                _detached_writes.add(task)
                task.add_done_callback(_forget_detached)
            raise

    return run_whole


def _forget_detached(task: asyncio.Task[Any]) -> None:
    _detached_writes.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error(
            "a write finished after its caller left, and failed", exc_info=task.exception()
        )


@dataclass(frozen=True, slots=True)
class NewEvent:
    run_id: str | None
    type: str
    data: str


class StoredEvent(NamedTuple):
    """One logged event. A NamedTuple: immutable, and built from a driver row ~2.7x faster
    than a frozen dataclass, which is ~10% of a replay (bench/)."""

    seq: int
    run_id: str | None
    type: str
    data: str


@dataclass(frozen=True, slots=True)
class RunEnd:
    """A run's last batch also ends it: once its terminal event is visible, the thread is
    already free and the run's status final, so a client may start the next turn at once."""

    run_id: str
    status: str
    finished_at: datetime
    thread_changes: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ItemWrite:
    """Insert-or-replace of an item, written in the same transaction as the events about it."""

    id: str
    thread_id: str
    type: str
    status: str
    data: str
    created_at: datetime


def _row(model: type[Model], row: sa.Row[Any]) -> Model:
    return model(**row._mapping)


class Store:
    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url = url
        self.backend: Literal["sqlite", "postgresql"] = (
            "sqlite" if url.startswith("sqlite") else "postgresql"
        )
        self._locks = KeyedLock()
        if self.backend == "sqlite":
            # One writer connection: several only busy-wait on SQLite's file lock.
            self._writer = create_async_engine(url, echo=echo, pool_size=1, max_overflow=0)
            self._reader = create_async_engine(url, echo=echo, pool_size=4, max_overflow=4)
            _configure_sqlite(self._writer, immediate=True)
            _configure_sqlite(self._reader, immediate=False)
            self._writer_gate: asyncio.Lock | None = asyncio.Lock()
        else:
            self._writer = create_async_engine(
                url, echo=echo, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
            )
            self._reader = self._writer
            self._writer_gate = None

    @property
    def engine(self) -> AsyncEngine:
        return self._writer

    async def create_schema(self) -> None:
        async with self._writer.begin() as conn:
            await conn.run_sync(SQLModel.metadata.create_all)

    async def close(self) -> None:
        await self._writer.dispose()
        if self._reader is not self._writer:
            await self._reader.dispose()

    async def ping(self) -> None:
        async with self._reader.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    @asynccontextmanager
    async def write(self, *lock_keys: str) -> AsyncIterator[AsyncConnection]:
        """A write transaction holding the locks of `lock_keys` (taken in sorted order)."""
        keys = sorted(set(lock_keys))
        async with _hold_all(self._locks, keys):
            if self._writer_gate is not None:
                async with self._writer_gate, self._writer.begin() as conn:
                    yield conn
            else:
                async with self._writer.begin() as conn:
                    for key in keys:
                        await conn.execute(
                            sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                            {"key": key},
                        )
                    yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self._reader.connect() as conn:
            yield conn

    # -- sessions ----------------------------------------------------------------------------
    # A session is keyed by its user and its id: ids are unique per user only.

    @_whole
    async def insert_session(self, row: SessionRow) -> None:
        async with self.write(_session_lock(row.user_id, row.id)) as conn:
            await conn.execute(sa.insert(models.sessions).values(**row.model_dump()))

    async def get_session(self, user_id: str, session_id: str) -> SessionRow | None:
        async with self.read() as conn:
            found = (await conn.execute(_select_session(user_id, session_id))).first()
            return _row(SessionRow, found) if found else None

    @_whole
    async def modify_session(
        self,
        user_id: str,
        session_id: str,
        mutate: Callable[[SessionRow | None], tuple[SessionRow | None, Outcome]],
    ) -> tuple[SessionRow | None, Outcome]:
        """Read-modify-write of one session under its lock; `mutate` must not do I/O.

        `mutate` gets the current row (or None) and returns the row to store (None: leave as
        is) and an outcome handed back to the caller, even if it says the request must fail.
        """
        s = models.sessions
        async with self.write(_session_lock(user_id, session_id)) as conn:
            found = (await conn.execute(_select_session(user_id, session_id))).first()
            current = _row(SessionRow, found) if found else None
            updated, outcome = mutate(current.model_copy() if current else None)
            if updated is None:
                return current, outcome
            values = updated.model_dump()
            if current is None:
                await conn.execute(sa.insert(s).values(**values))
                return updated, outcome
            del values["id"], values["user_id"]
            values["version"] = current.version + 1
            await conn.execute(
                sa.update(s).where(s.c.user_id == user_id, s.c.id == session_id).values(**values)
            )
            return updated.model_copy(update={"version": current.version + 1}), outcome

    async def list_sessions_expiring(
        self, before: datetime, limit: int, states: Sequence[str]
    ) -> list[SessionRow]:
        query = (
            sa.select(models.sessions)
            .where(models.sessions.c.expires_at <= before, models.sessions.c.state.in_(states))
            .order_by(models.sessions.c.expires_at)
            .limit(limit)
        )
        async with self.read() as conn:
            return [_row(SessionRow, r) for r in await conn.execute(query)]

    async def list_sessions_ended_before(
        self, before: datetime, limit: int, states: Sequence[str]
    ) -> list[SessionRow]:
        s = models.sessions
        query = (
            sa.select(s)
            .where(s.c.ended_at <= before, s.c.state.in_(states))
            .order_by(s.c.ended_at)
            .limit(limit)
        )
        async with self.read() as conn:
            return [_row(SessionRow, r) for r in await conn.execute(query)]

    async def sessions_with_open_runs(
        self, sessions: Sequence[tuple[str, str]]
    ) -> set[tuple[str, str]]:
        """Those of the (user_id, session_id) pairs with a queued or running run."""
        if not sessions:
            return set()
        r = models.runs
        query = sa.select(r.c.user_id, r.c.session_id).where(
            r.c.session_id.in_({session_id for _, session_id in sessions}),
            r.c.status.in_(("queued", "running")),
        )
        async with self.read() as conn:
            busy = {(user_id, session_id) for user_id, session_id in await conn.execute(query)}
        return busy & set(sessions)

    # -- threads ---------------------------------------------------------------------------

    @_whole
    async def insert_thread(self, row: ThreadRow) -> None:
        async with self.write(row.id) as conn:
            await conn.execute(sa.insert(models.threads).values(**row.model_dump()))

    async def get_thread(self, thread_id: str) -> ThreadRow | None:
        return await self._get(models.threads, ThreadRow, thread_id)

    async def list_threads(
        self, user_id: str, *, limit: int, after: str | None = None, order: Order = "desc"
    ) -> tuple[list[ThreadRow], bool]:
        t = models.threads
        query = sa.select(t).where(t.c.user_id == user_id)
        return await self._page(query, t.c.id, ThreadRow, limit, after, order)

    @_whole
    async def update_thread(
        self, thread_id: str, values: Mapping[str, Any], *, expected_version: int | None = None
    ) -> ThreadRow:
        async with self.write(thread_id) as conn:
            if expected_version is None:
                expected_version = await conn.scalar(
                    sa.select(models.threads.c.version).where(models.threads.c.id == thread_id)
                )
                if expected_version is None:
                    raise Conflict(f"thread {thread_id} does not exist")
            return await _versioned_update(
                conn, models.threads, ThreadRow, thread_id, expected_version, values
            )

    @_whole
    async def delete_thread(self, thread_id: str) -> bool:
        async with self.write(thread_id) as conn:
            # Children first: SQLite enforces ON DELETE CASCADE only with foreign_keys=ON,
            # and deleting explicitly keeps both backends identical.
            for child in (models.events, models.items, models.runs):
                await conn.execute(sa.delete(child).where(child.c.thread_id == thread_id))
            result = await conn.execute(
                sa.delete(models.threads).where(models.threads.c.id == thread_id)
            )
            return bool(result.rowcount)

    @_whole
    async def claim_thread(self, thread_id: str, run_id: str) -> ThreadRow | None:
        """Mark the thread running for `run_id` unless another run holds it; the claimed row,
        or None if the thread is held (or gone)."""
        t = models.threads
        async with self.write(thread_id) as conn:
            claimed = (
                await conn.execute(
                    sa.update(t)
                    .where(
                        t.c.id == thread_id,
                        sa.or_(t.c.active_run_id.is_(None), t.c.active_run_id == run_id),
                    )
                    .values(status="running", active_run_id=run_id, version=t.c.version + 1)
                    .returning(*t.c)
                )
            ).first()
            return _row(ThreadRow, claimed) if claimed else None

    @_whole
    async def release_thread(self, thread_id: str, run_id: str, values: Mapping[str, Any]) -> bool:
        """Mark the thread idle if `run_id` still holds it, applying `values` too."""
        t = models.threads
        async with self.write(thread_id) as conn:
            result = await conn.execute(
                sa.update(t)
                .where(t.c.id == thread_id, t.c.active_run_id == run_id)
                .values(**values, status="idle", active_run_id=None, version=t.c.version + 1)
            )
            return bool(result.rowcount)

    # -- items -----------------------------------------------------------------------------

    @_whole
    async def insert_item(self, row: ItemRow) -> None:
        async with self.write(row.thread_id) as conn:
            await conn.execute(sa.insert(models.items).values(**row.model_dump()))

    async def get_item(self, item_id: str) -> ItemRow | None:
        return await self._get(models.items, ItemRow, item_id)

    async def list_items(
        self, thread_id: str, *, limit: int, after: str | None = None, order: Order = "asc"
    ) -> tuple[list[ItemRow], bool]:
        t = models.items
        query = sa.select(t).where(t.c.thread_id == thread_id)
        return await self._page(query, t.c.id, ItemRow, limit, after, order)

    @_whole
    async def delete_items_after(self, thread_id: str, item_id: str) -> int:
        t = models.items
        async with self.write(thread_id) as conn:
            result = await conn.execute(
                sa.delete(t).where(t.c.thread_id == thread_id, t.c.id > item_id)
            )
            return int(result.rowcount)

    # -- events ----------------------------------------------------------------------------

    @_whole
    async def append_events(
        self,
        thread_id: str,
        new_events: Sequence[NewEvent],
        *,
        first_seq: int | None = None,
        item_writes: Sequence[ItemWrite] = (),
        run_end: RunEnd | None = None,
        created_at: datetime,
    ) -> int:
        """Append a batch with dense seqs; returns the first seq used.

        The turn that owns a thread knows its next seq and passes it (no max(seq) query per
        batch); anyone else leaves it None and the seq is read under the thread's lock. The
        (thread_id, seq) primary key refuses a stale writer either way.
        """
        async with self.write(thread_id) as conn:
            if first_seq is None:
                first_seq = await _max_seq(conn, thread_id) + 1
            if new_events:
                await self._insert_events(conn, thread_id, first_seq, new_events, created_at)
            if item_writes:
                await _upsert_items(conn, self.backend, item_writes)
            if run_end is not None:
                await _end_run(conn, thread_id, run_end)
            return first_seq

    async def read_events(self, thread_id: str, after: int, limit: int) -> list[StoredEvent]:
        async with self.read() as conn:
            return await self._select_events(conn, thread_id, after, limit)

    # The event hot path: raw driver calls through the pooled connection, ~1.5-2x SQLAlchemy
    # Core per row (bench/). Appends: one insert of binary arrays on PostgreSQL, Core on SQLite;
    # replay pages: plain tuples from the driver on both.

    async def _insert_events(
        self,
        conn: AsyncConnection,
        thread_id: str,
        first_seq: int,
        new_events: Sequence[NewEvent],
        created_at: datetime,
    ) -> None:
        if self.backend == "postgresql":
            await _insert_events_postgresql(conn, thread_id, first_seq, new_events, created_at)
        else:
            await _insert_events_core(conn, thread_id, first_seq, new_events, created_at)

    async def _select_events(
        self, conn: AsyncConnection, thread_id: str, after: int, limit: int
    ) -> list[StoredEvent]:
        if self.backend == "postgresql":
            return await _select_events_postgresql(conn, thread_id, after, limit)
        return await _select_events_sqlite(conn, thread_id, after, limit)

    async def max_seq(self, thread_id: str) -> int:
        async with self.read() as conn:
            return await _max_seq(conn, thread_id)

    async def min_seq(self, thread_id: str) -> int:
        e = models.events
        async with self.read() as conn:
            found = await conn.scalar(
                sa.select(sa.func.min(e.c.seq)).where(e.c.thread_id == thread_id)
            )
            return int(found or 0)

    @_whole
    async def trim_events(self, thread_id: str, keep: int) -> int:
        """Drop all but the newest `keep` events of a thread."""
        e = models.events
        async with self.write(thread_id) as conn:
            newest = await _max_seq(conn, thread_id)
            result = await conn.execute(
                sa.delete(e).where(e.c.thread_id == thread_id, e.c.seq <= newest - keep)
            )
            return int(result.rowcount)

    # -- runs ------------------------------------------------------------------------------

    @_whole
    async def insert_run(self, row: RunRow) -> None:
        async with self.write(row.thread_id) as conn:
            await conn.execute(sa.insert(models.runs).values(**row.model_dump()))

    async def get_run(self, run_id: str) -> RunRow | None:
        return await self._get(models.runs, RunRow, run_id)

    async def find_run_by_idempotency_key(self, user_id: str, key: str) -> RunRow | None:
        r = models.runs
        query = sa.select(r).where(r.c.user_id == user_id, r.c.idempotency_key == key)
        async with self.read() as conn:
            found = (await conn.execute(query)).first()
            return _row(RunRow, found) if found else None

    @_whole
    async def update_run(self, run_id: str, values: Mapping[str, Any]) -> None:
        async with self.write() as conn:
            await conn.execute(
                sa.update(models.runs).where(models.runs.c.id == run_id).values(**values)
            )

    @_whole
    async def renew_leases(self, owner: str, run_ids: Sequence[str], until: datetime) -> None:
        """Extend the leases of the runs this owner is still working on. Only those: a run
        whose last write failed must lapse so that recovery can close it."""
        if not run_ids:
            return
        r = models.runs
        async with self.write() as conn:
            await conn.execute(
                sa.update(r)
                .where(
                    r.c.id.in_(run_ids),
                    r.c.owner == owner,
                    r.c.status.in_(("queued", "running")),
                )
                .values(lease_until=until)
            )

    async def list_lapsed_runs(self, now: datetime, limit: int) -> list[RunRow]:
        r = models.runs
        query = (
            sa.select(r)
            .where(r.c.status.in_(("queued", "running")), r.c.lease_until < now)
            .order_by(r.c.lease_until)
            .limit(limit)
        )
        async with self.read() as conn:
            return [_row(RunRow, row) for row in await conn.execute(query)]

    @_whole
    async def claim_lapsed_run(
        self, run_id: str, owner: str, now: datetime, until: datetime
    ) -> bool:
        """Take over a run whose owner stopped renewing its lease; one claimant wins."""
        r = models.runs
        async with self.write() as conn:
            result = await conn.execute(
                sa.update(r)
                .where(
                    r.c.id == run_id,
                    r.c.status.in_(("queued", "running")),
                    r.c.lease_until < now,
                )
                .values(owner=owner, lease_until=until)
            )
            return bool(result.rowcount)

    async def list_cancel_requests(self, run_ids: Sequence[str]) -> list[str]:
        if not run_ids:
            return []
        r = models.runs
        query = sa.select(r.c.id).where(r.c.id.in_(run_ids), r.c.cancel_requested.is_(True))
        async with self.read() as conn:
            return list((await conn.execute(query)).scalars())

    # -- helpers ---------------------------------------------------------------------------

    async def _get(self, table: sa.Table, model: type[Model], key: str) -> Model | None:
        async with self.read() as conn:
            found = (await conn.execute(sa.select(table).where(table.c.id == key))).first()
            return _row(model, found) if found else None

    async def _page(
        self,
        query: sa.Select[Any],
        key: sa.ColumnElement[str],
        model: type[Model],
        limit: int,
        after: str | None,
        order: Order,
    ) -> tuple[list[Model], bool]:
        """Keyset paging on a time-sortable id: rows added meanwhile never shift a page."""
        if after is not None:
            query = query.where(key > after if order == "asc" else key < after)
        query = query.order_by(key.asc() if order == "asc" else key.desc()).limit(limit + 1)
        async with self.read() as conn:
            rows = [_row(model, r) for r in await conn.execute(query)]
        return rows[:limit], len(rows) > limit


def _session_lock(user_id: str, session_id: str) -> str:
    return f"{session_id}/{user_id}"


def _select_session(user_id: str, session_id: str) -> sa.Select[Any]:
    s = models.sessions
    return sa.select(s).where(s.c.user_id == user_id, s.c.id == session_id)


async def _max_seq(conn: AsyncConnection, thread_id: str) -> int:
    e = models.events
    found = await conn.scalar(sa.select(sa.func.max(e.c.seq)).where(e.c.thread_id == thread_id))
    return int(found or 0)


# One statement for the whole batch, its columns as binary arrays: as fast as COPY, and an
# ordinary query, which psycopg cancels cleanly when the caller is cancelled mid-batch.
_PG_INSERT_EVENTS = (
    "INSERT INTO events (thread_id, seq, run_id, type, data, created_at)"
    " SELECT %b::text, %b::int8 + n - 1, r, t, d, %b::timestamptz"
    " FROM unnest(%b::text[], %b::text[], %b::text[]) WITH ORDINALITY AS u(r, t, d, n)"
)
_PG_SELECT_EVENTS = (
    "SELECT seq, run_id, type, data FROM events"
    " WHERE thread_id = %s AND seq > %s ORDER BY seq LIMIT %s"
)
_SQLITE_SELECT_EVENTS = _PG_SELECT_EVENTS.replace("%s", "?")


async def _insert_events_core(
    conn: AsyncConnection,
    thread_id: str,
    first_seq: int,
    new_events: Sequence[NewEvent],
    created_at: datetime,
) -> None:
    # A plain executemany of one prepared insert (`.values(list)` is 3-4x slower).
    await conn.execute(
        sa.insert(models.events),
        [
            {
                "thread_id": thread_id,
                "seq": first_seq + offset,
                "run_id": event.run_id,
                "type": event.type,
                "data": event.data,
                "created_at": created_at,
            }
            for offset, event in enumerate(new_events)
        ],
    )


async def _select_events_core(
    conn: AsyncConnection, thread_id: str, after: int, limit: int
) -> list[StoredEvent]:
    e = models.events
    query = (
        sa.select(e.c.seq, e.c.run_id, e.c.type, e.c.data)
        .where(e.c.thread_id == thread_id, e.c.seq > after)
        .order_by(e.c.seq)
        .limit(limit)
    )
    result = await conn.execute(query)
    return [StoredEvent(seq, run_id, type_, data) for seq, run_id, type_, data in result]


async def _insert_events_postgresql(
    conn: AsyncConnection,
    thread_id: str,
    first_seq: int,
    new_events: Sequence[NewEvent],
    created_at: datetime,
) -> None:
    if created_at.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    params = (
        thread_id,
        first_seq,
        created_at,
        [event.run_id for event in new_events],
        [event.type for event in new_events],
        [event.data for event in new_events],
    )
    driver = await _psycopg(conn)
    with _as_sqlalchemy_error(_PG_INSERT_EVENTS, psycopg.Error):
        async with driver.cursor() as cursor:
            await cursor.execute(_PG_INSERT_EVENTS, params)


async def _select_events_postgresql(
    conn: AsyncConnection, thread_id: str, after: int, limit: int
) -> list[StoredEvent]:
    # Autocommit: one round trip, no BEGIN; and no ROLLBACK on checkin, which in psycopg
    # also drops the connection's prepared statements.
    await conn.execution_options(isolation_level="AUTOCOMMIT")
    driver = await _psycopg(conn)
    with _as_sqlalchemy_error(_PG_SELECT_EVENTS, psycopg.Error):
        async with driver.cursor() as cursor:
            await cursor.execute(_PG_SELECT_EVENTS, (thread_id, after, limit))
            rows = await cursor.fetchall()
    return list(map(StoredEvent._make, rows))


async def _select_events_sqlite(
    conn: AsyncConnection, thread_id: str, after: int, limit: int
) -> list[StoredEvent]:
    # Not through SQLAlchemy, so no BEGIN either: one statement reads one WAL snapshot.
    driver = (await conn.get_raw_connection()).driver_connection
    assert isinstance(driver, aiosqlite.Connection)
    with _as_sqlalchemy_error(_SQLITE_SELECT_EVENTS, sqlite3.Error):
        rows = await driver.execute_fetchall(_SQLITE_SELECT_EVENTS, (thread_id, after, limit))
    return list(map(StoredEvent._make, rows))


async def _psycopg(conn: AsyncConnection) -> psycopg.AsyncConnection[Any]:
    driver = (await conn.get_raw_connection()).driver_connection
    assert isinstance(driver, psycopg.AsyncConnection)
    return driver


@contextmanager
def _as_sqlalchemy_error(statement: str, driver_error: type[Exception]) -> Iterator[None]:
    """Raw driver errors surface as SQLAlchemy's, like every other Store error does."""
    try:
        yield
    except driver_error as exc:
        raise sa.exc.DBAPIError.instance(statement, None, exc, driver_error) from exc


async def _end_run(conn: AsyncConnection, thread_id: str, run_end: RunEnd) -> None:
    r, t = models.runs, models.threads
    await conn.execute(
        sa.update(r)
        .where(r.c.id == run_end.run_id)
        .values(status=run_end.status, finished_at=run_end.finished_at)
    )
    await conn.execute(
        sa.update(t)
        .where(t.c.id == thread_id, t.c.active_run_id == run_end.run_id)
        .values(
            **run_end.thread_changes,
            status="idle",
            active_run_id=None,
            updated_at=run_end.finished_at,
            version=t.c.version + 1,
        )
    )


async def _versioned_update(
    conn: AsyncConnection,
    table: sa.Table,
    model: type[Model],
    key: str,
    expected_version: int,
    values: Mapping[str, Any],
) -> Model:
    result = await conn.execute(
        sa.update(table)
        .where(table.c.id == key, table.c.version == expected_version)
        .values(**values, version=expected_version + 1)
        .returning(*table.c)
    )
    found = result.first()
    if found is None:
        raise Conflict(f"{table.name} {key} changed since version {expected_version}")
    return _row(model, found)


async def _upsert_items(conn: AsyncConnection, backend: str, writes: Sequence[ItemWrite]) -> None:
    dialect_insert = postgresql.insert if backend == "postgresql" else sqlite.insert
    statement = dialect_insert(models.items)
    statement = statement.on_conflict_do_update(
        index_elements=[models.items.c.id],
        set_={"status": statement.excluded.status, "data": statement.excluded.data},
    )
    await conn.execute(
        statement,
        [
            {
                "id": w.id,
                "thread_id": w.thread_id,
                "type": w.type,
                "status": w.status,
                "data": w.data,
                "created_at": w.created_at,
            }
            for w in writes
        ],
    )


@asynccontextmanager
async def _hold_all(locks: KeyedLock, keys: Sequence[str]) -> AsyncIterator[None]:
    if not keys:
        yield
        return
    async with locks.hold(keys[0]), _hold_all(locks, keys[1:]):
        yield


def _configure_sqlite(engine: AsyncEngine, *, immediate: bool) -> None:
    @sa.event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN, not the driver.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    @sa.event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
