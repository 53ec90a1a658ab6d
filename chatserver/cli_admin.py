"""The operator's commands of `chatserver`: `sessions list|show|close|expire`, `cleanup` and
`stats`. They work on the database directly (no server needs to run): tables for people,
`--json` for scripts, progress of long operations on stderr, and one line on stderr with a
non-zero exit for anything that goes wrong (bad arguments: 2, the rest: 1).

Listeners are the application's: sessions these commands end or clean run no
`on_session_*` hooks (the server's reaper, inside the application, does).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from chatserver.clock import SystemClock
from chatserver.config import CUSTOM_POLICY, Settings
from chatserver.errors import ChatServerError, ServiceUnavailable
from chatserver.metrics import stats_document
from chatserver.policies import TimeoutPolicies
from chatserver.reaper import Reaper, ReapReport
from chatserver.sessions import SessionManager
from chatserver.statuses import LIVE_SESSION_STATES, SessionState
from chatserver.store import Store, migrations
from chatserver.store.models import SessionRow

COMMANDS = frozenset({"sessions", "cleanup", "stats"})
_STATES = [state.value for state in SessionState]


class CliError(Exception):
    """Said on one line to stderr; the command exits 1."""


def add_commands(commands: Any, database_help: str) -> None:
    """Add the operator's commands to the `chatserver` parser's subcommands."""

    def command(
        parent: Any, name: str, help: str, description: str | None = None
    ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = parent.add_parser(
            name, help=help, description=description or help
        )
        parser.add_argument("--database-url", help=database_help)
        return parser

    sessions = commands.add_parser(
        "sessions", help="list, show, close or expire sessions", description="Manage sessions."
    )
    actions = sessions.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = command(actions, "list", "list sessions, most recently active first")
    listing.add_argument("--user", help="only this user's sessions")
    listing.add_argument(
        "--state", action="append", choices=_STATES, help="only sessions in this state (repeat)"
    )
    listing.add_argument("--policy", help="only sessions with this timeout policy")
    listing.add_argument(
        "--limit", type=_positive, default=50, help="at most this many (default 50)"
    )
    listing.add_argument("--json", action="store_true", help="print JSON")

    show = command(actions, "show", "show one session")
    show.add_argument("session_id", metavar="SESSION_ID")
    show.add_argument("--user", help="the session's user (needed if several users have the id)")
    show.add_argument("--json", action="store_true", help="print JSON")

    close = command(actions, "close", "close sessions now; their strategy then cleans them")
    close.add_argument("session_ids", nargs="+", metavar="SESSION_ID")
    close.add_argument("--user", help="the sessions' user (needed if several users have an id)")

    expire = command(
        actions,
        "expire",
        "expire sessions now, as if their timeout had passed",
        "Expire sessions now, as if their timeout had passed; their strategy then cleans them."
        " A session with a turn in progress is left alone, as the reaper would.",
    )
    expire.add_argument("session_ids", nargs="+", metavar="SESSION_ID")
    expire.add_argument("--user", help="the sessions' user (needed if several users have an id)")

    cleanup = command(
        commands,
        "cleanup",
        "run one reaper pass and say what it did",
        "Run one reaper pass: expire sessions whose time is up, clean ended sessions as their"
        " strategy says, delete threads past their retention. On PostgreSQL, if another"
        " instance is reaping right now, nothing is done (exit 1). The application's"
        " on_session_* listeners do not run for what this pass does.",
    )
    cleanup.add_argument(
        "--batch-size", type=_positive, help="rows per transaction (default: the setting)"
    )
    cleanup.add_argument("--json", action="store_true", help="print what it did as JSON")
    cleanup.add_argument("--quiet", action="store_true", help="no progress on stderr")

    stats = command(commands, "stats", "session analytics from the database")
    stats.add_argument(
        "--hours",
        type=_bounded(1, 24 * 31),
        default=24,
        help="hours covered by durations and per-hour counts (default 24)",
    )
    stats.add_argument("--top", type=_bounded(1, 1000), default=10, help="top users (default 10)")
    stats.add_argument("--json", action="store_true", help="print JSON (what GET /stats answers)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run an operator command; its exit status."""
    commands: dict[str, Callable[[Store, argparse.Namespace, Settings], Awaitable[None]]] = {
        "list": _list,
        "show": _show,
        "close": _close,
        "expire": _expire,
    }
    action = commands[args.action] if args.command == "sessions" else None
    main = action or (_cleanup if args.command == "cleanup" else _stats)
    # Reading the schema's revision is not news worth a log line.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        asyncio.run(_with_store(settings, lambda store: main(store, args, settings)))
    except CliError as exc:
        print(f"chatserver: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("chatserver: interrupted", file=sys.stderr)
        return 130
    return 0


async def _with_store(settings: Settings, work: Callable[[Store], Awaitable[None]]) -> None:
    url = settings.database_url
    _check_sqlite_file(url)
    store = Store(url, pool_size=1)
    try:
        await _check_schema(store, url)
        await work(store)
    except ServiceUnavailable as exc:
        raise CliError(f"cannot reach the database at {_safe(url)}: {_reason(exc)}") from exc
    except ChatServerError as exc:
        raise CliError(exc.message) from exc
    finally:
        await store.close()


def _check_sqlite_file(url: str) -> None:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    if not Path(parsed.database).is_file():
        # Opening it would create an empty file, and the command would report on nothing.
        raise CliError(f"no database file at {parsed.database}")


async def _check_schema(store: Store, url: str) -> None:
    head = ScriptDirectory.from_config(migrations.config()).get_current_head()
    async with store.read() as conn:
        current = await conn.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )
    if current is None:
        raise CliError(f"{_safe(url)} has no chatserver schema; run `chatserver migrate` first")
    if current != head:
        raise CliError(
            f"the schema of {_safe(url)} is at revision {current}, this chatserver needs {head};"
            " run `chatserver migrate`"
        )


# -- sessions ---------------------------------------------------------------------------------


async def _list(store: Store, args: argparse.Namespace, settings: Settings) -> None:
    rows = await store.find_sessions(
        limit=args.limit, user_id=args.user, states=args.state or (), policy=args.policy
    )
    if args.json:
        print(json.dumps([_session_json(row) for row in rows], indent=2))
        return
    if not rows:
        print("no sessions")
        return
    now = SystemClock().now()
    _table(
        ["ID", "USER", "STATE", "POLICY", "LAST ACTIVITY", "EXPIRES", "TURNS", "RESUMES"],
        [
            [
                row.id,
                row.user_id,
                _state(row, now),
                row.timeout_policy,
                _when(row.last_activity_at),
                _when(row.expires_at),
                str(row.turn_count),
                str(row.resume_count),
            ]
            for row in rows
        ],
        right=("TURNS", "RESUMES"),
    )


async def _show(store: Store, args: argparse.Namespace, settings: Settings) -> None:
    row = await _the_session(store, args.session_id, args.user)
    if args.json:
        print(json.dumps(_session_json(row), indent=2))
        return
    fields = _session_json(row)
    fields["state"] = _state(row, SystemClock().now())
    width = max(map(len, fields))
    for name, value in fields.items():
        shown = json.dumps(value) if isinstance(value, dict) else value
        print(f"{name + ':':<{width + 1}} {'-' if shown is None else shown}")


async def _close(store: Store, args: argparse.Namespace, settings: Settings) -> None:
    manager = _manager(store, settings)
    rows = [await _the_session(store, sid, args.user) for sid in args.session_ids]
    for row in rows:
        if row.state not in LIVE_SESSION_STATES:
            print(f"{row.id}: already ended ({_ended_as(row)})")
            continue
        try:
            closed = await manager.close(row.user_id, row.id)
        except ChatServerError as exc:
            # It ended on its own between the look and the close.
            print(f"{row.id}: already ended ({exc.message})")
            continue
        print(f"{row.id}: {closed.state}")


async def _expire(store: Store, args: argparse.Namespace, settings: Settings) -> None:
    manager = _manager(store, settings)
    rows = [await _the_session(store, sid, args.user) for sid in args.session_ids]
    busy = []
    for row in rows:
        if row.state not in LIVE_SESSION_STATES:
            print(f"{row.id}: already ended ({_ended_as(row)})")
        elif await store.has_open_run_in_session(row.user_id, row.id):
            busy.append(row.id)
        else:
            print(f"{row.id}: {(await manager.expire(row.user_id, row.id)).state}")
    if busy:
        raise CliError(f"a turn is in progress in {', '.join(busy)}: left alone")


async def _the_session(store: Store, session_id: str, user_id: str | None) -> SessionRow:
    found = await store.find_sessions(limit=2, session_id=session_id, user_id=user_id)
    if not found:
        owner = "" if user_id is None else f" of user {user_id}"
        raise CliError(f"no session {session_id}{owner}")
    if len(found) > 1:
        raise CliError(f"several users have a session {session_id}: name one with --user")
    return found[0]


def _manager(store: Store, settings: Settings) -> SessionManager:
    return SessionManager(store, settings, SystemClock(), TimeoutPolicies.from_settings(settings))


def _session_json(row: SessionRow) -> dict[str, Any]:
    fields = row.model_dump(mode="json", exclude={"meta"})
    fields["metadata"] = row.meta
    return fields


def _state(row: SessionRow, now: datetime) -> str:
    if row.state in LIVE_SESSION_STATES and row.expires_at <= now:
        return f"{row.state} (due to expire)"
    return str(row.state)


def _ended_as(row: SessionRow) -> str:
    if row.end_reason is None or row.end_reason == row.state:
        return str(row.state)
    return f"{row.end_reason}, then {row.state}"


# -- cleanup and stats ------------------------------------------------------------------------


async def _cleanup(store: Store, args: argparse.Namespace, settings: Settings) -> None:
    if args.batch_size is not None:
        settings = settings.model_copy(update={"reaper_batch_size": args.batch_size})
    reaper = Reaper(_manager(store, settings))
    progress = Progress(sys.stderr, quiet=args.quiet)
    report = await reaper.run_once(
        lambda r: progress.show(
            f"expired {r.expired}, cleaned up {r.cleaned_up}, threads deleted"
            f" {r.threads_deleted} ({_count(r.batches, 'batch', 'batches')})"
        )
    )
    progress.done()
    if not report.reaped:
        raise CliError("another instance is reaping right now; nothing done, try again shortly")
    if args.json:
        print(json.dumps(_report_json(report), indent=2))
        return
    print(
        f"expired {_count(report.expired, 'session')}, cleaned up"
        f" {_count(report.cleaned_up, 'session')}, deleted"
        f" {_count(report.threads_deleted, 'thread')} in {report.seconds:.2f} s"
        f" ({_count(report.batches, 'batch', 'batches')} of at most"
        f" {settings.reaper_batch_size} rows)"
    )


def _report_json(report: ReapReport) -> dict[str, Any]:
    return {
        "expired": report.expired,
        "cleaned_up": report.cleaned_up,
        "threads_deleted": report.threads_deleted,
        "batches": report.batches,
        "seconds": round(report.seconds, 3),
    }


async def _stats(store: Store, args: argparse.Namespace, settings: Settings) -> None:
    now = SystemClock().now()
    stats = await store.session_stats(now, hours=args.hours, top=args.top)
    document = stats_document(
        stats,
        generated_at=now,
        hours=args.hours,
        policies=[*settings.policy_seconds(), CUSTOM_POLICY],
    )
    if args.json:
        print(json.dumps(document, indent=2))
        return
    sessions = document["sessions"]
    durations = sessions["duration_seconds"]
    print(f"Sessions: {sessions['total']} in all, {sessions['active_now']} active now")
    print(f"  by state:  {_pairs(sessions['by_state'])}")
    print(f"  by policy: {_pairs(sessions['by_policy'])}")
    print(f"  resumes {sessions['resumes']}, turns {sessions['turns']}")
    ended = durations["ended_in_window"]
    window = f"ended in the last {_count(args.hours, 'hour')}"
    if ended:
        print(
            f"Duration of the {_count(ended, 'session')} {window}: average"
            f" {_duration(durations['average'])}, p50 {_duration(durations['p50'])},"
            f" p95 {_duration(durations['p95'])}"
        )
    else:
        print(f"Duration: no session {window}")
    print()
    users = document["top_users"]
    if users:
        print(f"Top {_count(len(users), 'user')} by sessions")
        _table(
            ["USER", "SESSIONS", "TURNS", "RESUMES"],
            [[u["user_id"], *(str(u[k]) for k in ("sessions", "turns", "resumes"))] for u in users],
            right=("SESSIONS", "TURNS", "RESUMES"),
            indent="  ",
        )
        print()
    counted = ("expired", "closed", "cleaned_up")
    busy_hours = [h for h in document["hourly"] if any(h[k] for k in counted)]
    if not busy_hours:
        print(f"No session expired, closed or cleaned up in the last {_count(args.hours, 'hour')}")
        return
    print("Per hour (UTC; hours with none left out)")
    _table(
        ["HOUR", "EXPIRED", "CLOSED", "CLEANED UP"],
        [
            [
                datetime.fromisoformat(h["hour"]).strftime("%Y-%m-%d %H:00"),
                *(str(h[k]) for k in counted),
            ]
            for h in busy_hours
        ],
        right=("EXPIRED", "CLOSED", "CLEANED UP"),
        indent="  ",
    )


# -- output -----------------------------------------------------------------------------------


class Progress:
    """How a long operation is getting on, on stderr: rewritten in place on a terminal, a
    line every few seconds otherwise (into a log)."""

    _EVERY_SECONDS = 2.0

    def __init__(self, stream: TextIO, *, quiet: bool = False) -> None:
        self._stream = stream
        self._quiet = quiet
        self._tty = stream.isatty()
        self._last: float | None = None
        self._pending: str | None = None

    def show(self, text: str) -> None:
        if self._quiet:
            return
        if self._tty:
            self._stream.write(f"\r\x1b[2K{text}")
            self._stream.flush()
            self._last = 0.0
            return
        now = time.monotonic()
        if self._last is None or now - self._last >= self._EVERY_SECONDS:
            self._stream.write(text + "\n")
            self._stream.flush()
            self._last, self._pending = now, None
        else:
            self._pending = text

    def done(self) -> None:
        if self._quiet:
            return
        if self._tty and self._last is not None:
            self._stream.write("\n")
        elif self._pending is not None:
            self._stream.write(self._pending + "\n")
        self._stream.flush()


def _table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: Sequence[str] = (),
    indent: str = "",
) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    for line in (header, *rows):
        cells = [
            cell.rjust(width) if name in right else cell.ljust(width)
            for name, cell, width in zip(header, line, widths, strict=True)
        ]
        print(indent + "  ".join(cells).rstrip())


def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.items())


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _when(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _safe(url: str) -> str:
    return sa.make_url(url).render_as_string(hide_password=True)


def _reason(exc: BaseException) -> str:
    """The driver's first line: what failed, without the traceback's wall of text."""
    cause = exc.__cause__ or exc
    while isinstance(cause, sa.exc.DBAPIError) and cause.orig is not None:
        cause = cause.orig
    text = str(cause).strip().splitlines()
    return text[0] if text else type(cause).__name__


def _positive(value: str) -> int:
    return _bounded(1, 10**9)(value)


def _bounded(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"{number} is not between {low} and {high}")
        return number

    return parse
