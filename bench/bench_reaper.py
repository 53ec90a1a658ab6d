"""Reaper benchmark: one pass expires and cleans 100,000 sessions on PostgreSQL while live turns
run in the same process, and the turns' latency is compared with the same load without it.

    .venv/bin/python bench/bench_reaper.py [--sessions 100000] [--reps 3] [--clients 4]

Each repetition seeds the due sessions, then runs three windows with the same turn load:
baseline, reaper (one `Reaper.run_once()`: every session expired, then cleaned, in batches of
`--batch-size`), baseline again. Tombstones of earlier repetitions stay, as they do in
production. Results are printed and written as JSON to bench/results/. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from chatserver.config import Settings  # noqa: E402
from chatserver.ids import IdKind, new_id  # noqa: E402
from chatserver.reaper import Reaper, ReapReport  # noqa: E402
from chatserver.responders.messages import stream_assistant_message  # noqa: E402
from chatserver.server import ChatServer  # noqa: E402
from chatserver.sessions import RequestContext  # noqa: E402
from chatserver.store import Store, migrations, models  # noqa: E402
from chatserver.types import (  # noqa: E402
    ChatKitEvent,
    ThreadMetadata,
    UserMessageInput,
    UserMessageItem,
    UserMessageTextContent,
)

DEFAULT_POSTGRES_URL = os.environ.get(
    "CHATSERVER_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"
)
_SEED_CHUNK = 5000


class PacedServer(ChatServer):
    """A model-like answer: `deltas` words, `interval` seconds apart."""

    deltas = 50
    interval = 0.001

    async def respond(
        self, thread: ThreadMetadata, input: UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[ChatKitEvent]:
        async for event in stream_assistant_message(
            thread.id, self._words(), created_at=context.clock.now()
        ):
            yield event

    async def _words(self) -> AsyncIterator[str]:
        for n in range(self.deltas):
            await asyncio.sleep(self.interval)
            yield f"word{n} "


@dataclass
class Window:
    name: str
    seconds: float = 0.0
    turns: list[float] = field(default_factory=list)
    # How late a 10 ms sleep woke up: what everything else on the event loop waited.
    loop_lag: list[float] = field(default_factory=list)

    def percentile(self, values: list[float], fraction: float) -> float:
        ordered = sorted(values)
        return ordered[max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))]

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seconds": round(self.seconds, 3),
            "turns": len(self.turns),
            "turn_p50_ms": round(self.percentile(self.turns, 0.5) * 1000, 1),
            "turn_p99_ms": round(self.percentile(self.turns, 0.99) * 1000, 1),
            "loop_lag_p99_ms": round(self.percentile(self.loop_lag, 0.99) * 1000, 2),
        }


@dataclass
class Rep:
    pass_report: ReapReport
    windows: list[Window]


def libpq(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def database(postgres_url: str) -> Iterator[str]:
    name = f"chatserver_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(libpq(postgres_url), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(libpq(postgres_url), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def seed_due_sessions(store: Store, count: int) -> float:
    """`count` standard sessions that went quiet an hour ago: all due for the reaper."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    for offset in range(0, count, _SEED_CHUNK):
        rows = [
            {
                "id": new_id(IdKind.SESSION),
                "user_id": f"user{n % 1000}",
                "state": "active",
                "timeout_policy": "standard",
                "timeout_seconds": 1800,
                "meta": {"tab_strategy": "shared", "n": n},
                "thread_id": None,
                "created_at": now - timedelta(hours=2),
                "last_activity_at": now - timedelta(hours=1),
                "expires_at": now - timedelta(minutes=30) - timedelta(microseconds=n),
                "resumed_at": None,
                "ended_at": None,
                "end_reason": None,
                "cleaned_at": None,
                "resume_count": 0,
                "turn_count": 1,
                "version": 1,
            }
            for n in range(offset, min(count, offset + _SEED_CHUNK))
        ]
        async with store.write() as conn:
            await conn.execute(sa.insert(models.sessions), rows)
    async with store.write() as conn:
        await conn.execute(sa.text("ANALYZE sessions"))
    return time.perf_counter() - started


async def client_loop(
    server: PacedServer,
    context: RequestContext,
    thread_id: str,
    window: Window,
    stop: asyncio.Event,
) -> None:
    said = UserMessageInput(content=[UserMessageTextContent(text="hello")])
    while not stop.is_set():
        started = time.perf_counter()
        handle = await server.start_turn(context, thread_id, said)
        async for event in server.stream_run(handle):
            if event.type == "run.completed":
                break
        window.turns.append(time.perf_counter() - started)


async def lag_probe(window: Window, stop: asyncio.Event) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.01)
        window.loop_lag.append(time.perf_counter() - started - 0.01)


async def run_window(
    server: PacedServer,
    clients: list[tuple[RequestContext, str]],
    window: Window,
    *,
    seconds: float | None = None,
    reaper: Reaper | None = None,
) -> ReapReport | None:
    """The turn load for `seconds`, or for as long as one reaper pass takes."""
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(client_loop(server, context, thread_id, window, stop))
        for context, thread_id in clients
    ]
    tasks.append(asyncio.create_task(lag_probe(window, stop)))
    await asyncio.sleep(0.5)  # every client mid-turn before the window opens
    window.turns.clear()
    window.loop_lag.clear()
    started = time.perf_counter()
    report = None
    if reaper is not None:
        report = await reaper.run_once()
    else:
        assert seconds is not None
        await asyncio.sleep(seconds)
    window.seconds = time.perf_counter() - started
    stop.set()
    done = len(window.turns)
    await asyncio.gather(*tasks)
    # Only turns that ended inside the window count.
    del window.turns[done:]
    return report


async def bench(url: str, args: argparse.Namespace) -> tuple[list[Rep], list[float]]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=url,
        cleanup_strategy=args.strategy,
        cleanup_grace_seconds=0,
        reaper_batch_size=args.batch_size,
    )
    store = Store(url, pool_size=settings.database_pool_size)
    server = PacedServer(store, settings)
    server.deltas, server.interval = args.deltas, args.delta_interval_ms / 1000
    await server.start()
    reaper = Reaper(server.sessions, server.broker)
    seeding: list[float] = []
    reps = []
    try:
        clients = []
        for n in range(args.clients):
            context = await server.sessions.context(
                f"live{n}", None, {"timeout_policy": "persistent"}
            )
            thread = await server.create_thread(context)
            clients.append((context, thread.id))
        for rep in range(args.reps):
            seeding.append(await seed_due_sessions(store, args.sessions))
            before, during, after = Window("baseline"), Window("reaper"), Window("baseline")
            await run_window(server, clients, before, seconds=args.baseline_seconds)
            report = await run_window(server, clients, during, reaper=reaper)
            assert report is not None
            await run_window(server, clients, after, seconds=args.baseline_seconds)
            reps.append(Rep(report, [before, during, after]))
            print(
                f"rep {rep + 1}: {report.expired} expired + {report.cleaned_up} cleaned in"
                f" {report.seconds:.1f} s; turn p99 {during.as_json()['turn_p99_ms']} ms with,"
                f" {before.as_json()['turn_p99_ms']} / {after.as_json()['turn_p99_ms']} ms"
                " without",
                flush=True,
            )
            expected = args.sessions if args.strategy == "immediate" else 2 * args.sessions
            assert report.expired == args.sessions and report.rows == expected, report
    finally:
        await server.close()
        await store.close()
    return reps, seeding


def summary(reps: list[Rep]) -> dict[str, Any]:
    with_reaper = [t for rep in reps for t in rep.windows[1].turns]
    without = [t for rep in reps for w in (rep.windows[0], rep.windows[2]) for t in w.turns]
    lag_with = [t for rep in reps for t in rep.windows[1].loop_lag]
    lag_without = [t for rep in reps for w in (rep.windows[0], rep.windows[2]) for t in w.loop_lag]
    pooled_with, pooled_without = (
        Window("reaper", turns=with_reaper),
        Window("baseline", turns=without),
    )
    pass_seconds = [rep.pass_report.seconds for rep in reps]
    rows = [rep.pass_report.rows for rep in reps]
    p99_with = pooled_with.percentile(with_reaper, 0.99)
    p99_without = pooled_without.percentile(without, 0.99)
    return {
        "pass_seconds": [round(s, 2) for s in pass_seconds],
        "pass_seconds_median": round(statistics.median(pass_seconds), 2),
        "rows_per_second_median": round(
            statistics.median(r / s for r, s in zip(rows, pass_seconds, strict=True))
        ),
        "batches": [rep.pass_report.batches for rep in reps],
        "turns_with_reaper": len(with_reaper),
        "turns_without_reaper": len(without),
        "turn_p50_ms_with": round(pooled_with.percentile(with_reaper, 0.5) * 1000, 1),
        "turn_p50_ms_without": round(pooled_without.percentile(without, 0.5) * 1000, 1),
        "turn_p99_ms_with": round(p99_with * 1000, 1),
        "turn_p99_ms_without": round(p99_without * 1000, 1),
        "turn_p99_ratio": round(p99_with / p99_without, 2),
        "loop_lag_p99_ms_with": round(pooled_with.percentile(lag_with, 0.99) * 1000, 2),
        "loop_lag_p99_ms_without": round(pooled_without.percentile(lag_without, 0.99) * 1000, 2),
    }


def environment(postgres_url: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    for package in ("sqlalchemy", "psycopg"):
        info[package] = metadata.version(package)
    with psycopg.connect(libpq(postgres_url)) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        info["postgresql"] = row[0] if row else None
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000, help="due sessions per rep")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4, help="concurrent live turns")
    parser.add_argument("--deltas", type=int, default=50, help="words per live turn")
    parser.add_argument("--delta-interval-ms", type=float, default=1.0)
    parser.add_argument(
        "--batch-size", type=int, default=Settings(_env_file=None).reaper_batch_size
    )  # type: ignore[call-arg]
    parser.add_argument("--strategy", choices=["deferred", "immediate"], default="deferred")
    parser.add_argument("--baseline-seconds", type=float, default=10.0)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    env_before = environment(args.postgres_url)
    with database(args.postgres_url) as url:
        migrations.upgrade(url)
        reps, seeding = asyncio.run(bench(url, args))
    result = summary(reps)
    load_after = os.getloadavg()

    print()
    work = (
        "expired, then cleaned (grace 0)"
        if args.strategy == "deferred"
        else "expired into a tombstone"
    )
    print(
        f"{args.sessions:,} due sessions per pass, each {work}; strategy {args.strategy},"
        f" batch {args.batch_size}, {args.clients} live clients of {args.deltas}-word turns"
    )
    for name, value in result.items():
        print(f"  {name:<26} {value}")
    print(f"  load average before {env_before['load_average']}, after {load_after}")

    args.output.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.output / f"reaper-{stamp}.json"
    path.write_text(
        json.dumps(
            {
                "created_at": stamp,
                "argv": sys.argv[1:],
                "config": {k: v for k, v in vars(args).items() if k != "output"},
                "environment": env_before | {"load_average_after": load_after},
                "seeding_seconds": [round(s, 2) for s in seeding],
                "summary": result,
                "reps": [
                    {
                        "pass": {
                            "expired": rep.pass_report.expired,
                            "cleaned_up": rep.pass_report.cleaned_up,
                            "batches": rep.pass_report.batches,
                            "seconds": round(rep.pass_report.seconds, 3),
                        },
                        "windows": [w.as_json() for w in rep.windows],
                    }
                    for rep in reps
                ],
            },
            indent=2,
        )
    )
    print(f"\nwritten to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
