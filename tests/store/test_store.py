"""The Store's contract, on SQLite and on PostgreSQL (every test uses the `store` fixture)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from chatserver.errors import Conflict
from chatserver.ids import IdKind, new_id
from chatserver.statuses import ItemStatus
from chatserver.store import ItemWrite, NewEvent, Store
from chatserver.store.lifecycle import PolicySet
from chatserver.store.models import ItemRow, RunRow, SessionRow, ThreadRow
from chatserver.store.sql import Order

T0 = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)


def session_row(user_id: str = "user-a", **values: object) -> SessionRow:
    row = SessionRow(
        id=new_id(IdKind.SESSION),
        user_id=user_id,
        state="created",
        timeout_policy="standard",
        timeout_seconds=1800,
        meta={"tab_strategy": "shared"},
        created_at=T0,
        last_activity_at=T0,
        expires_at=T0 + timedelta(minutes=30),
        resumed_at=None,
        ended_at=None,
    )
    return row.model_copy(update=values)


def thread_row(user_id: str = "user-a", **values: object) -> ThreadRow:
    row = ThreadRow(id=new_id(IdKind.THREAD), user_id=user_id, created_at=T0, updated_at=T0)
    return row.model_copy(update=values)


def item_row(thread_id: str, **values: object) -> ItemRow:
    row = ItemRow(
        id=new_id(IdKind.ITEM),
        thread_id=thread_id,
        type="user_message",
        status="completed",
        data="{}",
        created_at=T0,
    )
    return row.model_copy(update=values)


def run_row(thread_id: str, user_id: str = "user-a", **values: object) -> RunRow:
    row = RunRow(
        id=new_id(IdKind.RUN),
        thread_id=thread_id,
        user_id=user_id,
        status="running",
        created_at=T0,
        lease_until=None,
        finished_at=None,
    )
    return row.model_copy(update=values)


async def add_item(store: Store, row: ItemRow) -> None:
    """Items are only written with the events about them; here, with none."""
    write = ItemWrite(
        id=row.id,
        thread_id=row.thread_id,
        type=row.type,
        status=ItemStatus(row.status),
        data=row.data,
        created_at=row.created_at,
    )
    await store.append_events(row.thread_id, [], item_changes=[write], created_at=row.created_at)


async def new_thread(store: Store, user_id: str = "user-a") -> ThreadRow:
    row = thread_row(user_id)
    await store.insert_thread(row)
    return row


def event(text: str, run_id: str | None = None) -> NewEvent:
    return NewEvent(run_id=run_id, type="thread.item.updated", data=f'{{"text": "{text}"}}')


async def all_seqs(store: Store, thread_id: str) -> list[int]:
    return [e.seq for e in await store.read_events(thread_id, after=0, limit=100_000)]


# -- events ----------------------------------------------------------------------------------


async def test_concurrent_appends_get_dense_seqs_without_gap_or_duplicate(store: Store) -> None:
    thread = await new_thread(store)

    async def writer(task: int) -> list[int]:
        firsts = []
        for n in range(10):
            batch = [event(f"{task}-{n}")]
            firsts.append(await store.append_events(thread.id, batch, created_at=T0))
        return firsts

    results = await asyncio.gather(*(writer(task) for task in range(20)))

    assert sorted(seq for firsts in results for seq in firsts) == list(range(1, 201))
    stored = await store.read_events(thread.id, after=0, limit=1000)
    assert [e.seq for e in stored] == list(range(1, 201))
    assert len({e.data for e in stored}) == 200
    # Each writer's own events keep its order: commit order is seq order.
    for task, firsts in enumerate(results):
        assert firsts == sorted(firsts)
        mine = [e.data for e in stored if e.data.startswith(f'{{"text": "{task}-')]
        assert mine == [f'{{"text": "{task}-{n}"}}' for n in range(10)]
    for cursor in range(0, 201, 9):
        rest = await store.read_events(thread.id, after=cursor, limit=1000)
        assert rest == stored[cursor:]
    assert await store.max_seq(thread.id) == 200


async def test_read_events_after_a_cursor_returns_exactly_the_rest_in_order(store: Store) -> None:
    thread = await new_thread(store)
    for start in range(0, 200, 25):
        batch = [event(str(n)) for n in range(start + 1, start + 26)]
        assert await store.append_events(thread.id, batch, created_at=T0) == start + 1

    for cursor in [*range(0, 201, 7), 199, 200, 250]:
        rest = await store.read_events(thread.id, after=cursor, limit=1000)
        assert [e.seq for e in rest] == list(range(cursor + 1, 201))
        assert [e.data for e in rest] == [f'{{"text": "{n}"}}' for n in range(cursor + 1, 201)]
    # Paging with the last seq seen as the cursor reassembles the whole log.
    paged: list[int] = []
    while page := await store.read_events(thread.id, after=paged[-1] if paged else 0, limit=30):
        paged.extend(e.seq for e in page)
    assert paged == list(range(1, 201))
    assert await store.max_seq(thread.id) == 200


async def test_max_seq_of_a_thread_without_events_is_zero(store: Store) -> None:
    thread = await new_thread(store)

    assert await store.max_seq(thread.id) == 0
    assert await store.read_events(thread.id, after=0, limit=10) == []


async def test_append_with_explicit_first_seq_refuses_a_stale_writer(store: Store) -> None:
    thread = await new_thread(store)
    await store.append_events(thread.id, [event("a"), event("b")], first_seq=1, created_at=T0)

    with pytest.raises(sa.exc.IntegrityError):
        await store.append_events(thread.id, [event("stale")], first_seq=2, created_at=T0)

    assert [e.data for e in await store.read_events(thread.id, 0, 10)] == [
        '{"text": "a"}',
        '{"text": "b"}',
    ]


async def test_item_write_inserts_then_updates_the_item(store: Store) -> None:
    thread = await new_thread(store)
    item_id = new_id(IdKind.ITEM)

    def write(status: str, data: str, created_at: datetime) -> ItemWrite:
        return ItemWrite(item_id, thread.id, "assistant_message", status, data, created_at)

    await store.append_events(
        thread.id, [event("added")], item_changes=[write("in_progress", "v1", T0)], created_at=T0
    )
    inserted = await store.get_item(item_id)
    assert inserted is not None
    assert (inserted.status, inserted.data) == ("in_progress", "v1")

    later = T0 + timedelta(seconds=5)
    await store.append_events(
        thread.id, [event("done")], item_changes=[write("completed", "v2", later)], created_at=later
    )
    updated = await store.get_item(item_id)
    assert updated is not None
    assert (updated.status, updated.data) == ("completed", "v2")
    assert updated.created_at == T0  # an upsert keeps when the item was created
    items, _ = await store.list_items(thread.id, limit=10)
    assert [i.id for i in items] == [item_id]


async def test_item_writes_in_one_batch_insert_then_update_in_order(store: Store) -> None:
    thread = await new_thread(store)
    item_id = new_id(IdKind.ITEM)
    writes = [
        ItemWrite(item_id, thread.id, "assistant_message", "in_progress", "v1", T0),
        ItemWrite(item_id, thread.id, "assistant_message", "completed", "v2", T0),
    ]

    await store.append_events(
        thread.id, [event("a"), event("b")], item_changes=writes, created_at=T0
    )

    item = await store.get_item(item_id)
    assert item is not None
    assert (item.status, item.data) == ("completed", "v2")


async def test_failed_item_write_rolls_back_the_events_of_the_same_append(store: Store) -> None:
    thread = await new_thread(store)
    await store.append_events(thread.id, [event("kept")], created_at=T0)
    orphan = ItemWrite(new_id(IdKind.ITEM), "thr_missing", "user_message", "completed", "{}", T0)

    with pytest.raises(sa.exc.IntegrityError):
        await store.append_events(thread.id, [event("lost")], item_changes=[orphan], created_at=T0)

    assert await all_seqs(store, thread.id) == [1]
    assert await store.get_item(orphan.id) is None


DELTA = "thread.item.updated"


def turn_events(run_id: str, deltas: int = 3) -> list[NewEvent]:
    """A finished turn's shape: structure around its deltas."""
    return [
        NewEvent(run_id, "run.started", "{}"),
        NewEvent(run_id, "thread.item.added", "{}"),
        *(NewEvent(run_id, DELTA, f'{{"n": {n}}}') for n in range(deltas)),
        NewEvent(run_id, "thread.item.done", "{}"),
        NewEvent(run_id, "run.completed", "{}"),
    ]


async def all_events(store: Store, thread_id: str) -> list[tuple[int, str | None, str]]:
    events = await store.read_events(thread_id, after=0, limit=100_000)
    return [(e.seq, e.run_id, e.type) for e in events]


async def test_compaction_drops_the_deltas_of_runs_finished_before_the_last_one(
    store: Store,
) -> None:
    thread = await new_thread(store)
    earlier, last = new_id(IdKind.RUN), new_id(IdKind.RUN)
    await store.append_events(thread.id, turn_events(earlier), created_at=T0)
    await store.append_events(thread.id, [NewEvent(None, "notice", "{}")], created_at=T0)
    start = await store.max_seq(thread.id)
    await store.append_events(thread.id, turn_events(last), created_at=T0)

    removed = await store.compact_events(thread.id, start, types=[DELTA], keep=1000)

    assert removed == 3
    # The last run's deltas stay, for clients still reading it, until the next run ends.
    assert await all_events(store, thread.id) == [
        (1, earlier, "run.started"),
        (2, earlier, "thread.item.added"),
        (6, earlier, "thread.item.done"),
        (7, earlier, "run.completed"),
        (8, None, "notice"),
        *((seq, last, e.type) for seq, e in enumerate(turn_events(last), 9)),
    ]


async def test_compaction_keeps_the_newest_events_and_appends_continue_after(
    store: Store,
) -> None:
    thread = await new_thread(store)
    await store.append_events(thread.id, [event(str(n)) for n in range(50)], created_at=T0)

    removed = await store.compact_events(thread.id, 0, types=[DELTA], keep=10)

    assert removed == 40
    assert await store.min_seq(thread.id) == 41
    assert await all_seqs(store, thread.id) == list(range(41, 51))
    assert await store.compact_events(thread.id, 0, types=[DELTA], keep=10) == 0
    assert await store.append_events(thread.id, [event("next")], created_at=T0) == 51


async def test_compaction_never_reaches_into_a_run_still_open_on_the_thread(
    store: Store,
) -> None:
    thread = await new_thread(store)
    await store.append_events(thread.id, [event(str(n)) for n in range(20)], created_at=T0)
    running = run_row(thread.id, status="running", start_seq=20)
    await store.insert_run(running)
    await store.append_events(
        thread.id, [event(str(n), running.id) for n in range(300)], created_at=T0
    )

    await store.compact_events(thread.id, 320, types=[DELTA], keep=100)

    # Everything before the open run went; nothing of it, although that is 300 > 100 events
    # and all of them deltas.
    assert await all_seqs(store, thread.id) == list(range(21, 321))

    await store.update_run(running.id, {"status": "completed"})
    await store.compact_events(thread.id, 0, types=[DELTA], keep=100)
    assert await all_seqs(store, thread.id) == list(range(221, 321))


@pytest.mark.slow
async def test_the_event_log_stays_bounded_over_five_thousand_turns_on_one_thread(
    store: Store,
) -> None:
    thread = await new_thread(store)
    keep = 1000
    next_seq = 1
    for turn in range(5000):
        run_id = new_id(IdKind.RUN)
        events = turn_events(run_id)
        await store.append_events(thread.id, events, first_seq=next_seq, created_at=T0)
        # What a turn's end does: its run started after seq next_seq - 1.
        await store.compact_events(thread.id, next_seq - 1, types=[DELTA], keep=keep)
        next_seq += len(events)
        if turn % 1000 == 999:
            logged = await all_events(store, thread.id)
            assert len(logged) == keep
            assert {run for _, run, type_ in logged if type_ == DELTA} == {run_id}

    logged = await all_events(store, thread.id)
    # The newest `keep` events, the log bounded by the setting, not by how long the thread
    # has been talked in; only the last turn still has its deltas.
    assert len(logged) == keep
    assert logged[-1][0] == next_seq - 1 == 5000 * 7
    assert [type_ for _, _, type_ in logged[-7:]] == [e.type for e in turn_events(run_id)]
    assert [type_ for _, _, type_ in logged[-11:-7]] == [
        "run.started",
        "thread.item.added",
        "thread.item.done",
        "run.completed",
    ]
    assert await store.min_seq(thread.id) == logged[0][0]


# -- sessions --------------------------------------------------------------------------------


async def test_modify_session_creates_when_absent(store: Store) -> None:
    row = session_row()
    seen: list[SessionRow | None] = []

    def create(current: SessionRow | None) -> tuple[SessionRow | None, str]:
        seen.append(current)
        return row, "created"

    stored, outcome = await store.modify_session(row.user_id, row.id, create)

    assert seen == [None]
    assert outcome == "created"
    assert stored == row
    assert await store.get_session(row.user_id, row.id) == row
    assert row.version == 1


async def test_modify_session_updates_with_the_next_version_when_present(store: Store) -> None:
    row = session_row()
    await store.insert_session(row)

    def activate(current: SessionRow | None) -> tuple[SessionRow | None, str]:
        assert current is not None
        current.state = "active"
        current.resume_count += 1
        return current, "updated"

    stored, outcome = await store.modify_session(row.user_id, row.id, activate)

    assert outcome == "updated"
    assert stored is not None
    assert (stored.state, stored.resume_count, stored.version) == ("active", 1, 2)
    assert await store.get_session(row.user_id, row.id) == stored


async def test_modify_session_returning_no_row_leaves_the_session_as_is(store: Store) -> None:
    row = session_row()
    await store.insert_session(row)

    def refuse(current: SessionRow | None) -> tuple[SessionRow | None, str]:
        return None, "refused"

    stored, outcome = await store.modify_session(row.user_id, row.id, refuse)

    assert (stored, outcome) == (row, "refused")
    assert await store.get_session(row.user_id, row.id) == row


async def test_concurrent_modify_session_loses_no_update(store: Store) -> None:
    row = session_row()
    await store.insert_session(row)

    def count_turn(current: SessionRow | None) -> tuple[SessionRow | None, None]:
        assert current is not None
        current.turn_count += 1
        return current, None

    await asyncio.gather(
        *(store.modify_session(row.user_id, row.id, count_turn) for _ in range(20))
    )

    stored = await store.get_session(row.user_id, row.id)
    assert stored is not None
    assert (stored.turn_count, stored.version) == (20, 21)


async def test_one_session_id_under_two_users_is_two_sessions(store: Store) -> None:
    alice = session_row("alice", id="ses_chosen-by-both")
    bob = session_row("bob", id="ses_chosen-by-both", state="active")
    await store.insert_session(bob)

    def create(current: SessionRow | None) -> tuple[SessionRow | None, str]:
        return (alice, "created") if current is None else (None, "taken")

    stored, outcome = await store.modify_session("alice", alice.id, create)

    assert (stored, outcome) == (alice, "created")
    assert await store.get_session("alice", alice.id) == alice
    assert await store.get_session("bob", alice.id) == bob
    assert await store.get_session("carol", alice.id) is None


# -- threads ---------------------------------------------------------------------------------


async def test_update_thread_with_a_stale_version_conflicts_and_changes_nothing(
    store: Store,
) -> None:
    thread = await new_thread(store)
    updated = await store.update_thread(thread.id, {"title": "first"}, expected_version=1)
    assert (updated.title, updated.version) == ("first", 2)

    with pytest.raises(Conflict):
        await store.update_thread(thread.id, {"title": "lost"}, expected_version=1)

    assert await store.get_thread(thread.id) == updated


async def test_update_thread_without_a_version_bumps_the_current_one(store: Store) -> None:
    thread = await new_thread(store)

    first = await store.update_thread(thread.id, {"status": "running"})
    second = await store.update_thread(thread.id, {"status": "idle"})

    assert (first.version, second.version) == (2, 3)
    assert await store.get_thread(thread.id) == second


async def test_list_threads_never_shows_another_users_threads(store: Store) -> None:
    mine = [await new_thread(store, "user-a") for _ in range(3)]
    theirs = [await new_thread(store, "user-b") for _ in range(2)]

    listed, has_more = await store.list_threads("user-a", limit=10)
    assert [t.id for t in listed] == [t.id for t in reversed(mine)]
    assert not has_more
    listed, _ = await store.list_threads("user-b", limit=10)
    assert {t.id for t in listed} == {t.id for t in theirs}
    assert await store.list_threads("user-c", limit=10) == ([], False)
    # Another user's thread id as cursor reveals nothing of theirs either.
    listed, _ = await store.list_threads("user-a", limit=10, after=theirs[-1].id)
    assert {t.user_id for t in listed} == {"user-a"}


async def test_list_threads_is_newest_first(store: Store) -> None:
    created = [await new_thread(store) for _ in range(5)]

    listed, _ = await store.list_threads("user-a", limit=5)

    assert [t.id for t in listed] == [t.id for t in reversed(created)]


async def test_thread_pages_stay_stable_while_threads_are_added(store: Store) -> None:
    initial = {(await new_thread(store)).id for _ in range(23)}
    walked: list[str] = []
    after: str | None = None
    while True:
        page, has_more = await store.list_threads("user-a", limit=5, after=after)
        walked.extend(t.id for t in page)
        for _ in range(2):
            await new_thread(store)
        if not has_more:
            break
        after = page[-1].id

    assert len(walked) == len(set(walked)), "a thread came twice"
    assert initial <= set(walked), "a thread that existed at the start was skipped"
    assert walked == sorted(walked, reverse=True)


async def test_delete_thread_removes_its_items_events_and_runs(store: Store) -> None:
    doomed, kept = await new_thread(store), await new_thread(store)
    rows = {}
    for thread in (doomed, kept):
        item, run = item_row(thread.id), run_row(thread.id)
        await add_item(store, item)
        await store.insert_run(run)
        await store.append_events(thread.id, [event("x"), event("y")], created_at=T0)
        rows[thread.id] = (item, run)

    assert await store.delete_thread(doomed.id) is True

    assert await store.get_thread(doomed.id) is None
    assert await store.list_items(doomed.id, limit=10) == ([], False)
    assert await store.read_events(doomed.id, after=0, limit=10) == []
    assert await store.max_seq(doomed.id) == 0
    assert await store.get_item(rows[doomed.id][0].id) is None
    assert await store.get_run(rows[doomed.id][1].id) is None
    # The other thread is untouched.
    assert await store.get_thread(kept.id) == kept
    assert await store.get_item(rows[kept.id][0].id) == rows[kept.id][0]
    assert await store.get_run(rows[kept.id][1].id) == rows[kept.id][1]
    assert await all_seqs(store, kept.id) == [1, 2]
    assert await store.delete_thread(doomed.id) is False


# -- items -----------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_item_pages_stay_stable_while_items_are_added(store: Store, order: Order) -> None:
    thread = await new_thread(store)

    async def add_new_item() -> str:
        row = item_row(thread.id)
        await add_item(store, row)
        return row.id

    initial = {await add_new_item() for _ in range(23)}
    walked: list[str] = []
    after: str | None = None
    while True:
        page, has_more = await store.list_items(thread.id, limit=5, after=after, order=order)
        walked.extend(i.id for i in page)
        for _ in range(2):
            await add_new_item()
        if not has_more:
            break
        after = page[-1].id

    assert len(walked) == len(set(walked)), "an item came twice"
    assert initial <= set(walked), "an item that existed at the start was skipped"
    assert walked == sorted(walked, reverse=order == "desc")


async def test_list_items_shows_only_the_threads_own_items(store: Store) -> None:
    thread, other = await new_thread(store), await new_thread(store)
    mine = [item_row(thread.id) for _ in range(3)]
    for row in [*mine, item_row(other.id)]:
        await add_item(store, row)

    listed, has_more = await store.list_items(thread.id, limit=3)

    assert listed == mine
    assert not has_more


# -- runs ------------------------------------------------------------------------------------


async def test_find_run_by_idempotency_key_is_scoped_to_the_user(store: Store) -> None:
    thread = await new_thread(store)
    run = run_row(thread.id, "user-a", idempotency_key="key-1")
    await store.insert_run(run)
    await store.insert_run(run_row(thread.id, "user-a"))  # runs without a key never match

    assert await store.find_run_by_idempotency_key("user-a", "key-1") == run
    assert await store.find_run_by_idempotency_key("user-b", "key-1") is None
    assert await store.find_run_by_idempotency_key("user-a", "key-2") is None


async def test_an_idempotency_key_is_unique_per_user(store: Store) -> None:
    thread = await new_thread(store)
    await store.insert_run(run_row(thread.id, "user-a", idempotency_key="key-1"))
    await store.insert_run(run_row(thread.id, "user-b", idempotency_key="key-1"))

    with pytest.raises(sa.exc.IntegrityError):
        await store.insert_run(run_row(thread.id, "user-a", idempotency_key="key-1"))


async def test_list_lapsed_runs_finds_unfinished_runs_whose_lease_passed(store: Store) -> None:
    thread = await new_thread(store)
    now = T0 + timedelta(hours=1)

    def at(minutes: int) -> datetime:
        return now + timedelta(minutes=minutes)

    oldest = run_row(thread.id, lease_until=at(-10))
    older = run_row(thread.id, lease_until=at(-1))
    others = [
        run_row(thread.id, lease_until=at(1)),  # still leased
        run_row(thread.id, lease_until=now),  # lapses only after `now`
        run_row(thread.id, status="completed", lease_until=at(-5)),
        run_row(thread.id, status="queued"),
    ]
    for run in [older, *others, oldest]:
        await store.insert_run(run)

    assert await store.list_lapsed_runs(now, limit=10) == [oldest, older]
    assert await store.list_lapsed_runs(now, limit=1) == [oldest]


async def test_renewed_leases_no_longer_lapse(store: Store) -> None:
    thread = await new_thread(store)
    mine = run_row(thread.id, owner="node-1", lease_until=T0)
    theirs = run_row(thread.id, owner="node-2", lease_until=T0)
    for run in (mine, theirs):
        await store.insert_run(run)

    await store.renew_leases("node-1", [mine.id, theirs.id], T0 + timedelta(minutes=5))

    lapsed = await store.list_lapsed_runs(T0 + timedelta(minutes=1), limit=10)
    assert [r.id for r in lapsed] == [theirs.id]


# -- timestamps ------------------------------------------------------------------------------

PLUS_TWO = timezone(timedelta(hours=2))


async def test_timestamps_come_back_timezone_aware_utc(store: Store) -> None:
    local = datetime(2026, 3, 1, 14, 30, 15, 654321, tzinfo=PLUS_TWO)
    utc = local.astimezone(UTC)
    session = session_row(created_at=local, last_activity_at=local, expires_at=local)
    thread = thread_row(created_at=local, updated_at=local)
    await store.insert_session(session)
    await store.insert_thread(thread)
    item = item_row(thread.id, created_at=local)
    run = run_row(thread.id, created_at=local, lease_until=local, finished_at=local)
    await add_item(store, item)
    await store.insert_run(run)

    loaded_session = await store.get_session(session.user_id, session.id)
    loaded_thread = await store.get_thread(thread.id)
    loaded_item = await store.get_item(item.id)
    loaded_run = await store.get_run(run.id)
    assert loaded_session and loaded_thread and loaded_item and loaded_run
    stamps = [
        loaded_session.created_at,
        loaded_session.last_activity_at,
        loaded_session.expires_at,
        loaded_thread.created_at,
        loaded_thread.updated_at,
        loaded_item.created_at,
        loaded_run.created_at,
        loaded_run.lease_until,
        loaded_run.finished_at,
    ]
    for stamp in stamps:
        assert stamp is not None
        assert stamp.tzinfo is UTC
        assert stamp == utc
        assert (stamp.hour, stamp.microsecond) == (12, 654321)
    assert loaded_session.resumed_at is None


async def test_a_naive_timestamp_is_refused(store: Store) -> None:
    naive = datetime(2026, 1, 1, 12, 0, 0)

    with pytest.raises(sa.exc.StatementError, match="naive datetime"):
        await store.insert_thread(thread_row(created_at=naive, updated_at=naive))


async def test_timestamp_comparisons_mix_offsets_correctly(store: Store) -> None:
    row = session_row(expires_at=datetime(2026, 1, 1, 14, 0, tzinfo=PLUS_TWO))  # 12:00 UTC
    await store.insert_session(row)
    nobody = PolicySet()

    before = await store.expire_sessions(
        datetime(2026, 1, 1, 11, 59, tzinfo=UTC), 10, tombstone=nobody
    )
    after = await store.expire_sessions(
        datetime(2026, 1, 1, 12, 0, tzinfo=UTC), 10, tombstone=nobody
    )

    assert before == []
    assert [s.values["id"] for s in after] == [row.id]


async def test_session_metadata_round_trips_as_json(store: Store) -> None:
    meta = {"timeout_policy": "lenient", "tags": ["a", "b"], "nested": {"n": 1, "ok": True}}
    row = session_row(meta=meta)
    await store.insert_session(row)

    loaded = await store.get_session(row.user_id, row.id)

    assert loaded is not None
    assert loaded.meta == meta


# -- cancellation ----------------------------------------------------------------------------


async def test_a_cancelled_write_commits_whole_and_leaves_the_store_writable(
    store: Store,
) -> None:
    """A client that disconnects cancels its request mid-write. On SQLite that used to lose
    the single writer connection with its write lock held: every later write hung."""
    thread = await new_thread(store)
    batch = [NewEvent(None, "thread.item.updated", "x" * 200) for _ in range(2000)]
    for attempt in range(12):
        write = asyncio.create_task(store.append_events(thread.id, batch, created_at=T0))
        await asyncio.sleep(0.001 * (attempt % 4))
        write.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await write
        await asyncio.wait_for(
            store.append_events(thread.id, [NewEvent(None, "probe", "{}")], created_at=T0),
            timeout=10,
        )

    events = await store.read_events(thread.id, 0, 100_000)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    # Each cancelled batch is all there or not at all, never cut short.
    assert (len(events) - 12) % 2000 == 0
