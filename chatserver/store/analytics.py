"""Session analytics read from the rows, so every instance reports the same numbers.

Tombstones keep what analytics need (user, policy, times, counts, why and when the session
ended and was cleaned), so nothing here is lost when a session's data is removed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from chatserver.statuses import LIVE_SESSION_STATES, EndReason
from chatserver.store import models
from chatserver.store.database import Database


@dataclass(frozen=True, slots=True)
class Durations:
    """Seconds from a session's start to its last activity (to its close, if closed), over
    the sessions that ended in the window. Percentiles are nearest-rank."""

    count: int
    average: float | None
    p50: float | None
    p95: float | None


@dataclass(frozen=True, slots=True)
class UserCounts:
    user_id: str
    sessions: int
    turns: int
    resumes: int


@dataclass(frozen=True, slots=True)
class HourCounts:
    hour: datetime
    expired: int
    closed: int
    cleaned_up: int


@dataclass(frozen=True, slots=True)
class SessionStats:
    total: int
    by_state: dict[str, int]
    by_policy: dict[str, int]
    # Live and not yet past its expiry, whether or not the reaper has been by.
    active_now: int
    resumes: int
    turns: int
    window_start: datetime
    durations: Durations
    top_users: list[UserCounts]
    hourly: list[HourCounts]


@dataclass(frozen=True, slots=True)
class SessionGauges:
    by_state: dict[str, int]
    active_now: int


def hour_floor(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


class AnalyticsStore(Database):
    async def session_gauges(self, now: datetime) -> SessionGauges:
        """The two cheap figures a metrics scrape wants."""
        async with self.read() as conn:
            by_state = await _count_by(conn, models.sessions.c.state)
            return SessionGauges(by_state, await _active_now(conn, now))

    async def session_stats(self, now: datetime, *, hours: int, top: int) -> SessionStats:
        """Everything `/stats` reports; durations and the hourly counts cover the `hours`
        whole hours up to now (the current one included)."""
        s = models.sessions
        window_start = hour_floor(now) - timedelta(hours=hours - 1)
        async with self.read() as conn:
            by_state = await _count_by(conn, s.c.state)
            by_policy = await _count_by(conn, s.c.timeout_policy)
            sums = (
                await conn.execute(
                    sa.select(
                        sa.func.coalesce(sa.func.sum(s.c.resume_count), 0),
                        sa.func.coalesce(sa.func.sum(s.c.turn_count), 0),
                    )
                )
            ).one()
            return SessionStats(
                total=sum(by_state.values()),
                by_state=by_state,
                by_policy=by_policy,
                active_now=await _active_now(conn, now),
                resumes=int(sums[0]),
                turns=int(sums[1]),
                window_start=window_start,
                durations=await self._durations(conn, window_start),
                top_users=await _top_users(conn, top),
                hourly=await self._hourly(conn, window_start, hours),
            )

    async def _durations(self, conn: AsyncConnection, since: datetime) -> Durations:
        s = models.sessions
        end = sa.case(
            (s.c.end_reason == EndReason.CLOSED, s.c.ended_at), else_=s.c.last_activity_at
        )
        duration = self._seconds_between(s.c.created_at, end).label("duration")
        ended = sa.select(duration).where(s.c.ended_at >= since).subquery()
        count, average = (
            await conn.execute(sa.select(sa.func.count(), sa.func.avg(ended.c.duration)))
        ).one()
        if not count:
            return Durations(0, None, None, None)

        async def nearest_rank(fraction: float) -> float:
            query = (
                sa.select(ended.c.duration)
                .order_by(ended.c.duration)
                .offset(math.ceil(fraction * count) - 1)
                .limit(1)
            )
            return _seconds(await conn.scalar(query))

        return Durations(
            int(count), _seconds(average), await nearest_rank(0.5), await nearest_rank(0.95)
        )

    async def _hourly(self, conn: AsyncConnection, since: datetime, hours: int) -> list[HourCounts]:
        s = models.sessions
        counts: dict[str, dict[datetime, int]] = {}
        for name, column, condition in (
            ("expired", s.c.ended_at, s.c.end_reason == EndReason.EXPIRED),
            ("closed", s.c.ended_at, s.c.end_reason == EndReason.CLOSED),
            ("cleaned_up", s.c.cleaned_at, sa.true()),
        ):
            hour = self._hour(column).label("hour")
            query = (
                sa.select(hour, sa.func.count()).where(column >= since, condition).group_by(hour)
            )
            counts[name] = {_as_hour(bucket): int(n) for bucket, n in await conn.execute(query)}
        return [
            HourCounts(
                hour=hour,
                expired=counts["expired"].get(hour, 0),
                closed=counts["closed"].get(hour, 0),
                cleaned_up=counts["cleaned_up"].get(hour, 0),
            )
            for hour in (since + timedelta(hours=n) for n in range(hours))
        ]

    def _seconds_between(
        self, start: sa.ColumnElement[Any], end: sa.ColumnElement[Any]
    ) -> sa.ColumnElement[float]:
        if self.backend == "postgresql":
            return sa.cast(sa.extract("epoch", end - start), sa.Float)
        # SQLite keeps UTC timestamps as text, which julianday() reads (in days).
        return (sa.func.julianday(end) - sa.func.julianday(start)) * 86400.0

    def _hour(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        if self.backend == "postgresql":
            # In UTC whatever the connection's TimeZone, so buckets are whole UTC hours.
            return sa.func.date_trunc("hour", sa.func.timezone("UTC", column))
        return sa.func.strftime("%Y-%m-%d %H:00:00", column)


async def _count_by(conn: AsyncConnection, column: sa.ColumnElement[str]) -> dict[str, int]:
    query = sa.select(column, sa.func.count()).group_by(column).order_by(column)
    return {str(key): int(n) for key, n in await conn.execute(query)}


async def _active_now(conn: AsyncConnection, now: datetime) -> int:
    s = models.sessions
    query = sa.select(sa.func.count()).where(
        s.c.state.in_(LIVE_SESSION_STATES), s.c.expires_at > now
    )
    return int(await conn.scalar(query) or 0)


async def _top_users(conn: AsyncConnection, top: int) -> list[UserCounts]:
    s = models.sessions
    sessions = sa.func.count().label("sessions")
    query = (
        sa.select(
            s.c.user_id,
            sessions,
            sa.func.sum(s.c.turn_count),
            sa.func.sum(s.c.resume_count),
        )
        .group_by(s.c.user_id)
        .order_by(sessions.desc(), s.c.user_id)
        .limit(top)
    )
    return [
        UserCounts(str(user), int(n), int(turns or 0), int(resumes or 0))
        for user, n, turns, resumes in await conn.execute(query)
    ]


def _seconds(value: Any) -> float:
    return round(float(value), 3)


def _as_hour(bucket: Any) -> datetime:
    if isinstance(bucket, str):
        bucket = datetime.fromisoformat(bucket)
    assert isinstance(bucket, datetime)
    return bucket.replace(tzinfo=UTC) if bucket.tzinfo is None else bucket.astimezone(UTC)
