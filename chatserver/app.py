"""The ASGI application: `create_app(server, settings)` serves any ChatServer over HTTP."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware

from chatserver.config import Settings
from chatserver.http.auth import Authenticator, DefaultAuthenticator
from chatserver.http.cors import cors_middleware
from chatserver.http.errors import EXCEPTION_HANDLERS
from chatserver.http.middleware import ApiMiddleware
from chatserver.http.routes import routes
from chatserver.http.services import Services
from chatserver.http.sse import StreamRegistry
from chatserver.responders.echo import EchoChatServer
from chatserver.server import ChatServer
from chatserver.store import Store
from chatserver.store.migrations import schema_problem, upgrade_connection

logger = logging.getLogger(__name__)


def create_app(
    server: ChatServer,
    settings: Settings | None = None,
    *,
    authenticate: Authenticator | None = None,
    migrate: bool = False,
) -> Starlette:
    """Serve `server`. Its store and background tasks live as long as the app: the lifespan
    starts them and, on shutdown, ends the open streams, lets quick turns finish (stopping the
    rest with their partial answers kept) and closes the store.

    `authenticate(request) -> user_id` defaults to bearer tokens from the settings, else an
    anonymous user kept in a signed cookie (see `chatserver.http.auth`); a hook of your own
    must keep its user ids apart from another kind's. `migrate` applies the schema migrations
    at startup on SQLite (PostgreSQL, shared by instances, is migrated with `chatserver
    migrate`).
    """
    settings = settings or server.settings
    default_auth: DefaultAuthenticator | None = None
    if authenticate is None:
        authenticate = default_auth = DefaultAuthenticator(settings, server.store, server.clock)
    services = Services(
        server=server,
        settings=settings,
        authenticate=authenticate,
        streams=StreamRegistry(),
    )

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            if migrate and server.store.backend == "sqlite":
                async with server.store.engine.begin() as conn:
                    await upgrade_connection(conn)
            async with server.store.read() as conn:
                problem = await schema_problem(conn)
            if problem is not None:
                raise RuntimeError(f"{problem}: run `chatserver migrate` first")
            if default_auth is not None:
                await default_auth.start()
            await server.start()
        except BaseException:
            if default_auth is not None:
                await default_auth.close()
            await server.store.close()
            raise
        try:
            yield
        finally:
            services.streams.close_all()
            try:
                if default_auth is not None:
                    await default_auth.close()
                await server.close()
            finally:
                await server.store.close()

    app = Starlette(
        routes=routes(services),
        middleware=[*cors_middleware(settings), Middleware(ApiMiddleware)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.services = services
    return app


def create_default_app(settings: Settings | None = None) -> Starlette:
    """The echo server on the configured database: what `chatserver serve` runs."""
    settings = settings or Settings()
    store = Store(settings.database_url, pool_size=settings.database_pool_size)
    return create_app(EchoChatServer(store, settings), settings, migrate=True)
