"""Sessions on SQLite and PostgreSQL: create-or-resume under the lock, sliding expiry per
policy, resume, close, listeners that run once, cleanup strategies, and the seed scenario
(a task resumed after two hours) through a real ChatServer. Tests move the clock, never sleep."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from chatserver.clock import ManualClock
from chatserver.config import Settings
from chatserver.errors import ChatServerError, ErrorCode
from chatserver.ids import IdKind, new_id
from chatserver.policies import TimeoutPolicies
from chatserver.responders.echo import EchoChatServer, user_text
from chatserver.server import RunHandle
from chatserver.sessions import RequestContext, Session, SessionManager
from chatserver.store import Store
from chatserver.store import models as tables
from chatserver.store.models import SessionRow
from chatserver.types import (
    AssistantMessageItem,
    ChatKitEvent,
    ThreadItem,
    ThreadMetadata,
    UserMessageInput,
    UserMessageItem,
    UserMessageTextContent,
)

USER = "alice"
HOUR = 60 * 60
POLICY_TIMEOUTS = [
    pytest.param({"timeout_policy": "aggressive"}, 10 * 60, id="aggressive"),
    pytest.param({"timeout_policy": "standard"}, 30 * 60, id="standard"),
    pytest.param({"timeout_policy": "lenient"}, 4 * HOUR, id="lenient"),
    pytest.param({"timeout_policy": "persistent"}, 7 * 24 * HOUR, id="persistent"),
    pytest.param({"timeout_seconds": 900}, 900, id="custom"),
]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def make_settings(store: Store, **overrides: Any) -> Settings:
    return Settings(database_url=store.url, _env_file=None, **overrides)  # type: ignore[call-arg]


def make_manager(store: Store, clock: ManualClock, **overrides: Any) -> SessionManager:
    settings = make_settings(store, **overrides)
    return SessionManager(store, settings, clock, TimeoutPolicies.from_settings(settings))


@dataclass
class Endings:
    """What the close listeners saw, in call order."""

    closed: list[Session] = field(default_factory=list)
    expired: list[Session] = field(default_factory=list)
    cleaned_up: list[Session] = field(default_factory=list)

    def listen(self, manager: SessionManager) -> Endings:
        async def closed(session: Session) -> None:
            self.closed.append(session)

        async def expired(session: Session) -> None:
            self.expired.append(session)

        async def cleaned_up(session: Session) -> None:
            self.cleaned_up.append(session)

        manager.on_session_closed.append(closed)
        manager.on_session_expired.append(expired)
        manager.on_session_cleaned_up.append(cleaned_up)
        return self

    @property
    def closed_ids(self) -> list[str]:
        return [row.id for row in self.closed]

    @property
    def expired_ids(self) -> list[str]:
        return [row.id for row in self.expired]

    @property
    def cleaned_up_ids(self) -> list[str]:
        return [row.id for row in self.cleaned_up]


def client_session_id() -> str:
    return f"ses_tab-{uuid.uuid4().hex[:12]}"


async def error_code(call: Awaitable[object]) -> ErrorCode:
    with pytest.raises(ChatServerError) as caught:
        await call
    return caught.value.code


async def session_count(store: Store) -> int:
    async with store.read() as conn:
        count = await conn.scalar(sa.select(sa.func.count()).select_from(tables.sessions))
    return int(count or 0)


async def stored(store: Store, session_id: str) -> SessionRow:
    row = await store.get_session(USER, session_id)
    assert row is not None
    return row


# -- one session per client-chosen id, under concurrency ---------------------------------------


async def test_fifty_concurrent_first_requests_with_one_client_session_id_share_one_session(
    store: Store, clock: ManualClock
) -> None:
    manager = make_manager(store, clock)
    session_id = client_session_id()

    contexts = await asyncio.gather(
        *(manager.context(USER, session_id, {"timeout_policy": "lenient"}) for _ in range(50))
    )

    assert {ctx.session.id for ctx in contexts} == {session_id}
    assert await session_count(store) == 1
    row = await stored(store, session_id)
    # One insert and 49 touches of the same row, none lost.
    assert (row.state, row.timeout_policy, row.resume_count, row.version) == (
        "created",
        "lenient",
        0,
        50,
    )


async def test_two_server_processes_racing_on_one_client_session_id_create_one_session(
    store: Store, clock: ManualClock
) -> None:
    # A second Store on the same database stands for a second server process: on SQLite its
    # own writer connection to the file, on PostgreSQL its own pool (the advisory lock).
    other_store = Store(store.url)
    try:
        managers = [make_manager(store, clock), make_manager(other_store, clock)]
        session_id = client_session_id()

        contexts = await asyncio.gather(
            *(managers[n % 2].context(USER, session_id) for n in range(50))
        )

        assert {ctx.session.id for ctx in contexts} == {session_id}
        assert await session_count(store) == 1
        assert (await stored(store, session_id)).version == 50
    finally:
        await other_store.close()


async def test_a_session_id_another_user_took_first_is_still_free_for_each_user(
    store: Store, clock: ManualClock
) -> None:
    manager = make_manager(store, clock)
    chosen = "ses_alicefuture01"
    squatter = (await manager.context("bob", chosen, {"timeout_policy": "lenient"})).session
    await manager.close("bob", chosen)

    alice = (await manager.context("alice", chosen)).session
    clock.advance(1)
    again = (await manager.context("alice", chosen)).session

    assert (alice.id, alice.user_id, alice.state, alice.timeout_policy) == (
        chosen,
        "alice",
        "created",
        "standard",
    )
    assert (again.user_id, again.version) == ("alice", 2)
    assert (await manager.get("bob", chosen)).state == "closed"
    assert (await manager.get("alice", chosen)).state == "created"
    assert await error_code(manager.get("carol", chosen)) == ErrorCode.SESSION_NOT_FOUND
    assert squatter.user_id == "bob"
    assert await session_count(store) == 2


# -- sliding expiry per policy ------------------------------------------------------------------


@pytest.mark.parametrize(("metadata", "timeout_seconds"), POLICY_TIMEOUTS)
async def test_session_resumes_one_second_before_expiry_and_expires_one_second_after(
    store: Store, clock: ManualClock, metadata: dict[str, Any], timeout_seconds: int
) -> None:
    manager = make_manager(store, clock)
    endings = Endings().listen(manager)
    session_id = client_session_id()
    created = (await manager.context(USER, session_id, metadata)).session
    assert created.expires_at == clock.now() + timedelta(seconds=timeout_seconds)

    clock.advance(timeout_seconds - 1)
    resumed = (await manager.context(USER, session_id)).session
    assert (resumed.state, resumed.resume_count) == ("resumed", 1)
    # Sliding: the timeout counts again from this request.
    assert resumed.expires_at == clock.now() + timedelta(seconds=timeout_seconds)

    clock.advance(timeout_seconds + 1)
    assert await error_code(manager.context(USER, session_id)) == ErrorCode.SESSION_EXPIRED
    # It stays expired: the same id (even with fresh metadata) is never silently re-created.
    clock.advance(1)
    assert await error_code(manager.context(USER, session_id, metadata)) == (
        ErrorCode.SESSION_EXPIRED
    )
    row = await stored(store, session_id)
    assert (row.state, row.resume_count, row.created_at) == ("expired", 1, created.created_at)
    assert await session_count(store) == 1
    assert endings.expired_ids == [session_id]


@pytest.mark.parametrize("resume_gap", [60, 300])
async def test_session_counts_as_resumed_only_after_an_idle_gap_of_resume_gap_seconds(
    store: Store, clock: ManualClock, resume_gap: int
) -> None:
    manager = make_manager(store, clock, resume_gap_seconds=resume_gap)
    session_id = client_session_id()
    await manager.context(USER, session_id)

    clock.advance(resume_gap - 1)
    row = (await manager.context(USER, session_id)).session
    assert (row.state, row.resume_count, row.resumed_at) == ("created", 0, None)

    clock.advance(resume_gap)
    row = (await manager.context(USER, session_id)).session
    assert (row.state, row.resume_count, row.resumed_at) == ("resumed", 1, clock.now())

    clock.advance(1)
    row = (await manager.context(USER, session_id)).session
    assert (row.state, row.resume_count) == ("resumed", 1)

    clock.advance(resume_gap)
    row = (await manager.context(USER, session_id)).session
    assert (row.state, row.resume_count) == ("resumed", 2)
    assert (await stored(store, session_id)).resume_count == 2


async def test_twenty_tabs_returning_after_an_idle_gap_count_one_resume(
    store: Store, clock: ManualClock
) -> None:
    manager = make_manager(store, clock)
    session_id = client_session_id()
    await manager.context(USER, session_id, {"timeout_policy": "lenient"})
    clock.advance(2 * HOUR)

    contexts = await asyncio.gather(*(manager.context(USER, session_id) for _ in range(20)))

    assert {(c.session.state, c.session.resume_count) for c in contexts} == {("resumed", 1)}
    assert (await stored(store, session_id)).resume_count == 1


async def test_record_turn_makes_the_session_active_on_the_thread_and_counts_turns(
    store: Store, clock: ManualClock
) -> None:
    manager = make_manager(store, clock)
    session_id = (await manager.context(USER, None)).session.id
    thread_id = new_id(IdKind.THREAD)

    row = await manager.record_turn(USER, session_id, thread_id)
    assert (row.state, row.turn_count, row.thread_id) == ("active", 1, thread_id)

    clock.advance(10 * 60)
    row = await manager.record_turn(USER, session_id, thread_id)
    assert (row.turn_count, row.last_activity_at) == (2, clock.now())
    assert row.expires_at == clock.now() + timedelta(seconds=30 * 60)

    clock.advance(5 * 60)
    row = (await manager.context(USER, session_id)).session
    assert (row.state, row.resume_count) == ("resumed", 1)
    await manager.record_turn(USER, session_id, thread_id)

    row = await stored(store, session_id)
    assert (row.state, row.turn_count, row.resume_count, row.thread_id) == (
        "active",
        3,
        1,
        thread_id,
    )


async def test_record_turn_on_an_expired_session_is_refused(
    store: Store, clock: ManualClock
) -> None:
    manager = make_manager(store, clock)
    session_id = (await manager.context(USER, None, {"timeout_policy": "aggressive"})).session.id
    clock.advance(10 * 60)

    assert await error_code(manager.record_turn(USER, session_id, new_id(IdKind.THREAD))) == (
        ErrorCode.SESSION_EXPIRED
    )
    assert (await stored(store, session_id)).turn_count == 0


# -- update ------------------------------------------------------------------------------------


async def test_concurrent_metadata_patches_of_different_keys_all_stick(
    store: Store, clock: ManualClock
) -> None:
    manager = make_manager(store, clock)
    session_id = (await manager.context(USER, None, {"timeout_policy": "standard"})).session.id

    await asyncio.gather(
        *(manager.update(USER, session_id, {f"key{n}": n}, merge=True) for n in range(10))
    )
    await manager.update(USER, session_id, {"key0": None, "timeout_policy": "lenient"}, merge=True)

    row = await stored(store, session_id)
    assert row.meta == {"timeout_policy": "lenient", **{f"key{n}": n for n in range(1, 10)}}
    assert row.timeout_seconds == 4 * HOUR


async def test_update_to_a_longer_policy_extends_expiry_from_last_activity(
    store: Store, clock: ManualClock
) -> None:
    manager = make_manager(store, clock)
    start = clock.now()
    session_id = (await manager.context(USER, None, {"timeout_policy": "standard"})).session.id

    clock.advance(10 * 60)
    updated = await manager.update(USER, session_id, {"timeout_policy": "lenient", "tier": "pro"})
    assert (updated.timeout_policy, updated.timeout_seconds) == ("lenient", 4 * HOUR)
    assert updated.expires_at == start + timedelta(hours=4)
    assert (await stored(store, session_id)).meta == {"timeout_policy": "lenient", "tier": "pro"}

    clock.advance(2 * HOUR)  # long past the standard 30 min
    row = (await manager.context(USER, session_id)).session
    assert (row.state, row.resume_count) == ("resumed", 1)


async def test_update_to_a_shorter_policy_makes_the_session_expire_on_next_access(
    store: Store, clock: ManualClock
) -> None:
    manager = make_manager(store, clock)
    endings = Endings().listen(manager)
    start = clock.now()
    session_id = (await manager.context(USER, None, {"timeout_policy": "lenient"})).session.id

    clock.advance(15 * 60)
    updated = await manager.update(USER, session_id, {"timeout_policy": "aggressive"})
    assert updated.expires_at == start + timedelta(minutes=10)

    assert await error_code(manager.context(USER, session_id)) == ErrorCode.SESSION_EXPIRED
    assert endings.expired_ids == [session_id]


async def test_update_of_an_ended_session_is_refused_with_its_state(
    store: Store, clock: ManualClock
) -> None:
    manager = make_manager(store, clock)
    closed = (await manager.context(USER, None)).session.id
    await manager.close(USER, closed)
    expired = (await manager.context(USER, None, {"timeout_policy": "aggressive"})).session.id
    clock.advance(10 * 60)

    assert await error_code(manager.update(USER, closed, {"timeout_policy": "lenient"})) == (
        ErrorCode.SESSION_CLOSED
    )
    assert await error_code(manager.update(USER, expired, {"timeout_policy": "lenient"})) == (
        ErrorCode.SESSION_EXPIRED
    )
    assert (await stored(store, expired)).timeout_policy == "aggressive"


# -- close, and listeners that run once --------------------------------------------------------


async def test_closed_session_refuses_context_with_session_closed(
    store: Store, clock: ManualClock
) -> None:
    manager = make_manager(store, clock)
    endings = Endings().listen(manager)
    session_id = client_session_id()
    await manager.context(USER, session_id)
    clock.advance(5)

    row = await manager.close(USER, session_id)
    assert (row.state, row.ended_at) == ("closed", clock.now())

    assert await error_code(manager.context(USER, session_id)) == ErrorCode.SESSION_CLOSED
    assert await error_code(manager.record_turn(USER, session_id, new_id(IdKind.THREAD))) == (
        ErrorCode.SESSION_CLOSED
    )
    assert (await manager.close(USER, session_id)).state == "closed"  # closing again is a no-op
    # A closed session never turns into an expired one.
    clock.advance(7 * 24 * HOUR)
    assert (await manager.get(USER, session_id)).state == "closed"
    assert await error_code(manager.context(USER, session_id)) == ErrorCode.SESSION_CLOSED
    assert endings.closed_ids == [session_id]
    assert endings.expired == []


def racing_calls(
    managers: list[SessionManager], session_id: str, count: int
) -> list[Awaitable[object]]:
    calls: list[Awaitable[object]] = []
    for n in range(count):
        manager = managers[n % len(managers)]
        match n % 3:
            case 0:
                calls.append(manager.context(USER, session_id))
            case 1:
                calls.append(manager.get(USER, session_id))
            case _:
                calls.append(manager.close(USER, session_id))
    return calls


@pytest.fixture(params=[1, 2], ids=["one-process", "two-processes"])
async def processes(request: pytest.FixtureRequest, store: Store) -> AsyncIterator[list[Store]]:
    """One Store per simulated server process, all on the test's database."""
    stores = [store] + [Store(store.url) for _ in range(request.param - 1)]
    try:
        yield stores
    finally:
        for extra in stores[1:]:
            await extra.close()


@pytest.mark.parametrize(
    ("strategy", "final_state"),
    [("immediate", "cleaned_up"), ("deferred", "expired"), ("lazy", "cleaned_up")],
)
async def test_expiry_listener_runs_once_when_twenty_requests_race_the_expiry(
    store: Store, clock: ManualClock, processes: list[Store], strategy: str, final_state: str
) -> None:
    managers = [make_manager(s, clock, cleanup_strategy=strategy) for s in processes]
    endings = Endings()
    for manager in managers:
        endings.listen(manager)
    session_id = client_session_id()
    await managers[0].context(USER, session_id, {"timeout_policy": "aggressive"})
    clock.advance(10 * 60 + 1)

    results = await asyncio.gather(*racing_calls(managers, session_id, 20), return_exceptions=True)

    codes = {r.code for r in results if isinstance(r, ChatServerError)}
    assert codes == {ErrorCode.SESSION_EXPIRED}
    assert {r.state for r in results if isinstance(r, SessionRow)} <= {"expired", "cleaned_up"}
    assert endings.expired_ids == [session_id]
    assert endings.closed == []
    assert (await stored(store, session_id)).state == final_state


async def test_close_listener_runs_once_when_twenty_requests_race_the_close(
    store: Store, clock: ManualClock, processes: list[Store]
) -> None:
    managers = [make_manager(s, clock) for s in processes]
    endings = Endings()
    for manager in managers:
        endings.listen(manager)
    session_id = client_session_id()
    await managers[0].context(USER, session_id)
    clock.advance(90)

    results = await asyncio.gather(*racing_calls(managers, session_id, 20), return_exceptions=True)

    failures = [r for r in results if isinstance(r, BaseException)]
    assert {getattr(r, "code", r) for r in failures} <= {ErrorCode.SESSION_CLOSED}
    assert endings.closed_ids == [session_id]
    assert endings.expired == []
    assert (await stored(store, session_id)).state == "closed"
    assert await error_code(managers[-1].context(USER, session_id)) == ErrorCode.SESSION_CLOSED


async def test_expiry_listener_sees_the_session_as_it_was_under_every_cleanup_strategy(
    store: Store, clock: ManualClock
) -> None:
    thread_id = new_id(IdKind.THREAD)
    metadata = {"timeout_policy": "aggressive", "tier": "pro"}
    seen: dict[str, Session] = {}
    for strategy in ("immediate", "deferred", "lazy"):
        manager = make_manager(store, clock, cleanup_strategy=strategy)
        endings = Endings().listen(manager)
        session_id = (await manager.context(USER, None, metadata)).session.id
        await manager.record_turn(USER, session_id, thread_id)
        clock.advance(10 * 60)
        await error_code(manager.context(USER, session_id))
        [seen[strategy]] = endings.expired

    for strategy, row in seen.items():
        assert (row.state, row.metadata, row.thread_id, row.turn_count) == (
            "expired",
            metadata,
            thread_id,
            1,
        ), strategy


# -- identity and id format --------------------------------------------------------------------


async def test_another_users_session_id_is_a_free_id_and_reveals_nothing(
    store: Store, clock: ManualClock
) -> None:
    manager = make_manager(store, clock)
    endings = Endings().listen(manager)
    session_id = client_session_id()
    before = (await manager.context(USER, session_id, {"timeout_policy": "aggressive"})).session
    missing = client_session_id()

    # The other calls answer exactly as for an id nobody has.
    for target in (session_id, missing):
        assert await error_code(manager.get("mallory", target)) == ErrorCode.SESSION_NOT_FOUND
        assert await error_code(manager.update("mallory", target, {})) == (
            ErrorCode.SESSION_NOT_FOUND
        )
        assert await error_code(manager.close("mallory", target)) == (ErrorCode.SESSION_NOT_FOUND)
    # Using it makes mallory a session of her own, which neither its expiry nor its closing
    # shows through.
    clock.advance(10 * 60)
    mine = (await manager.context("mallory", session_id)).session
    assert (mine.user_id, mine.state, mine.timeout_policy) == ("mallory", "created", "standard")
    assert (await manager.close("mallory", session_id)).state == "closed"

    assert await session_count(store) == 2
    after = await stored(store, session_id)
    assert (after.user_id, after.version, after.last_activity_at) == (
        USER,
        before.version,
        before.last_activity_at,
    )
    assert [row.user_id for row in endings.closed] == ["mallory"]


@pytest.mark.parametrize(
    "session_id",
    [
        "",
        "abcdefgh",
        "ses_",
        "ses_1234567",
        "ses_" + "a" * 65,
        "thr_abcdefgh",
        "SES_abcdefgh",
        "ses_with space",
        "ses_abcdefgh\n",  # `$` would accept a trailing newline
        "ses_semi;colon",
        "ses_dots.dots.",
        "ses_ünïcödé123",
    ],
)
async def test_malformed_session_id_is_refused_with_invalid_id(
    store: Store, clock: ManualClock, session_id: str
) -> None:
    manager = make_manager(store, clock)

    assert await error_code(manager.context(USER, session_id)) == ErrorCode.INVALID_ID
    assert await session_count(store) == 0


async def test_client_session_ids_of_eight_to_sixty_four_allowed_characters_are_accepted(
    store: Store, clock: ManualClock
) -> None:
    manager = make_manager(store, clock)
    ids = ["ses_abcdEFG8", "ses_" + "a1B2-_" * 10 + "xyz9", "ses_--__--__"]

    for session_id in ids:
        assert (await manager.context(USER, session_id)).session.id == session_id
    assert await session_count(store) == len(ids)


# -- cleanup strategies on requests -----------------------------------------------------------
# The reaper's batches (expire_due, clean_up_ended) are proven in tests/test_reaper.py.


async def expire_one(
    manager: SessionManager, clock: ManualClock, thread_id: str
) -> tuple[str, ErrorCode]:
    metadata = {"timeout_policy": "aggressive", "tab_strategy": "shared"}
    session_id = (await manager.context(USER, client_session_id(), metadata)).session.id
    await manager.record_turn(USER, session_id, thread_id)
    clock.advance(10 * 60 + 1)
    return session_id, await error_code(manager.context(USER, session_id))


async def test_immediate_cleanup_leaves_a_tombstone_as_soon_as_expiry_is_detected(
    store: Store, clock: ManualClock
) -> None:
    manager = make_manager(store, clock, cleanup_strategy="immediate")
    endings = Endings().listen(manager)
    thread_id = new_id(IdKind.THREAD)

    session_id, code = await expire_one(manager, clock, thread_id)

    assert code == ErrorCode.SESSION_EXPIRED
    row = await stored(store, session_id)
    assert (row.state, row.meta, row.thread_id, row.ended_at, row.cleaned_at, row.end_reason) == (
        "cleaned_up",
        {},
        None,
        clock.now(),
        clock.now(),
        "expired",
    )
    # What analytics read survives the cleanup.
    assert (row.user_id, row.timeout_policy, row.turn_count) == (USER, "aggressive", 1)
    clock.advance(30 * 24 * HOUR)
    assert await error_code(manager.context(USER, session_id)) == ErrorCode.SESSION_EXPIRED
    assert (await stored(store, session_id)).state == "cleaned_up"
    assert await session_count(store) == 1
    assert endings.expired_ids == [session_id]
    # The cleanup listener ran once, with the session's data as it was.
    [cleaned] = endings.cleaned_up
    assert (cleaned.id, cleaned.state, cleaned.thread_id) == (session_id, "expired", thread_id)
    assert cleaned.metadata["tab_strategy"] == "shared"


async def test_lazy_cleanup_cleans_an_expired_session_on_its_next_access(
    store: Store, clock: ManualClock
) -> None:
    manager = make_manager(store, clock, cleanup_strategy="lazy")
    endings = Endings().listen(manager)

    session_id, code = await expire_one(manager, clock, new_id(IdKind.THREAD))
    assert code == ErrorCode.SESSION_EXPIRED
    assert (await stored(store, session_id)).state == "expired"
    assert endings.cleaned_up == []

    clock.advance(60)
    assert await error_code(manager.context(USER, session_id)) == ErrorCode.SESSION_EXPIRED
    row = await stored(store, session_id)
    assert (row.state, row.meta, row.thread_id, row.cleaned_at) == (
        "cleaned_up",
        {},
        None,
        clock.now(),
    )
    assert await error_code(manager.context(USER, session_id)) == ErrorCode.SESSION_EXPIRED
    assert endings.expired_ids == [session_id]
    assert endings.cleaned_up_ids == [session_id]


async def test_lazy_cleanup_happens_on_a_plain_read_of_the_session_too(
    store: Store, clock: ManualClock
) -> None:
    manager = make_manager(store, clock, cleanup_strategy="lazy")
    endings = Endings().listen(manager)
    session_id, _ = await expire_one(manager, clock, new_id(IdKind.THREAD))

    session = await manager.get(USER, session_id)

    assert (session.state, dict(session.metadata)) == ("cleaned_up", {})
    assert endings.cleaned_up_ids == [session_id]


async def test_another_users_access_never_cleans_a_lazy_session(
    store: Store, clock: ManualClock
) -> None:
    manager = make_manager(store, clock, cleanup_strategy="lazy")
    endings = Endings().listen(manager)
    session_id, _ = await expire_one(manager, clock, new_id(IdKind.THREAD))
    before = await stored(store, session_id)

    assert await error_code(manager.get("mallory", session_id)) == ErrorCode.SESSION_NOT_FOUND
    # Ids are per user: the same id names a fresh session of mallory's own.
    mallorys = (await manager.context("mallory", session_id)).session
    assert (mallorys.user_id, mallorys.state) == ("mallory", "created")

    assert await stored(store, session_id) == before
    assert endings.cleaned_up == []


@pytest.mark.parametrize(
    ("strategy", "state_after_close", "state_after_next_access"),
    [
        ("immediate", "cleaned_up", "cleaned_up"),
        ("deferred", "closed", "closed"),
        ("lazy", "closed", "cleaned_up"),
    ],
)
async def test_a_closed_session_becomes_a_tombstone_that_still_answers_session_closed(
    store: Store,
    clock: ManualClock,
    strategy: str,
    state_after_close: str,
    state_after_next_access: str,
) -> None:
    manager = make_manager(store, clock, cleanup_strategy=strategy, cleanup_grace_seconds=HOUR)
    endings = Endings().listen(manager)
    session_id = (await manager.context(USER, None, {"tier": "pro"})).session.id

    await manager.close(USER, session_id)
    assert (await stored(store, session_id)).state == state_after_close
    assert await error_code(manager.context(USER, session_id)) == ErrorCode.SESSION_CLOSED
    assert (await stored(store, session_id)).state == state_after_next_access
    # Closing it again changes nothing, tombstone or not.
    assert (await manager.close(USER, session_id)).state == state_after_next_access

    clock.advance(HOUR)
    await manager.clean_up_ended(limit=10)
    row = await stored(store, session_id)
    assert (row.state, row.meta, row.end_reason) == ("cleaned_up", {}, "closed")
    assert await error_code(manager.context(USER, session_id)) == ErrorCode.SESSION_CLOSED
    assert endings.closed_ids == endings.cleaned_up_ids == [session_id]
    assert [s.metadata for s in endings.cleaned_up] == [{"tier": "pro"}]
    assert endings.expired == []


async def test_a_strategy_set_for_one_policy_overrides_the_default_for_its_sessions(
    store: Store, clock: ManualClock
) -> None:
    manager = make_manager(
        store,
        clock,
        cleanup_strategy="deferred",
        cleanup_strategy_by_policy={"aggressive": "immediate", "custom": "lazy"},
    )
    aggressive = (await manager.context(USER, None, {"timeout_policy": "aggressive"})).session.id
    standard = (await manager.context(USER, None, {"timeout_policy": "standard"})).session.id
    custom = (await manager.context(USER, None, {"timeout_seconds": 600})).session.id
    clock.advance(30 * 60)

    for session_id in (aggressive, standard, custom, custom):
        await error_code(manager.context(USER, session_id))

    states = [(await stored(store, sid)).state for sid in (aggressive, standard, custom)]
    assert states == ["cleaned_up", "expired", "cleaned_up"]


def test_a_strategy_for_an_unknown_policy_is_refused_at_startup() -> None:
    with pytest.raises(ValueError, match="unknown policies"):
        Settings(cleanup_strategy_by_policy={"eternal": "lazy"})


# -- the seed scenario through a real ChatServer -----------------------------------------------


class RecordingEchoServer(EchoChatServer):
    word_delay = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.histories: list[list[ThreadItem]] = []
        self.expired_sessions: list[str] = []

    async def respond(
        self, thread: ThreadMetadata, input: UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[ChatKitEvent]:
        self.histories.append(await context.history())
        async for event in super().respond(thread, input, context):
            yield event

    async def on_session_expired(self, session: Session) -> None:
        self.expired_sessions.append(session.id)


@pytest.fixture
async def echo_server(store: Store, clock: ManualClock) -> AsyncIterator[RecordingEchoServer]:
    server = RecordingEchoServer(store, make_settings(store), clock=clock)
    await server.start()
    try:
        yield server
    finally:
        await server.close(grace_seconds=1)


def said(text: str) -> UserMessageInput:
    return UserMessageInput(content=[UserMessageTextContent(text=text)])


async def run_to_end(server: RecordingEchoServer, handle: RunHandle) -> str:
    events = [event async for event in server.stream_run(handle)]
    return events[-1].type


def transcript(items: list[ThreadItem]) -> list[tuple[str, str]]:
    lines = []
    for item in items:
        if isinstance(item, UserMessageItem):
            lines.append(("user", user_text(item)))
        elif isinstance(item, AssistantMessageItem):
            lines.append(("assistant", "".join(part.text for part in item.content)))
    return lines


async def start_budget_task(
    server: RecordingEchoServer, session_id: str, metadata: Mapping[str, Any]
) -> str:
    ctx = await server.sessions.context(USER, session_id, metadata)
    handle = await server.create_thread_and_start_turn(ctx, said("Review Q4 budget"))
    assert await run_to_end(server, handle) == "run.completed"
    return handle.thread_id


async def test_lenient_session_resumes_after_two_hours_and_its_next_turn_sees_the_history(
    echo_server: RecordingEchoServer, clock: ManualClock
) -> None:
    session_id = client_session_id()
    thread_id = await start_budget_task(echo_server, session_id, {"timeout_policy": "lenient"})

    clock.advance(2 * HOUR)
    ctx = await echo_server.sessions.context(USER, session_id)
    assert (ctx.session.state, ctx.session.resume_count) == ("resumed", 1)
    handle = await echo_server.start_turn(ctx, thread_id, said("What was I doing?"))
    assert await run_to_end(echo_server, handle) == "run.completed"

    assert transcript(echo_server.histories[-1])[:2] == [
        ("user", "Review Q4 budget"),
        ("assistant", "Review Q4 budget"),
    ]
    session = await echo_server.sessions.get(USER, session_id)
    assert (session.state, session.resume_count, session.turn_count, session.thread_id) == (
        "active",
        1,
        2,
        thread_id,
    )
    assert echo_server.expired_sessions == []


async def test_standard_session_expires_after_two_hours_and_a_new_session_continues_the_thread(
    echo_server: RecordingEchoServer, clock: ManualClock
) -> None:
    session_id = client_session_id()
    thread_id = await start_budget_task(echo_server, session_id, {"timeout_policy": "standard"})

    clock.advance(2 * HOUR)
    assert await error_code(echo_server.sessions.context(USER, session_id)) == (
        ErrorCode.SESSION_EXPIRED
    )
    assert echo_server.expired_sessions == [session_id]

    ctx = await echo_server.sessions.context(USER, None, {"timeout_policy": "standard"})
    assert ctx.session.id != session_id
    handle = await echo_server.start_turn(ctx, thread_id, said("What was I doing?"))
    assert await run_to_end(echo_server, handle) == "run.completed"

    assert transcript(echo_server.histories[-1])[:2] == [
        ("user", "Review Q4 budget"),
        ("assistant", "Review Q4 budget"),
    ]
    session = await echo_server.sessions.get(USER, ctx.session.id)
    assert (session.state, session.turn_count, session.thread_id) == ("active", 1, thread_id)
    assert await error_code(echo_server.sessions.context(USER, session_id)) == (
        ErrorCode.SESSION_EXPIRED
    )
