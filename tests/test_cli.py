"""The `chatserver` command, run as a new user runs it: whatever the user can fix (a database
not migrated, a wrong URL, a bad setting) is one line saying what to do, and a failing exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatserver.cli import main
from chatserver.store import migrations


def chatserver(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CHATSERVER_")}
    return subprocess.run(
        [sys.executable, "-m", "chatserver", *args],
        cwd=cwd,
        env=environment | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr.strip()


def test_serve_on_an_unmigrated_postgresql_database_says_to_migrate(
    empty_postgres_url: str, tmp_path: Path
) -> None:
    # (The embedded SQLite database is migrated by `serve` itself.)
    result = chatserver("serve", "--port", "0", "--database-url", empty_postgres_url, cwd=tmp_path)

    assert result.returncode == 1
    assert one_line(result).startswith(
        "chatserver: the database has no chatserver schema yet: run `chatserver migrate` first"
    )


def test_serve_on_a_database_migrated_by_an_older_version_says_to_migrate(
    empty_database_url: str, tmp_path: Path
) -> None:
    migrations.upgrade(empty_database_url, "0001")

    result = chatserver("rotate-secret", "--database-url", empty_database_url, cwd=tmp_path)
    if not empty_database_url.startswith("sqlite"):
        served = chatserver(
            "serve", "--port", "0", "--database-url", empty_database_url, cwd=tmp_path
        )
        assert served.returncode == 1
        assert "at revision 0001" in one_line(served)

    assert result.returncode == 1
    message = one_line(result)
    assert f"at revision 0001, this chatserver needs {migrations.head()}" in message
    assert "run `chatserver migrate`" in message


@pytest.mark.parametrize("command", ["serve", "migrate", "rotate-secret"])
def test_a_sqlite_file_that_cannot_be_opened_is_one_line(command: str, tmp_path: Path) -> None:
    # In a process of its own: aiosqlite's worker thread outlives a failed connection.
    url = "sqlite+aiosqlite:///no/such/directory/chat.db"

    result = chatserver(command, "--database-url", url, cwd=tmp_path)

    assert result.returncode == 1
    assert one_line(result) == (
        f"chatserver: cannot use the database at {url}: unable to open database file"
    )


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """In-process runs see no CHATSERVER_* variable and no .env of the developer's."""
    for name in list(os.environ):
        if name.startswith("CHATSERVER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("clean_environment")
@pytest.mark.parametrize(
    ("url", "status", "says"),
    [
        ("postgres://root@127.0.0.1/test", 2, "unsupported database driver 'postgres'"),
        ("postgresql://root@127.0.0.1/test", 2, "must start with sqlite+aiosqlite://"),
        ("chat.db", 2, "not a database URL"),
        ("postgresql+psycopg://root@127.0.0.1:1/test", 1, "Connection refused"),
        ("postgresql+psycopg://root@no-such-host.invalid/test", 1, "no-such-host.invalid"),
    ],
)
@pytest.mark.parametrize("command", ["serve", "migrate", "rotate-secret"])
def test_a_wrong_database_url_is_one_clear_line(
    command: str, url: str, status: int, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    exit_status = main([command, "--database-url", url])

    out, err = capsys.readouterr()
    assert exit_status == status
    assert err.count("\n") == 1, err
    assert err.startswith("chatserver: ")
    assert says in err
    assert out == ""


@pytest.mark.usefixtures("clean_environment")
@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"CHATSERVER_SECRET_KEY": "change-me-in-production"}, "invalid secret_key: "),
        ({"CHATSERVER_BEARER_TOKENS": "t:anon_1"}, "starts with 'anon_'"),
        ({"CHATSERVER_PORT": "http"}, "invalid port: "),
    ],
)
def test_an_invalid_setting_is_one_line(
    env: dict[str, str],
    says: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    exit_status = main(["serve"])

    err = capsys.readouterr().err
    assert exit_status == 2
    assert err.count("\n") == 1, err
    assert says in err
