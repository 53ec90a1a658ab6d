"""Where a server's CPU goes: py-spy's raw stacks summed by area and by task.

    python -m bench.hotspots PROFILE.txt [--us-per-event 110 --main-share 0.8]

Reads what `python -m bench --profile DIR` records (`py-spy record --gil --native --format
raw`: only samples that hold the GIL, so idle waits are not counted, with C frames, so the
garbage collector, uvloop and the thread hand-offs show). Each main-thread sample goes to one
area: the leaf-most frame that belongs to a known library or module decides. Tasks are the
coroutine each sample ran in: the first Python frame above the event loop's machinery.
Given the CPU per event and the main thread's share of it (both measured by the bench, the
share from /proc), the areas are also printed in microseconds per event.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

GC = "garbage collector"
PYDANTIC = "pydantic: validation, serialization, SQLModel rows"
SQLALCHEMY = "SQLAlchemy: statements, execution, pool, greenlet"
DRIVER = "driver: aiosqlite thread hand-off, psycopg"
STORE = "our store code (store/sql.py)"
HTTP = "HTTP: uvicorn, starlette, sse-starlette, our http/"
SOCKET = "socket syscalls (send, recv)"
ASYNC = "asyncio, anyio, contextlib, event loop"
WRITER = "event log: group-commit writer"
FANOUT = "event log: subscription fan-out"
TURN = "turn: server, recorder, echo respond()"
OTHER_OURS = "other chatserver (sessions, locks, ids, types)"
STDLIB = "stdlib: json, uuid, re, datetime, copy"
REFERENCE = "chatkit (the reference's server)"
OTHER = "other"

_SOCKET_CALLS = {"write", "writev", "send", "sendmsg", "sendto", "recv", "read", "recvfrom"}
_LOOP_FILES = (
    "loop.c",
    "_asynciomodule.c",
    "handles",
    "core.c",
    "stream.c",
    "timer.c",
    "loop-watcher.c",
    "queue.h",
    "uv-common.c",
    "linux.c",
    "epoll.c",
)
_MACHINERY = {
    "task_step_impl",
    "task_step",
    "Runner.run",
    "Handle._run",
    "Handle__run",
    "BaseEventLoop._run_once",
    "BaseEventLoop.run_forever",
    "Loop__on_idle",
    "loop_cb_idle_callback",
    "TimerHandle__run",
    "cb_idle_callback",
}
_WRITER_FUNCS = ("ThreadWriter.", "EventLog.open_writer", "EventLog.append", "_Pending")


@dataclass(frozen=True, slots=True)
class Frame:
    func: str
    file: str

    @property
    def is_python(self) -> bool:
        return self.file.endswith(".py") or self.file.startswith("<frozen")


def parse_frame(text: str) -> Frame:
    match = _FRAME.match(text.strip())
    if match is None:
        return Frame(text.strip(), "")
    return Frame(match["func"], match["file"])


def area(frames: list[Frame]) -> str:
    """The area of one sample: its leaf-most frame that belongs to a known one."""
    for frame in reversed(frames):
        func, file = frame.func, frame.file
        if func.startswith("gc_collect"):
            return GC
        if "libc.so" in file and func in _SOCKET_CALLS:
            return SOCKET
        if "pydantic" in file or "sqlmodel/" in file:
            return PYDANTIC
        if "sqlalchemy/" in file or "greenlet" in file:
            return SQLALCHEMY
        if "aiosqlite/" in file or "sqlite3/" in file or "psycopg" in file:
            return DRIVER
        if "chatserver/store/" in file:
            return STORE
        if "chatserver/events.py" in file:
            return WRITER if func.startswith(_WRITER_FUNCS) else FANOUT
        if any(
            p in file
            for p in ("chatserver/turn.py", "chatserver/server.py", "chatserver/responders/")
        ):
            return TURN
        if any(
            p in file
            for p in (
                "sse_starlette/",
                "starlette/",
                "uvicorn/",
                "httptools",
                "h11/",
                "chatserver/http/",
                "bench/bare.py",
            )
        ):
            return HTTP
        if "chatserver/" in file:
            return OTHER_OURS
        if "chatkit/" in file or "bench/reference.py" in file:
            return REFERENCE
        if any(p in file for p in ("asyncio/", "anyio/", "sniffio/", "contextlib")) or (
            file.startswith(_LOOP_FILES)
        ):
            return ASYNC
        if any(
            p in file
            for p in (
                "json/",
                "uuid",
                "re/",
                "_datetimemodule",
                "copy.py",
                "enum.py",
                "typing.py",
                "functools.py",
            )
        ):
            return STDLIB
    return OTHER


def task(frames: list[Frame]) -> str:
    """The coroutine a sample ran in: the first Python frame above the loop's machinery."""
    last = -1
    for index, frame in enumerate(frames):
        if frame.func in _MACHINERY:
            last = index
    if last < 0:
        first = next((f for f in frames if f.is_python), None)
        if any("greenlet" in f.file for f in frames) or (
            first is not None and "sqlalchemy/" in first.file
        ):
            # SQLAlchemy's async API runs its sync code in greenlets: their stacks start
            # there, not at the task that awaited them.
            return "(a SQLAlchemy greenlet: sync Core code run for an await)"
        return "(outside the event loop)" if first is None else _name(first)
    root = next((f for f in frames[last + 1 :] if f.is_python), None)
    return "(event loop internals)" if root is None else _name(root)


# What the coroutines at the root of the samples are, in the servers the bench runs.
_TASKS = {
    "TaskHandle._run_coro": "anyio task group: a streaming response's body and sends",
    "RequestResponseCycle.run_asgi": "an HTTP request's task: routing, handler, inline bodies",
    "HttpToolsProtocol.data_received": "uvicorn: parsing requests",
    "ChatServer._run_turn": "the turn task: setup, respond(), recording events",
    "OpenStream._pump": "our SSE pump: subscription to the stream's queue",
    "ThreadWriter._run": "the group-commit writer task",
}


def _name(frame: Frame) -> str:
    where = f"{frame.func} ({frame.file})"
    if frame.func in _TASKS:
        return f"{_TASKS[frame.func]} [{where}]"
    if frame.func.startswith("Store.") and "chatserver/store/" in frame.file:
        # Store writes run as tasks of their own so a cancelled caller cannot cut them.
        return f"a store write transaction [{where}]"
    return where


@dataclass
class Breakdown:
    samples: int
    by_area: Counter[str]
    by_task: Counter[str]
    other_threads: Counter[str]


def analyze(lines: Iterable[str]) -> Breakdown:
    by_area: Counter[str] = Counter()
    by_task: Counter[str] = Counter()
    others: Counter[str] = Counter()
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        head, *rest = stack.split(";")
        frames = [parse_frame(f) for f in rest]
        if "MainThread" not in head:
            others[head.split(":", 1)[-1].strip()] += count
            continue
        by_area[area(frames)] += count
        by_task[task(frames)] += count
    return Breakdown(sum(by_area.values()), by_area, by_task, others)


def render(
    result: Breakdown, us_per_event: float | None = None, main_share: float | None = None
) -> str:
    scale = us_per_event * main_share if us_per_event and main_share else None
    lines = [f"main thread: {result.samples} samples holding the GIL"]
    if scale is not None:
        lines[0] += (
            f"; {main_share:.0%} of the process's {us_per_event:.1f} us CPU per event"
            f" = {scale:.1f} us"
        )
    for title, counts, limit in (
        ("by area (leaf-most known frame)", result.by_area, 20),
        ("by task (coroutine the sample ran in)", result.by_task, 12),
    ):
        lines.append(f"\n{title}")
        for name, count in counts.most_common(limit):
            share = count / result.samples if result.samples else 0.0
            us = f"{share * scale:7.1f} us/ev" if scale is not None else ""
            lines.append(f"  {share:6.1%} {us}  {name}")
    if result.other_threads:
        lines.append(
            "\nother threads (samples holding the GIL; their CPU, mostly in SQLite's C code "
            "without the GIL, is measured from /proc instead):"
        )
        for name, count in result.other_threads.most_common(5):
            lines.append(f"  {count:6d}  {name}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("profile", type=Path, help="py-spy raw output")
    parser.add_argument("--us-per-event", type=float, help="the process's CPU per event")
    parser.add_argument("--main-share", type=float, help="the main thread's share of it")
    args = parser.parse_args()
    with args.profile.open() as lines:
        result = analyze(lines)
    print(render(result, args.us_per_event, args.main_share))


if __name__ == "__main__":
    main()
