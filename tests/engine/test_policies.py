"""Timeout policies as a client sees them, on SQLite and PostgreSQL: the session a request
creates or updates gets the named, custom or resolver-given timeout, and bad metadata is
refused with a stable code before anything is stored."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from chatserver.clock import ManualClock
from chatserver.config import Settings
from chatserver.errors import ChatServerError, ErrorCode
from chatserver.policies import TimeoutPolicies, TimeoutResolver
from chatserver.server import ChatServer
from chatserver.sessions import SessionManager
from chatserver.store import Store
from chatserver.store import models as tables

USER = "alice"
HOUR = 60 * 60
MAX_TIMEOUT = 30 * 24 * HOUR


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def make_manager(
    store: Store, clock: ManualClock, resolver: TimeoutResolver | None = None, **overrides: Any
) -> SessionManager:
    settings = Settings(database_url=store.url, _env_file=None, **overrides)  # type: ignore[call-arg]
    return SessionManager(store, settings, clock, TimeoutPolicies.from_settings(settings, resolver))


async def error_code(call: Awaitable[object]) -> ErrorCode:
    with pytest.raises(ChatServerError) as caught:
        await call
    return caught.value.code


async def session_count(store: Store) -> int:
    async with store.read() as conn:
        count = await conn.scalar(sa.select(sa.func.count()).select_from(tables.sessions))
    return int(count or 0)


async def timeout_of(
    manager: SessionManager, metadata: Mapping[str, Any] | None
) -> tuple[str, int]:
    """The policy and timeout of a session created with `metadata`, as stored."""
    session = (await manager.context(USER, None, metadata)).session
    row = await manager.store.get_session(USER, session.id)
    assert row is not None
    assert row.expires_at == row.last_activity_at + timedelta(seconds=row.timeout_seconds)
    return row.timeout_policy, row.timeout_seconds


@pytest.mark.parametrize(
    ("policy", "seconds"),
    [
        ("aggressive", 10 * 60),
        ("standard", 30 * 60),
        ("lenient", 4 * HOUR),
        ("persistent", 7 * 24 * HOUR),
    ],
)
async def test_named_policy_sets_the_session_timeout(
    store: Store, clock: ManualClock, policy: str, seconds: int
) -> None:
    manager = make_manager(store, clock)

    assert await timeout_of(manager, {"timeout_policy": policy}) == (policy, seconds)


async def test_session_without_a_policy_gets_the_configured_default(
    store: Store, clock: ManualClock
) -> None:
    assert await timeout_of(make_manager(store, clock), None) == ("standard", 30 * 60)
    configured = make_manager(
        store, clock, default_timeout_policy="lenient", policy_lenient_seconds=2 * HOUR
    )
    assert await timeout_of(configured, {"tab_strategy": "shared"}) == ("lenient", 2 * HOUR)


@pytest.mark.parametrize("policy", ["forever", "Standard", "custom", "", 5, ["standard"]])
async def test_unknown_policy_is_refused_with_unknown_policy_and_creates_nothing(
    store: Store, clock: ManualClock, policy: object
) -> None:
    manager = make_manager(store, clock)

    code = await error_code(manager.context(USER, "ses_tab-unknown1", {"timeout_policy": policy}))

    assert code == ErrorCode.UNKNOWN_POLICY
    assert await session_count(store) == 0


async def test_custom_timeout_seconds_within_the_bounds_is_used(
    store: Store, clock: ManualClock
) -> None:
    manager = make_manager(store, clock)

    assert await timeout_of(manager, {"timeout_seconds": 60}) == ("custom", 60)
    assert await timeout_of(manager, {"timeout_seconds": MAX_TIMEOUT}) == ("custom", MAX_TIMEOUT)
    # A custom timeout is more specific than a named policy given beside it.
    both = {"timeout_policy": "aggressive", "timeout_seconds": 900}
    assert await timeout_of(manager, both) == ("custom", 900)


@pytest.mark.parametrize("seconds", [59, 0, -600, MAX_TIMEOUT + 1])
async def test_custom_timeout_seconds_outside_the_bounds_is_a_bad_request(
    store: Store, clock: ManualClock, seconds: int
) -> None:
    manager = make_manager(store, clock)

    code = await error_code(manager.context(USER, None, {"timeout_seconds": seconds}))

    assert code == ErrorCode.INVALID_REQUEST
    assert await session_count(store) == 0


async def test_custom_timeout_bounds_come_from_the_settings(
    store: Store, clock: ManualClock
) -> None:
    manager = make_manager(store, clock, min_timeout_seconds=300, max_timeout_seconds=HOUR)

    for seconds in (299, HOUR + 1):
        code = await error_code(manager.context(USER, None, {"timeout_seconds": seconds}))
        assert code == ErrorCode.INVALID_REQUEST
    assert await timeout_of(manager, {"timeout_seconds": 300}) == ("custom", 300)
    assert await timeout_of(manager, {"timeout_seconds": HOUR}) == ("custom", HOUR)


@pytest.mark.parametrize("seconds", ["900", 900.0, 900.5, True, [900], {"seconds": 900}])
async def test_custom_timeout_seconds_that_is_not_an_integer_is_a_bad_request(
    store: Store, clock: ManualClock, seconds: object
) -> None:
    manager = make_manager(store, clock)

    code = await error_code(manager.context(USER, None, {"timeout_seconds": seconds}))

    assert code == ErrorCode.INVALID_REQUEST
    assert await session_count(store) == 0


def admins_get_eight_hours(metadata: Mapping[str, Any]) -> int | None:
    return 8 * HOUR if metadata.get("role") == "admin" else None


async def test_resolve_timeout_hook_overrides_the_policy_and_none_falls_back(
    store: Store, clock: ManualClock
) -> None:
    server = ChatServer(
        store,
        Settings(database_url=store.url, _env_file=None),  # type: ignore[call-arg]
        clock=clock,
        resolve_timeout=admins_get_eight_hours,
    )
    try:
        manager = server.sessions
        admin = {"role": "admin", "timeout_policy": "aggressive"}
        assert await timeout_of(manager, admin) == ("custom", 8 * HOUR)
        assert await timeout_of(manager, {"role": "user", "timeout_policy": "aggressive"}) == (
            "aggressive",
            10 * 60,
        )
        assert await timeout_of(manager, {"timeout_seconds": 900}) == ("custom", 900)
        assert await timeout_of(manager, None) == ("standard", 30 * 60)
    finally:
        await server.close()


async def test_resolver_timeout_slides_and_expires_like_any_other(
    store: Store, clock: ManualClock
) -> None:
    manager = make_manager(store, clock, resolver=admins_get_eight_hours)
    session_id = (await manager.context(USER, None, {"role": "admin"})).session.id

    clock.advance(8 * HOUR - 1)
    assert (await manager.context(USER, session_id)).session.state == "resumed"
    clock.advance(8 * HOUR + 1)
    assert await error_code(manager.context(USER, session_id)) == ErrorCode.SESSION_EXPIRED


async def test_update_re_resolves_the_timeout_through_the_hook(
    store: Store, clock: ManualClock
) -> None:
    manager = make_manager(store, clock, resolver=admins_get_eight_hours)
    session = (await manager.context(USER, None, {"timeout_policy": "aggressive"})).session

    promoted = await manager.update(USER, session.id, {"role": "admin"})
    assert (promoted.timeout_policy, promoted.timeout_seconds) == ("custom", 8 * HOUR)
    demoted = await manager.update(USER, session.id, {"role": "user"})
    assert (demoted.timeout_policy, demoted.timeout_seconds) == ("standard", 30 * 60)


async def test_update_with_bad_metadata_is_refused_and_changes_nothing(
    store: Store, clock: ManualClock
) -> None:
    manager = make_manager(store, clock)
    session = (await manager.context(USER, None, {"timeout_policy": "lenient"})).session

    assert await error_code(manager.update(USER, session.id, {"timeout_policy": "nope"})) == (
        ErrorCode.UNKNOWN_POLICY
    )
    assert await error_code(manager.update(USER, session.id, {"timeout_seconds": 1})) == (
        ErrorCode.INVALID_REQUEST
    )
    row = await store.get_session(USER, session.id)
    assert row is not None
    assert (row.timeout_policy, row.meta, row.version) == (
        "lenient",
        {"timeout_policy": "lenient"},
        session.version,
    )


async def test_policy_in_a_later_request_does_not_change_an_existing_session(
    store: Store, clock: ManualClock
) -> None:
    manager = make_manager(store, clock)
    session_id = "ses_tab-policy01"
    await manager.context(USER, session_id, {"timeout_policy": "aggressive"})

    later = (await manager.context(USER, session_id, {"timeout_policy": "persistent"})).session

    assert (later.timeout_policy, later.timeout_seconds) == ("aggressive", 10 * 60)
