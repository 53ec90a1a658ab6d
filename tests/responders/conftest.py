"""The OpenAI responder against a fake OpenAI-compatible server over real HTTP, with the real
`openai` client, on SQLite and PostgreSQL. Never a real model API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from chatserver.clock import ManualClock
from chatserver.config import Settings
from chatserver.responders.openai import OpenAIChatServer
from chatserver.responders.tools import Tool, ToolError, tool
from chatserver.server import ChatServer, RunHandle
from chatserver.sessions import RequestContext
from chatserver.store import Store, StoredEvent
from chatserver.types import (
    UserMessageInput,
    UserMessageTextContent,
    parse_stream_event,
    parse_thread_item,
)
from tests.responders.fake_openai import FakeOpenAI


@tool
async def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool(title="Looking up your account")
async def whoami(context: RequestContext) -> dict[str, str]:
    """The user's id."""
    return {"user_id": context.user_id}


@tool
async def refuse(reason: str) -> str:
    """Always refuses."""
    raise ToolError(f"refused: {reason}")


@tool
async def explode() -> str:
    """Always fails."""
    raise RuntimeError("kaboom")


TOOLS: list[Tool] = [add, whoami, refuse, explode]


class ToolServer(OpenAIChatServer):
    tools = TOOLS
    system_prompt = "You are a test assistant."


StartServer = Callable[..., Awaitable[OpenAIChatServer]]


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def start_server(
    store: Store, database_url: str, fake_openai: FakeOpenAI, clock: ManualClock
) -> AsyncIterator[StartServer]:
    """An OpenAI chat server on the fake; settings overridable per test."""
    started: list[OpenAIChatServer] = []

    async def start(cls: type[OpenAIChatServer] = ToolServer, **overrides: Any) -> OpenAIChatServer:
        options: dict[str, Any] = {
            "database_url": database_url,
            "commit_window_ms": 2,
            "openai_api_key": "sk-test",
            "openai_base_url": fake_openai.base_url,
            "openai_model": "fake-model",
            "openai_max_retries": 0,
            "openai_timeout_seconds": 10,
        }
        server = cls(store, Settings(**(options | overrides)), clock=clock)
        await server.start()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            await server.close(grace_seconds=1)


@pytest.fixture
async def server(start_server: StartServer) -> OpenAIChatServer:
    return await start_server()


def user_input(text: str) -> UserMessageInput:
    return UserMessageInput(content=[UserMessageTextContent(text=text)])


async def new_context(server: OpenAIChatServer, user: str = "alice") -> RequestContext:
    return await server.sessions.context(user, None)


async def collect(server: ChatServer, handle: RunHandle) -> list[StoredEvent]:
    return [event async for event in server.stream_run(handle)]


def payloads(events: list[StoredEvent]) -> list[dict[str, Any]]:
    return [json.loads(event.data) for event in events]


def parsed(events: list[StoredEvent]) -> list[Any]:
    return [parse_stream_event(event.data) for event in events]


async def stored_items(server: ChatServer, thread_id: str) -> list[tuple[str, str, Any]]:
    """(type, status, item) of every item of the thread, oldest first."""
    rows, _ = await server.store.list_items(thread_id, limit=100)
    return [(row.type, row.status, parse_thread_item(row.data)) for row in rows]
