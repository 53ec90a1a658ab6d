"""The `chatserver` command: `serve` runs the HTTP server, `migrate` applies the schema,
`rotate-secret` replaces the generated cookie key; the operator's commands (`sessions`,
`cleanup`, `stats`) are in `cli_admin`. A problem a user can fix (bad settings, a database
that is unreachable or not migrated) is one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, get_args

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import create_async_engine

from chatserver import cli_admin
from chatserver.clock import SystemClock
from chatserver.config import ResponderChoice, Settings
from chatserver.store import Store, migrations
from chatserver.store import secrets as stored_secrets

# An unreachable host can take minutes to fail by itself.
_CONNECT_TIMEOUT_SECONDS = 10.0


class _Refused(Exception):
    """A problem to report in one line; exit status 1."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ValidationError as exc:
        for problem in exc.errors(include_url=False, include_input=False):
            where = ".".join(str(part) for part in problem["loc"]) or "settings"
            message = problem["msg"].removeprefix("Value error, ")
            print(f"chatserver: invalid {where}: {message}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s %(message)s"
    )
    if args.command in cli_admin.COMMANDS:
        return cli_admin.run(args, settings)
    try:
        if args.command == "migrate":
            return _migrate(settings)
        if args.command == "rotate-secret":
            return _rotate_secret(settings)
        return _serve(settings)
    except _Refused as exc:
        print(f"chatserver: {exc}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatserver", description="A respond()-driven, ChatKit-compatible chat server."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    database_help = "SQLAlchemy URL (default: CHATSERVER_DATABASE_URL or embedded SQLite)"

    migrate = commands.add_parser("migrate", help="apply database migrations (idempotent)")
    migrate.add_argument("--database-url", help=database_help)

    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", help="interface to bind (default: CHATSERVER_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default: CHATSERVER_PORT, 8000)")
    serve.add_argument("--database-url", help=database_help)
    serve.add_argument(
        "--responder",
        choices=get_args(ResponderChoice),
        help="what answers: echo, openai, or auto (default: CHATSERVER_RESPONDER, auto: openai "
        "when an API key or base URL is configured, else echo)",
    )

    rotate = commands.add_parser(
        "rotate-secret",
        help="replace the generated cookie signing key: every anonymous user starts afresh",
    )
    rotate.add_argument("--database-url", help=database_help)

    cli_admin.add_commands(commands, database_help)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    """Environment and .env first, command-line options over them."""
    overrides: dict[str, Any] = {
        name: value
        for name in ("database_url", "host", "port", "responder")
        if (value := getattr(args, name, None)) is not None
    }
    return Settings(**overrides)


def _migrate(settings: Settings) -> int:
    with _database_errors(settings.database_url):
        migrations.upgrade(settings.database_url)
    print(f"{_safe(settings.database_url)}: schema is up to date")
    return 0


def _serve(settings: Settings) -> int:
    from chatserver.app import create_default_app
    from chatserver.http.serving import uvicorn_config

    with _database_errors(settings.database_url):
        if settings.is_sqlite:
            # The embedded database needs no separate step: the first run creates it.
            # PostgreSQL, shared by several instances, is migrated with `chatserver migrate`.
            migrations.upgrade(settings.database_url)
        asyncio.run(_check_schema(settings.database_url))
    app = create_default_app(settings)
    print(f"chatserver on http://{settings.host}:{settings.port} ({_safe(settings.database_url)})")
    import uvicorn

    uvicorn.Server(uvicorn_config(app, settings)).run()
    return 0


def _rotate_secret(settings: Settings) -> int:
    if settings.secret_key is not None:
        raise _Refused(
            "the cookie key is configured (CHATSERVER_SECRET_KEY): set a new value there and "
            "restart every instance to rotate it"
        )
    with _database_errors(settings.database_url):
        asyncio.run(_check_schema(settings.database_url))
        asyncio.run(_store_new_cookie_key(settings.database_url))
    print(
        "rotated the cookie signing key: every anonymous-user cookie is now invalid; running "
        f"instances switch to the new key within {settings.secret_refresh_seconds:g} seconds"
    )
    return 0


async def _store_new_cookie_key(url: str) -> None:
    from chatserver.http.auth import new_secret_key

    store = Store(url, pool_size=1)
    try:
        await stored_secrets.replace(
            store, stored_secrets.COOKIE_KEY, new_secret_key(), SystemClock().now()
        )
    finally:
        await store.close()


async def _check_schema(url: str) -> None:
    engine = create_async_engine(url, poolclass=sa.NullPool)
    try:
        async with asyncio.timeout(_CONNECT_TIMEOUT_SECONDS), engine.connect() as conn:
            problem = await migrations.schema_problem(conn)
    finally:
        await engine.dispose()
    if problem is not None:
        raise _Refused(f"{problem}: run `chatserver migrate` first ({_safe(url)})")


@contextmanager
def _database_errors(url: str) -> Iterator[None]:
    """The database's own complaint, in one line (its first), with the URL it was about."""
    try:
        yield
    except TimeoutError:
        raise _Refused(
            f"cannot reach the database at {_safe(url)}: no answer within "
            f"{_CONNECT_TIMEOUT_SECONDS:g} seconds"
        ) from None
    except (sa.exc.DBAPIError, OSError) as exc:
        cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
        lines = str(cause).strip().splitlines() or [type(cause).__name__]
        raise _Refused(f"cannot use the database at {_safe(url)}: {lines[0]}") from None


def _safe(url: str) -> str:
    return sa.make_url(url).render_as_string(hide_password=True)
