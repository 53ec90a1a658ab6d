"""The reaper on SQLite and PostgreSQL: each cleanup strategy cleans exactly the sessions whose
time has come, a session with a turn in progress is skipped, listeners run once, batches stay
within their size, two reapers at once clean each session once, idle threads are deleted past
their retention, and the background loop does all that with nobody asking. The clock moves;
nothing sleeps to wait for expiry."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from chatserver.clock import ManualClock
from chatserver.config import Settings
from chatserver.errors import ErrorCode, SessionExpired
from chatserver.ids import IdKind, new_id
from chatserver.policies import TimeoutPolicies
from chatserver.reaper import Reaper, ReapReport
from chatserver.sessions import Session, SessionManager
from chatserver.statuses import RunStatus
from chatserver.store import Store
from chatserver.store import models as tables
from chatserver.store.models import RunRow, SessionRow, ThreadRow
from tests.engine.conftest import ScriptedServer, collect, user_input

USER = "alice"
MINUTE = 60
HOUR = 60 * MINUTE


@dataclass
class Heard:
    """Every listener call, by listener."""

    expired: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    cleaned_up: list[Session] = field(default_factory=list)

    def listen(self, manager: SessionManager) -> Heard:
        async def expired(session: Session) -> None:
            self.expired.append(session.id)

        async def closed(session: Session) -> None:
            self.closed.append(session.id)

        async def cleaned_up(session: Session) -> None:
            self.cleaned_up.append(session)

        manager.on_session_expired.append(expired)
        manager.on_session_closed.append(closed)
        manager.on_session_cleaned_up.append(cleaned_up)
        return self

    @property
    def cleaned_up_ids(self) -> list[str]:
        return [session.id for session in self.cleaned_up]


def make_reaper(store: Store, clock: ManualClock, **overrides: Any) -> Reaper:
    settings = Settings(database_url=store.url, _env_file=None, **overrides)  # type: ignore[call-arg]
    manager = SessionManager(store, settings, clock, TimeoutPolicies.from_settings(settings))
    return Reaper(manager)


async def states(store: Store, *session_ids: str) -> list[str]:
    rows = [await store.get_session(USER, session_id) for session_id in session_ids]
    return [row.state if row else "missing" for row in rows]


async def open_session(reaper: Reaper, policy: str = "standard", **meta: Any) -> str:
    context = await reaper.sessions.context(USER, None, {"timeout_policy": policy, **meta})
    return context.session.id


async def start_run(store: Store, clock: ManualClock, session_id: str) -> RunRow:
    """A turn in progress in `session_id`, as the engine records one."""
    now = clock.now()
    thread = ThreadRow(id=new_id(IdKind.THREAD), user_id=USER, created_at=now, updated_at=now)
    await store.insert_thread(thread)
    run = RunRow(
        id=new_id(IdKind.RUN),
        thread_id=thread.id,
        user_id=USER,
        session_id=session_id,
        status=RunStatus.RUNNING,
        created_at=now,
    )
    await store.insert_run(run)
    return run


# -- strategies ---------------------------------------------------------------------------------


@dataclass
class Population:
    due: str  # standard, idle 31 minutes when the reaper comes
    fresh: str  # lenient: idle 31 minutes is nothing to it
    closed: str  # closed by its user a minute in
    busy: str  # due too, but a turn of it is still running
    run: RunRow


async def populate(reaper: Reaper, clock: ManualClock) -> Population:
    due = await open_session(reaper, "standard", note="keep me until cleanup")
    fresh = await open_session(reaper, "lenient")
    busy = await open_session(reaper, "standard")
    run = await start_run(reaper.store, clock, busy)
    closed = await open_session(reaper, "standard")
    clock.advance(MINUTE)
    await reaper.sessions.close(USER, closed)
    clock.advance(30 * MINUTE)
    return Population(due, fresh, closed, busy, run)


async def test_immediate_strategy_makes_tombstones_of_expired_and_closed_sessions_at_once(
    store: Store, clock: ManualClock
) -> None:
    reaper = make_reaper(store, clock, cleanup_strategy="immediate")
    heard = Heard().listen(reaper.sessions)
    people = await populate(reaper, clock)
    # Closing under `immediate` made the tombstone already.
    assert heard.cleaned_up_ids == [people.closed]

    report = await reaper.run_once()

    assert (report.expired, report.cleaned_up) == (1, 0)
    assert await states(store, people.due, people.fresh, people.closed, people.busy) == [
        "cleaned_up",
        "created",
        "cleaned_up",
        "created",
    ]
    due = await store.get_session(USER, people.due)
    assert due is not None
    assert (due.meta, due.end_reason, due.ended_at, due.cleaned_at) == (
        {},
        "expired",
        clock.now(),
        clock.now(),
    )
    assert heard.expired == [people.due]
    assert heard.cleaned_up_ids == [people.closed, people.due]
    assert heard.cleaned_up[1].metadata == {
        "timeout_policy": "standard",
        "note": "keep me until cleanup",
    }


async def test_deferred_strategy_cleans_after_the_grace_period_counted_from_the_end(
    store: Store, clock: ManualClock
) -> None:
    reaper = make_reaper(store, clock, cleanup_strategy="deferred", cleanup_grace_seconds=HOUR)
    heard = Heard().listen(reaper.sessions)
    people = await populate(reaper, clock)

    first = await reaper.run_once()
    assert (first.expired, first.cleaned_up) == (1, 0)
    assert await states(store, people.due, people.closed) == ["expired", "closed"]
    expired_at = clock.now()

    # The closed session ended 30 minutes before the expired one: its grace ends first.
    clock.advance(HOUR - 30 * MINUTE - 1)
    assert (await reaper.run_once()).cleaned_up == 0
    clock.advance(1)
    assert (await reaper.run_once()).cleaned_up == 1
    assert await states(store, people.due, people.closed) == ["expired", "cleaned_up"]

    clock.set(expired_at + timedelta(seconds=HOUR - 1))
    assert (await reaper.run_once()).cleaned_up == 0
    clock.advance(1)
    assert (await reaper.run_once()).cleaned_up == 1
    assert await states(store, people.due, people.fresh, people.closed, people.busy) == [
        "cleaned_up",
        "created",
        "cleaned_up",
        "created",
    ]
    assert heard.expired == [people.due]
    assert heard.closed == [people.closed]
    assert heard.cleaned_up_ids == [people.closed, people.due]
    assert (await reaper.run_once()).rows == 0


async def test_lazy_strategy_expires_in_the_background_and_cleans_only_on_access(
    store: Store, clock: ManualClock
) -> None:
    reaper = make_reaper(store, clock, cleanup_strategy="lazy")
    heard = Heard().listen(reaper.sessions)
    people = await populate(reaper, clock)

    assert (await reaper.run_once()).expired == 1
    clock.advance(30 * 24 * HOUR)
    for _ in range(3):
        assert (await reaper.run_once()).cleaned_up == 0
    assert await states(store, people.due, people.closed) == ["expired", "closed"]
    # Lenient sessions expire too, given a month.
    assert heard.expired == [people.due, people.fresh]
    assert heard.cleaned_up == []

    with pytest.raises(SessionExpired):
        await reaper.sessions.context(USER, people.due)

    assert await states(store, people.due, people.closed) == ["cleaned_up", "closed"]
    assert heard.cleaned_up_ids == [people.due]


@pytest.mark.parametrize("strategy", ["immediate", "deferred", "lazy"])
async def test_a_session_with_a_turn_in_progress_is_skipped_until_the_turn_ends(
    store: Store, clock: ManualClock, strategy: str
) -> None:
    reaper = make_reaper(store, clock, cleanup_strategy=strategy)
    heard = Heard().listen(reaper.sessions)
    busy = await open_session(reaper, "aggressive")
    run = await start_run(store, clock, busy)
    queued = await open_session(reaper, "aggressive")
    queued_run = await start_run(store, clock, queued)
    await store.update_run(queued_run.id, {"status": RunStatus.QUEUED})
    clock.advance(2 * HOUR)

    assert (await reaper.run_once()).expired == 0
    assert await states(store, busy, queued) == ["created", "created"]

    await store.update_run(run.id, {"status": RunStatus.COMPLETED})
    report = await reaper.run_once()

    assert report.expired == 1
    assert (await states(store, busy, queued))[1] == "created"
    assert heard.expired == [busy]


async def test_a_running_turn_through_the_chat_server_keeps_its_session_alive(
    server: ScriptedServer, clock: ManualClock
) -> None:
    reaper = Reaper(server.sessions)
    context = await server.sessions.context(USER, None, {"timeout_policy": "aggressive"})
    server.script.pause_after = 2
    handle = await server.create_thread_and_start_turn(context, user_input("hello"))
    await server.script.paused.wait()
    clock.advance(HOUR)

    assert (await reaper.run_once()).expired == 0
    assert await states(server.store, context.session.id) == ["active"]

    server.script.resume.set()
    assert (await collect(server, handle))[-1].type == "run.completed"
    assert (await reaper.run_once()).expired == 1
    assert await states(server.store, context.session.id) == ["expired"]


# -- batches and concurrency --------------------------------------------------------------------


async def make_due_sessions(reaper: Reaper, clock: ManualClock, count: int) -> list[str]:
    ids = [await open_session(reaper, "aggressive") for _ in range(count)]
    clock.advance(11 * MINUTE)
    return ids


async def test_a_pass_works_in_batches_of_the_configured_size_and_reports_progress(
    store: Store, clock: ManualClock
) -> None:
    reaper = make_reaper(
        store, clock, reaper_batch_size=7, cleanup_strategy="deferred", cleanup_grace_seconds=0
    )
    ids = await make_due_sessions(reaper, clock, 20)
    seen: list[tuple[int, int, int]] = []

    report = await reaper.run_once(lambda r: seen.append((r.batches, r.expired, r.cleaned_up)))

    # 7 + 7 + 6 expired, then 7 + 7 + 6 cleaned: never more than 7 rows per transaction.
    assert seen == [(1, 7, 0), (2, 14, 0), (3, 20, 0), (4, 20, 7), (5, 20, 14), (6, 20, 20)]
    assert (report.expired, report.cleaned_up, report.batches, report.reaped) == (20, 20, 6, True)
    assert set(await states(store, *ids)) == {"cleaned_up"}


async def test_expire_due_takes_the_longest_overdue_first(store: Store, clock: ManualClock) -> None:
    reaper = make_reaper(store, clock)
    ids = []
    for _ in range(3):
        ids.append(await open_session(reaper, "aggressive"))
        clock.advance(1)
    clock.advance(10 * MINUTE)

    first = await reaper.sessions.expire_due(limit=2)
    second = await reaper.sessions.expire_due(limit=2)

    assert [s.id for s in first] == ids[:2]
    assert [s.id for s in second] == ids[2:]
    assert {s.state for s in first + second} == {"expired"}
    assert await reaper.sessions.expire_due(limit=2) == []


@pytest.fixture
async def other_store(store: Store) -> AsyncIterator[Store]:
    """A second process's Store on the same database (its own pool or writer)."""
    other = Store(store.url)
    try:
        yield other
    finally:
        await other.close()


async def test_two_reapers_draining_at_once_clean_each_session_exactly_once(
    store: Store, other_store: Store, clock: ManualClock
) -> None:
    # The per-batch claim alone (FOR UPDATE SKIP LOCKED), without the one-reaper lock:
    # two processes' batches interleave and still never handle a session twice.
    reapers = [
        make_reaper(s, clock, cleanup_strategy="deferred", cleanup_grace_seconds=0)
        for s in (store, other_store)
    ]
    heard = Heard()
    for reaper in reapers:
        heard.listen(reaper.sessions)
    ids = await make_due_sessions(reapers[0], clock, 300)

    async def drain(duty: Callable[[int], Awaitable[list[Session]]]) -> list[str]:
        handled: list[str] = []
        while batch := await duty(9):
            handled += [session.id for session in batch]
            await asyncio.sleep(0)
        return handled

    expired = await asyncio.gather(*(drain(r.sessions.expire_due) for r in reapers))
    cleaned = await asyncio.gather(*(drain(r.sessions.clean_up_ended) for r in reapers))

    assert sorted(expired[0] + expired[1]) == sorted(ids)
    assert sorted(cleaned[0] + cleaned[1]) == sorted(ids)
    assert collections.Counter(heard.expired) == dict.fromkeys(ids, 1)
    assert collections.Counter(heard.cleaned_up_ids) == dict.fromkeys(ids, 1)
    assert set(await states(store, *ids)) == {"cleaned_up"}


async def test_two_reapers_passing_at_once_clean_each_session_exactly_once(
    store: Store, other_store: Store, clock: ManualClock
) -> None:
    reapers = [
        make_reaper(
            s, clock, cleanup_strategy="immediate", reaper_batch_size=10, cleanup_grace_seconds=0
        )
        for s in (store, other_store)
    ]
    heard = Heard()
    for reaper in reapers:
        heard.listen(reaper.sessions)
    ids = await make_due_sessions(reapers[0], clock, 200)

    reports = await asyncio.gather(*(reaper.run_once() for reaper in reapers))

    assert sum(report.expired for report in reports) == 200
    assert collections.Counter(heard.expired) == dict.fromkeys(ids, 1)
    assert collections.Counter(heard.cleaned_up_ids) == dict.fromkeys(ids, 1)
    assert set(await states(store, *ids)) == {"cleaned_up"}


async def test_on_postgresql_one_instance_reaps_at_a_time(
    store: Store, other_store: Store, clock: ManualClock
) -> None:
    if store.backend != "postgresql":
        pytest.skip("SQLite has one writer: its batches need no cross-process lock")
    reaper = make_reaper(other_store, clock)
    ids = await make_due_sessions(reaper, clock, 3)

    async with store.reaper_lock() as held:
        assert held
        skipped = await reaper.run_once()
    assert skipped == ReapReport(reaped=False)
    assert set(await states(store, *ids)) == {"created"}

    # Released with its pass: the next pass of anyone reaps.
    assert (await reaper.run_once()).expired == 3


# -- thread retention ---------------------------------------------------------------------------


async def test_threads_idle_past_their_retention_are_deleted_with_their_rows(
    server: ScriptedServer, clock: ManualClock
) -> None:
    server.settings.thread_retention_seconds = 30 * 24 * HOUR
    reaper = Reaper(server.sessions, server.broker)
    context = await server.sessions.context(USER, None, {"timeout_policy": "persistent"})
    old = await server.create_thread_and_start_turn(context, user_input("old"))
    await collect(server, old)
    clock.advance(20 * 24 * HOUR)
    recent = await server.create_thread_and_start_turn(context, user_input("recent"))
    await collect(server, recent)
    server.script.pause_after = 1
    busy = await server.create_thread_and_start_turn(context, user_input("busy"))
    await server.script.paused.wait()
    await server.store.update_thread(busy.thread_id, {"updated_at": clock.now()})
    clock.advance(10 * 24 * HOUR + 1)
    # `busy`'s turn started 10 days ago but still holds its thread.
    await server.store.update_thread(
        busy.thread_id, {"updated_at": clock.now() - timedelta(days=40)}
    )

    report = await reaper.run_once()

    assert report.threads_deleted == 1
    assert await server.store.get_thread(old.thread_id) is None
    assert await server.store.get_thread(recent.thread_id) is not None
    assert await server.store.get_thread(busy.thread_id) is not None
    async with server.store.read() as conn:
        for table in (tables.items, tables.events, tables.runs):
            left = await conn.scalar(
                sa.select(sa.func.count())
                .select_from(table)
                .where(table.c.thread_id == old.thread_id)
            )
            assert left == 0, table.name
    server.script.resume.set()
    await collect(server, busy)


async def test_without_a_retention_threads_are_kept_forever(
    store: Store, clock: ManualClock
) -> None:
    reaper = make_reaper(store, clock)
    thread = ThreadRow(
        id=new_id(IdKind.THREAD), user_id=USER, created_at=clock.now(), updated_at=clock.now()
    )
    await store.insert_thread(thread)
    clock.advance(10 * 365 * 24 * HOUR)

    assert (await reaper.run_once()).threads_deleted == 0
    assert await store.get_thread(thread.id) == thread


# -- the background loop ------------------------------------------------------------------------


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"not within {within}s")
        await asyncio.sleep(0.01)


async def test_the_loop_expires_sessions_when_the_clock_moves_and_survives_a_failed_pass(
    store: Store, clock: ManualClock
) -> None:
    reaper = make_reaper(store, clock, reaper_interval_seconds=0.01)
    heard = Heard().listen(reaper.sessions)
    passes: list[ReapReport] = []
    reaper.on_pass.append(passes.append)
    real_expire_due = reaper.sessions.expire_due
    failures = 0

    async def flaky_expire_due(limit: int) -> list[Session]:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise RuntimeError("a bad moment")
        return await real_expire_due(limit)

    reaper.sessions.expire_due = flaky_expire_due  # type: ignore[method-assign]
    session_id = await open_session(reaper, "aggressive")
    reaper.start()
    try:
        await eventually(lambda: _true(len(passes) >= 2))
        assert await states(store, session_id) == ["created"]

        clock.advance(10 * MINUTE)

        async def expired() -> bool:
            return await states(store, session_id) == ["expired"]

        await eventually(expired)
    finally:
        await reaper.stop()
    assert failures == 1
    assert heard.expired == [session_id]
    # Stopped: no pass runs any more.
    count = len(passes)
    await asyncio.sleep(0.05)
    assert len(passes) == count


async def _true(value: bool) -> bool:
    return value


async def test_an_expired_session_found_by_the_reaper_answers_session_expired(
    store: Store, clock: ManualClock
) -> None:
    reaper = make_reaper(store, clock)
    session_id = await open_session(reaper, "aggressive")
    clock.advance(10 * MINUTE)
    await reaper.run_once()

    with pytest.raises(SessionExpired) as caught:
        await reaper.sessions.context(USER, session_id)

    assert caught.value.code == ErrorCode.SESSION_EXPIRED
    row = await store.get_session(USER, session_id)
    assert isinstance(row, SessionRow)
    assert (row.state, row.ended_at, row.end_reason) == ("expired", clock.now(), "expired")


@pytest.mark.parametrize("strategy", ["immediate", "deferred", "lazy"])
async def test_requests_and_a_reaper_racing_over_the_same_expiries_hear_each_one_once(
    store: Store, other_store: Store, clock: ManualClock, strategy: str
) -> None:
    # The reaper in one process, requests naming the same due sessions in another.
    reaper = make_reaper(store, clock, cleanup_strategy=strategy, reaper_batch_size=5)
    requests = make_reaper(other_store, clock, cleanup_strategy=strategy).sessions
    heard = Heard()
    heard.listen(reaper.sessions)
    heard.listen(requests)
    ids = await make_due_sessions(reaper, clock, 40)

    async def touch(session_id: str) -> None:
        with pytest.raises(SessionExpired):
            await requests.context(USER, session_id)

    await asyncio.gather(reaper.run_once(), *(touch(sid) for sid in ids))

    assert collections.Counter(heard.expired) == dict.fromkeys(ids, 1)
    final = dict(zip(ids, await states(store, *ids), strict=True))
    # Lazy cleans on an access after the expiry: the sessions the reaper expired first.
    possible = {
        "immediate": {"cleaned_up"},
        "deferred": {"expired"},
        "lazy": {"expired", "cleaned_up"},
    }
    assert set(final.values()) <= possible[strategy]
    cleaned = [sid for sid, state in final.items() if state == "cleaned_up"]
    assert collections.Counter(heard.cleaned_up_ids) == dict.fromkeys(cleaned, 1)


class ListeningServer(ScriptedServer):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.heard: list[tuple[str, str, str]] = []

    async def on_session_expired(self, session: Session) -> None:
        self.heard.append(("expired", session.id, session.state))

    async def on_session_cleaned_up(self, session: Session) -> None:
        self.heard.append(("cleaned_up", session.id, session.metadata["tier"]))


async def test_a_chat_server_hears_the_expiry_and_the_cleanup_of_a_session_once(
    store: Store, clock: ManualClock
) -> None:
    settings = Settings(
        database_url=store.url, cleanup_strategy="deferred", cleanup_grace_seconds=60
    )
    server = ListeningServer(store, settings, clock=clock)
    reaper = Reaper(server.sessions)
    context = await server.sessions.context(
        USER, None, {"timeout_policy": "aggressive", "tier": "pro"}
    )
    session_id = context.session.id

    clock.advance(10 * MINUTE)
    await reaper.run_once()
    clock.advance(MINUTE)
    await reaper.run_once()
    await reaper.run_once()

    assert server.heard == [
        ("expired", session_id, "expired"),
        ("cleaned_up", session_id, "pro"),
    ]
