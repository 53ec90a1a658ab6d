"""The operator's commands through the `chatserver` entry point (`chatserver.cli.main`, and a
real process for what only a process shows): exit codes, output, and the rows they change,
on a migrated SQLite and PostgreSQL database."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from chatserver.cli import main
from chatserver.clock import ManualClock, SystemClock
from chatserver.config import Settings
from chatserver.ids import IdKind, new_id
from chatserver.policies import TimeoutPolicies
from chatserver.sessions import SessionManager
from chatserver.statuses import RunStatus
from chatserver.store import Store, migrations
from chatserver.store import models as tables
from chatserver.store.models import RunRow, ThreadRow

MINUTE = 60


def _libpq(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def migrated_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of this test's own, migrated as `chatserver migrate` does."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
        migrations.upgrade(url)
        yield url
        return
    server_url: str = request.getfixturevalue("postgres_url")
    name = f"chatserver_cli_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_libpq(server_url), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        migrations.upgrade(url)
        yield url
    finally:
        with psycopg.connect(_libpq(server_url), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[int, str, str]:
    """`chatserver ARGV --database-url URL`: exit status, stdout, stderr."""
    try:
        status = main([*argv, "--database-url", url])
    except SystemExit as exit:
        status = int(exit.code or 0)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def at(url: str, **work: Any) -> Any:
    return asyncio.run(_at(url, **work))


async def _at(url: str, *, seed: Any = None, states: list[str] | None = None) -> Any:
    store = Store(url)
    try:
        if seed is not None:
            return await seed(store)
        assert states is not None
        found: dict[str, str] = {}
        async with store.read() as conn:
            query = sa.select(tables.sessions.c.id, tables.sessions.c.state).where(
                tables.sessions.c.id.in_(states)
            )
            found = dict((await conn.execute(query)).tuples().all())
        return [found.get(session_id) for session_id in states]
    finally:
        await store.close()


def manager_at(store: Store, minutes_ago: float) -> SessionManager:
    settings = Settings(database_url=store.url, _env_file=None)  # type: ignore[call-arg]
    clock = ManualClock(SystemClock().now() - timedelta(minutes=minutes_ago))
    return SessionManager(store, settings, clock, TimeoutPolicies.from_settings(settings))


async def seed_people(store: Store) -> dict[str, str]:
    """alice: one standard session idle 31 minutes, one lenient; bob: a persistent one with
    metadata; carol: a standard one idle 31 minutes whose turn is still running."""
    before = manager_at(store, 31)
    due = await before.context("alice", None, {"timeout_policy": "standard"})
    busy = await before.context("carol", None, {"timeout_policy": "standard"})
    now = manager_at(store, 0)
    lenient = await now.context("alice", None, {"timeout_policy": "lenient"})
    pro = await now.context(
        "bob", "ses_bob-laptop-01", {"timeout_policy": "persistent", "tier": "pro"}
    )
    stamp = now.clock.now()
    thread = ThreadRow(
        id=new_id(IdKind.THREAD), user_id="carol", created_at=stamp, updated_at=stamp
    )
    await store.insert_thread(thread)
    await store.insert_run(
        RunRow(
            id=new_id(IdKind.RUN),
            thread_id=thread.id,
            user_id="carol",
            session_id=busy.session.id,
            status=RunStatus.RUNNING,
            created_at=stamp,
        )
    )
    return {
        "due": due.session.id,
        "busy": busy.session.id,
        "lenient": lenient.session.id,
        "pro": pro.session.id,
    }


def test_sessions_list_shows_every_session_most_recent_first(
    migrated_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = at(migrated_url, seed=seed_people)

    status, out, err = run(capsys, migrated_url, "sessions", "list")

    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID", "USER", "STATE", "POLICY", "LAST", "ACTIVITY", "EXPIRES", "TURNS", "RESUMES",
    ]  # fmt: skip
    listed = [line.split()[0] for line in lines[1:]]
    assert set(listed[:2]) == {ids["lenient"], ids["pro"]}
    assert set(listed[2:]) == {ids["due"], ids["busy"]}
    due_line = next(line for line in lines if line.startswith(ids["due"]))
    assert "created (due to expire)" in due_line

    status, out, _ = run(capsys, migrated_url, "sessions", "list", "--user", "alice", "--json")
    assert status == 0
    assert {(s["id"], s["user_id"], s["state"]) for s in json.loads(out)} == {
        (ids["due"], "alice", "created"),
        (ids["lenient"], "alice", "created"),
    }
    status, out, _ = run(capsys, migrated_url, "sessions", "list", "--state", "closed")
    assert (status, out) == (0, "no sessions\n")


def test_sessions_show_prints_one_session_or_says_there_is_none(
    migrated_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    at(migrated_url, seed=seed_people)

    status, out, err = run(capsys, migrated_url, "sessions", "show", "ses_bob-laptop-01")
    assert (status, err) == (0, "")
    fields = dict(line.split(":", 1) for line in out.splitlines())
    assert fields["user_id"].strip() == "bob"
    assert json.loads(fields["metadata"]) == {"timeout_policy": "persistent", "tier": "pro"}

    status, out, _ = run(capsys, migrated_url, "sessions", "show", "ses_bob-laptop-01", "--json")
    assert (status, json.loads(out)["timeout_seconds"]) == (0, 7 * 24 * 60 * 60)

    status, out, err = run(capsys, migrated_url, "sessions", "show", "ses_nobody-at-all")
    assert (status, out, err) == (1, "", "chatserver: no session ses_nobody-at-all\n")
    status, _, err = run(
        capsys, migrated_url, "sessions", "show", "ses_bob-laptop-01", "--user", "alice"
    )
    assert (status, err) == (1, "chatserver: no session ses_bob-laptop-01 of user alice\n")


def test_sessions_close_and_expire_end_sessions_and_leave_a_running_turns_alone(
    migrated_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = at(migrated_url, seed=seed_people)

    status, out, err = run(capsys, migrated_url, "sessions", "close", ids["lenient"])
    assert (status, out, err) == (0, f"{ids['lenient']}: closed\n", "")
    status, out, _ = run(capsys, migrated_url, "sessions", "close", ids["lenient"])
    assert (status, out) == (0, f"{ids['lenient']}: already ended (closed)\n")

    status, out, err = run(capsys, migrated_url, "sessions", "expire", ids["pro"], ids["busy"])
    assert status == 1
    assert out == f"{ids['pro']}: expired\n"
    assert err == f"chatserver: a turn is in progress in {ids['busy']}: left alone\n"

    # An unknown id among them: nothing is done at all.
    status, out, err = run(capsys, migrated_url, "sessions", "expire", ids["due"], "ses_nope1234")
    assert (status, out, err) == (1, "", "chatserver: no session ses_nope1234\n")
    assert at(migrated_url, states=[ids["lenient"], ids["pro"], ids["busy"], ids["due"]]) == [
        "closed",
        "expired",
        "created",
        "created",
    ]


def test_cleanup_runs_one_pass_in_batches_and_says_what_it_did(
    migrated_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def seed(store: Store) -> list[str]:
        before = manager_at(store, 11)
        return [
            (
                await before.context(f"user{n % 7}", None, {"timeout_policy": "aggressive"})
            ).session.id
            for n in range(45)
        ]

    ids = at(migrated_url, seed=seed)

    status, out, err = run(capsys, migrated_url, "cleanup", "--batch-size", "10")

    assert status == 0
    assert out.startswith("expired 45 sessions, cleaned up 0 sessions, deleted 0 threads in ")
    assert out.endswith(" s (6 batches of at most 10 rows)\n")
    # Progress on stderr: the first batch at once, and where it ended.
    progress = err.splitlines()
    assert progress[0] == "expired 10, cleaned up 0, threads deleted 0 (1 batch)"
    assert progress[-1] == "expired 45, cleaned up 0, threads deleted 0 (6 batches)"
    assert set(at(migrated_url, states=ids)) == {"expired"}

    monkeypatch.setenv("CHATSERVER_CLEANUP_GRACE_SECONDS", "0")
    status, out, err = run(capsys, migrated_url, "cleanup", "--json", "--quiet")
    assert (status, err) == (0, "")
    report = json.loads(out)
    assert {k: report[k] for k in ("expired", "cleaned_up", "threads_deleted", "batches")} == {
        "expired": 0,
        "cleaned_up": 45,
        "threads_deleted": 0,
        "batches": 2,
    }
    assert set(at(migrated_url, states=ids)) == {"cleaned_up"}


def test_stats_prints_a_table_and_the_same_figures_as_json(
    migrated_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = at(migrated_url, seed=seed_people)
    run(capsys, migrated_url, "sessions", "close", ids["lenient"])

    status, out, err = run(capsys, migrated_url, "stats", "--json", "--top", "2")
    assert (status, err) == (0, "")
    document = json.loads(out)
    sessions = document["sessions"]
    assert (sessions["total"], sessions["active_now"]) == (4, 1)
    assert sessions["by_state"]["closed"] == 1
    assert sessions["by_policy"]["standard"] == 2
    assert [u["user_id"] for u in document["top_users"]] == ["alice", "bob"]
    assert len(document["hourly"]) == 24

    status, out, err = run(capsys, migrated_url, "stats")
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "Sessions: 4 in all, 1 active now"
    assert lines[1].split() == [
        "by", "state:", "created", "3,", "active", "0,", "resumed", "0,", "expired", "0,",
        "closed", "1,", "cleaned_up", "0",
    ]  # fmt: skip
    assert "Top 3 users by sessions" in lines
    hour = datetime.fromisoformat(document["hourly"][-1]["hour"]).strftime("%Y-%m-%d %H:00")
    assert lines[-1].split() == [*hour.split(), "0", "1", "0"]


@pytest.mark.parametrize(
    "argv",
    [
        ["sessions", "list"],
        ["sessions", "show"],
        ["sessions", "close"],
        ["sessions", "expire"],
        ["cleanup"],
        ["stats"],
        ["sessions"],
    ],
)
def test_every_command_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main([*argv, "--help"])

    out = capsys.readouterr().out
    assert exit.value.code == 0
    assert out.startswith(f"usage: chatserver {' '.join(argv)}")


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["sessions", "list", "--limit", "0"], "argument --limit: 0 is not between 1 and"),
        (["sessions", "list", "--state", "sleeping"], "argument --state: invalid choice"),
        (["sessions", "show"], "the following arguments are required: SESSION_ID"),
        (["cleanup", "--batch-size", "many"], "argument --batch-size: 'many' is not a whole"),
        (["stats", "--hours", "0"], "argument --hours: 0 is not between 1 and 744"),
        (["sessions", "forget"], "argument ACTION: invalid choice: 'forget'"),
    ],
)
def test_bad_arguments_exit_2_with_the_complaint_on_one_line(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit:
        main(argv)

    err = capsys.readouterr().err
    assert exit.value.code == 2
    assert complaint in err.splitlines()[-1]


def test_an_unmigrated_or_missing_database_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = f"sqlite+aiosqlite:///{tmp_path / 'nothing-here.db'}"
    assert run(capsys, missing, "stats") == (
        1,
        "",
        f"chatserver: no database file at {tmp_path / 'nothing-here.db'}\n",
    )
    assert not (tmp_path / "nothing-here.db").exists()

    empty = tmp_path / "empty.db"
    empty.touch()
    status, out, err = run(capsys, f"sqlite+aiosqlite:///{empty}", "sessions", "list")
    assert (status, out) == (1, "")
    assert err == (
        f"chatserver: sqlite+aiosqlite:///{empty} has no chatserver schema; run `chatserver"
        " migrate` first\n"
    )


def test_an_unreachable_database_is_one_line_and_exit_1_in_a_real_process(
    tmp_path: Path,
) -> None:
    url = "postgresql+psycopg://someone:secret@127.0.0.1:1/nowhere"

    done = subprocess.run(
        [sys.executable, "-m", "chatserver", "cleanup", "--database-url", url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )

    assert (done.returncode, done.stdout) == (1, "")
    [line] = done.stderr.splitlines()
    assert line.startswith(
        "chatserver: cannot reach the database at postgresql+psycopg://someone:***@127.0.0.1:1/"
        "nowhere: connection failed:"
    )
    assert "secret" not in done.stderr
