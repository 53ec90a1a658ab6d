"""Shared fixtures. Every storage-backed test runs on SQLite and on PostgreSQL.

PostgreSQL comes from CHATSERVER_TEST_POSTGRES_URL (default: the local server at
127.0.0.1:5432), Redis (the Redis broker's tests) from CHATSERVER_TEST_REDIS_URL (default
redis://127.0.0.1:6379/0). Without them those cases skip with the reason, except under CI=true,
where an unreachable server fails the run: CI must never go green by skipping them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from chatserver.store import Store
from chatserver.store.models import SQLModel

POSTGRES_ADMIN_URL = os.environ.get(
    "CHATSERVER_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _with_database(url: str, name: str) -> str:
    return str(sa.make_url(url).set(database=name))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of our own for this test session, dropped at the end."""
    try:
        admin = psycopg.connect(_libpq(POSTGRES_ADMIN_URL), autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL unreachable at {POSTGRES_ADMIN_URL}: {exc}".strip()
        if IN_CI:
            pytest.fail(f"CI must run the PostgreSQL tests. {reason}", pytrace=False)
        pytest.skip(reason)
    name = f"chatserver_test_{uuid.uuid4().hex[:10]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(POSTGRES_ADMIN_URL, name)
    try:
        yield url
    finally:
        with psycopg.connect(_libpq(POSTGRES_ADMIN_URL), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


REDIS_URL = os.environ.get("CHATSERVER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis of the Redis broker's tests; like PostgreSQL, required under CI=true. Each
    test names its own channel, so nothing is shared with other users of that server."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        reason = f"Redis unreachable at {REDIS_URL}: {exc}"
        if IN_CI:
            pytest.fail(f"CI must run the Redis tests. {reason}", pytrace=False)
        pytest.skip(reason)
    return REDIS_URL


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'chatserver.db'}"
    url: str = request.getfixturevalue("postgres_url")
    _reset_postgres(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with nothing in it (for migrations and the CLI): a SQLite file, or a fresh
    PostgreSQL database beside the session's one, dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    yield request.getfixturevalue("empty_postgres_url")


@pytest.fixture
def empty_postgres_url(postgres_url: str) -> Iterator[str]:
    # The session's database proves PostgreSQL is reachable (skip, or fail under CI=true).
    name = f"chatserver_empty_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_libpq(postgres_url), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(postgres_url, name)
    finally:
        with psycopg.connect(_libpq(postgres_url), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_database_url(postgres_url: str) -> str:
    """PostgreSQL alone, emptied: for what needs PostgreSQL (instances sharing a database)."""
    _reset_postgres(postgres_url)
    return postgres_url


_schema_ready: set[str] = set()


def _reset_postgres(url: str) -> None:
    """Each test starts from empty tables; the schema is created once per database."""
    sync_url = url.replace("+psycopg", "+psycopg", 1)
    engine = sa.create_engine(sync_url)
    try:
        with engine.begin() as conn:
            if url not in _schema_ready:
                SQLModel.metadata.drop_all(conn)
                SQLModel.metadata.create_all(conn)
                _schema_ready.add(url)
            else:
                names = ", ".join(t.name for t in SQLModel.metadata.sorted_tables)
                conn.execute(sa.text(f"TRUNCATE {names} CASCADE"))
    finally:
        engine.dispose()


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = Store(database_url)
    await store.create_schema()
    try:
        yield store
    finally:
        await store.close()
