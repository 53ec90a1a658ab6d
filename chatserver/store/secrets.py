"""Server-wide secrets kept in the database (`server_secrets`), where every instance finds them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from chatserver.store import Store, models

COOKIE_KEY = "cookie_signing_key"


def _insert(store: Store, values: dict[str, Any]) -> Any:
    dialect = postgresql if store.backend == "postgresql" else sqlite
    return dialect.insert(models.server_secrets).values(**values)


async def get_or_create(store: Store, name: str, value: str, now: datetime) -> tuple[str, bool]:
    """The value of `name`, storing `value` first if there is none; and whether it was stored.

    Instances starting at once converge on one value: each inserts only if the name is absent,
    then reads whichever insert won (on PostgreSQL a conflicting insert waits for the other
    transaction, so the read sees its row)."""
    table = models.server_secrets
    async with store.write() as conn:
        inserted = await conn.execute(
            _insert(store, {"name": name, "value": value, "created_at": now})
            .on_conflict_do_nothing(index_elements=["name"])
            .returning(table.c.name)
        )
        created = inserted.first() is not None
        stored = await conn.scalar(sa.select(table.c.value).where(table.c.name == name))
    assert stored is not None
    return stored, created


async def get(store: Store, name: str) -> str | None:
    table = models.server_secrets
    async with store.read() as conn:
        value: str | None = await conn.scalar(sa.select(table.c.value).where(table.c.name == name))
        return value


async def replace(store: Store, name: str, value: str, now: datetime) -> None:
    """Set `name` to `value`, whether it existed or not."""
    values = {"name": name, "value": value, "created_at": now}
    async with store.write() as conn:
        await conn.execute(
            _insert(store, values).on_conflict_do_update(
                index_elements=["name"], set_={"value": value, "created_at": now}
            )
        )
