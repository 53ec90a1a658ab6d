"""Session rows: created, read and changed one locked read-modify-write at a time."""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa

from chatserver.statuses import SessionState
from chatserver.store import models
from chatserver.store.database import Database, as_row, whole
from chatserver.store.models import SessionRow

Outcome = TypeVar("Outcome")


class SessionStore(Database):
    """A session is keyed by its user and its id: ids are unique per user only, so an id one
    user chose is never taken from another."""

    @whole
    async def insert_session(self, row: SessionRow) -> None:
        async with self.write(_session_lock(row.user_id, row.id)) as conn:
            await conn.execute(sa.insert(models.sessions).values(**row.model_dump()))

    async def get_session(self, user_id: str, session_id: str) -> SessionRow | None:
        async with self.read() as conn:
            found = (await conn.execute(_select_session(user_id, session_id))).first()
            return as_row(SessionRow, found) if found else None

    async def latest_live_session(
        self, user_id: str, now: datetime, states: Collection[SessionState]
    ) -> SessionRow | None:
        """The user's most recently used session that has not expired."""
        s = models.sessions
        query = (
            sa.select(s)
            .where(s.c.user_id == user_id, s.c.state.in_(states), s.c.expires_at > now)
            .order_by(s.c.last_activity_at.desc())
            .limit(1)
        )
        async with self.read() as conn:
            found = (await conn.execute(query)).first()
            return as_row(SessionRow, found) if found else None

    @whole
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
        # FOR UPDATE on PostgreSQL: a reaper's batch (SKIP LOCKED) steps over a session a
        # request holds, and a request waits for a batch that holds it, then sees its result.
        current_row = _select_session(user_id, session_id).with_for_update()
        async with self.write(_session_lock(user_id, session_id)) as conn:
            found = (await conn.execute(current_row)).first()
            current = as_row(SessionRow, found) if found else None
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


def _session_lock(user_id: str, session_id: str) -> str:
    return f"{session_id}/{user_id}"


def _select_session(user_id: str, session_id: str) -> sa.Select[Any]:
    s = models.sessions
    return sa.select(s).where(s.c.user_id == user_id, s.c.id == session_id)
