"""Session rows: created, read and changed one locked read-modify-write at a time."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import TypeVar

import sqlalchemy as sa

from chatserver.statuses import OPEN_RUN_STATUSES, SessionState
from chatserver.store import models
from chatserver.store.database import Database, as_row, whole
from chatserver.store.models import SessionRow

Outcome = TypeVar("Outcome")


class SessionStore(Database):
    @whole
    async def insert_session(self, row: SessionRow) -> None:
        async with self.write(row.id) as conn:
            await conn.execute(sa.insert(models.sessions).values(**row.model_dump()))

    async def get_session(self, session_id: str) -> SessionRow | None:
        return await self._get(models.sessions, SessionRow, session_id)

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
        session_id: str,
        mutate: Callable[[SessionRow | None], tuple[SessionRow | None, Outcome]],
    ) -> tuple[SessionRow | None, Outcome]:
        """Read-modify-write of one session under its lock; `mutate` must not do I/O.

        `mutate` gets the current row (or None) and returns the row to store (None: leave as
        is) and an outcome handed back to the caller, even if it says the request must fail.
        """
        s = models.sessions
        async with self.write(session_id) as conn:
            found = (await conn.execute(sa.select(s).where(s.c.id == session_id))).first()
            current = as_row(SessionRow, found) if found else None
            updated, outcome = mutate(current.model_copy() if current else None)
            if updated is None:
                return current, outcome
            values = updated.model_dump()
            if current is None:
                await conn.execute(sa.insert(s).values(**values))
                return updated, outcome
            values.pop("id")
            values["version"] = current.version + 1
            await conn.execute(sa.update(s).where(s.c.id == session_id).values(**values))
            return updated.model_copy(update={"version": current.version + 1}), outcome

    async def list_sessions_expiring(
        self, before: datetime, limit: int, states: Collection[SessionState]
    ) -> list[SessionRow]:
        s = models.sessions
        query = (
            sa.select(s)
            .where(s.c.expires_at <= before, s.c.state.in_(states))
            .order_by(s.c.expires_at)
            .limit(limit)
        )
        async with self.read() as conn:
            return [as_row(SessionRow, r) for r in await conn.execute(query)]

    async def list_sessions_ended_before(
        self, before: datetime, limit: int, states: Collection[SessionState]
    ) -> list[SessionRow]:
        s = models.sessions
        query = (
            sa.select(s)
            .where(s.c.ended_at <= before, s.c.state.in_(states))
            .order_by(s.c.ended_at)
            .limit(limit)
        )
        async with self.read() as conn:
            return [as_row(SessionRow, r) for r in await conn.execute(query)]

    async def sessions_with_open_runs(self, session_ids: Sequence[str]) -> set[str]:
        if not session_ids:
            return set()
        r = models.runs
        query = sa.select(r.c.session_id).where(
            r.c.session_id.in_(session_ids), r.c.status.in_(OPEN_RUN_STATUSES)
        )
        async with self.read() as conn:
            return {sid for sid in (await conn.execute(query)).scalars() if sid is not None}
