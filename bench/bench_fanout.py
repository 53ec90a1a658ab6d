"""Fan-out across instances: how long a word takes from `respond()` to a subscriber on the
same instance (in-process push) and on another instance (PostgreSQL NOTIFY, Redis pub/sub),
and how long a stop sent to another instance takes to end the turn. One run, real processes.

    .venv/bin/python bench/bench_fanout.py [--turns 5] [--words 200] [--pace 0.01]

Two instances of bench/fanout_app.py (the echo responder yielding its own wall-clock time per
word) serve one PostgreSQL database of the benchmark's own; once with the PostgreSQL broker,
once with the Redis one. Each turn runs on A while one client follows the thread on A and on
B; the latency of a word is its arrival time minus the time respond() yielded it (both this
machine's clock), so it includes the group-commit window (5 ms) and the commit itself.
Results are printed and written as JSON to bench/results/. See bench/README.md.
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from instances import migrate, running  # noqa: E402

TOKEN = "bench"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


@contextmanager
def database(postgres_url: str) -> Iterator[str]:
    libpq = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
    name = f"chatserver_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(libpq, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = postgres_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(libpq, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def sse(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    data: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            yield json.loads("\n".join(data))
            data = []


def delta_time(event: dict[str, Any]) -> float | None:
    update = event.get("update") or {}
    if update.get("type") != "assistant_message.content_part.text_delta":
        return None
    return float(update["delta"])


async def follow(client: httpx.AsyncClient, thread_id: str, after: int, into: list[float]) -> None:
    """Record the latency of every word until the thread's next run ends."""
    headers = HEADERS | {"Last-Event-ID": str(after)}
    async with client.stream("GET", f"/threads/{thread_id}/events", headers=headers) as response:
        async for event in sse(response):
            sent = delta_time(event)
            if sent is not None:
                into.append(time.time() - sent)
            if event["type"] in ("run.completed", "run.cancelled", "run.failed"):
                return


def message(thread_id: str | None, text: str) -> dict[str, Any]:
    content = {"content": [{"type": "input_text", "text": text}]}
    if thread_id is None:
        return {"type": "threads.create", "params": {"input": content}}
    return {
        "type": "threads.add_user_message",
        "params": {"thread_id": thread_id, "input": content},
    }


async def new_thread(client: httpx.AsyncClient) -> tuple[str, int]:
    """A thread with one finished one-word turn; its id and last seq."""
    thread_id, last = "", 0
    async with client.stream("POST", "/chatkit", json=message(None, "hi"), headers=HEADERS) as r:
        async for event in sse(r):
            if event["type"] == "thread.created":
                thread_id = event["thread"]["id"]
            last += 1
    return thread_id, last


async def fan_out(a: str, b: str, turns: int, words: int) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = {"same instance": [], "other instance": []}
    async with (
        httpx.AsyncClient(base_url=a, timeout=60) as on_a,
        httpx.AsyncClient(base_url=b, timeout=60) as on_b,
    ):
        for _ in range(turns):
            thread_id, last = await new_thread(on_a)
            followers = [
                asyncio.create_task(follow(on_a, thread_id, last, latencies["same instance"])),
                asyncio.create_task(follow(on_b, thread_id, last, latencies["other instance"])),
            ]
            await asyncio.sleep(0.2)  # both followers are live
            text = " ".join("w" for _ in range(words))
            body = message(thread_id, text)
            async with on_a.stream("POST", "/chatkit", json=body, headers=HEADERS) as r:
                async for _ in sse(r):
                    pass
            await asyncio.wait_for(asyncio.gather(*followers), 30)
    return latencies


async def stop_latency(a: str, target: str, rounds: int) -> list[float]:
    """Seconds from sending a stop (to `target`) until the turn running on A ends."""
    results = []
    async with (
        httpx.AsyncClient(base_url=a, timeout=60) as on_a,
        httpx.AsyncClient(base_url=target, timeout=60) as stopper,
    ):
        for _ in range(rounds):
            thread_id, _last = await new_thread(on_a)
            body = message(thread_id, " ".join("w" for _ in range(2000)))
            async with on_a.stream("POST", "/chatkit", json=body, headers=HEADERS) as r:
                deltas, sent = 0, 0.0
                async for event in sse(r):
                    if delta_time(event) is not None:
                        deltas += 1
                        if deltas == 10:
                            sent = time.monotonic()
                            stop = asyncio.create_task(
                                stopper.post(f"/threads/{thread_id}/stop", headers=HEADERS)
                            )
                    if event["type"] == "run.cancelled":
                        results.append(time.monotonic() - sent)
                        await stop
                        break
    return results


async def append_cost(database_url: str, rounds: int) -> dict[str, list[float]]:
    """Durable events/s of one turn's writer with and without the NOTIFY that every append
    transaction sends while a PostgreSQL broker runs, interleaved: 500 deltas group-committed
    (defaults), and 200 deltas one per transaction (what NOTIFY costs a transaction)."""
    from chatserver.clock import SystemClock
    from chatserver.config import Settings
    from chatserver.events import EventLog, LocalBroker
    from chatserver.store import Store
    from chatserver.store.events import AppendNotice
    from chatserver.store.models import ThreadRow

    store = Store(database_url)
    logs = {
        "group commit, 500 events": (
            EventLog(store, LocalBroker(1000), SystemClock(), Settings()),
            500,
        ),
        "one event per transaction, 200 events": (
            EventLog(
                store,
                LocalBroker(1000),
                SystemClock(),
                Settings(commit_max_events=1, commit_window_ms=0),
            ),
            200,
        ),
    }
    notice = AppendNotice("bench_append", lambda thread_id, seq: f"n bench {thread_id} {seq}")
    data = json.dumps({"type": "thread.item.updated", "delta": "x" * 120})
    rates: dict[str, list[float]] = {}
    try:
        for n in range(rounds + 1):
            for name, (log, count) in logs.items():
                for notify in (False, True):
                    store.append_notice = notice if notify else None
                    now = datetime.now(UTC)
                    thread_id = f"thr_{uuid.uuid4().hex[:26]}"
                    await store.insert_thread(
                        ThreadRow(id=thread_id, user_id="bench", created_at=now, updated_at=now)
                    )
                    writer = await log.open_writer(thread_id)
                    started = time.perf_counter()
                    for _ in range(count):
                        await writer.emit(None, "thread.item.updated", data)
                    await writer.close()
                    if n:  # the first round warms up
                        variant = f"{name}, {'with' if notify else 'without'} NOTIFY"
                        elapsed = time.perf_counter() - started
                        rates.setdefault(variant, []).append(count / elapsed)
    finally:
        store.append_notice = None
        await store.close()
    return rates


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "count": len(ordered),
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "max_ms": 1000 * ordered[-1],
    }


async def measure(args: argparse.Namespace, database_url: str) -> dict[str, Any]:
    brokers: dict[str, dict[str, str]] = {
        "postgresql": {},
        "redis": {"broker_url": args.redis_url},
    }
    results: dict[str, Any] = {"append": await append_cost(database_url, args.append_rounds)}
    for name, settings in brokers.items():
        settings = settings | {
            "bearer_tokens": f"{TOKEN}:bench",
            "broker_channel": f"bench_{uuid.uuid4().hex[:8]}",
        }
        os.environ["BENCH_WORD_DELAY"] = str(args.pace)
        async with running(database_url, 2, settings, app="fanout_app:app", app_dir=str(ROOT)) as (
            a,
            b,
        ):
            latencies = await fan_out(a.url, b.url, args.turns, args.words)
            stops = {
                "stop sent to the same instance": await stop_latency(a.url, a.url, args.stops),
                "stop sent to the other instance": await stop_latency(a.url, b.url, args.stops),
            }
        results[name] = {
            "words": {where: summary(values) for where, values in latencies.items()},
            "stop": {where: summary(values) for where, values in stops.items()},
            "raw": {"words": latencies, "stop": stops},
        }
    return results


def report(results: dict[str, Any]) -> None:
    rates = {variant: statistics.median(r) for variant, r in results["append"].items()}
    for variant, rate in rates.items():
        print(f"append, {variant}: {rate:,.0f} events/s (median)")
    print(f"{'':46} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for broker in ("postgresql", "redis"):
        measured = results[broker]
        for kind in ("words", "stop"):
            for where, s in measured[kind].items():
                label = f"{broker}: {'word to ' + where if kind == 'words' else where}"
                print(
                    f"{label:46} {s['count']:>6} {s['p50_ms']:>8.1f} {s['p99_ms']:>8.1f}"
                    f" {s['max_ms']:>8.1f}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--pace", type=float, default=0.01, help="seconds between words")
    parser.add_argument("--stops", type=int, default=10)
    parser.add_argument("--append-rounds", type=int, default=7)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "CHATSERVER_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("CHATSERVER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    )
    args = parser.parse_args()
    with database(args.postgres_url) as database_url:
        migrate(database_url)
        results = asyncio.run(measure(args, database_url))
    report(results)
    out = ROOT / "results" / f"fanout-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(exist_ok=True)
    environment = {"python": platform.python_version(), "machine": platform.machine()}
    out.write_text(json.dumps({"args": vars(args), "environment": environment, **results}))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
