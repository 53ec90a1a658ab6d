"""Sessions: create-or-resume under a per-session lock, sliding expiry, close and clean up.

    created -> active <-> resumed -> expired -> cleaned_up
                                  -> closed  -> cleaned_up        (closed: explicitly)

A request's transition is one locked read-modify-write (`Store.modify_session`); the reaper's
are set-based batches (`expire_due`, `clean_up_ended`) whose rows are claimed under row
locks. Either way whoever makes a transition is the only one that sees it happen, so each
listener runs once per session:

- `on_session_expired` when its expiry is recorded (by a request that finds it due, or by the
  reaper), `on_session_closed` when it is closed; each gets the session as it ended.
- `on_session_cleaned_up` when it becomes a tombstone, with the session as it was just
  before (metadata and thread still in it), to release what the application keeps for it.

Cleaning makes a tombstone: state `cleaned_up`, metadata and thread removed; the row stays
(so its id is never silently reused) with its user, policy, times, counts and why and when it
ended and was cleaned, which analytics read. When, is the cleanup strategy of its policy:
`immediate` in the same write as its end, `deferred` by the reaper once it has been ended
`cleanup_grace_seconds`, `lazy` on the first request that names it after its end. Listeners
run after the write commits: a process that dies in between loses them (at most once).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from chatserver.clock import Clock
from chatserver.config import CleanupStrategy, Settings
from chatserver.errors import BadRequest, ErrorCode, NotFound, SessionClosed, SessionExpired
from chatserver.ids import IdKind, is_valid_id, new_id
from chatserver.locks import KeyedLock
from chatserver.policies import TimeoutPolicies
from chatserver.statuses import ENDED_SESSION_STATES, LIVE_SESSION_STATES, EndReason, SessionState
from chatserver.store import Store
from chatserver.store.lifecycle import PolicySet
from chatserver.store.models import ItemRow, SessionRow
from chatserver.types import ThreadItem, parse_thread_item

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Session:
    """A user's live engagement with the server, as the application sees it."""

    id: str
    user_id: str
    state: SessionState
    timeout_policy: str
    timeout_seconds: int
    metadata: Mapping[str, Any]
    # The thread the session is on (its last turn's).
    thread_id: str | None
    created_at: datetime
    last_activity_at: datetime
    expires_at: datetime
    resumed_at: datetime | None
    ended_at: datetime | None
    resume_count: int
    turn_count: int
    # Bumped by every change of the row (optimistic concurrency).
    version: int

    @classmethod
    def of(cls, row: SessionRow | Mapping[str, Any]) -> Session:
        """From a stored row, or its columns by name (what the reaper's batches read: ~20x
        cheaper than a table model per row)."""
        get: Callable[[str], Any] = (
            row.__getitem__ if isinstance(row, Mapping) else functools.partial(getattr, row)
        )
        return cls(
            id=get("id"),
            user_id=get("user_id"),
            state=SessionState(get("state")),
            timeout_policy=get("timeout_policy"),
            timeout_seconds=get("timeout_seconds"),
            metadata=dict(get("meta")),
            thread_id=get("thread_id"),
            created_at=get("created_at"),
            last_activity_at=get("last_activity_at"),
            expires_at=get("expires_at"),
            resumed_at=get("resumed_at"),
            ended_at=get("ended_at"),
            resume_count=get("resume_count"),
            turn_count=get("turn_count"),
            version=get("version"),
        )


SessionListener = Callable[[Session], Awaitable[None]]


class _Outcome(StrEnum):
    OK = "ok"
    NOT_FOUND = "not_found"
    EXPIRED_NOW = "expired_now"
    EXPIRED = "expired"
    CLOSED_NOW = "closed_now"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class _Modified:
    # The row as stored (None: there is none).
    row: SessionRow | None
    # The session just before this write made it a tombstone, if it did.
    ending: SessionRow | None
    outcome: _Outcome


@dataclass
class RequestContext:
    """What respond() and every handler get for one request: who asks, in which session,
    with which request metadata, when, and (during a turn) on which thread."""

    user_id: str
    session: Session
    store: Store
    clock: Clock
    metadata: dict[str, Any] = field(default_factory=dict)
    timestamp: datetime | None = None
    thread_id: str | None = None
    history_limit: int = 100

    @property
    def session_id(self) -> str:
        return self.session.id

    async def history(self, limit: int | None = None) -> list[ThreadItem]:
        """The thread's committed items, oldest first: the newest `limit` of them (default
        `history_limit`). Inside `respond()` it ends with the turn's own user message, which
        is committed before `respond()` starts (on a retry, with the message retried)."""
        if self.thread_id is None:
            return []
        rows, _ = await self.store.list_items(
            self.thread_id, limit=limit or self.history_limit, order="desc"
        )
        return [_item(row) for row in reversed(rows)]


def _item(row: ItemRow) -> ThreadItem:
    return parse_thread_item(row.data)


class SessionManager:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        clock: Clock,
        policies: TimeoutPolicies,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.policies = policies
        self._locks = KeyedLock()
        self.on_session_closed: list[SessionListener] = []
        self.on_session_expired: list[SessionListener] = []
        self.on_session_cleaned_up: list[SessionListener] = []

    async def context(
        self,
        user_id: str,
        session_id: str | None,
        metadata: Mapping[str, Any] | None = None,
        *,
        request_metadata: Mapping[str, Any] | None = None,
        reuse_latest: bool = False,
    ) -> RequestContext:
        """Resume the named session or create it; raises SessionExpired / SessionClosed /
        NotFound. Unnamed, a new session is created; with `reuse_latest`, the user's most
        recently used live session is resumed instead if there is one (so a client that keeps
        no session id does not leave a trail of sessions).

        `metadata` configures a session being created (policy, tab strategy, ...); an
        existing session keeps its own until `update()` changes it.
        """
        if session_id is None and reuse_latest:
            latest = await self.store.latest_live_session(
                user_id, self.clock.now(), LIVE_SESSION_STATES
            )
            if latest is not None:
                try:
                    return await self.context(user_id, latest.id, request_metadata=request_metadata)
                except (SessionExpired, SessionClosed):
                    pass  # it ended meanwhile: a new one, as if there had been none
        if session_id is None:
            session_id = new_id(IdKind.SESSION)
        elif not is_valid_id(IdKind.SESSION, session_id):
            raise BadRequest(f"invalid session id {session_id!r}", ErrorCode.INVALID_ID)
        now = self.clock.now()
        create_meta = dict(metadata or {})
        timeout = self.policies.resolve(create_meta)

        def touch(row: SessionRow | None) -> tuple[SessionRow | None, _Outcome]:
            if row is None:
                return (
                    SessionRow(
                        id=session_id,
                        user_id=user_id,
                        state=SessionState.CREATED,
                        timeout_policy=timeout.policy,
                        timeout_seconds=timeout.seconds,
                        meta=create_meta,
                        created_at=now,
                        last_activity_at=now,
                        expires_at=now + timedelta(seconds=timeout.seconds),
                    ),
                    _Outcome.OK,
                )
            ended = self._ended(row, now)
            if ended is not None:
                return ended
            if now - row.last_activity_at >= timedelta(seconds=self.settings.resume_gap_seconds):
                row.state = SessionState.RESUMED
                row.resume_count += 1
                row.resumed_at = now
            row.last_activity_at = now
            row.expires_at = now + timedelta(seconds=row.timeout_seconds)
            return row, _Outcome.OK

        result = await self._modify(user_id, session_id, touch)
        await self._settle(result, session_id)
        row = result.row
        assert row is not None
        return RequestContext(
            user_id=user_id,
            session=Session.of(row),
            store=self.store,
            clock=self.clock,
            metadata=dict(request_metadata or {}),
            timestamp=now,
            history_limit=self.settings.history_limit,
        )

    async def get(self, user_id: str, session_id: str) -> Session:
        """The session as it is, without touching it (expiry still applies)."""
        return Session.of(await self._get_row(user_id, session_id))

    async def _get_row(self, user_id: str, session_id: str) -> SessionRow:
        row = await self.store.get_session(user_id, session_id)
        if row is None:
            raise NotFound(f"session {session_id} not found", ErrorCode.SESSION_NOT_FOUND)
        due = row.state in LIVE_SESSION_STATES and self.clock.now() >= row.expires_at
        if due or self._cleans_on_access(row, _Outcome.EXPIRED):
            row = await self._transition(user_id, session_id, self._ended, raise_ended=False)
        return row

    async def record_turn(self, user_id: str, session_id: str, thread_id: str) -> Session:
        """A turn ran: the session is active, on this thread."""

        def mark(row: SessionRow, now: datetime) -> tuple[SessionRow | None, _Outcome] | None:
            ended = self._ended(row, now)
            if ended is not None:
                return ended
            row.state = SessionState.ACTIVE
            row.turn_count += 1
            row.thread_id = thread_id
            row.last_activity_at = now
            row.expires_at = now + timedelta(seconds=row.timeout_seconds)
            return row, _Outcome.OK

        return Session.of(await self._transition(user_id, session_id, mark))

    async def update(
        self, user_id: str, session_id: str, metadata: Mapping[str, Any], *, merge: bool = False
    ) -> Session:
        """Replace the session's metadata, or with `merge` patch it (a None value removes
        its key); the timeout is re-resolved and expiry recomputed. The merge happens under
        the session's lock, so concurrent patches of different keys all stick."""
        if not merge:
            self.policies.resolve(metadata)  # refuse bad metadata before touching anything
        current = await self._get_row(user_id, session_id)

        def apply(row: SessionRow, now: datetime) -> tuple[SessionRow | None, _Outcome] | None:
            ended = self._ended(row, now)
            if ended is not None:
                return ended
            new = {**row.meta, **metadata} if merge else dict(metadata)
            row.meta = {key: value for key, value in new.items() if value is not None}
            timeout = self.policies.resolve(row.meta)
            row.timeout_policy = timeout.policy
            row.timeout_seconds = timeout.seconds
            row.expires_at = row.last_activity_at + timedelta(seconds=timeout.seconds)
            return row, _Outcome.OK

        return Session.of(await self._transition(user_id, current.id, apply))

    async def close(self, user_id: str, session_id: str) -> Session:
        """Close the session; closing a closed one (tombstone or not) changes nothing."""
        await self._get_row(user_id, session_id)

        def end(row: SessionRow, now: datetime) -> tuple[SessionRow | None, _Outcome] | None:
            if _was_closed(row):
                return None, _Outcome.OK
            ended = self._ended(row, now)
            if ended is not None:
                return ended
            row.state = SessionState.CLOSED
            row.ended_at = now
            row.end_reason = EndReason.CLOSED
            return row, _Outcome.CLOSED_NOW

        return Session.of(await self._transition(user_id, session_id, end))

    async def expire(self, user_id: str, session_id: str) -> Session:
        """End the session now as expired, as if its time were up (an operator's decision):
        its expiry listeners run and its strategy cleans it. An ended session is returned as
        it is."""
        await self._get_row(user_id, session_id)

        def end_now(row: SessionRow, now: datetime) -> tuple[SessionRow | None, _Outcome] | None:
            if row.state in LIVE_SESSION_STATES:
                row.expires_at = now
            return self._ended(row, now)

        return Session.of(await self._transition(user_id, session_id, end_now, raise_ended=False))

    async def expire_due(self, limit: int) -> list[Session]:
        """One batch of the reaper: expire up to `limit` live sessions whose time is up, the
        longest overdue first, never one with a turn in progress, in one set-based write
        (those whose strategy is `immediate` become tombstones in it). Returns them as they
        expired, once their listeners ran."""
        expired = await self.store.expire_sessions(
            self.clock.now(), limit, tombstone=self.policies_cleaned("immediate")
        )
        sessions = []
        for expiry in expired:
            session = Session.of(expiry.values)
            await self._notify(self.on_session_expired, session)
            if expiry.cleaned:
                await self._notify(self.on_session_cleaned_up, session)
            sessions.append(session)
        return sessions

    async def clean_up_ended(self, limit: int) -> list[Session]:
        """One batch of the reaper: make tombstones of up to `limit` ended sessions whose
        strategy says it is time (`deferred`: ended `cleanup_grace_seconds` ago or more;
        `immediate`: any, say ended before the strategy changed). Returns them as they were
        before, once their listeners ran."""
        now = self.clock.now()
        grace = timedelta(seconds=self.settings.cleanup_grace_seconds)
        cleaned = await self.store.clean_up_sessions(
            now,
            limit,
            immediate=self.policies_cleaned("immediate"),
            deferred=self.policies_cleaned("deferred"),
            # From when the end was recorded (ended_at), which is what the grace counts from.
            ended_before=now - grace,
        )
        sessions = [Session.of(values) for values in cleaned]
        for session in sessions:
            await self._notify(self.on_session_cleaned_up, session)
        return sessions

    def policies_cleaned(self, strategy: CleanupStrategy) -> PolicySet:
        """The timeout policies whose sessions `strategy` cleans."""
        overrides = self.settings.cleanup_strategy_by_policy
        if self.settings.cleanup_strategy == strategy:
            others = frozenset(p for p, s in overrides.items() if s != strategy)
            return PolicySet(others, all_but=True)
        return PolicySet(frozenset(p for p, s in overrides.items() if s == strategy))

    # -- internals -------------------------------------------------------------------------

    def _ended(self, row: SessionRow, now: datetime) -> tuple[SessionRow | None, _Outcome] | None:
        """None if the session is live; else the row to store and the outcome to raise. A
        tombstone answers as the session it was (closed or expired)."""
        if _was_closed(row):
            return None, _Outcome.CLOSED
        if row.state in (SessionState.EXPIRED, SessionState.CLEANED_UP):
            return None, _Outcome.EXPIRED
        if now >= row.expires_at:
            row.state = SessionState.EXPIRED
            row.ended_at = now
            row.end_reason = EndReason.EXPIRED
            return row, _Outcome.EXPIRED_NOW
        return None

    def _cleans_on_access(self, row: SessionRow, outcome: _Outcome) -> bool:
        """Whether this access by the session's user makes its ended session a tombstone."""
        if row.state not in ENDED_SESSION_STATES:
            return False
        strategy = self.settings.cleanup_strategy_for(row.timeout_policy)
        if strategy == "immediate":
            return True
        # `lazy`: on the first access after the end, not the one that records it.
        return strategy == "lazy" and outcome not in (_Outcome.EXPIRED_NOW, _Outcome.CLOSED_NOW)

    async def _modify(
        self,
        user_id: str,
        session_id: str,
        mutate: Callable[[SessionRow | None], tuple[SessionRow | None, _Outcome]],
    ) -> _Modified:
        """One locked read-modify-write, with the cleanup the session's strategy asks for
        made in the same write."""
        ending: SessionRow | None = None

        def apply(current: SessionRow | None) -> tuple[SessionRow | None, _Outcome]:
            nonlocal ending
            changed, outcome = mutate(current)
            row = changed if changed is not None else current
            # Another user's id (NOT_FOUND) is not an access to this session.
            if (
                row is not None
                and outcome is not _Outcome.NOT_FOUND
                and self._cleans_on_access(row, outcome)
            ):
                ending, changed = row, _cleaned(row, self.clock.now())
            return changed, outcome

        async with self._locks.hold(f"{session_id}/{user_id}"):
            row, outcome = await self.store.modify_session(user_id, session_id, apply)
        return _Modified(row, ending, outcome)

    async def _transition(
        self,
        user_id: str,
        session_id: str,
        change: Callable[[SessionRow, datetime], tuple[SessionRow | None, _Outcome] | None],
        *,
        raise_ended: bool = True,
    ) -> SessionRow:
        now = self.clock.now()

        def guarded(row: SessionRow | None) -> tuple[SessionRow | None, _Outcome]:
            if row is None:
                return None, _Outcome.NOT_FOUND
            result = change(row, now)
            return result if result is not None else (None, _Outcome.OK)

        result = await self._modify(user_id, session_id, guarded)
        await self._settle(result, session_id, raise_ended=raise_ended)
        assert result.row is not None
        return result.row

    async def _settle(
        self, result: _Modified, session_id: str, *, raise_ended: bool = True
    ) -> None:
        """Run the listeners of what the write did, then refuse a request on an ended
        session. Listeners get the session as it ended, even if it is a tombstone now."""
        outcome = result.outcome
        if outcome is _Outcome.NOT_FOUND:
            raise NotFound(f"session {session_id} not found", ErrorCode.SESSION_NOT_FOUND)
        ended = result.ending or result.row
        if outcome is _Outcome.EXPIRED_NOW and ended is not None:
            await self._notify(self.on_session_expired, Session.of(ended))
        if outcome is _Outcome.CLOSED_NOW and ended is not None:
            await self._notify(self.on_session_closed, Session.of(ended))
        if result.ending is not None:
            await self._notify(self.on_session_cleaned_up, Session.of(result.ending))
        if outcome in (_Outcome.EXPIRED, _Outcome.EXPIRED_NOW) and raise_ended:
            raise SessionExpired(f"session {session_id} has expired; create a new session")
        if outcome is _Outcome.CLOSED and raise_ended:
            raise SessionClosed(f"session {session_id} is closed; create a new session")

    async def _notify(self, listeners: list[SessionListener], session: Session) -> None:
        for listener in listeners:
            try:
                await listener(session)
            except Exception:
                logger.exception("session listener failed for %s", session.id)


def _was_closed(row: SessionRow) -> bool:
    return row.state == SessionState.CLOSED or (
        row.state == SessionState.CLEANED_UP and row.end_reason == EndReason.CLOSED
    )


def _cleaned(row: SessionRow, now: datetime) -> SessionRow:
    """The tombstone: a copy, so whoever holds the ended session keeps its data."""
    return row.model_copy(
        update={
            "state": SessionState.CLEANED_UP,
            "cleaned_at": now,
            "meta": {},
            "thread_id": None,
        }
    )
