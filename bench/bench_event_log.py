"""Event log benchmark: durable append throughput, replay time, and a turn end to end.

    .venv/bin/python bench/bench_event_log.py [--backends sqlite,postgresql] [--quick]

Every figure is the median of several repetitions after a warm-up; variants that are compared
run interleaved in the same process, so their ratio is meaningful even on a noisy machine.
Results are printed as a table and written as JSON to bench/results/. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import platform
import pstats
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from pydantic import BaseModel  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncConnection  # noqa: E402

from chatserver.clock import SystemClock  # noqa: E402
from chatserver.config import Settings  # noqa: E402
from chatserver.events import EventLog, LocalBroker  # noqa: E402
from chatserver.ids import IdKind, new_id  # noqa: E402
from chatserver.responders.messages import stream_assistant_message  # noqa: E402
from chatserver.server import ChatServer  # noqa: E402
from chatserver.sessions import RequestContext  # noqa: E402
from chatserver.store import NewEvent, Store, StoredEvent, models  # noqa: E402
from chatserver.store.events import insert_events_core  # noqa: E402
from chatserver.store.models import ThreadRow  # noqa: E402
from chatserver.types import (  # noqa: E402
    AssistantMessageContentPartTextDelta,
    ThreadItemUpdatedEvent,
    ThreadMetadata,
    UserMessageInput,
    UserMessageItem,
    UserMessageTextContent,
    dump_json,
    parse_stream_event,
)

DEFAULT_POSTGRES_URL = os.environ.get(
    "CHATSERVER_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"
)
DELTA_TYPE = "thread.item.updated"
WORDS = (
    "The",
    " quick",
    " brown",
    " fox",
    " jumps",
    " over",
    " the",
    " lazy",
    " dog",
    ",",
    " streaming",
    " tokens",
    " as",
    " they",
    " arrive",
    ".",
)


REF = "[Core]"
REF_GROUP = f"group {REF}"
BIG_PAGE = 5000


class CoreStore(Store):
    """The event hot path as SQLAlchemy Core statements on every backend: what `Store` did
    before its raw psycopg path for PostgreSQL, kept as the reference to compare against."""

    async def _insert_events(
        self,
        conn: AsyncConnection,
        thread_id: str,
        first_seq: int,
        new_events: Sequence[NewEvent],
        created_at: datetime,
    ) -> None:
        await insert_events_core(conn, thread_id, first_seq, new_events, created_at)

    async def _select_events(
        self, conn: AsyncConnection, thread_id: str, after: int, limit: int
    ) -> list[StoredEvent]:
        e = models.events
        query = (
            sa.select(e.c.seq, e.c.run_id, e.c.type, e.c.data)
            .where(e.c.thread_id == thread_id, e.c.seq > after)
            .order_by(e.c.seq)
            .limit(limit)
        )
        result = await conn.execute(query)
        return [StoredEvent(seq, run_id, type_, data) for seq, run_id, type_, data in result]


# -- results ---------------------------------------------------------------------------------


@dataclass
class Measurement:
    backend: str
    bench: str
    variant: str
    events: int
    seconds: list[float] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        return self.events / self.median

    def as_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "bench": self.bench,
            "variant": self.variant,
            "events": self.events,
            "median_s": self.median,
            "events_per_s": self.rate,
            "seconds": self.seconds,
            "extra_medians": {k: statistics.median(v) for k, v in self.extra.items()},
            "extra": self.extra,
        }


@dataclass
class Ratio:
    backend: str
    name: str
    value: float


@dataclass
class Report:
    measurements: list[Measurement] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)

    def add(self, m: Measurement) -> Measurement:
        self.measurements.append(m)
        return m

    def ratio(self, backend: str, name: str, value: float) -> None:
        self.ratios.append(Ratio(backend, name, value))


# -- fixtures --------------------------------------------------------------------------------


def delta_payloads(n: int) -> list[str]:
    """Realistic ChatKit text-delta event JSON (~170 bytes each), as the turn would log it."""
    item_id = new_id(IdKind.ITEM)
    return [
        dump_json(
            ThreadItemUpdatedEvent(
                item_id=item_id,
                update=AssistantMessageContentPartTextDelta(
                    content_index=0, delta=WORDS[i % len(WORDS)]
                ),
            )
        )
        for i in range(n)
    ]


def settings(*, group: bool) -> Settings:
    if group:
        return Settings(_env_file=None)
    return Settings(_env_file=None, commit_max_events=1, commit_window_ms=0)


def libpq(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def database(backend: str, postgres_url: str) -> Iterator[str]:
    """A fresh database for one backend, removed afterwards."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="chatserver-bench-") as tmp:
            yield f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        return
    name = f"chatserver_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(libpq(postgres_url), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(libpq(postgres_url), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def new_thread(store: Store) -> str:
    now = datetime.now(UTC)
    thread_id = new_id(IdKind.THREAD)
    await store.insert_thread(
        ThreadRow(id=thread_id, user_id="bench", created_at=now, updated_at=now)
    )
    return thread_id


# -- append ----------------------------------------------------------------------------------


async def timed_turn(log: EventLog, thread_id: str, payloads: list[str]) -> float:
    """One turn's events through the log: emit each, then close (everything committed)."""
    writer = await log.open_writer(thread_id)
    run_id = new_id(IdKind.RUN)
    started = time.perf_counter()
    for data in payloads:
        await writer.emit(run_id, DELTA_TYPE, data)
    await writer.close()
    return time.perf_counter() - started


async def bench_append(
    report: Report,
    backend: str,
    store: Store,
    reference: Store | None,
    *,
    reps: int,
    turn: int,
    long_turns: int,
) -> None:
    clock = SystemClock()
    logs = {
        "group": EventLog(store, LocalBroker(1000), clock, settings(group=True)),
        "no-group": EventLog(store, LocalBroker(1000), clock, settings(group=False)),
    }
    if reference is not None and backend == "postgresql":
        # On SQLite appends are Core statements either way: nothing to compare.
        logs[REF_GROUP] = EventLog(reference, LocalBroker(1000), clock, settings(group=True))
    payloads = delta_payloads(turn)
    threads = {variant: await new_thread(store) for variant in logs}
    for variant, log in logs.items():  # warm-up: connections, statement caches
        await timed_turn(log, threads[variant], payloads[:100])

    single = {v: report.add(Measurement(backend, f"append turn {turn}", v, turn)) for v in logs}
    for _ in range(reps):
        for variant, log in logs.items():
            single[variant].seconds.append(await timed_turn(log, threads[variant], payloads))
    report.ratio(
        backend,
        f"append turn {turn}: group / no-group",
        single["group"].rate / single["no-group"].rate,
    )
    if REF_GROUP in logs:
        report.ratio(
            backend,
            f"append turn {turn}: group / {REF_GROUP}",
            single["group"].rate / single[REF_GROUP].rate,
        )

    total = turn * long_turns
    longer = {
        v: report.add(Measurement(backend, f"append {long_turns}x{turn}", v, total)) for v in logs
    }
    for _ in range(max(1, reps // 2)):
        # Interleaved turn by turn, so that a burst of noise hits every variant alike.
        elapsed = dict.fromkeys(logs, 0.0)
        for _ in range(long_turns):
            for variant, log in logs.items():
                elapsed[variant] += await timed_turn(log, threads[variant], payloads)
        for variant, seconds in elapsed.items():
            longer[variant].seconds.append(seconds)
    report.ratio(
        backend,
        f"append {long_turns}x{turn}: group / no-group",
        longer["group"].rate / longer["no-group"].rate,
    )
    if REF_GROUP in logs:
        report.ratio(
            backend,
            f"append {long_turns}x{turn}: group / {REF_GROUP}",
            longer["group"].rate / longer[REF_GROUP].rate,
        )


# -- replay ----------------------------------------------------------------------------------


async def fill(store: Store, thread_id: str, n: int) -> None:
    payloads = delta_payloads(n)
    run_id = new_id(IdKind.RUN)
    now = datetime.now(UTC)
    for start in range(0, n, 500):
        chunk = payloads[start : start + 500]
        await store.append_events(
            thread_id,
            [NewEvent(run_id, DELTA_TYPE, data) for data in chunk],
            first_seq=start + 1,
            created_at=now,
        )


async def replay_subscribe(log: EventLog, thread_id: str, n: int) -> float:
    started = time.perf_counter()
    count = 0
    async for event in log.subscribe(thread_id, 0, until=lambda e: e.seq >= n):
        count += len(event.data) > 0
    elapsed = time.perf_counter() - started
    assert count == n, (count, n)
    return elapsed


async def replay_subscribe_decoded(log: EventLog, thread_id: str, n: int) -> float:
    """What a read path that decodes and re-encodes each event would cost."""
    started = time.perf_counter()
    count = 0
    async for event in log.subscribe(thread_id, 0, until=lambda e: e.seq >= n):
        count += len(json.dumps(json.loads(event.data), separators=(",", ":"))) > 0
    elapsed = time.perf_counter() - started
    assert count == n, (count, n)
    return elapsed


def page_reader(
    store: Store, page: int, decode: Callable[[str], object] | None
) -> Callable[[str, int], Awaitable[float]]:
    async def read(thread_id: str, n: int) -> float:
        started = time.perf_counter()
        after, count = 0, 0
        while True:
            events = await store.read_events(thread_id, after, page)
            if decode is None:
                count += len(events)
            else:
                for event in events:
                    decode(event.data)
                    count += 1
            if len(events) < page:
                break
            after = events[-1].seq
        elapsed = time.perf_counter() - started
        assert count == n, (count, n)
        return elapsed

    return read


async def bench_replay(
    report: Report, backend: str, store: Store, reference: Store | None, *, reps: int
) -> None:
    log = EventLog(store, LocalBroker(1000), SystemClock(), settings(group=True))
    page = log.settings.replay_page_size
    big_pages = EventLog(
        store,
        LocalBroker(1000),
        SystemClock(),
        Settings(_env_file=None, replay_page_size=BIG_PAGE),
    )
    variants: dict[str, Callable[[str, int], Awaitable[float]]] = {
        "subscribe, text": lambda t, n: replay_subscribe(log, t, n),
        "subscribe, json.loads+dumps": lambda t, n: replay_subscribe_decoded(log, t, n),
        "read_events, text": page_reader(store, page, None),
        "read_events, json.loads": page_reader(store, page, json.loads),
        "read_events, pydantic": page_reader(store, page, parse_stream_event),
        # What the replay_page_size setting buys: fewer round trips and checkouts per replay.
        f"subscribe, text, page {BIG_PAGE}": lambda t, n: replay_subscribe(big_pages, t, n),
    }
    if reference is not None:
        ref_log = EventLog(reference, LocalBroker(1000), SystemClock(), settings(group=True))
        variants[f"subscribe, text {REF}"] = lambda t, n: replay_subscribe(ref_log, t, n)
        variants[f"read_events, text {REF}"] = page_reader(reference, page, None)
    for n in (1_000, 10_000):
        thread_id = await new_thread(store)
        await fill(store, thread_id, n)
        if backend == "postgresql":
            # What autovacuum does within a minute of a fresh table filling up; before any
            # statistics exist the planner may sort the whole thread for every page.
            async with store.write() as conn:
                await conn.exec_driver_sql("ANALYZE events")
        for run in variants.values():  # warm-up
            await run(thread_id, n)
        rows = {v: report.add(Measurement(backend, f"replay {n}", v, n)) for v in variants}
        for _ in range(reps):
            for variant, run in variants.items():
                rows[variant].seconds.append(await run(thread_id, n))
        base = rows["subscribe, text"].median
        report.ratio(
            backend,
            f"replay {n}: subscribe decode+encode / text",
            rows["subscribe, json.loads+dumps"].median / base,
        )
        text = rows["read_events, text"].median
        report.ratio(
            backend,
            f"replay {n}: read_events json.loads / text",
            rows["read_events, json.loads"].median / text,
        )
        report.ratio(
            backend,
            f"replay {n}: read_events pydantic / text",
            rows["read_events, pydantic"].median / text,
        )
        if reference is not None:
            report.ratio(
                backend,
                f"replay {n}: subscribe {REF} / subscribe",
                rows[f"subscribe, text {REF}"].median / base,
            )
            report.ratio(
                backend,
                f"replay {n}: read_events {REF} / read_events",
                rows[f"read_events, text {REF}"].median / text,
            )


# -- end to end ------------------------------------------------------------------------------


class DeltaServer(ChatServer):
    """A responder that streams `deltas` text deltas as fast as it can (no sleeps)."""

    deltas = 500

    async def respond(
        self, thread: ThreadMetadata, input: UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[BaseModel]:
        async for event in stream_assistant_message(
            thread.id, self._chunks(), created_at=context.clock.now()
        ):
            yield event

    async def _chunks(self) -> AsyncIterator[str]:
        for i in range(self.deltas):
            yield WORDS[i % len(WORDS)]


async def timed_server_turn(
    server: DeltaServer, context: RequestContext
) -> tuple[float, float, int]:
    """(seconds to the run's last event, seconds to its first event, events seen)."""
    thread = await server.create_thread(context)
    message = UserMessageInput(content=[UserMessageTextContent(text="go")])
    started = time.perf_counter()
    handle = await server.start_turn(context, thread.id, message)
    first: float | None = None
    count = 0
    async for _event in server.stream_run(handle):
        if first is None:
            first = time.perf_counter() - started
        count += 1
    elapsed = time.perf_counter() - started
    # Let the turn release its thread before the next one starts.
    turn_tasks = [t for t in asyncio.all_tasks() if t.get_name() == f"turn:{handle.run_id}"]
    await asyncio.gather(*turn_tasks)
    assert first is not None
    return elapsed, first, count


async def bench_server(
    report: Report, backend: str, store: Store, *, reps: int, deltas: int
) -> None:
    servers = {
        "group": DeltaServer(store, settings(group=True)),
        "no-group": DeltaServer(store, settings(group=False)),
    }
    rows: dict[str, Measurement] = {}
    for variant, server in servers.items():
        server.deltas = deltas
        context = await server.sessions.context("bench", None)
        _, _, count = await timed_server_turn(server, context)  # warm-up
        rows[variant] = report.add(
            Measurement(backend, f"ChatServer turn {deltas}", variant, count)
        )
        rows[variant].extra["first_event_s"] = []
    for _ in range(reps):
        for variant, server in servers.items():
            context = await server.sessions.context("bench", None)
            elapsed, first, count = await timed_server_turn(server, context)
            assert count == rows[variant].events
            rows[variant].seconds.append(elapsed)
            rows[variant].extra["first_event_s"].append(first)
    for server in servers.values():
        await server.close()
    report.ratio(
        backend,
        f"ChatServer turn {deltas}: group / no-group",
        rows["group"].rate / rows["no-group"].rate,
    )


# -- main ------------------------------------------------------------------------------------


async def run_backend(report: Report, backend: str, url: str, args: argparse.Namespace) -> None:
    store = Store(url)
    await store.create_schema()
    reference = CoreStore(url) if args.reference else None
    try:
        if "append" in args.only:
            await bench_append(
                report,
                backend,
                store,
                reference,
                reps=args.reps,
                turn=args.turn,
                long_turns=args.long_turns,
            )
        if "replay" in args.only:
            await bench_replay(report, backend, store, reference, reps=args.reps)
        if "server" in args.only:
            await bench_server(report, backend, store, reps=args.reps, deltas=args.turn)
    finally:
        await store.close()
        if reference is not None:
            await reference.close()


def print_report(report: Report) -> None:
    header = f"{'backend':<11} {'benchmark':<22} {'variant':<28} {'events':>7} "
    header += f"{'median ms':>10} {'events/s':>10}  notes"
    print(header)
    print("-" * len(header))
    for m in report.measurements:
        notes = ""
        if "first_event_s" in m.extra:
            notes = f"first event {statistics.median(m.extra['first_event_s']) * 1000:.1f} ms"
        print(
            f"{m.backend:<11} {m.bench:<22} {m.variant:<28} {m.events:>7} "
            f"{m.median * 1000:>10.2f} {m.rate:>10,.0f}  {notes}"
        )
    print()
    print(f"{'backend':<11} ratio (same run, medians)")
    for r in report.ratios:
        print(f"{r.backend:<11} {r.name:<52} {r.value:6.2f}x")
    checks = targets(report)
    if checks:
        print()
        for check in checks:
            verdict = "met" if check["met"] else "NOT met"
            print(
                f"{check['backend']:<11} target {check['target']}: {check['measured']} -> {verdict}"
            )


def targets(report: Report) -> list[dict[str, Any]]:
    """The issue's targets: >= 35,000 durable events/s with group commit (the long run), and
    a 10k-event replay through subscribe() in under 30 ms."""
    checks: list[dict[str, Any]] = []
    for m in report.measurements:
        if m.bench.startswith("append") and "x" in m.bench and m.variant == "group":
            checks.append(
                {
                    "backend": m.backend,
                    "target": ">= 35,000 events/s",
                    "measured": f"{m.rate:,.0f} events/s ({m.bench})",
                    "met": m.rate >= 35_000,
                }
            )
        if m.bench == "replay 10000" and m.variant == "subscribe, text":
            checks.append(
                {
                    "backend": m.backend,
                    "target": "10k replay < 30 ms",
                    "measured": f"{m.median * 1000:.1f} ms",
                    "met": m.median < 0.030,
                }
            )
    return checks


def cpu_check() -> float:
    """A fixed CPU-bound workload, timed before and after each backend: absolute figures from
    runs whose check differs a lot were taken on a machine running at a different speed."""
    payloads = delta_payloads(10_000)
    samples = []
    for _ in range(7):
        started = time.perf_counter()
        for seq, data in enumerate(payloads):
            StoredEvent(seq, None, DELTA_TYPE, data)
            json.loads(data)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def environment(backends: list[str], postgres_url: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
    }
    for package in ("sqlalchemy", "psycopg", "aiosqlite", "pydantic"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    if "postgresql" in backends:
        with psycopg.connect(libpq(postgres_url)) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            info["postgresql"] = row[0] if row else None
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and turns")
    parser.add_argument("--reps", type=int, help="repetitions per figure (default 7, quick 3)")
    parser.add_argument("--turn", type=int, default=500, help="deltas per turn")
    parser.add_argument("--long-turns", type=int, help="turns in the long run (default 20)")
    parser.add_argument("--only", default="append,replay,server")
    parser.add_argument(
        "--reference",
        action="store_true",
        help="also run the event hot path as SQLAlchemy Core (the pre-optimization code)",
    )
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument(
        "--profile", type=Path, help="run under cProfile, print the top, save pstats here"
    )
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    args.reps = args.reps or (3 if args.quick else 7)
    args.long_turns = args.long_turns or (5 if args.quick else 20)
    args.only = set(args.only.split(","))
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for backend in backends:
        if backend not in ("sqlite", "postgresql"):
            parser.error(f"unknown backend {backend!r}")

    report = Report()
    speed = [cpu_check()]
    profiler = cProfile.Profile() if args.profile else None
    for backend in backends:
        with database(backend, args.postgres_url) as url:
            if profiler is not None:
                profiler.enable()
            asyncio.run(run_backend(report, backend, url, args))
            if profiler is not None:
                profiler.disable()
        speed.append(cpu_check())
    if profiler is not None:
        profiler.dump_stats(args.profile)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    print_report(report)
    print(
        "\nmachine check (pure Python, 10k json.loads + StoredEvent; same code every time): "
        + " -> ".join(f"{s * 1000:.1f} ms" for s in speed)
    )

    args.output.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.output / f"event_log-{stamp}.json"
    path.write_text(
        json.dumps(
            {
                "created_at": stamp,
                "argv": sys.argv[1:],
                "config": {
                    "reps": args.reps,
                    "turn": args.turn,
                    "long_turns": args.long_turns,
                    "backends": backends,
                },
                "environment": environment(backends, args.postgres_url),
                "cpu_check_s": speed,
                "measurements": [m.as_json() for m in report.measurements],
                "targets": targets(report),
                "ratios": [
                    {"backend": r.backend, "name": r.name, "value": r.value} for r in report.ratios
                ],
            },
            indent=2,
        )
    )
    print(f"\nwritten to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
