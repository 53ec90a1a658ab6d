"""Two tabs on one conversation: a sender starts a thread, two listeners follow the thread's
event stream, the sender sends another message, and both tabs see the same answer streamed
live, without being the one that asked.

Run a server first (from the repository root), for example the echo example:

    .venv/bin/python examples/echo_server.py

then, in another shell:

    .venv/bin/python examples/multi_tab_client.py "hello there" "and hello again"

Options: --url (default http://127.0.0.1:8000), --token (default demo).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

RUN_ENDS = {"run.completed", "run.failed", "run.cancelled"}


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[int, dict[str, Any]]]:
    """(id, event) pairs of a server-sent event stream; comments (heartbeats) are skipped."""
    event_id: str | None = None
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data and event_id is not None:
                yield int(event_id), json.loads("\n".join(data))
            event_id, data = None, []
        elif line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


def _message(text: str) -> dict[str, Any]:
    return {"content": [{"type": "input_text", "text": text}]}


async def send(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[str, int]:
    """Post a message and read its stream to the end: (thread id, last event id)."""
    thread_id, last = body["params"].get("thread_id", ""), 0
    async with client.stream("POST", "/chatkit", json=body) as response:
        response.raise_for_status()
        async for seq, event in sse_events(response):
            last = seq
            if event["type"] == "thread.created":
                thread_id = event["thread"]["id"]
    return thread_id, last


async def listen(client: httpx.AsyncClient, thread_id: str, after: int) -> list[str]:
    """One tab: the thread's events after `after` until a turn ends, as transcript lines.
    Events that happen before the tab connects are replayed to it first: none is missed."""
    lines: list[str] = []
    text: list[str] = []
    path = f"/threads/{thread_id}/events"
    async with client.stream("GET", path, params={"after": after}) as response:
        response.raise_for_status()
        async for _, event in sse_events(response):
            kind, item = event["type"], event.get("item", {})
            if kind == "thread.item.done" and item.get("type") == "user_message":
                lines.append("user: " + "".join(part["text"] for part in item["content"]))
            elif kind == "thread.item.updated" and event["update"]["type"].endswith("text_delta"):
                text.append(event["update"]["delta"])
            elif kind == "thread.item.done" and item.get("type") == "assistant_message":
                lines.append("assistant: " + "".join(text))
                text = []
            elif kind in RUN_ENDS:
                return lines
    return lines


async def two_tabs(url: str, token: str, first: str, second: str) -> list[list[str]]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        start = {"type": "threads.create", "params": {"input": _message(first)}}
        thread_id, last = await send(client, start)
        tabs = [asyncio.create_task(listen(client, thread_id, last)) for _ in range(2)]
        body = {
            "type": "threads.add_user_message",
            "params": {"thread_id": thread_id, "input": _message(second)},
        }
        await send(client, body)
        return list(await asyncio.gather(*tabs))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", help="the message that starts the thread")
    parser.add_argument("second", help="the message both tabs then see answered")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--token", default="demo")
    args = parser.parse_args(argv)
    transcripts = asyncio.run(two_tabs(args.url, args.token, args.first, args.second))
    for number, lines in enumerate(transcripts, start=1):
        for line in lines:
            print(f"[tab {number}] {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
