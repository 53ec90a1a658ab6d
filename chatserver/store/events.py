"""The event log's rows: appended in batches with dense seqs, replayed in pages.

The hot path: raw driver calls through the pooled connection, ~1.5-2x SQLAlchemy Core per row
(bench/). Appends: one insert of binary arrays on PostgreSQL, Core on SQLite; replay pages:
plain tuples from the driver on both.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiosqlite
import psycopg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from chatserver.statuses import OPEN_RUN_STATUSES, ThreadStatus
from chatserver.store import models
from chatserver.store.database import Database, whole
from chatserver.store.items import apply_item_changes
from chatserver.store.values import ItemChange, NewEvent, RunEnd, StoredEvent


@dataclass(frozen=True, slots=True)
class AppendNotice:
    """Sent by every append, in its transaction, while a broker shared by instances listens
    (PostgreSQL NOTIFY): the other processes learn of the new rows as they become visible."""

    channel: str
    # The payload for (thread_id, last seq appended).
    payload: Callable[[str, int], str]


class EventStore(Database):
    append_notice: AppendNotice | None = None

    @whole
    async def append_events(
        self,
        thread_id: str,
        new_events: Sequence[NewEvent],
        *,
        first_seq: int | None = None,
        item_changes: Sequence[ItemChange] = (),
        run_end: RunEnd | None = None,
        created_at: datetime,
    ) -> int:
        """Append a batch with dense seqs, with the item changes and run end it carries, in
        one transaction; returns the first seq used (0 for a batch without events).

        The turn that owns a thread knows its next seq and passes it (no max(seq) query per
        batch); anyone else leaves it None and the seq is read under the thread's lock. The
        (thread_id, seq) primary key refuses a stale writer either way.
        """
        async with self.write(thread_id) as conn:
            if new_events:
                if first_seq is None:
                    first_seq = await _max_seq(conn, thread_id) + 1
                await self._insert_events(conn, thread_id, first_seq, new_events, created_at)
                if self.append_notice is not None:
                    last_seq = first_seq + len(new_events) - 1
                    await _notify(conn, self.append_notice, thread_id, last_seq)
            if item_changes:
                await apply_item_changes(conn, self.backend, item_changes)
            if run_end is not None:
                await _end_run(conn, thread_id, run_end)
            return first_seq or 0

    async def read_events(self, thread_id: str, after: int, limit: int) -> list[StoredEvent]:
        async with self.read() as conn:
            return await self._select_events(conn, thread_id, after, limit)

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
            await insert_events_core(conn, thread_id, first_seq, new_events, created_at)

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

    @whole
    async def compact_events(
        self, thread_id: str, upto: int, *, types: Collection[str], keep: int
    ) -> int:
        """Drop the thread's events of `types` up to seq `upto` (what finished runs' items
        now hold in full), then all but its newest `keep` events; never an event after the
        start of a run still open on it. Returns how many went.

        A replay over the gaps this leaves is still right: a finished item's `done` event
        carries the whole item, and a cursor before the oldest kept event gets `resync`.
        No thread lock: only events older than any writer's go, whoever appends meanwhile."""
        async with self.write() as conn:
            superseded = await conn.execute(
                _DELETE_SUPERSEDED, {"thread_id": thread_id, "upto": upto, "types": list(types)}
            )
            trimmed = await conn.execute(
                _DELETE_BEYOND_KEPT, {"thread_id": thread_id, "keep": keep}
            )
            return int(superseded.rowcount) + int(trimmed.rowcount)


def _compaction_statements() -> tuple[sa.Delete, sa.Delete]:
    """Built once: a turn compacts at its end, and building the statements cost as much as
    running them."""
    e, r = models.events, models.runs
    thread_id = sa.bindparam("thread_id", type_=sa.String())
    # The last event before the oldest run still open (its start_seq), if there is one.
    before_open = (
        sa.select(sa.func.min(r.c.start_seq))
        .where(r.c.thread_id == thread_id, r.c.status.in_(OPEN_RUN_STATUSES))
        .scalar_subquery()
    )
    upto = sa.bindparam("upto", type_=sa.BigInteger())
    superseded = sa.delete(e).where(
        e.c.thread_id == thread_id,
        e.c.seq <= upto,
        e.c.seq <= sa.func.coalesce(before_open, upto),
        e.c.type.in_(sa.bindparam("types", expanding=True)),
    )
    # The newest event beyond the `keep` newest: it and everything before it go.
    beyond_kept = (
        sa.select(e.c.seq)
        .where(e.c.thread_id == thread_id)
        .order_by(e.c.seq.desc())
        .offset(sa.bindparam("keep"))
        .limit(1)
        .scalar_subquery()
    )
    trim = sa.delete(e).where(
        e.c.thread_id == thread_id,
        e.c.seq <= beyond_kept,
        e.c.seq <= sa.func.coalesce(before_open, beyond_kept),
    )
    return superseded, trim


_DELETE_SUPERSEDED, _DELETE_BEYOND_KEPT = _compaction_statements()


async def _max_seq(conn: AsyncConnection, thread_id: str) -> int:
    e = models.events
    found = await conn.scalar(sa.select(sa.func.max(e.c.seq)).where(e.c.thread_id == thread_id))
    return int(found or 0)


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
            status=ThreadStatus.IDLE,
            active_run_id=None,
            updated_at=run_end.finished_at,
            version=t.c.version + 1,
        )
    )


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
_PG_NOTIFY = "SELECT pg_notify(%s, %s)"


async def insert_events_core(
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


async def _notify(
    conn: AsyncConnection, notice: AppendNotice, thread_id: str, last_seq: int
) -> None:
    driver = await _psycopg(conn)
    with _as_sqlalchemy_error(_PG_NOTIFY, psycopg.Error):
        await driver.execute(_PG_NOTIFY, (notice.channel, notice.payload(thread_id, last_seq)))


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
