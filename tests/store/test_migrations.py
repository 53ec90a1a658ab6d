"""The shipped alembic migrations build exactly the schema of the table models, idempotently."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel

from chatserver.store import Store, migrations, models
from chatserver.store.models import ThreadRow

T0 = datetime(2026, 1, 1, tzinfo=UTC)
MODEL_TABLES = {"sessions", "threads", "items", "events", "runs", "instances"}


def sync_url(url: str) -> sa.URL:
    parsed = sa.make_url(url)
    return parsed.set(drivername="sqlite") if parsed.get_backend_name() == "sqlite" else parsed


def schema_differences(url: str) -> list[Any]:
    engine = sa.create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, SQLModel.metadata))
    finally:
        engine.dispose()


def schema(url: str) -> dict[str, Any]:
    """What the database holds: tables, columns, keys, indexes and the alembic revision."""
    engine = sa.create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            tables = {
                name: {
                    "columns": [
                        (c["name"], str(c["type"]), c["nullable"])
                        for c in inspector.get_columns(name)
                    ],
                    "pk": inspector.get_pk_constraint(name)["constrained_columns"],
                    "fks": sorted(
                        (fk["constrained_columns"], fk["referred_table"], fk["options"])
                        for fk in inspector.get_foreign_keys(name)
                    ),
                    "indexes": sorted(
                        (i["name"], i["column_names"], i["unique"])
                        for i in inspector.get_indexes(name)
                    ),
                }
                for name in inspector.get_table_names()
            }
            revision = MigrationContext.configure(conn).get_current_revision()
            return {"tables": tables, "revision": revision}
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    return set(schema(url)["tables"]) - {"alembic_version"}


def head() -> str:
    heads = ScriptDirectory.from_config(migrations.config()).get_heads()
    assert len(heads) == 1
    return heads[0]


def run_migrate(url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "chatserver", "migrate", "--database-url", url]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_revisions_form_one_line_from_a_single_initial_one() -> None:
    script = ScriptDirectory.from_config(migrations.config())

    revisions = list(script.walk_revisions())  # newest first

    assert revisions[0].revision == head()
    assert [r.down_revision for r in revisions] == [
        *(r.revision for r in revisions[1:]),
        None,
    ]


def test_an_empty_database_differs_from_the_models(empty_database_url: str) -> None:
    # Guards the comparison below: it does see missing tables.
    differences = schema_differences(empty_database_url)

    assert {d[1].name for d in differences if d[0] == "add_table"} == MODEL_TABLES


def test_upgrade_builds_exactly_the_tables_of_the_models(empty_database_url: str) -> None:
    migrations.upgrade(empty_database_url)

    assert schema_differences(empty_database_url) == []
    assert table_names(empty_database_url) == MODEL_TABLES == set(SQLModel.metadata.tables)
    assert schema(empty_database_url)["revision"] == head()


def test_upgrade_on_a_migrated_database_changes_nothing(empty_database_url: str) -> None:
    migrations.upgrade(empty_database_url)
    before = schema(empty_database_url)

    migrations.upgrade(empty_database_url)

    assert schema(empty_database_url) == before


def test_downgrade_to_base_removes_every_table(empty_database_url: str) -> None:
    migrations.upgrade(empty_database_url)
    command.downgrade(migrations.config(empty_database_url), "base")

    assert table_names(empty_database_url) == set()


async def test_upgrade_connection_migrates_inside_a_running_event_loop(
    empty_database_url: str,
) -> None:
    engine = create_async_engine(empty_database_url, poolclass=sa.NullPool)
    try:
        async with engine.begin() as conn:
            await migrations.upgrade_connection(conn)
    finally:
        await engine.dispose()

    assert schema_differences(empty_database_url) == []


async def test_the_store_works_on_a_migrated_database(empty_database_url: str) -> None:
    engine = create_async_engine(empty_database_url, poolclass=sa.NullPool)
    try:
        async with engine.begin() as conn:
            await migrations.upgrade_connection(conn)
    finally:
        await engine.dispose()
    store = Store(empty_database_url)
    try:
        await store.create_schema()  # a no-op on a migrated database
        thread = ThreadRow(
            id="thr_01m87zj0xvz3r7gj4dyrhs3x7x",
            user_id="user-a",
            created_at=T0,
            updated_at=T0,
        )
        await store.insert_thread(thread)
        assert await store.get_thread(thread.id) == thread
    finally:
        await store.close()
    assert schema_differences(empty_database_url) == []


def test_migrate_command_twice_is_idempotent(empty_database_url: str, tmp_path: Path) -> None:
    first = run_migrate(empty_database_url, tmp_path)
    assert first.returncode == 0, first.stderr
    after_first = schema(empty_database_url)

    second = run_migrate(empty_database_url, tmp_path)
    assert second.returncode == 0, second.stderr

    assert schema(empty_database_url) == after_first
    assert after_first["revision"] == head()
    assert schema_differences(empty_database_url) == []
    assert "schema is up to date" in second.stdout


def test_the_migration_scripts_ship_inside_the_package() -> None:
    package = Path(models.__file__).parent / "migrations"

    assert migrations.SCRIPT_LOCATION == package
    assert (package / "env.py").is_file()
    assert (package / "script.py.mako").is_file()
    assert list((package / "versions").glob("*.py"))
