"""Alembic migrations shipped inside the package, so an installed chatserver can migrate itself.

No alembic.ini is needed: `config()` builds the alembic Config in code. For development,
`alembic -c chatserver/store/migrations/alembic.ini -x url=URL revision --autogenerate -m ...`
uses the same environment.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncConnection

from chatserver.store import models

SCRIPT_LOCATION = Path(__file__).resolve().parent
_VERSION_TABLE = "alembic_version"


def config(url: str | None = None) -> Config:
    """An alembic Config for our scripts; without `url`, env.py reads it from Settings."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    # Passed as an attribute, not a main option: ini interpolation would mangle a "%" in a URL.
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """`alembic upgrade head` on `url`. Runs its own event loop for async drivers, so call it
    outside a running loop; inside one, use `upgrade_connection`."""
    command.upgrade(config(url), revision)


async def upgrade_connection(conn: AsyncConnection, revision: str = "head") -> None:
    """`alembic upgrade head` inside the caller's connection and event loop."""

    def run(sync_conn: object) -> None:
        cfg = config()
        cfg.attributes["connection"] = sync_conn
        command.upgrade(cfg, revision)

    await conn.run_sync(run)


def head() -> str:
    """The revision this version of chatserver needs."""
    revision = ScriptDirectory.from_config(config()).get_current_head()
    assert revision is not None
    return revision


async def schema_problem(conn: AsyncConnection) -> str | None:
    """Why the database cannot serve this version of chatserver, in one line; None if it can.

    A database migrated by alembic must be at the head revision. One without alembic's
    bookkeeping passes if it holds every table (created by `Store.create_schema()`)."""

    def inspect(sync_conn: sa.Connection) -> tuple[str | None, set[str]]:
        tables = set(sa.inspect(sync_conn).get_table_names())
        if _VERSION_TABLE not in tables:
            return None, tables
        # Read directly: alembic's MigrationContext would log about itself on every check.
        revision = sync_conn.scalar(sa.text(f"SELECT version_num FROM {_VERSION_TABLE}"))
        return revision, tables

    revision, tables = await conn.run_sync(inspect)
    needed = head()
    expected = {model.name for model in models.ALL_TABLES}
    if revision is not None:
        if revision == needed:
            return None
        return f"the database schema is at revision {revision}, this chatserver needs {needed}"
    missing = sorted(expected - tables)
    if not missing:
        return None
    if len(missing) == len(expected):
        return "the database has no chatserver schema yet"
    return f"the database schema lacks the tables {', '.join(missing)}"
