"""A small OpenAI-compatible server for tests: `POST /v1/chat/completions` answers each
request with the next scripted reply, streamed as `chat.completion.chunk` SSE the way
OpenAI streams it (text deltas, tool calls in fragments, `[DONE]`), or with an error status.
It records every request, and whether a client closed a stream before its end."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.http.http_harness import RunningApp


@dataclass
class Text:
    """An answer streamed in `parts`."""

    parts: list[str]

    @classmethod
    def words(cls, text: str) -> Text:
        words = text.split(" ")
        return cls([w + " " for w in words[:-1]] + words[-1:])


@dataclass
class ToolCalls:
    """Tool calls (name, arguments), each streamed in fragments, after optional text."""

    calls: list[tuple[str, dict[str, Any] | str]]
    text: str = ""


@dataclass
class Fail:
    status: int
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Hang:
    """Streams `parts`, then neither sends more nor ends until the client goes away."""

    parts: list[str]


@dataclass
class Stall:
    """Sends `parts`, then nothing, for `seconds` (longer than the client's timeout)."""

    parts: list[str]
    seconds: float = 30.0


@dataclass
class ErrorInStream:
    """Streams `parts`, then an `{"error": ...}` event, as OpenAI reports a failure mid-way."""

    parts: list[str]


Reply = Text | ToolCalls | Fail | Hang | Stall | ErrorInStream
# A reply may depend on the request (the messages the model would read).
Script = Reply | Callable[[dict[str, Any]], Reply]


class FakeOpenAI:
    def __init__(self) -> None:
        self._script: deque[Script] = deque()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        # Set when a client closed a stream the server had not finished.
        self.closed_early = asyncio.Event()
        self.completed_streams = 0
        self.app = Starlette(
            routes=[Route("/v1/chat/completions", self._completions, methods=["POST"])]
        )
        self.running: RunningApp | None = None

    def script(self, *replies: Script) -> None:
        self._script.extend(replies)

    @property
    def base_url(self) -> str:
        assert self.running is not None
        return f"{self.running.base_url}/v1"

    async def start(self) -> None:
        self.running = await RunningApp.start(self.app)

    async def stop(self) -> None:
        if self.running is not None:
            await self.running.stop()

    def messages(self, request: int = -1) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self.requests[request]["messages"]
        return messages

    async def _completions(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if not self._script:
            return _error(500, "server_error", "the test scripted no reply for this request")
        reply = self._script.popleft()
        if callable(reply):
            reply = reply(body)
        if isinstance(reply, Fail):
            return _error(reply.status, reply.code, "scripted failure", reply.param, reply.headers)
        return StreamingResponse(self._stream(reply), media_type="text/event-stream")

    async def _stream(self, reply: Reply) -> AsyncIterator[str]:
        finished = False
        try:
            async for chunk in _chunks(reply):
                yield chunk
            finished = True
        finally:
            if finished:
                self.completed_streams += 1
            else:
                self.closed_early.set()


async def _chunks(reply: Reply) -> AsyncIterator[str]:
    yield _chunk({"role": "assistant", "content": ""})
    parts = reply.parts if isinstance(reply, Text | Hang | Stall | ErrorInStream) else []
    if isinstance(reply, ToolCalls) and reply.text:
        parts = [reply.text]
    for part in parts:
        yield _chunk({"content": part})
        await asyncio.sleep(0)
    if isinstance(reply, Hang):
        await asyncio.Event().wait()
    if isinstance(reply, Stall):
        await asyncio.sleep(reply.seconds)
    if isinstance(reply, ErrorInStream):
        error = {"message": "The server had an error while processing your request."}
        yield f"data: {json.dumps({'error': error})}\n\n"
        return
    finish = "stop"
    if isinstance(reply, ToolCalls):
        finish = "tool_calls"
        for index, (name, arguments) in enumerate(reply.calls):
            text = arguments if isinstance(arguments, str) else json.dumps(arguments)
            head = {"index": index, "id": f"call_{index}_{name}", "type": "function"}
            yield _chunk({"tool_calls": [head | {"function": {"name": name, "arguments": ""}}]})
            # Arguments arrive in pieces, as OpenAI sends them.
            for start in range(0, len(text), 7):
                piece = {"index": index, "function": {"arguments": text[start : start + 7]}}
                yield _chunk({"tool_calls": [piece]})
    yield _chunk({}, finish)
    yield "data: [DONE]\n\n"


def _chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
    chunk = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "fake-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    return f"data: {json.dumps(chunk)}\n\n"


def _error(
    status: int,
    code: str | None,
    message: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def tool_outputs(messages: list[dict[str, Any]]) -> dict[str, str]:
    """The tool results a prompt holds, by tool call id."""
    return {m["tool_call_id"]: m["content"] for m in messages if m["role"] == "tool"}
