"""Thread rows, and which run holds a thread (`active_run_id`): one at a time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from chatserver.errors import Conflict
from chatserver.statuses import ThreadStatus
from chatserver.store import models
from chatserver.store.database import Database, Model, as_row, whole
from chatserver.store.models import ItemRow, ThreadRow
from chatserver.store.values import Order


@dataclass(frozen=True, slots=True)
class ThreadSnapshot:
    thread: ThreadRow
    # The oldest `limit` items, and whether there are more.
    items: list[ItemRow]
    has_more: bool
    # Following the thread's events after this seq misses nothing and repeats nothing the
    # items hold: the last event, or while a run holds the thread, the run's start (items
    # hold what is done, not the deltas of an answer in progress).
    seq: int


class ThreadStore(Database):
    async def thread_snapshot(self, thread_id: str, item_limit: int) -> ThreadSnapshot | None:
        """The thread, its items and the seq they reflect, read in one consistent state:
        items are written in the transaction of the events about them."""
        t, r, i, e = models.threads, models.runs, models.items, models.events
        async with self.snapshot() as conn:
            found = (await conn.execute(sa.select(t).where(t.c.id == thread_id))).first()
            if found is None:
                return None
            thread = as_row(ThreadRow, found)
            seq = await conn.scalar(
                sa.select(sa.func.max(e.c.seq)).where(e.c.thread_id == thread_id)
            )
            seq = int(seq or 0)
            if thread.active_run_id is not None:
                start = await conn.scalar(
                    sa.select(r.c.start_seq).where(r.c.id == thread.active_run_id)
                )
                if start is not None:
                    seq = min(seq, int(start))
            rows = [
                as_row(ItemRow, row)
                for row in await conn.execute(
                    sa.select(i)
                    .where(i.c.thread_id == thread_id)
                    .order_by(i.c.id)
                    .limit(item_limit + 1)
                )
            ]
        return ThreadSnapshot(thread, rows[:item_limit], len(rows) > item_limit, seq)

    @whole
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

    @whole
    async def update_thread(
        self, thread_id: str, values: Mapping[str, Any], *, expected_version: int | None = None
    ) -> ThreadRow:
        """Optimistic update: refused with Conflict if the row moved past `expected_version`
        (without one, whatever version is current when the lock is held)."""
        async with self.write(thread_id) as conn:
            if expected_version is None:
                expected_version = await conn.scalar(
                    sa.select(models.threads.c.version).where(models.threads.c.id == thread_id)
                )
                if expected_version is None:
                    raise Conflict(f"thread {thread_id} does not exist")
            return await versioned_update(
                conn, models.threads, ThreadRow, thread_id, expected_version, values
            )

    @whole
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

    @whole
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
                    .values(
                        status=ThreadStatus.RUNNING, active_run_id=run_id, version=t.c.version + 1
                    )
                    .returning(*t.c)
                )
            ).first()
            return as_row(ThreadRow, claimed) if claimed else None

    @whole
    async def release_thread(self, thread_id: str, run_id: str) -> bool:
        """Mark the thread idle if `run_id` still holds it."""
        t = models.threads
        async with self.write(thread_id) as conn:
            result = await conn.execute(
                sa.update(t)
                .where(t.c.id == thread_id, t.c.active_run_id == run_id)
                .values(status=ThreadStatus.IDLE, active_run_id=None, version=t.c.version + 1)
            )
            return bool(result.rowcount)


async def versioned_update(
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
    return as_row(model, found)
