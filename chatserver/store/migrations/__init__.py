"""Alembic migrations shipped inside the package, so an installed chatserver can migrate itself.

No alembic.ini is needed: `config()` builds the alembic Config in code. For development,
`alembic -c chatserver/store/migrations/alembic.ini -x url=URL revision --autogenerate -m ...`
uses the same environment.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncConnection

SCRIPT_LOCATION = Path(__file__).resolve().parent


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
