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
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
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


@dataclass(frozen=True, slots=True)
class ExpiredSession:
    # The session as it was when it expired (state `expired`, its data still in it).
    row: SessionRow
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


def _tombstone_values(now: datetime) -> dict[str, Any]:
    """What cleaning removes: the metadata and the thread; what the session was (user,
    policy, times, counts, why it ended) stays for the id's protection and for analytics."""
    return {"state": SessionState.CLEANED_UP, "cleaned_at": now, "meta": {}, "thread_id": None}


async def _update_sessions(
    conn: AsyncConnection,
    rows: Sequence[SessionRow],
    from_states: Collection[SessionState],
    values: dict[str, Any],
) -> set[tuple[str, str]]:
    """One UPDATE of `rows` that are still in `from_states`; the keys it changed."""
    if not rows:
        return set()
    s = models.sessions
    key = sa.tuple_(s.c.user_id, s.c.id)
    result = await conn.execute(
        sa.update(s)
        .where(key.in_([(row.user_id, row.id) for row in rows]), s.c.state.in_(from_states))
        .values(**values, version=s.c.version + 1)
        .returning(s.c.user_id, s.c.id)
    )
    return {(user_id, session_id) for user_id, session_id in result}


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
            .with_for_update(skip_locked=True, of=s)
        )
        ended = {"ended_at": now, "end_reason": EndReason.EXPIRED}
        async with self.write() as conn:
            claimed = [as_row(SessionRow, row) for row in await conn.execute(due)]
            cleaned = [row for row in claimed if row.timeout_policy in tombstone]
            kept = [row for row in claimed if row.timeout_policy not in tombstone]
            done = await _update_sessions(
                conn, kept, LIVE_SESSION_STATES, {**ended, "state": SessionState.EXPIRED}
            )
            done |= await _update_sessions(
                conn, cleaned, LIVE_SESSION_STATES, {**ended, **_tombstone_values(now)}
            )
        return [
            ExpiredSession(
                row.model_copy(
                    update={**ended, "state": SessionState.EXPIRED, "version": row.version + 1}
                ),
                cleaned=row.timeout_policy in tombstone,
            )
            for row in claimed
            if (row.user_id, row.id) in done
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
    ) -> list[SessionRow]:
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
            .with_for_update(skip_locked=True, of=s)
        )
        async with self.write() as conn:
            claimed = [as_row(SessionRow, row) for row in await conn.execute(due)]
            done = await _update_sessions(
                conn, claimed, ENDED_SESSION_STATES, _tombstone_values(now)
            )
        return [row for row in claimed if (row.user_id, row.id) in done]

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
