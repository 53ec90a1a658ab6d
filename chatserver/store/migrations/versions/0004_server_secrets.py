"""Server secrets shared by every instance; sessions keyed per user.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

- `server_secrets`: the key that signs anonymous-user cookies is generated once and kept here,
  so every instance signs with the same key and none signs with a known constant.
- `sessions`: the primary key becomes (user_id, id). Clients may choose their session ids;
  keyed by id alone, an id one user took first was taken from every other user (404 for the
  rightful owner). The key leads with user_id, so the separate user_id index goes.

Downgrade restores the single-column key, which fails if two users hold the same session id.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import chatserver.store.models

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# PostgreSQL's name for an unnamed primary key, which is what the table models create.
_SESSIONS_PK = "sessions_pkey"


def upgrade() -> None:
    op.create_table(
        "server_secrets",
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.drop_index("ix_sessions_user_id", table_name="sessions")
    _set_sessions_key(["user_id", "id"])


def downgrade() -> None:
    _set_sessions_key(["id"])
    op.create_index("ix_sessions_user_id", "sessions", ["user_id"])
    op.drop_table("server_secrets")


def _set_sessions_key(columns: list[str]) -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(_SESSIONS_PK, "sessions", type_="primary")
        op.create_primary_key(_SESSIONS_PK, "sessions", columns)
        return
    # SQLite cannot alter a primary key: batch mode copies the table, here from a description
    # without any key, so that the new one is the only one.
    with op.batch_alter_table("sessions", recreate="always", copy_from=_unkeyed_sessions()) as b:
        b.create_primary_key(_SESSIONS_PK, columns)


def _unkeyed_sessions() -> sa.Table:
    return sa.Table(
        "sessions",
        sa.MetaData(),
        sa.Column("id", sa.String(length=80), nullable=False),
        sa.Column("user_id", sa.String(length=200), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("timeout_policy", sa.String(length=40), nullable=False),
        sa.Column("timeout_seconds", sa.Integer(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("thread_id", sa.String(length=80), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("last_activity_at", _utc(), nullable=False),
        sa.Column("expires_at", _utc(), nullable=False),
        sa.Column("resumed_at", _utc(), nullable=True),
        sa.Column("ended_at", _utc(), nullable=True),
        sa.Column("resume_count", sa.Integer(), nullable=False),
        sa.Column("turn_count", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("end_reason", sa.String(length=20), nullable=True),
        sa.Column("cleaned_at", _utc(), nullable=True),
        sa.Index("ix_sessions_ended_at", "ended_at"),
        sa.Index("ix_sessions_cleaned_at", "cleaned_at"),
        # Frozen copies of revision 0003's partial indexes.
        sa.Index(
            "ix_sessions_due",
            "expires_at",
            sqlite_where=sa.text("state IN ('active', 'created', 'resumed')"),
        ),
        sa.Index(
            "ix_sessions_ended",
            "ended_at",
            sqlite_where=sa.text("state IN ('closed', 'expired')"),
        ),
    )


def _utc() -> chatserver.store.models.UTCDateTime:
    return chatserver.store.models.UTCDateTime()
