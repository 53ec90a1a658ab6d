"""Session analytics computed by the database, the same on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chatserver.ids import IdKind, new_id
from chatserver.store import Store
from chatserver.store.models import SessionRow

NOW = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)


def ended_session(
    *, user: str, seconds: int, ended: datetime, reason: str, cleaned: datetime | None = None
) -> SessionRow:
    created = ended - timedelta(seconds=seconds + 600)
    # The duration runs to the last activity, or to the close for a closed session.
    last_activity = created + timedelta(seconds=seconds) if reason == "expired" else created
    return SessionRow(
        id=new_id(IdKind.SESSION),
        user_id=user,
        state="cleaned_up" if cleaned else reason,
        timeout_policy="standard",
        timeout_seconds=1800,
        created_at=created,
        last_activity_at=last_activity,
        expires_at=last_activity + timedelta(seconds=1800),
        ended_at=ended if reason == "expired" else created + timedelta(seconds=seconds),
        end_reason=reason,
        cleaned_at=cleaned,
        resume_count=1,
        turn_count=2,
    )


async def test_durations_are_averaged_and_ranked_over_the_sessions_ended_in_the_window(
    store: Store,
) -> None:
    for n in range(1, 21):
        reason = "expired" if n % 2 else "closed"
        await store.insert_session(
            ended_session(user=f"u{n % 3}", seconds=n * 10, ended=NOW, reason=reason)
        )
    # Ended before the window: not counted in durations.
    await store.insert_session(
        ended_session(user="u0", seconds=99_999, ended=NOW - timedelta(days=2), reason="expired")
    )

    stats = await store.session_stats(NOW, hours=24, top=2)

    durations = stats.durations
    assert (durations.count, durations.average) == (20, 105.0)
    # Nearest rank: the 10th and the 19th of 10, 20, ..., 200.
    assert (durations.p50, durations.p95) == (100.0, 190.0)
    assert stats.total == 21
    assert stats.by_state == {"closed": 10, "expired": 11}
    assert (stats.resumes, stats.turns) == (21, 42)
    assert [(u.user_id, u.sessions) for u in stats.top_users] == [("u0", 7), ("u1", 7)]


async def test_expiries_closes_and_cleanups_are_counted_per_utc_hour(store: Store) -> None:
    hour = NOW.replace(minute=0)
    for ended, reason, cleaned in [
        (hour - timedelta(hours=1, minutes=-5), "expired", None),
        (hour - timedelta(hours=1, minutes=-59), "expired", hour + timedelta(minutes=1)),
        (hour + timedelta(minutes=20), "closed", hour + timedelta(minutes=20)),
        (hour - timedelta(hours=5), "expired", hour - timedelta(minutes=30)),
    ]:
        await store.insert_session(
            ended_session(user="u", seconds=60, ended=ended, reason=reason, cleaned=cleaned)
        )

    stats = await store.session_stats(NOW, hours=3, top=10)

    assert stats.window_start == hour - timedelta(hours=2)
    assert [(h.hour, h.expired, h.closed, h.cleaned_up) for h in stats.hourly] == [
        (hour - timedelta(hours=2), 0, 0, 0),
        (hour - timedelta(hours=1), 2, 0, 1),
        (hour, 0, 1, 2),
    ]


async def test_an_empty_database_has_all_zero_stats(store: Store) -> None:
    stats = await store.session_stats(NOW, hours=1, top=5)
    gauges = await store.session_gauges(NOW)

    assert (stats.total, stats.active_now, stats.resumes, stats.turns) == (0, 0, 0, 0)
    assert (stats.durations.count, stats.durations.p50) == (0, None)
    assert stats.top_users == []
    assert [(h.expired, h.closed, h.cleaned_up) for h in stats.hourly] == [(0, 0, 0)]
    assert (gauges.by_state, gauges.active_now) == ({}, 0)
