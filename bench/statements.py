"""What one turn asks of the database: SQL statements, transactions, driver hand-offs.

    python -m bench.statements [--turns 5] [--words 200]

Our echo server on a fresh SQLite file in this process, after a warm-up: one client runs a
thread's first `--turns` turns (the first one creates it); prints the averages per turn.
Unlike CPU time these counts do not depend on the machine's load, so they show a change to
the turn's bookkeeping exactly.
Statements are counted with SQLAlchemy's `before_cursor_execute` event (statements a raw
driver path runs past SQLAlchemy are not seen); hand-offs are the calls aiosqlite passes to
its connection threads (`aiosqlite.Connection._execute`, private: a diagnostic, not an API).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiosqlite
import sqlalchemy as sa
import uvicorn

from bench import ours
from bench.load import LoadSpec, drive
from bench.serve import bearer_tokens


class Counts:
    def __init__(self) -> None:
        self.statements: Counter[str] = Counter()
        self.handoffs: Counter[str] = Counter()

    def on_statement(self, statement: str) -> None:
        words = statement.split()
        self.statements[" ".join(words[:3]) if words else "?"] += 1

    def reset(self) -> None:
        self.statements.clear()
        self.handoffs.clear()


def _counting(
    counts: Counts, execute: Callable[..., Coroutine[Any, Any, Any]]
) -> Callable[..., Coroutine[Any, Any, Any]]:
    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        counts.handoffs[getattr(fn, "__name__", type(fn).__name__)] += 1
        return await execute(self, fn, *args, **kwargs)

    return counted


async def measure(turns: int, words: int) -> tuple[Counts, int]:
    counts = Counts()

    def on_execute(*args: Any) -> None:
        counts.on_statement(args[2])

    sa.event.listen(sa.Engine, "before_cursor_execute", on_execute)
    original = aiosqlite.Connection._execute
    aiosqlite.Connection._execute = _counting(counts, original)  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory(prefix="chatserver-statements-") as tmp:
            url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
            app = await asyncio.to_thread(ours.app, url, word_delay=0, tokens=bearer_tokens(1))
            config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
            server = uvicorn.Server(config)
            serving = asyncio.create_task(server.serve())
            while not server.started:
                if serving.done():
                    serving.result()
                await asyncio.sleep(0.02)
            port = server.servers[0].sockets[0].getsockname()[1]
            # Warm-up first: connections, statement caches, the signing key.
            await drive(LoadSpec("127.0.0.1", port, "ours", 1, 1, words, os.getpid()))
            counts.reset()
            result = await drive(LoadSpec("127.0.0.1", port, "ours", 1, turns, words, os.getpid()))
            server.should_exit = True
            await serving
    finally:
        aiosqlite.Connection._execute = original  # type: ignore[method-assign]
        sa.event.remove(sa.Engine, "before_cursor_execute", on_execute)
    if result.turns_failed:
        raise SystemExit(f"{result.turns_failed} turns failed: {result.problems[:3]}")
    return counts, result.turns_ok


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--words", type=int, default=200)
    args = parser.parse_args()
    counts, turns = asyncio.run(measure(args.turns, args.words))
    statements = sum(counts.statements.values())
    writes = counts.statements["BEGIN IMMEDIATE"]
    reads = counts.statements["BEGIN"]
    print(
        f"per turn (a thread's first {turns} turns of {args.words} words, one client, SQLite): "
        f"{statements / turns:.1f} statements, {writes / turns:.1f} write transactions, "
        f"{reads / turns:.1f} read transactions, "
        f"{sum(counts.handoffs.values()) / turns:.1f} aiosqlite hand-offs"
    )
    print("\nstatements (first words)")
    for name, n in counts.statements.most_common():
        print(f"  {n / turns:6.1f}  {name}")
    print("\naiosqlite hand-offs")
    for name, n in counts.handoffs.most_common():
        print(f"  {n / turns:6.1f}  {name}")


if __name__ == "__main__":
    main()
