"""What the background duties do to rows, one batch per transaction: expire live sessions
whose time is up, turn ended sessions into tombstones, delete threads past their retention;
and the lock that lets one instance at a time do it.

On PostgreSQL a batch claims its rows with `FOR UPDATE SKIP LOCKED`: a row a request holds
(`modify_session` locks it) or another reaper's batch claimed is stepped over, never waited
for, and the state predicate, checked again by the UPDATE, makes each transition happen
once. SQLite has one writer: a batch's select and update run in one IMMEDIATE transaction.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Collection, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from chatserver.statuses import (
    ENDED_SESSION_STATES,
    LIVE_SESSION_STATES,
    OPEN_RUN_STATUSES,
    EndReason,
    SessionState,
)
from chatserver.store import models
from chatserver.store.database import Database, _unavailable_when_unreachable, as_row, whole
from chatserver.store.models import SessionRow

logger = logging.getLogger(__name__)

# One reaper across every instance sharing the database.
_REAPER_LOCK_KEY = "chatserver:reaper"


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Timeout policy names a cleanup strategy applies to: `names`, or with `all_but`, every
    policy except `names` (a default strategy covers policies nobody listed)."""

    names: frozenset[str] = frozenset()
    all_but: bool = False

    def __contains__(self, policy: object) -> bool:
        return (policy in self.names) != self.all_but

    def where(self, column: sa.ColumnElement[str]) -> sa.ColumnElement[bool]:
        if not self.names:
            return sa.true() if self.all_but else sa.false()
        listed = column.in_(sorted(self.names))
        return ~listed if self.all_but else listed


# A sessions row's columns by name. The batches hand these out rather than table models:
# building a SessionRow costs ~100 us, which for 100,000 sessions is seconds of event loop.
SessionValues = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ExpiredSession:
    # The session as it was when it expired (state `expired`, its data still in it).
    values: SessionValues
    # Made a tombstone in the same write (its policy's strategy is `immediate`).
    cleaned: bool


def literal_in(column: sa.ColumnElement[str], values: Iterable[str]) -> sa.ColumnElement[bool]:
    """`column IN ('a', 'b')` with the values in the SQL text, not bound: the planner can
    then prove a partial index's predicate (PostgreSQL's generic plans and SQLite never
    match one against parameters)."""
    return column.in_([sa.literal(str(v), literal_execute=True) for v in sorted(values)])


def _has_open_run(s: sa.Table) -> sa.ColumnElement[bool]:
    r = models.runs
    return sa.exists().where(
        r.c.session_id == s.c.id,
        r.c.user_id == s.c.user_id,
        literal_in(r.c.status, OPEN_RUN_STATUSES),
    )


def _tombstone_values(now: datetime, when: sa.ColumnElement[bool]) -> dict[str, Any]:
    """What cleaning removes (the metadata and the thread) for the rows `when` is true of;
    what the session was (user, policy, times, counts, why it ended) stays, for the id's
    protection and for analytics."""
    s = models.sessions
    return {
        "state": sa.case((when, SessionState.CLEANED_UP), else_=s.c.state),
        "cleaned_at": sa.case((when, sa.literal(now, s.c.cleaned_at.type)), else_=s.c.cleaned_at),
        "meta": sa.case((when, sa.literal({}, s.c.meta.type)), else_=s.c.meta),
        "thread_id": sa.case((when, sa.null()), else_=s.c.thread_id),
    }


def _key(row: SessionValues) -> tuple[str, str]:
    return row["user_id"], row["id"]


class LifecycleStore(Database):
    @whole
    async def expire_sessions(
        self, now: datetime, limit: int, *, tombstone: PolicySet
    ) -> list[ExpiredSession]:
        """Expire up to `limit` live sessions whose time is up, the longest overdue first,
        skipping any with a run queued or in progress; those of `tombstone` policies become
        tombstones in the same write."""
        s = models.sessions
        due = (
            sa.select(s)
            .where(
                literal_in(s.c.state, LIVE_SESSION_STATES),
                s.c.expires_at <= now,
                ~_has_open_run(s),
            )
            .order_by(s.c.expires_at)
            .limit(limit)
        )
        ended = {"ended_at": now, "end_reason": EndReason.EXPIRED}
        cleaned = tombstone.where(s.c.timeout_policy)
        values = {**ended, **_tombstone_values(now, cleaned)}
        values["state"] = sa.case((cleaned, SessionState.CLEANED_UP), else_=SessionState.EXPIRED)
        async with self.write() as conn:
            expired = await self._claim(conn, due, LIVE_SESSION_STATES, values)
        return [
            ExpiredSession(
                {**row, **ended, "state": SessionState.EXPIRED, "version": row["version"] + 1},
                cleaned=row["timeout_policy"] in tombstone,
            )
            for row in expired
        ]

    @whole
    async def clean_up_sessions(
        self,
        now: datetime,
        limit: int,
        *,
        immediate: PolicySet,
        deferred: PolicySet,
        ended_before: datetime,
    ) -> list[SessionValues]:
        """Make tombstones of up to `limit` ended (expired or closed) sessions: those of
        `immediate` policies at once, those of `deferred` ones once they ended before
        `ended_before`. Returns them as they were before (their data still in them)."""
        s = models.sessions
        due = (
            sa.select(s)
            .where(
                literal_in(s.c.state, ENDED_SESSION_STATES),
                sa.or_(
                    immediate.where(s.c.timeout_policy),
                    sa.and_(deferred.where(s.c.timeout_policy), s.c.ended_at <= ended_before),
                ),
            )
            .order_by(s.c.ended_at)
            .limit(limit)
        )
        async with self.write() as conn:
            return await self._claim(
                conn, due, ENDED_SESSION_STATES, _tombstone_values(now, sa.true())
            )

    async def _claim(
        self,
        conn: AsyncConnection,
        due: sa.Select[Any],
        from_states: Collection[SessionState],
        values: dict[str, Any],
    ) -> list[SessionValues]:
        """Claim the sessions `due` selects and set `values` on those still in
        `from_states`, in one transaction; returns them as they were before."""
        s = models.sessions
        if self.backend == "postgresql":
            # One statement: the claim (row locks, SKIP LOCKED) in a CTE, the UPDATE joined to
            # it by the locked rows' physical address (joined by key, the planner hashes the
            # whole table every batch), RETURNING the CTE's columns: the rows as they were.
            row_address: sa.ColumnClause[Any] = sa.literal_column("sessions.ctid")
            claimed = (
                due.add_columns(row_address.label("row_address"))
                .with_for_update(skip_locked=True, of=s)
                .cte("due")
            )
            update = (
                sa.update(s)
                .where(
                    row_address == claimed.c.row_address,
                    # Redundant, but it tells SQLAlchemy the two are joined.
                    s.c.id == claimed.c.id,
                    s.c.state.in_(from_states),
                )
                .values(**values, version=s.c.version + 1)
                .returning(*(claimed.c[column.name] for column in s.c))
            )
            return [dict(row._mapping) for row in await conn.execute(update)]
        # SQLite's RETURNING cannot name another table, and its one writer needs no claim.
        rows = [dict(row._mapping) for row in await conn.execute(due)]
        if not rows:
            return []
        changed = await conn.execute(
            sa.update(s)
            .where(
                sa.tuple_(s.c.user_id, s.c.id).in_([_key(row) for row in rows]),
                s.c.state.in_(from_states),
            )
            .values(**values, version=s.c.version + 1)
            .returning(s.c.user_id, s.c.id)
        )
        done = {(user_id, session_id) for user_id, session_id in changed}
        return [row for row in rows if _key(row) in done]

    @whole
    async def delete_idle_threads(self, idle_since: datetime, limit: int) -> list[str]:
        """Delete up to `limit` threads (with their items, events and runs) not updated since
        `idle_since`, the longest idle first; never one that a run holds or waits for."""
        t, r = models.threads, models.runs
        idle = (
            sa.select(t.c.id)
            .where(
                t.c.updated_at < idle_since,
                t.c.active_run_id.is_(None),
                ~sa.exists().where(r.c.thread_id == t.c.id, r.c.status.in_(OPEN_RUN_STATUSES)),
            )
            .order_by(t.c.updated_at)
            .limit(limit)
            .with_for_update(skip_locked=True, of=t)
        )
        async with self.write() as conn:
            thread_ids = list((await conn.execute(idle)).scalars())
            if not thread_ids:
                return []
            # Children first, as delete_thread does: both backends alike, FK or not.
            for child in (models.events, models.items, models.runs):
                await conn.execute(sa.delete(child).where(child.c.thread_id.in_(thread_ids)))
            await conn.execute(sa.delete(t).where(t.c.id.in_(thread_ids)))
        return thread_ids

    async def find_sessions(
        self,
        *,
        limit: int,
        session_id: str | None = None,
        user_id: str | None = None,
        states: Collection[str] = (),
        policy: str | None = None,
    ) -> list[SessionRow]:
        """An operator's search, most recently active first."""
        s = models.sessions
        query = sa.select(s).order_by(s.c.last_activity_at.desc(), s.c.id).limit(limit)
        if session_id is not None:
            query = query.where(s.c.id == session_id)
        if user_id is not None:
            query = query.where(s.c.user_id == user_id)
        if states:
            query = query.where(s.c.state.in_(states))
        if policy is not None:
            query = query.where(s.c.timeout_policy == policy)
        async with self.read() as conn:
            return [as_row(SessionRow, row) for row in await conn.execute(query)]

    async def has_open_run_in_session(self, user_id: str, session_id: str) -> bool:
        r = models.runs
        query = sa.select(r.c.id).where(
            r.c.user_id == user_id,
            r.c.session_id == session_id,
            r.c.status.in_(OPEN_RUN_STATUSES),
        )
        async with self.read() as conn:
            return (await conn.scalar(query.limit(1))) is not None

    @asynccontextmanager
    async def reaper_lock(self) -> AsyncIterator[bool]:
        """Whether this process may reap now: on PostgreSQL, the one holder across instances
        of a session advisory lock, kept on a connection for the whole pass (a process that
        dies lets it go with its connection). SQLite's single writer serializes batches, so
        there it is always granted."""
        if self.backend != "postgresql":
            yield True
            return
        key = {"key": _REAPER_LOCK_KEY}
        async with self.engine.connect() as conn:
            with _unavailable_when_unreachable():
                held = bool(
                    await conn.scalar(
                        sa.text("SELECT pg_try_advisory_lock(hashtextextended(:key, 0))"), key
                    )
                )
                await conn.commit()
            try:
                yield held
            finally:
                if held:
                    await _unlock(conn, key)


async def _unlock(conn: AsyncConnection, key: dict[str, str]) -> None:
    try:
        await conn.execute(sa.text("SELECT pg_advisory_unlock(hashtextextended(:key, 0))"), key)
        await conn.commit()
    except BaseException:
        # A connection back in the pool still holding the lock would stop every reaper
        # until it closes: drop it instead.
        await conn.invalidate()
        raise
