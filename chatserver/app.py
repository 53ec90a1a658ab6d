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
from chatserver.http.instrument import MetricsMiddleware
from chatserver.http.middleware import ApiMiddleware
from chatserver.http.routes import routes
from chatserver.http.services import Services
from chatserver.http.sse import StreamRegistry
from chatserver.metrics import Metrics
from chatserver.reaper import Reaper
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
    starts them (the server's duties and the reaper) and, on shutdown, stops the reaper, ends
    the open streams, lets quick turns finish (stopping the rest with their partial answers
    kept) and closes the store.

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
    streams = StreamRegistry(server.broker)
    metrics = Metrics(server, streams.__len__)
    metrics.instrument(server)
    reaper = Reaper(server.sessions, server.broker)
    reaper.on_pass.append(metrics.record_pass)
    services = Services(
        server=server,
        settings=settings,
        authenticate=authenticate,
        streams=streams,
        metrics=metrics,
        reaper=reaper,
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
        reaper.start()
        try:
            yield
        finally:
            await reaper.stop()
            services.streams.close_all()
            try:
                if default_auth is not None:
                    await default_auth.close()
                await server.close()
            finally:
                await server.store.close()

    app = Starlette(
        routes=routes(services),
        # Metrics outside ApiMiddleware: they see every response, its 500s included; CORS
        # outermost, so that every answer, errors too, carries its headers.
        middleware=[
            *cors_middleware(settings),
            Middleware(MetricsMiddleware, metrics=metrics),
            Middleware(ApiMiddleware),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.services = services
    return app


def create_default_app(settings: Settings | None = None) -> Starlette:
    """What `chatserver serve` runs: the configured responder on the configured database."""
    settings = settings or Settings()
    store = Store(settings.database_url, pool_size=settings.database_pool_size)
    return create_app(default_server(store, settings), settings, migrate=True)


def default_server(store: Store, settings: Settings) -> ChatServer:
    """`settings.responder`; `auto` is the OpenAI responder when an API key or a base URL is
    configured, else the offline echo."""
    choice = settings.responder
    if choice == "auto":
        choice = "openai" if settings.openai_configured else "echo"
    if choice == "openai":
        from chatserver.responders.openai import OpenAIChatServer

        where = settings.openai_base_url or "the OpenAI API"
        logger.info("responder: openai, model %s at %s", settings.openai_model, where)
        return OpenAIChatServer(store, settings)
    logger.info(
        "responder: echo (offline; set CHATSERVER_OPENAI_API_KEY or CHATSERVER_OPENAI_BASE_URL"
        " to answer with a model)"
    )
    return EchoChatServer(store, settings)
