"""`python -m bench` in its tiniest mode: the end-to-end bench still runs, on every server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import POSTGRES_ADMIN_URL

ROOT = Path(__file__).resolve().parents[2]
SERVERS = {"reference", "ours-sqlite", "ours-postgresql", "bare"}


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(240)
def test_the_smoke_run_drives_every_server_and_checks_every_transcript(
    postgres_url: str, tmp_path: Path
) -> None:
    # postgres_url: skips without PostgreSQL (fails under CI); the bench makes its own database.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--smoke",
            "--postgres-url",
            POSTGRES_ADMIN_URL,
            "--output",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    (written,) = tmp_path.glob("e2e-*.json")
    result = json.loads(written.read_text())
    rows = result["throughput"]
    assert {(r["server"], r["clients"]) for r in rows} == {
        (server, clients) for server in SERVERS for clients in (1, 4)
    }
    for row in rows:
        assert row["errors"] == 0, row
        assert row["turns_ok"] == row["clients"] * row["turns"], row
        assert row["events"] > 0 and row["first_event_p50"] is not None, row
    assert {r["server"] for r in result["cost_model"]} == SERVERS
    pace = result["pace"]
    assert {r["server"] for r in pace} == SERVERS - {"bare"}
    for row in pace:
        assert row["errors"] == 0 and row["probe_errors"] == [], row
        assert row["get_by_id_p99"] is not None and row["readyz_p99"] is not None, row
    assert "x ref" in done.stdout and "issue 12 targets" in done.stdout


@pytest.mark.slow
def test_the_statement_count_reports_a_turns_transactions() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.statements", "--turns", "2", "--words", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    summary = done.stdout.splitlines()[0]
    assert "write transactions" in summary and "aiosqlite hand-offs" in summary, summary
    statements = float(summary.split(": ", 1)[1].split(" statements")[0])
    assert statements > 0, summary
