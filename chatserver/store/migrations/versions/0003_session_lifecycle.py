"""Session lifecycle: tombstones say why and when, and the background duties get their indexes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

`sessions.end_reason` (expired | closed) and `sessions.cleaned_at` let a tombstone answer the
right error and let analytics count expiries and cleanups after the data is gone. The reaper's
queues get partial indexes (live sessions by `expires_at`, ended ones by `ended_at`; open runs
by session), so its scans never walk the tombstones that pile up behind them. Sessions ended
before this revision get their reason from their state; old tombstones have no known reason
or cleaning time and keep NULL.

On a large PostgreSQL database the index builds lock writes to their table while they run;
migrate in a quiet moment.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import chatserver.store.models

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the models' predicates: a migration must not change when the code does.
_LIVE = "state IN ('active', 'created', 'resumed')"
_ENDED = "state IN ('closed', 'expired')"
_OPEN_RUNS = "status IN ('queued', 'running')"


def _partial(name: str, table: str, column: str, where: str) -> None:
    op.create_index(
        name,
        table,
        [column],
        postgresql_where=sa.text(where),
        sqlite_where=sa.text(where),
    )


def upgrade() -> None:
    op.add_column("sessions", sa.Column("end_reason", sa.String(length=20), nullable=True))
    op.add_column(
        "sessions",
        sa.Column("cleaned_at", chatserver.store.models.UTCDateTime(), nullable=True),
    )
    op.execute(
        "UPDATE sessions SET end_reason = state WHERE state IN ('expired', 'closed')"
    )
    op.drop_index("ix_sessions_expires_at", table_name="sessions")
    _partial("ix_sessions_due", "sessions", "expires_at", _LIVE)
    _partial("ix_sessions_ended", "sessions", "ended_at", _ENDED)
    op.create_index("ix_sessions_cleaned_at", "sessions", ["cleaned_at"])
    op.create_index("ix_threads_updated_at", "threads", ["updated_at"])
    _partial("ix_runs_open_session", "runs", "session_id", _OPEN_RUNS)


def downgrade() -> None:
    op.drop_index("ix_runs_open_session", table_name="runs")
    op.drop_index("ix_threads_updated_at", table_name="threads")
    op.drop_index("ix_sessions_cleaned_at", table_name="sessions")
    op.drop_index("ix_sessions_ended", table_name="sessions")
    op.drop_index("ix_sessions_due", table_name="sessions")
    op.create_index("ix_sessions_expires_at", "sessions", ["expires_at"])
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("cleaned_at")
        batch.drop_column("end_reason")
