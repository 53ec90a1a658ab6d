"""A real uvicorn server in the test's event loop, an echo responder whose pace the test
controls, and a small SSE reader that keeps what the wire says (ids, data, comments)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import chatkit.types as ck
import httpx
import uvicorn
from pydantic import TypeAdapter
from starlette.applications import Starlette

from chatserver.clock import ManualClock
from chatserver.config import Settings
from chatserver.responders.echo import EchoChatServer
from chatserver.store import Store
from chatserver.types import TERMINAL_RUN_EVENT_TYPES, ExtensionEvent

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "chatkit-samples"

# Bearer tokens of the test users: alice and bob share nothing.
TOKENS = {"alice": "tok-alice", "bob": "tok-bob"}

chatkit_event = TypeAdapter[Any](ck.ThreadStreamEvent)
chatkit_thread = TypeAdapter[Any](ck.Thread)
chatkit_items_page = TypeAdapter[Any](ck.Page[ck.ThreadItem])
chatkit_threads_page = TypeAdapter[Any](ck.Page[ck.Thread])
extension_event = TypeAdapter[Any](ExtensionEvent)


async def eventually(predicate: Callable[[], bool | Awaitable[bool]], within: float = 5.0) -> None:
    """Poll a condition the test cannot await directly, within a bound."""
    deadline = time.monotonic() + within
    while True:
        met = predicate()
        if not isinstance(met, bool):
            met = await met
        if met:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.01)


class ControlledEcho(EchoChatServer):
    """Echoes word by word; clear `hold` to freeze every turn before its next word (`paused`
    is set once a turn waits), set it again to let them go."""

    word_delay = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hold = asyncio.Event()
        self.hold.set()
        self.paused = asyncio.Event()

    async def _words(self, text: str) -> AsyncIterator[str]:
        async for word in super()._words(text):
            if not self.hold.is_set():
                self.paused.set()
                await self.hold.wait()
            yield word


@dataclass
class RunningApp:
    app: Starlette
    server: uvicorn.Server
    task: asyncio.Task[None]
    base_url: str

    @classmethod
    async def start(cls, app: Starlette, config: uvicorn.Config | None = None) -> RunningApp:
        """Serve `app` on a free port; `config` (for that app) replaces the plain default."""
        if config is None:
            config = uvicorn.Config(
                app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"
            )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(), name="uvicorn")
        await eventually(lambda: server.started or task.done(), within=15)
        if task.done():
            task.result()
            raise AssertionError("uvicorn stopped during startup")
        port = server.servers[0].sockets[0].getsockname()[1]
        return cls(app, server, task, f"http://127.0.0.1:{port}")

    async def stop(self, within: float = 15.0) -> float:
        """Ask uvicorn to exit, as its signal handler does; returns the seconds it took."""
        started = time.monotonic()
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), within)
        except TimeoutError:
            self.server.force_exit = True
            await asyncio.wait_for(self.task, 5)
        return time.monotonic() - started

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=httpx.Timeout(10.0), **kwargs)


@dataclass
class LiveServer:
    running: RunningApp
    chat: ControlledEcho
    store: Store
    clock: ManualClock
    settings: Settings
    _clients: list[httpx.AsyncClient] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.running.base_url

    def client(self, user: str | None = "alice", **kwargs: Any) -> httpx.AsyncClient:
        headers = dict(kwargs.pop("headers", {}))
        if user is not None:
            headers["Authorization"] = f"Bearer {TOKENS[user]}"
        client = httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=httpx.Timeout(10.0), **kwargs
        )
        self._clients.append(client)
        return client

    async def close_clients(self) -> None:
        for client in self._clients:
            await client.aclose()


# --- SSE ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    id: str | None
    data: str

    @property
    def payload(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.data)
        return result

    @property
    def type(self) -> str:
        return str(self.payload["type"])

    @property
    def seq(self) -> int:
        assert self.id is not None, f"event without id: {self.data}"
        return int(self.id)


class SseReader:
    """Parses an SSE body by hand (sse-starlette separates lines with \\r\\n; httpx splits
    lines on any of \\r\\n, \\n, \\r). An event's `id` is only what that event carried."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.comments: list[str] = []
        self._lines = response.aiter_lines()

    def __aiter__(self) -> SseReader:
        return self

    async def __anext__(self) -> Event:
        event_id: str | None = None
        data: list[str] = []
        async for line in self._lines:
            if line == "":
                if data:
                    return Event(event_id, "\n".join(data))
                event_id = None
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "id":
                event_id = value
            elif name == "data":
                data.append(value)
        if data:
            return Event(event_id, "\n".join(data))
        raise StopAsyncIteration

    async def take(self, count: int) -> list[Event]:
        return [await anext(self) for _ in range(count)]

    async def until_run_ends(self, run_id: str | None = None) -> list[Event]:
        """Events up to and including a run's terminal event (any run's if `run_id` is None)."""
        events = []
        async for event in self:
            events.append(event)
            if event.type in TERMINAL_RUN_EVENT_TYPES and (
                run_id is None or event.payload["run_id"] == run_id
            ):
                return events
        raise AssertionError("stream ended before the run did")

    async def rest(self) -> list[Event]:
        return [event async for event in self]


def validate_event(event: Event) -> None:
    """ChatKit's types for ChatKit's events; ours for our extension events."""
    if event.type.startswith(("run.", "session.")) or event.type == "resync":
        extension_event.validate_json(event.data)
    else:
        chatkit_event.validate_json(event.data)


async def stream(
    client: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[httpx.Response, list[Any]]:
    async with client.stream("POST", "/chatkit", json=body, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        return response, await SseReader(response).rest()


# --- request bodies -----------------------------------------------------------------------


def user_input(text: str) -> dict[str, Any]:
    return {
        "content": [{"type": "input_text", "text": text}],
        "attachments": [],
        "inference_options": {},
    }


def create_thread(text: str, **metadata: Any) -> dict[str, Any]:
    return {"type": "threads.create", "params": {"input": user_input(text)}, "metadata": metadata}


def add_message(thread_id: str, text: str, **metadata: Any) -> dict[str, Any]:
    return {
        "type": "threads.add_user_message",
        "params": {"thread_id": thread_id, "input": user_input(text)},
        "metadata": metadata,
    }


def request(type_: str, **params: Any) -> dict[str, Any]:
    return {"type": type_, "params": params}


def thread_id_of(events: list[Event]) -> str:
    for event in events:
        if event.type == "thread.created":
            return str(event.payload["thread"]["id"])
    raise AssertionError("no thread.created event")


def run_id_of(events: list[Event]) -> str:
    for event in events:
        if event.type == "run.started":
            return str(event.payload["run_id"])
    raise AssertionError("no run.started event")


# The ChatKit type of each JSON answer (threads.delete answers `{}`).
CHATKIT_SHAPES = {
    "threads.get_by_id": chatkit_thread,
    "threads.update": chatkit_thread,
    "threads.list": chatkit_threads_page,
    "items.list": chatkit_items_page,
}
