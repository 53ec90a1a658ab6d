"""The connection side of the Store: engines per backend, locked write transactions, reads,
and the shield that lets a write finish whole when its caller is cancelled.

Writes run in short transactions under the key's lock: in process a KeyedLock, across
processes `pg_advisory_xact_lock` on PostgreSQL; SQLite has one writer connection whose
transactions start with BEGIN IMMEDIATE, so writers queue instead of failing "database is locked".
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Literal, ParamSpec, TypeVar

import psycopg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlmodel import SQLModel

from chatserver.errors import ServiceUnavailable
from chatserver.locks import KeyedLock
from chatserver.store.values import Order

logger = logging.getLogger(__name__)

Model = TypeVar("Model", bound=SQLModel)
Params = ParamSpec("Params")
Result = TypeVar("Result")

# Write transactions still finishing for callers that were cancelled (kept referenced).
_detached_writes: set[asyncio.Task[Any]] = set()


def whole(
    write: Callable[Params, Coroutine[Any, Any, Result]],
) -> Callable[Params, Coroutine[Any, Any, Result]]:
    """Run a write transaction to its end even if its caller is cancelled (a client that
    disconnects, a stopped turn): the caller stops waiting, the transaction still commits
    or rolls back whole and gives its connection back. Interrupted mid-statement, SQLite's
    single writer connection was lost with its write lock held, and every later write hung.
    """

    @functools.wraps(write)
    async def run_whole(*args: Params.args, **kwargs: Params.kwargs) -> Result:
        task = asyncio.ensure_future(write(*args, **kwargs))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                _detached_writes.add(task)
                task.add_done_callback(_forget_detached)
            raise

    return run_whole


def _forget_detached(task: asyncio.Task[Any]) -> None:
    _detached_writes.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error(
            "a write finished after its caller left, and failed", exc_info=task.exception()
        )


def as_row(model: type[Model], row: sa.Row[Any]) -> Model:
    return model(**row._mapping)


class Database:
    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url = url
        self.backend: Literal["sqlite", "postgresql"] = (
            "sqlite" if url.startswith("sqlite") else "postgresql"
        )
        self._locks = KeyedLock()
        if self.backend == "sqlite":
            # One writer connection: several only busy-wait on SQLite's file lock.
            self._writer = create_async_engine(url, echo=echo, pool_size=1, max_overflow=0)
            self._reader = create_async_engine(url, echo=echo, pool_size=4, max_overflow=4)
            _configure_sqlite(self._writer, immediate=True)
            _configure_sqlite(self._reader, immediate=False)
            self._writer_gate: asyncio.Lock | None = asyncio.Lock()
        else:
            self._writer = create_async_engine(
                url, echo=echo, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
            )
            self._reader = self._writer
            self._writer_gate = None

    @property
    def engine(self) -> AsyncEngine:
        return self._writer

    async def create_schema(self) -> None:
        async with self._writer.begin() as conn:
            await conn.run_sync(SQLModel.metadata.create_all)

    async def close(self) -> None:
        await self._writer.dispose()
        if self._reader is not self._writer:
            await self._reader.dispose()

    async def dedicated_connection(self, purpose: str) -> psycopg.AsyncConnection[Any]:
        """A PostgreSQL connection of its own, outside the pool, in autocommit: for what
        lives as long as a connection (LISTEN, a session-level advisory lock). TCP
        keepalives make a peer that vanished without closing it an error, not a hang."""
        if self.backend != "postgresql":
            raise RuntimeError("dedicated connections are PostgreSQL's")
        url = sa.make_url(self.url).set(drivername="postgresql")
        with _unavailable_when_unreachable():
            return await psycopg.AsyncConnection.connect(
                url.render_as_string(hide_password=False),
                autocommit=True,
                application_name=purpose[:63],
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
                connect_timeout=10,
            )

    async def ping(self) -> None:
        async with self._reader.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    @asynccontextmanager
    async def write(self, *lock_keys: str) -> AsyncIterator[AsyncConnection]:
        """A write transaction holding the locks of `lock_keys` (taken in sorted order)."""
        keys = sorted(set(lock_keys))
        with _unavailable_when_unreachable():
            async with self._transaction(keys) as conn:
                yield conn

    @asynccontextmanager
    async def _transaction(self, keys: Sequence[str]) -> AsyncIterator[AsyncConnection]:
        async with _hold_all(self._locks, keys):
            if self._writer_gate is not None:
                async with self._writer_gate, self._writer.begin() as conn:
                    yield conn
            else:
                async with self._writer.begin() as conn:
                    for key in keys:
                        await conn.execute(
                            sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                            {"key": key},
                        )
                    yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        with _unavailable_when_unreachable():
            async with self._reader.connect() as conn:
                yield conn

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[AsyncConnection]:
        """A read transaction whose statements all see one committed state of the database
        (SQLite: a WAL read transaction; PostgreSQL: REPEATABLE READ)."""
        with _unavailable_when_unreachable():
            async with self._reader.connect() as conn:
                if self.backend == "postgresql":
                    await conn.execution_options(isolation_level="REPEATABLE READ")
                async with conn.begin():
                    yield conn

    async def _get(self, table: sa.Table, model: type[Model], key: str) -> Model | None:
        async with self.read() as conn:
            found = (await conn.execute(sa.select(table).where(table.c.id == key))).first()
            return as_row(model, found) if found else None

    async def _page(
        self,
        query: sa.Select[Any],
        key: sa.ColumnElement[str],
        model: type[Model],
        limit: int,
        after: str | None,
        order: Order,
    ) -> tuple[list[Model], bool]:
        """Keyset paging on a time-sortable id: rows added meanwhile never shift a page."""
        if after is not None:
            query = query.where(key > after if order == "asc" else key < after)
        query = query.order_by(key.asc() if order == "asc" else key.desc()).limit(limit + 1)
        async with self.read() as conn:
            rows = [as_row(model, r) for r in await conn.execute(query)]
        return rows[:limit], len(rows) > limit


@contextmanager
def _unavailable_when_unreachable() -> Iterator[None]:
    """The database refusing or dropping connections, or too busy to take a write, is a
    temporary state callers can wait out (a turn's writer) or report as 503: say so in our
    own error. Anything else the database refuses (a constraint, bad data) stays as it is."""
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError, psycopg.OperationalError) as exc:
        raise ServiceUnavailable("the database is unavailable; retry shortly") from exc
    except sa.exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise ServiceUnavailable("the database is unavailable; retry shortly") from exc
        raise


@asynccontextmanager
async def _hold_all(locks: KeyedLock, keys: Sequence[str]) -> AsyncIterator[None]:
    if not keys:
        yield
        return
    async with locks.hold(keys[0]), _hold_all(locks, keys[1:]):
        yield


def _configure_sqlite(engine: AsyncEngine, *, immediate: bool) -> None:
    @sa.event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN, not the driver.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    @sa.event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
