"""HTTP tests run against a real uvicorn server on a free port, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from http_harness import TOKENS, ControlledEcho, LiveServer, RunningApp

from chatserver.app import create_app
from chatserver.clock import ManualClock
from chatserver.config import Settings
from chatserver.http.serving import uvicorn_config
from chatserver.store import Store

StartServer = Callable[..., Awaitable[LiveServer]]


@pytest.fixture
async def start_server(database_url: str) -> AsyncIterator[StartServer]:
    """Start a server with some settings changed; every one started is stopped afterwards."""
    started: list[LiveServer] = []

    async def start(*, as_served: bool = False, **overrides: Any) -> LiveServer:
        """`as_served`: with the uvicorn configuration `chatserver serve` uses."""
        options: dict[str, Any] = {
            "database_url": database_url,
            "bearer_tokens": ",".join(f"{token}:{user}" for user, token in TOKENS.items()),
            "commit_window_ms": 2,
            "shutdown_grace_seconds": 1,
        }
        settings = Settings(**(options | overrides))
        store = Store(database_url)
        await store.create_schema()
        clock = ManualClock()
        chat = ControlledEcho(store, settings, clock=clock)
        app = create_app(chat, settings)
        config = None
        if as_served:
            config = uvicorn_config(app, settings, host="127.0.0.1", port=0, log_level="warning")
        running = await RunningApp.start(app, config)
        live = LiveServer(running, chat, store, clock, settings)
        started.append(live)
        return live

    try:
        yield start
    finally:
        for live in started:
            live.chat.hold.set()
            await live.close_clients()
            await live.running.stop()


@pytest.fixture
async def live(start_server: StartServer) -> LiveServer:
    return await start_server()
