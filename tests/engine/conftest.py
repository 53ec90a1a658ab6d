"""A ChatServer whose respond() the test scripts: how many deltas, how fast, when to fail,
and where to pause, so a test can act mid-stream without sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from chatserver.clock import ManualClock
from chatserver.config import Settings
from chatserver.responders.messages import stream_assistant_message
from chatserver.server import ChatServer, RunHandle
from chatserver.sessions import RequestContext
from chatserver.store import Store, StoredEvent
from chatserver.types import (
    ChatKitEvent,
    ThreadMetadata,
    UserMessageInput,
    UserMessageItem,
    UserMessageTextContent,
)


class ResponderFailure(Exception):
    pass


@dataclass
class Script:
    deltas: int = 5
    # Pause (until `resume` is set) after this many deltas.
    pause_after: int | None = None
    fail_after: int | None = None
    paused: asyncio.Event = field(default_factory=asyncio.Event)
    resume: asyncio.Event = field(default_factory=asyncio.Event)


class ScriptedServer(ChatServer):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.script = Script()
        self.histories: list[list[str]] = []

    async def respond(
        self, thread: ThreadMetadata, input: UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[ChatKitEvent]:
        script = self.script
        self.histories.append([item.id for item in await context.history()])
        label = (
            input.content[0].text
            if input and isinstance(input.content[0], UserMessageTextContent)
            else "?"
        )

        async def chunks() -> AsyncIterator[str]:
            for n in range(script.deltas):
                if script.pause_after is not None and n == script.pause_after:
                    script.paused.set()
                    await script.resume.wait()
                if script.fail_after is not None and n == script.fail_after:
                    raise ResponderFailure("model went away")
                yield f"{label}:{n} "
                await asyncio.sleep(0)

        async for event in stream_assistant_message(
            thread.id, chunks(), created_at=context.clock.now()
        ):
            yield event


def user_input(text: str) -> UserMessageInput:
    return UserMessageInput(content=[UserMessageTextContent(text=text)])


async def collect(server: ChatServer, handle: RunHandle) -> list[StoredEvent]:
    return [event async for event in server.stream_run(handle)]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, commit_window_ms=2)


@pytest.fixture
async def server(
    store: Store, settings: Settings, clock: ManualClock
) -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer(store, settings, clock=clock)
    await server.start()
    try:
        yield server
    finally:
        server.script.resume.set()
        await server.close(grace_seconds=1)
