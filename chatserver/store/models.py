"""Table models: rows only, no behaviour. Timestamps are timezone-aware UTC on every backend."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from chatserver.statuses import ENDED_SESSION_STATES, LIVE_SESSION_STATES, OPEN_RUN_STATUSES


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """SQLite drops tzinfo; this puts UTC back so comparisons never mix naive and aware."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def without_nul(value: Any) -> Any:
    """PostgreSQL's text and JSONB cannot hold NUL (U+0000), even escaped: titles and
    metadata drop it, on every backend alike. Message text is stored as JSON text, where
    NUL is escaped, and is kept exactly."""
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    return value


class NulFreeText(sa.types.TypeDecorator[str]):
    impl = sa.String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: sa.Dialect) -> str | None:
        return None if value is None else without_nul(value)


class JSONDocument(sa.types.TypeDecorator[Any]):
    impl = sa.JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        return dialect.type_descriptor(JSONB() if dialect.name == "postgresql" else sa.JSON())

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        return without_nul(value)


def _utc_column(*, nullable: bool = False, index: bool = False) -> Any:
    if nullable:
        return Field(default=None, sa_type=UTCDateTime, nullable=True, index=index)
    return Field(sa_type=UTCDateTime, nullable=False, index=index)


def _in(column: str, values: Iterable[str]) -> str:
    return f"{column} IN ({', '.join(repr(str(v)) for v in sorted(values))})"


LIVE_STATES_SQL = _in("state", LIVE_SESSION_STATES)
ENDED_STATES_SQL = _in("state", ENDED_SESSION_STATES)
OPEN_RUNS_SQL = _in("status", OPEN_RUN_STATUSES)


def _partial_index(name: str, column: str, where: str) -> sa.Index:
    """An index of the rows a background duty looks for, so its scans never walk the rest
    (tombstones pile up behind `expires_at` and `ended_at` forever)."""
    return sa.Index(name, column, postgresql_where=sa.text(where), sqlite_where=sa.text(where))


class SessionRow(SQLModel, table=True):
    """A session is its user's: ids are unique per user, so an id one user chose (the widget
    picks its own) is never taken from another. The key leads with `user_id`, which also
    serves the queries by user."""

    __tablename__ = "sessions"
    __table_args__ = (
        sa.PrimaryKeyConstraint("user_id", "id"),
        # The reaper's queues: live sessions by expiry, ended ones by when they ended.
        _partial_index("ix_sessions_due", "expires_at", LIVE_STATES_SQL),
        _partial_index("ix_sessions_ended", "ended_at", ENDED_STATES_SQL),
    )

    id: str = Field(max_length=80)
    user_id: str = Field(max_length=200)
    state: str = Field(max_length=20)
    timeout_policy: str = Field(max_length=40)
    timeout_seconds: int
    meta: dict[str, Any] = Field(default_factory=dict, sa_type=JSONDocument)
    thread_id: str | None = Field(default=None, max_length=80)
    created_at: datetime = _utc_column()
    last_activity_at: datetime = _utc_column()
    expires_at: datetime = _utc_column()
    resumed_at: datetime | None = _utc_column(nullable=True)
    ended_at: datetime | None = _utc_column(nullable=True, index=True)
    # "expired" | "closed": why it ended, kept by its tombstone (for errors and analytics).
    end_reason: str | None = Field(default=None, max_length=20)
    # When its data was removed and it became a tombstone (state cleaned_up).
    cleaned_at: datetime | None = _utc_column(nullable=True, index=True)
    resume_count: int = 0
    turn_count: int = 0
    version: int = 1


class ThreadRow(SQLModel, table=True):
    __tablename__ = "threads"
    __table_args__ = (
        sa.Index("ix_threads_user_id_id", "user_id", "id"),
        # Thread retention finds the longest idle first.
        sa.Index("ix_threads_updated_at", "updated_at"),
    )

    id: str = Field(primary_key=True, max_length=80)
    user_id: str = Field(max_length=200)
    title: str | None = Field(default=None, sa_type=NulFreeText(500))
    meta: dict[str, Any] = Field(default_factory=dict, sa_type=JSONDocument)
    # idle | running; `active_run_id` names the run holding the thread.
    status: str = Field(default="idle", max_length=20)
    active_run_id: str | None = Field(default=None, max_length=80)
    created_at: datetime = _utc_column()
    updated_at: datetime = _utc_column()
    version: int = 1


class ItemRow(SQLModel, table=True):
    __tablename__ = "items"
    __table_args__ = (sa.Index("ix_items_thread_id_id", "thread_id", "id"),)

    id: str = Field(primary_key=True, max_length=80)
    thread_id: str = Field(
        sa_column_args=[sa.ForeignKey("threads.id", ondelete="CASCADE")], max_length=80
    )
    type: str = Field(max_length=40)
    # in_progress | completed | incomplete
    status: str = Field(max_length=20)
    # The item's wire JSON, stored once and served as-is.
    data: str = Field(sa_type=sa.Text)
    created_at: datetime = _utc_column()


class EventRow(SQLModel, table=True):
    __tablename__ = "events"

    thread_id: str = Field(
        primary_key=True,
        sa_column_args=[sa.ForeignKey("threads.id", ondelete="CASCADE")],
        max_length=80,
    )
    seq: int = Field(primary_key=True, sa_type=sa.BigInteger)
    run_id: str | None = Field(default=None, max_length=80)
    type: str = Field(max_length=60)
    # The event's wire JSON: replay forwards this text into SSE `data:` without decoding it.
    data: str = Field(sa_type=sa.Text)
    created_at: datetime = _utc_column()


class RunRow(SQLModel, table=True):
    __tablename__ = "runs"
    __table_args__ = (
        sa.UniqueConstraint("user_id", "idempotency_key", name="uq_runs_user_idempotency"),
        sa.Index("ix_runs_status_lease", "status", "lease_until"),
        # The reaper skips sessions with a turn in progress.
        _partial_index("ix_runs_open_session", "session_id", OPEN_RUNS_SQL),
    )

    id: str = Field(primary_key=True, max_length=80)
    thread_id: str = Field(
        index=True,
        sa_column_args=[sa.ForeignKey("threads.id", ondelete="CASCADE")],
        max_length=80,
    )
    user_id: str = Field(max_length=200)
    session_id: str | None = Field(default=None, max_length=80)
    # queued | running | completed | cancelled | failed
    status: str = Field(max_length=20)
    idempotency_key: str | None = Field(default=None, max_length=200)
    # What the request that carried the key asked for (sha256 hex): a retry must match it.
    request_hash: str | None = Field(default=None, max_length=64)
    cancel_requested: bool = False
    owner: str | None = Field(default=None, max_length=80)
    lease_until: datetime | None = _utc_column(nullable=True)
    # The thread's last seq when the run was accepted: its stream starts after it.
    start_seq: int = Field(default=0, sa_type=sa.BigInteger)
    created_at: datetime = _utc_column()
    finished_at: datetime | None = _utc_column(nullable=True)


class SecretRow(SQLModel, table=True):
    """Server-wide secrets every instance shares, such as the key that signs anonymous-user
    cookies when none is configured."""

    __tablename__ = "server_secrets"

    name: str = Field(primary_key=True, max_length=80)
    value: str = Field(max_length=200)
    created_at: datetime = _utc_column()


class InstanceRow(SQLModel, table=True):
    """A server process sharing the database: who owns runs, and whether it is still there."""

    __tablename__ = "instances"

    id: str = Field(primary_key=True, max_length=80)
    host: str = Field(max_length=255)
    pid: int
    started_at: datetime = _utc_column()
    # Renewed with the leases of its runs.
    heartbeat_at: datetime = _utc_column()
    # Set when it shut down cleanly: whatever it still owns has no owner.
    stopped_at: datetime | None = _utc_column(nullable=True)


def table(model: type[SQLModel]) -> sa.Table:
    result = model.__table__  # type: ignore[attr-defined]
    assert isinstance(result, sa.Table)
    return result


sessions = table(SessionRow)
threads = table(ThreadRow)
items = table(ItemRow)
events = table(EventRow)
runs = table(RunRow)
server_secrets = table(SecretRow)
instances = table(InstanceRow)
ALL_TABLES = (sessions, threads, items, events, runs, server_secrets, instances)
