"""Item rows: written only together with the events about them (see EventStore), read here."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from chatserver.store import models
from chatserver.store.database import Database
from chatserver.store.models import ItemRow
from chatserver.store.values import ItemChange, ItemDelete, ItemWrite, Order


class ItemStore(Database):
    async def get_item(self, item_id: str) -> ItemRow | None:
        return await self._get(models.items, ItemRow, item_id)

    async def list_items(
        self, thread_id: str, *, limit: int, after: str | None = None, order: Order = "asc"
    ) -> tuple[list[ItemRow], bool]:
        t = models.items
        query = sa.select(t).where(t.c.thread_id == thread_id)
        return await self._page(query, t.c.id, ItemRow, limit, after, order)

    async def item_ids_after(self, thread_id: str, item_id: str) -> list[str]:
        """The ids of the thread's items newer than `item_id`, oldest first."""
        t = models.items
        query = (
            sa.select(t.c.id).where(t.c.thread_id == thread_id, t.c.id > item_id).order_by(t.c.id)
        )
        async with self.read() as conn:
            return list((await conn.execute(query)).scalars())


async def apply_item_changes(
    conn: AsyncConnection, backend: str, changes: Sequence[ItemChange]
) -> None:
    writes = [c for c in changes if isinstance(c, ItemWrite)]
    deletes = [c for c in changes if isinstance(c, ItemDelete)]
    if writes:
        await _upsert_items(conn, backend, writes)
    for delete in deletes:
        t = models.items
        await conn.execute(
            sa.delete(t).where(t.c.id == delete.id, t.c.thread_id == delete.thread_id)
        )


async def _upsert_items(conn: AsyncConnection, backend: str, writes: Sequence[ItemWrite]) -> None:
    dialect_insert = postgresql.insert if backend == "postgresql" else sqlite.insert
    statement = dialect_insert(models.items)
    statement = statement.on_conflict_do_update(
        index_elements=[models.items.c.id],
        set_={"status": statement.excluded.status, "data": statement.excluded.data},
        # An item id is never taken over by another thread, whatever respond() yields.
        where=models.items.c.thread_id == statement.excluded.thread_id,
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
