"""A script client that loses its connection mid-answer and loses nothing: it starts a turn,
drops the connection after a few words, reconnects with `Last-Event-ID`, and prints the
whole answer once, as the server streamed it.

Run a server first (from the repository root), for example the echo example:

    .venv/bin/python examples/echo_server.py

then, in another shell:

    .venv/bin/python examples/resume_client.py "the answer streams in word by word"

Options: --url (default http://127.0.0.1:8000), --token (default demo), --drop-after
(text pieces read before the connection is dropped, default 3).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import httpx

RUN_ENDS = {"run.completed", "run.failed", "run.cancelled"}


@dataclass
class Answer:
    """What the client has seen of one turn, from events in order."""

    thread_id: str | None = None
    run_id: str | None = None
    # The SSE id (the thread's event seq) of every event seen, in order.
    seqs: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    finished: bool = False

    @property
    def last_seq(self) -> int:
        return self.seqs[-1]

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def apply(self, seq: int, event: dict[str, Any]) -> None:
        self.seqs.append(seq)
        kind = event["type"]
        if kind == "thread.created":
            self.thread_id = event["thread"]["id"]
        elif kind == "run.started":
            self.run_id = event["run_id"]
        elif kind == "thread.item.updated" and event["update"]["type"].endswith("text_delta"):
            self.pieces.append(event["update"]["delta"])
        elif kind in RUN_ENDS and event["run_id"] == self.run_id:
            self.finished = True


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


async def ask(
    url: str, token: str, text: str, *, drop_after: int = 3, log: TextIO | None = None
) -> Answer:
    """Send `text` as a new thread's first message and follow the answer to its end, over
    two connections; what happens to them is told on `log` (default: standard error)."""
    log = log or sys.stderr
    answer = Answer()
    body = {
        "type": "threads.create",
        "params": {"input": {"content": [{"type": "input_text", "text": text}]}},
    }
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        async with client.stream("POST", "/chatkit", json=body) as response:
            response.raise_for_status()
            async for seq, event in sse_events(response):
                answer.apply(seq, event)
                if len(answer.pieces) >= drop_after or answer.finished:
                    break
        # Leaving the block closed the connection; the turn goes on without us.
        print(f"(dropped the connection after event {answer.last_seq})", file=log)
        if answer.finished:
            return answer
        # The thread's event stream from where we were: exactly the events we missed, then
        # the live ones. It stays open across turns, so we leave when our turn has ended.
        resume = {"Last-Event-ID": str(answer.last_seq)}
        async with client.stream(
            "GET", f"/threads/{answer.thread_id}/events", headers=resume
        ) as response:
            response.raise_for_status()
            print(f"(reconnected with Last-Event-ID: {answer.last_seq})", file=log)
            async for seq, event in sse_events(response):
                answer.apply(seq, event)
                if answer.finished:
                    break
    return answer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("text", help="the message to send")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--token", default="demo")
    parser.add_argument("--drop-after", type=int, default=3)
    args = parser.parse_args(argv)
    answer = asyncio.run(ask(args.url, args.token, args.text, drop_after=args.drop_after))
    print(answer.text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
