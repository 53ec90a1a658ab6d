"""The load: N concurrent clients, each creating a thread and then adding messages to it.

    python -m bench.load '<LoadSpec as JSON>'      (prints a LoadResult as JSON)

Run by `bench.run` in a process of its own, so that the orchestrator's work never competes
with the clients' event loop. Every client is a user of its own with one keep-alive
connection, and uses its session the way a real client does: the `X-Session-Id` the server
returned with its first answer goes with every later request. All clients start together
once connected. The timed window is from that start to the last turn's end; the server's
CPU time is read from /proc at both ends. Transcripts are checked after the window.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.client import Connection, Response, SseEvent
from bench.transcript import Expectation, check

SESSION_HEADER = "x-session-id"
# Words of the user's message; the echo answers one delta per word.
VOCABULARY = (
    "the quick brown fox jumps over a lazy dog while streaming tokens arrive one by one "
    "from a model that thinks at its own pace and every word counts"
).split()


def message(words: int) -> str:
    return " ".join(VOCABULARY[i % len(VOCABULARY)] for i in range(words))


def chatkit_input(text: str) -> dict[str, Any]:
    return {
        "content": [{"type": "input_text", "text": text}],
        "attachments": [],
        "inference_options": {},
    }


def create_body(text: str) -> bytes:
    return json.dumps({"type": "threads.create", "params": {"input": chatkit_input(text)}}).encode()


def add_message_body(thread_id: str, text: str) -> bytes:
    params = {"thread_id": thread_id, "input": chatkit_input(text)}
    return json.dumps({"type": "threads.add_user_message", "params": params}).encode()


def token(user: int) -> str:
    return f"bench-token-{user}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class LoadSpec:
    host: str
    port: int
    # "ours" numbers its events and brackets runs; "reference" and "bare" do neither.
    kind: str
    clients: int
    turns: int
    words: int
    server_pid: int
    first_user: int = 0
    turn_timeout: float = 60.0
    # Client i starts its first turn ramp x i / clients seconds after the start: 0 sends
    # every first turn at once (a burst), a turn's length spreads them (a steady state).
    ramp_seconds: float = 0.0


@dataclass
class TurnRecord:
    client: int
    turn: int
    status: int = 0
    started: float = 0.0
    finished: float = 0.0
    first_event: float | None = None
    first_delta: float | None = None
    events: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class LoadResult:
    spec: LoadSpec
    wall_seconds: float
    turns_ok: int
    turns_failed: int
    events: int
    server_cpu_seconds: float
    client_cpu_seconds: float
    # Per turn, seconds from sending the request: to its first event, to its first text
    # delta, to its end. Only turns whose transcript checked out.
    first_event: list[float]
    first_delta: list[float]
    turn_seconds: list[float]
    problems: list[str]


class _Client:
    def __init__(self, spec: LoadSpec, index: int) -> None:
        self.spec = spec
        self.index = index
        self.connection = Connection(
            spec.host, spec.port, {"Authorization": f"Bearer {token(spec.first_user + index)}"}
        )
        self.session_id: str | None = None
        self.thread_id: str | None = None
        self.turns: list[tuple[TurnRecord, list[SseEvent]]] = []
        self.connected = asyncio.Event()

    async def run(self, start: asyncio.Event, text: str) -> None:
        # Connected before the start, so the window holds turns, not TCP handshakes.
        try:
            await self.connection.request("GET", "/healthz")
        finally:
            self.connected.set()
        await start.wait()
        if self.spec.ramp_seconds:
            await asyncio.sleep(self.spec.ramp_seconds * self.index / self.spec.clients)
        try:
            for turn in range(self.spec.turns):
                record = TurnRecord(self.index, turn)
                events: list[SseEvent] = []
                self.turns.append((record, events))
                if turn > 0 and self.thread_id is None:
                    record.problems.append("no thread to add a message to")
                    continue
                try:
                    response = await asyncio.wait_for(self._turn(text), self.spec.turn_timeout)
                except Exception as exc:
                    record.problems.append(f"request failed: {exc!r}")
                    await self.connection.close()
                    continue
                self._record(record, events, response)
        finally:
            await self.connection.close()

    async def _turn(self, text: str) -> Response:
        headers = {"X-Session-Id": self.session_id} if self.session_id else {}
        if self.thread_id is None:
            body = create_body(text)
        else:
            body = add_message_body(self.thread_id, text)
        return await self.connection.request("POST", "/chatkit", body, headers)

    def _record(self, record: TurnRecord, events: list[SseEvent], response: Response) -> None:
        record.status = response.status
        record.started, record.finished = response.started, response.finished
        record.events = len(response.events)
        events.extend(response.events)
        self.session_id = response.headers.get(SESSION_HEADER, self.session_id)
        if response.status != 200:
            record.problems.append(f"HTTP {response.status}: {response.body[:200]!r}")
            return
        if self.thread_id is None:
            for event in response.events:
                if '"thread.created"' in event.data:
                    self.thread_id = json.loads(event.data)["thread"]["id"]
                    break

    def verify(self, text: str) -> None:
        """Check every transcript, in order: each turn's seqs continue the last turn's."""
        numbered = self.spec.kind == "ours"
        next_seq: int | None = 1
        for turn, (record, events) in enumerate(self.turns):
            if record.problems:
                next_seq = None
                continue
            verdict = check(
                events,
                Expectation(
                    text=text,
                    creates_thread=turn == 0,
                    numbered=numbered,
                    runs=numbered,
                    first_seq=next_seq,
                ),
            )
            record.problems.extend(verdict.problems)
            next_seq = verdict.last_seq + 1 if verdict.last_seq is not None else None
            if events:
                record.first_event = events[0].at - record.started
            if verdict.first_delta_at is not None:
                record.first_delta = verdict.first_delta_at - record.started
            events.clear()


async def drive(spec: LoadSpec) -> LoadResult:
    text = message(spec.words)
    clients = [_Client(spec, i) for i in range(spec.clients)]
    start = asyncio.Event()
    tasks = [asyncio.create_task(c.run(start, text)) for c in clients]
    # Everyone connected (or failed to), then go.
    await asyncio.gather(*(c.connected.wait() for c in clients))
    cpu_before = cpu_seconds(spec.server_pid)
    client_before = _own_cpu()
    began = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    wall = time.perf_counter() - began
    server_cpu = cpu_seconds(spec.server_pid) - cpu_before
    client_cpu = _own_cpu() - client_before

    records: list[TurnRecord] = []
    for client in clients:
        client.verify(text)
        records.extend(r for r, _ in client.turns)
    missing = spec.clients * spec.turns - len(records)
    good = [r for r in records if not r.problems]
    problems = [f"client {r.client} turn {r.turn}: {p}" for r in records for p in r.problems]
    if missing:
        problems.append(f"{missing} turns never ran")
    return LoadResult(
        spec=spec,
        wall_seconds=wall,
        turns_ok=len(good),
        turns_failed=len(records) - len(good) + missing,
        events=sum(r.events for r in records),
        server_cpu_seconds=server_cpu,
        client_cpu_seconds=client_cpu,
        first_event=[r.first_event for r in good if r.first_event is not None],
        first_delta=[r.first_delta for r in good if r.first_delta is not None],
        turn_seconds=[r.finished - r.started for r in good],
        problems=problems[:20],
    )


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed (uvicorn[standard] brings it): the cheaper the client, the more
    of the two cores is left to the server under test."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main() -> None:
    spec = LoadSpec(**json.loads(sys.argv[1]))
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        result = runner.run(drive(spec))
    json.dump(asdict(result), sys.stdout)


if __name__ == "__main__":
    main()
