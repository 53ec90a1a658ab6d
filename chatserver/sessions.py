"""Sessions: create-or-resume under a per-session lock, sliding expiry, close and clean up.

    created -> active <-> resumed -> expired -> cleaned_up        (and closed, explicitly)

Every transition is one locked read-modify-write (`Store.modify_session`), so whichever
request makes a transition is the only one that sees it happen: close listeners run once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from chatserver.clock import Clock
from chatserver.config import Settings
from chatserver.errors import BadRequest, ErrorCode, NotFound, SessionClosed, SessionExpired
from chatserver.ids import IdKind, is_valid_id, new_id
from chatserver.locks import KeyedLock
from chatserver.policies import TimeoutPolicies
from chatserver.store import Store
from chatserver.store.models import ItemRow, SessionRow
from chatserver.types import ThreadItem, parse_thread_item

logger = logging.getLogger(__name__)

SessionListener = Callable[[SessionRow], Awaitable[None]]


class SessionState(StrEnum):
    CREATED = "created"
    ACTIVE = "active"
    RESUMED = "resumed"
    EXPIRED = "expired"
    CLOSED = "closed"
    CLEANED_UP = "cleaned_up"


LIVE_STATES = (SessionState.CREATED, SessionState.ACTIVE, SessionState.RESUMED)


class _Outcome(StrEnum):
    OK = "ok"
    NOT_FOUND = "not_found"
    EXPIRED_NOW = "expired_now"
    EXPIRED = "expired"
    CLOSED_NOW = "closed_now"
    CLOSED = "closed"


@dataclass
class RequestContext:
    """What respond() and every handler get for one request."""

    user_id: str
    session: SessionRow
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
        """The thread's most recent items, oldest first (bounded by `history_limit`)."""
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

    async def context(
        self,
        user_id: str,
        session_id: str | None,
        metadata: Mapping[str, Any] | None = None,
        *,
        request_metadata: Mapping[str, Any] | None = None,
    ) -> RequestContext:
        """Create the session or resume it; raises SessionExpired / SessionClosed / NotFound.

        `metadata` configures a session being created (policy, tab strategy, ...); an
        existing session keeps its own until `update()` changes it.
        """
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

        row, ended, outcome = await self._modify(user_id, session_id, touch)
        await self._raise_for(outcome, ended, session_id)
        assert row is not None
        return RequestContext(
            user_id=user_id,
            session=row,
            store=self.store,
            clock=self.clock,
            metadata=dict(request_metadata or {}),
            timestamp=now,
            history_limit=self.settings.history_limit,
        )

    async def get(self, user_id: str, session_id: str) -> SessionRow:
        """The session as it is, without touching it (expiry still applies)."""
        row = await self.store.get_session(user_id, session_id)
        if row is None:
            raise NotFound(f"session {session_id} not found", ErrorCode.SESSION_NOT_FOUND)
        if row.state in LIVE_STATES and self.clock.now() >= row.expires_at:
            row = await self._transition(user_id, session_id, self._ended, raise_ended=False)
        return row

    async def record_turn(self, user_id: str, session_id: str, thread_id: str) -> SessionRow:
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

        return await self._transition(user_id, session_id, mark)

    async def update(
        self, user_id: str, session_id: str, metadata: Mapping[str, Any], *, merge: bool = False
    ) -> SessionRow:
        """Replace the session's metadata, or with `merge` patch it (a None value removes
        its key); the timeout is re-resolved and expiry recomputed. The merge happens under
        the session's lock, so concurrent patches of different keys all stick."""
        if not merge:
            self.policies.resolve(metadata)  # refuse bad metadata before touching anything
        current = await self.get(user_id, session_id)

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

        return await self._transition(user_id, current.id, apply)

    async def close(self, user_id: str, session_id: str) -> SessionRow:
        await self.get(user_id, session_id)

        def end(row: SessionRow, now: datetime) -> tuple[SessionRow | None, _Outcome] | None:
            if row.state == SessionState.CLOSED:
                return None, _Outcome.OK
            ended = self._ended(row, now)
            if ended is not None:
                return ended
            row.state = SessionState.CLOSED
            row.ended_at = now
            return row, _Outcome.CLOSED_NOW

        return await self._transition(user_id, session_id, end, closing=True)

    async def expire_due(self, limit: int) -> list[SessionRow]:
        """Expire live sessions whose time is up (the reaper's job); returns those expired."""
        now = self.clock.now()
        due = await self.store.list_sessions_expiring(now, limit, [s.value for s in LIVE_STATES])
        # A session whose turn is still running is in use, whatever its clock says.
        busy = await self.store.sessions_with_open_runs([(row.user_id, row.id) for row in due])
        expired = []
        for row in due:
            if (row.user_id, row.id) in busy:
                continue
            current = await self.get(row.user_id, row.id)
            if current.state in (SessionState.EXPIRED, SessionState.CLEANED_UP):
                expired.append(current)
        return expired

    async def clean_up_ended(self, limit: int) -> int:
        """Remove the data of sessions expired longer than the grace period, keeping a
        tombstone so the id is never silently reused."""
        now = self.clock.now()
        grace = timedelta(seconds=self.settings.cleanup_grace_seconds)
        # By when the expiry was noticed (ended_at), which is what the grace counts from.
        due = await self.store.list_sessions_ended_before(
            now - grace, limit, [SessionState.EXPIRED.value]
        )
        cleaned = 0
        for row in due:
            await self._transition(row.user_id, row.id, lambda r, _now: (_cleaned(r), _Outcome.OK))
            cleaned += 1
        return cleaned

    # -- internals -------------------------------------------------------------------------

    def _ended(self, row: SessionRow, now: datetime) -> tuple[SessionRow | None, _Outcome] | None:
        """None if the session is live; else the row to store and the outcome to raise."""
        if row.state == SessionState.CLOSED:
            return None, _Outcome.CLOSED
        if row.state in (SessionState.EXPIRED, SessionState.CLEANED_UP):
            if row.state == SessionState.EXPIRED and self.settings.cleanup_strategy == "lazy":
                return _cleaned(row), _Outcome.EXPIRED
            return None, _Outcome.EXPIRED
        if now >= row.expires_at:
            row.state = SessionState.EXPIRED
            row.ended_at = now
            return row, _Outcome.EXPIRED_NOW
        return None

    async def _modify(
        self,
        user_id: str,
        session_id: str,
        mutate: Callable[[SessionRow | None], tuple[SessionRow | None, _Outcome]],
    ) -> tuple[SessionRow | None, SessionRow | None, _Outcome]:
        """One locked read-modify-write. Returns the row as stored, the row for the listeners
        and the outcome: when `immediate` cleanup turns an expiring session into a tombstone
        in the same write, the listeners still get the session with its data."""
        expiring: SessionRow | None = None

        def apply(row: SessionRow | None) -> tuple[SessionRow | None, _Outcome]:
            nonlocal expiring
            changed, outcome = mutate(row)
            immediate = self.settings.cleanup_strategy == "immediate"
            if changed is not None and outcome is _Outcome.EXPIRED_NOW and immediate:
                expiring, changed = changed, _cleaned(changed)
            return changed, outcome

        async with self._locks.hold(f"{session_id}/{user_id}"):
            row, outcome = await self.store.modify_session(user_id, session_id, apply)
        return row, expiring or row, outcome

    async def _transition(
        self,
        user_id: str,
        session_id: str,
        change: Callable[[SessionRow, datetime], tuple[SessionRow | None, _Outcome] | None],
        *,
        closing: bool = False,
        raise_ended: bool = True,
    ) -> SessionRow:
        now = self.clock.now()

        def guarded(row: SessionRow | None) -> tuple[SessionRow | None, _Outcome]:
            if row is None:
                return None, _Outcome.NOT_FOUND
            result = change(row, now)
            return result if result is not None else (None, _Outcome.OK)

        row, ended, outcome = await self._modify(user_id, session_id, guarded)
        if closing and outcome is _Outcome.CLOSED_NOW and row is not None:
            await self._notify(self.on_session_closed, row)
            return row
        await self._raise_for(outcome, ended, session_id, raise_ended=raise_ended)
        assert row is not None
        return row

    async def _raise_for(
        self,
        outcome: _Outcome,
        ended: SessionRow | None,
        session_id: str,
        *,
        raise_ended: bool = True,
    ) -> None:
        if outcome is _Outcome.NOT_FOUND:
            raise NotFound(f"session {session_id} not found", ErrorCode.SESSION_NOT_FOUND)
        if outcome is _Outcome.EXPIRED_NOW and ended is not None:
            await self._notify(self.on_session_expired, ended)
        if outcome in (_Outcome.EXPIRED, _Outcome.EXPIRED_NOW) and raise_ended:
            raise SessionExpired(f"session {session_id} has expired; create a new session")
        if outcome in (_Outcome.CLOSED, _Outcome.CLOSED_NOW) and raise_ended:
            raise SessionClosed(f"session {session_id} is closed; create a new session")

    async def _notify(self, listeners: list[SessionListener], row: SessionRow) -> None:
        for listener in listeners:
            try:
                await listener(row)
            except Exception:
                logger.exception("session listener failed for %s", row.id)


def _cleaned(row: SessionRow) -> SessionRow:
    """The tombstone: a copy, so whoever holds the ended session keeps its data."""
    return row.model_copy(update={"state": SessionState.CLEANED_UP, "meta": {}, "thread_id": None})
