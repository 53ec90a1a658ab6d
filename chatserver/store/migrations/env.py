"""Alembic environment: async drivers aware, URL from the caller or from chatserver Settings."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import sqlalchemy as sa
from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString

from chatserver.config import Settings
from chatserver.store import models

target_metadata = SQLModel.metadata
config = context.config


def _url() -> str:
    given = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    return str(given) if given else Settings().database_url


def _render_item(kind: str, obj: Any, autogen: AutogenContext) -> str | Literal[False]:
    """Render our column types as importable code, independent of sqlmodel's internals."""
    if kind != "type":
        return False
    if isinstance(obj, models.UTCDateTime):
        autogen.imports.add("import chatserver.store.models")
        return "chatserver.store.models.UTCDateTime()"
    if isinstance(obj, AutoString):
        return f"sa.String(length={obj.length})" if obj.length else "sa.String()"
    return False


def _configure(**options: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        render_item=_render_item,
        **options,
    )


def _run_offline() -> None:
    url = sa.make_url(_url())
    _configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.get_backend_name() == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: sa.Connection) -> None:
    # SQLite alters tables by copying them: batch mode does that for us.
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: sa.URL) -> None:
    engine = create_async_engine(url, poolclass=sa.NullPool)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run_on)
    finally:
        await engine.dispose()


def _run_online() -> None:
    given = config.attributes.get("connection")
    if isinstance(given, sa.Connection):
        _run_on(given)
        return
    url = sa.make_url(_url())
    if url.get_dialect().is_async:
        asyncio.run(_run_async(url))
        return
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            _run_on(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    _run_offline()
else:
    _run_online()
