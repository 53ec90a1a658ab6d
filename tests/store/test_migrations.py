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
MODEL_TABLES = {
    "sessions",
    "threads",
    "items",
    "events",
    "runs",
    "server_secrets",
    "instances",
}


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
                    # By name: a column a later revision adds comes last in the table.
                    "columns": sorted(
                        (c["name"], str(c["type"]), c["nullable"])
                        for c in inspector.get_columns(name)
                    ),
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


def test_0003_gives_ended_sessions_their_reason_and_the_reaper_partial_indexes(
    empty_database_url: str,
) -> None:
    migrations.upgrade(empty_database_url, "0002")
    engine = sa.create_engine(sync_url(empty_database_url))
    columns = (
        "id, user_id, state, timeout_policy, timeout_seconds, meta, created_at,"
        " last_activity_at, expires_at, resume_count, turn_count, version"
    )
    try:
        with engine.begin() as conn:
            for session_id, state in [
                ("ses_live-00001", "active"),
                ("ses_expired-01", "expired"),
                ("ses_closed-001", "closed"),
                ("ses_cleaned-01", "cleaned_up"),
            ]:
                conn.execute(
                    sa.text(
                        f"INSERT INTO sessions ({columns}) VALUES (:id, 'u', :state, 'standard',"
                        " 1800, '{}', :t, :t, :t, 0, 0, 1)"
                    ),
                    {"id": session_id, "state": state, "t": T0.replace(tzinfo=None)},
                )

        migrations.upgrade(empty_database_url)

        with engine.connect() as conn:
            reasons = dict(
                conn.execute(sa.text("SELECT id, end_reason FROM sessions ORDER BY id")).all()
            )
            indexes = {i["name"]: i for i in sa.inspect(conn).get_indexes("sessions")}
    finally:
        engine.dispose()
    # What a tombstone from before ended for is unknown: NULL, answered as expired.
    assert reasons == {
        "ses_cleaned-01": None,
        "ses_closed-001": "closed",
        "ses_expired-01": "expired",
        "ses_live-00001": None,
    }
    assert "ix_sessions_expires_at" not in indexes
    assert indexes["ix_sessions_due"]["column_names"] == ["expires_at"]
    assert indexes["ix_sessions_ended"]["column_names"] == ["ended_at"]
    if empty_database_url.startswith("postgresql"):
        # The partial predicates are what keep tombstones out of the reaper's scans.
        where = {
            name: index.get("dialect_options", {}).get("postgresql_where")
            for name, index in indexes.items()
        }
        assert "created" in str(where["ix_sessions_due"])
        assert "closed" in str(where["ix_sessions_ended"])


def test_migrations_build_the_schema_the_table_models_create(empty_database_url: str) -> None:
    engine = sa.create_engine(sync_url(empty_database_url))
    try:
        with engine.begin() as conn:
            SQLModel.metadata.create_all(conn)
        created = schema(empty_database_url)["tables"]
        with engine.begin() as conn:
            SQLModel.metadata.drop_all(conn)
    finally:
        engine.dispose()

    migrations.upgrade(empty_database_url)

    migrated = schema(empty_database_url)["tables"]
    migrated.pop("alembic_version")
    assert migrated == created
    assert migrated["sessions"]["pk"] == ["user_id", "id"]


def test_upgrading_from_the_initial_revision_keeps_the_sessions(empty_database_url: str) -> None:
    migrations.upgrade(empty_database_url, "0001")
    columns = {
        "state": "active",
        "timeout_policy": "standard",
        "timeout_seconds": 60,
        "meta": "{}",
        "created_at": T0.replace(tzinfo=None),
        "last_activity_at": T0.replace(tzinfo=None),
        "expires_at": T0.replace(tzinfo=None),
        "resume_count": 0,
        "turn_count": 0,
        "version": 1,
    }
    engine = sa.create_engine(sync_url(empty_database_url))
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO sessions (id, user_id, " + ", ".join(columns) + ") VALUES "
                    "('ses_kept-0000001', 'alice', :" + ", :".join(columns) + ")"
                ),
                columns,
            )

        migrations.upgrade(empty_database_url)

        with engine.begin() as conn:
            kept = conn.execute(sa.text("SELECT user_id, id FROM sessions")).all()
            # The same id under another user is now a different session.
            conn.execute(
                sa.text(
                    "INSERT INTO sessions (id, user_id, " + ", ".join(columns) + ") VALUES "
                    "('ses_kept-0000001', 'bob', :" + ", :".join(columns) + ")"
                ),
                columns,
            )
            both = conn.execute(sa.text("SELECT user_id FROM sessions ORDER BY user_id")).all()
    finally:
        engine.dispose()
    assert kept == [("alice", "ses_kept-0000001")]
    assert both == [("alice",), ("bob",)]
    assert schema_differences(empty_database_url) == []
