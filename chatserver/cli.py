"""The `chatserver` command: `serve` runs the HTTP server, `migrate` applies the schema; the
operator's commands (`sessions`, `cleanup`, `stats`) are in `cli_admin`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any, get_args

import sqlalchemy as sa
from pydantic import ValidationError

from chatserver import cli_admin
from chatserver.config import ResponderChoice, Settings
from chatserver.store import migrations


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ValidationError as exc:
        print(f"chatserver: invalid settings\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s %(message)s"
    )
    if args.command == "migrate":
        return _migrate(settings)
    if args.command in cli_admin.COMMANDS:
        return cli_admin.run(args, settings)
    return _serve(settings)


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
    migrations.upgrade(settings.database_url)
    print(f"{_safe(settings.database_url)}: schema is up to date")
    return 0


def _serve(settings: Settings) -> int:
    import uvicorn

    from chatserver.app import create_default_app

    if settings.is_sqlite:
        # The embedded database needs no separate step: the first run creates it. PostgreSQL,
        # shared by several instances, is migrated explicitly with `chatserver migrate`.
        migrations.upgrade(settings.database_url)
    app = create_default_app(settings)
    print(f"chatserver on http://{settings.host}:{settings.port} ({_safe(settings.database_url)})")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower())
    return 0


def _safe(url: str) -> str:
    return sa.make_url(url).render_as_string(hide_password=True)
