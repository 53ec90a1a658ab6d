"""ChatServer: the respond() contract, and the thread operations around it.

Subclass it and implement `respond()`; sessions, persistence, streaming, resume, locking and
recovery are the server's (ARCHITECTURE.md section 2). Turns run in the background, one per
thread at a time (`runs.py`); each turn's events go through the event log (`events.py`).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from chatserver.brokers import create_broker
from chatserver.clock import Clock, SystemClock
from chatserver.config import DoubleTexting, Settings
from chatserver.errors import BadRequest, ErrorCode, NotFound
from chatserver.events import Broker, EventLog
from chatserver.ids import IdKind, new_id
from chatserver.instances import Instances
from chatserver.policies import TimeoutPolicies, TimeoutResolver
from chatserver.runs import RunHandle, Runs
from chatserver.sessions import RequestContext, Session, SessionManager
from chatserver.store import Order, Store, StoredEvent
from chatserver.store.models import ThreadRow
from chatserver.turn import TurnRunner, thread_metadata
from chatserver.types import (
    ChatKitEvent,
    Page,
    Thread,
    ThreadItem,
    ThreadMetadata,
    UserMessageInput,
    UserMessageItem,
    parse_thread_item,
)

__all__ = ["ChatServer", "RunHandle", "thread_metadata"]


class ChatServer:
    """Subclass and implement `respond()`; everything else is the server's.

    The store is the application's; the broker (fan-out of committed events to streams,
    requests between instances) defaults to PostgreSQL NOTIFY on a PostgreSQL store, so any
    number of instances can share it, to Redis when `settings.broker_url` names it, and to
    the in-process one on SQLite.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings | None = None,
        *,
        clock: Clock | None = None,
        broker: Broker | None = None,
        resolve_timeout: TimeoutResolver | None = None,
        instance_id: str | None = None,
    ) -> None:
        self.store = store
        self.settings = settings or Settings()
        self.clock: Clock = clock or SystemClock()
        self.instance_id = instance_id or f"ins_{uuid.uuid4().hex[:16]}"
        self.broker: Broker = broker or create_broker(store, self.settings, self.instance_id)
        self.events = EventLog(store, self.broker, self.clock, self.settings)
        self.sessions = SessionManager(
            store,
            self.settings,
            self.clock,
            TimeoutPolicies.from_settings(self.settings, resolve_timeout),
        )
        self.sessions.on_session_closed.append(self.on_session_closed)
        self.sessions.on_session_expired.append(self.on_session_expired)
        self.sessions.on_session_cleaned_up.append(self.on_session_cleaned_up)
        runner = TurnRunner(
            store,
            self.events,
            self.sessions,
            self.settings,
            self.clock,
            # Looked up per turn, so a respond() replaced on the instance is the one called.
            lambda thread, input, context: self.respond(thread, input, context),
        )
        self.instances = Instances(store, self.clock, self.instance_id)
        self.runs = Runs(store, self.events, runner, self.settings, self.clock, self.instances)

    # -- the application's part ------------------------------------------------------------

    def respond(
        self,
        thread: ThreadMetadata,
        input: UserMessageItem | None,
        context: RequestContext,
    ) -> AsyncIterator[ChatKitEvent]:
        """Yield ChatKit stream events answering `input` (None when there is no message to
        answer, e.g. a retry of an item that is not a user message).

        Before this runs, the turn's user message is committed: `context.history()` (the
        thread's committed items, oldest first, the newest `history_limit` of them) ends with
        it. Items are saved on `thread.item.done` and deleted on `thread.item.removed`;
        hidden-context items are saved but never streamed. Setting `thread.title` or
        `thread.metadata` persists it; `metadata` never reaches a client. Events only the
        server emits (`run.*`, `session.*`, `resync`) are refused: the turn fails.
        """
        raise NotImplementedError

    async def on_session_closed(self, session: Session) -> None:
        """Runs once when a session is closed."""

    async def on_session_expired(self, session: Session) -> None:
        """Runs once when a session expires."""

    async def on_session_cleaned_up(self, session: Session) -> None:
        """Runs once when a session becomes a tombstone (its metadata and thread removed, as
        its cleanup strategy says); `session` is as it was just before, so the application
        can release what it keeps for it."""

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Join the other instances (broker, registration), then recover orphaned runs and
        start the maintenance of leases."""
        await self.broker.start()
        await self.instances.start()
        await self.runs.start()

    async def close(self, grace_seconds: float | None = None) -> None:
        """Let quick turns finish, then stop the rest: their partial answers are kept."""
        grace = self.settings.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        try:
            await self.runs.close(grace)
            await self.instances.close()
        finally:
            await self.broker.close()

    async def recover(self) -> int:
        return await self.runs.recover()

    # -- threads and items -----------------------------------------------------------------

    async def create_thread(
        self,
        context: RequestContext,
        *,
        title: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> ThreadRow:
        now = self.clock.now()
        row = ThreadRow(
            id=new_id(IdKind.THREAD),
            user_id=context.user_id,
            title=title,
            meta=dict(metadata or {}),
            created_at=now,
            updated_at=now,
        )
        await self.store.insert_thread(row)
        return row

    async def get_thread(self, user_id: str, thread_id: str) -> ThreadRow:
        row = await self.store.get_thread(thread_id)
        if row is None or row.user_id != user_id:
            # Another user's thread is indistinguishable from a missing one.
            raise NotFound(f"thread {thread_id} not found", ErrorCode.THREAD_NOT_FOUND)
        return row

    async def list_threads(
        self, user_id: str, *, limit: int, after: str | None = None, order: Order = "desc"
    ) -> Page[ThreadMetadata]:
        rows, has_more = await self.store.list_threads(
            user_id, limit=limit, after=after, order=order
        )
        return Page[ThreadMetadata](
            data=[thread_metadata(r) for r in rows],
            has_more=has_more,
            after=rows[-1].id if rows and has_more else None,
        )

    async def list_items(
        self,
        user_id: str,
        thread_id: str,
        *,
        limit: int,
        after: str | None = None,
        order: Order = "asc",
    ) -> Page[ThreadItem]:
        await self.get_thread(user_id, thread_id)
        rows, has_more = await self.store.list_items(
            thread_id, limit=limit, after=after, order=order
        )
        return Page[ThreadItem](
            data=[parse_thread_item(r.data) for r in rows],
            has_more=has_more,
            after=rows[-1].id if rows and has_more else None,
        )

    async def load_thread(
        self, user_id: str, thread_id: str, *, item_limit: int
    ) -> tuple[Thread, int]:
        """The thread with its oldest `item_limit` items, and the seq this snapshot reflects:
        following the thread's events after it misses nothing and repeats nothing the items
        hold (while a run holds the thread, its start: its events replay, and item events
        are upserts by id)."""
        snapshot = await self.store.thread_snapshot(thread_id, item_limit)
        if snapshot is None or snapshot.thread.user_id != user_id:
            raise NotFound(f"thread {thread_id} not found", ErrorCode.THREAD_NOT_FOUND)
        items = Page[ThreadItem](
            data=[parse_thread_item(r.data) for r in snapshot.items],
            has_more=snapshot.has_more,
            after=snapshot.items[-1].id if snapshot.items and snapshot.has_more else None,
        )
        return Thread(**thread_metadata(snapshot.thread).model_dump(), items=items), snapshot.seq

    async def update_thread(self, user_id: str, thread_id: str, *, title: str) -> ThreadRow:
        await self.get_thread(user_id, thread_id)
        return await self.store.update_thread(
            thread_id, {"title": title, "updated_at": self.clock.now()}
        )

    async def delete_thread(self, user_id: str, thread_id: str) -> None:
        thread = await self.get_thread(user_id, thread_id)
        await self.runs.cancel_all(thread, reason="thread_deleted")
        await self.store.delete_thread(thread_id)
        self.broker.end_streams(
            thread_id, NotFound(f"thread {thread_id} was deleted", ErrorCode.THREAD_NOT_FOUND)
        )

    # -- turns -----------------------------------------------------------------------------

    async def start_turn(
        self,
        context: RequestContext,
        thread_id: str,
        input: UserMessageInput | None,
        *,
        idempotency_key: str | None = None,
        double_texting: DoubleTexting | None = None,
        thread_created: bool = False,
        retry_after_item_id: str | None = None,
        cursor: int | None = None,
    ) -> RunHandle:
        """Accept a turn and run it in the background. Everything that can refuse the turn
        (missing thread, busy thread, bad item, a `cursor` the client cannot have) raises
        here, before any event exists."""
        thread = await self.get_thread(context.user_id, thread_id)
        await self.check_cursor(thread_id, cursor)
        if retry_after_item_id is not None:
            await self._check_retryable(thread_id, retry_after_item_id)
        return await self.runs.accept(
            context,
            thread,
            input,
            idempotency_key=idempotency_key,
            double_texting=double_texting,
            thread_created=thread_created,
            retry_after_item_id=retry_after_item_id,
        )

    async def create_thread_and_start_turn(
        self,
        context: RequestContext,
        input: UserMessageInput,
        *,
        idempotency_key: str | None = None,
        cursor: int | None = None,
    ) -> RunHandle:
        if idempotency_key is None:
            await self.check_cursor(None, cursor)
            thread = await self.create_thread(context)
            return await self.start_turn(context, thread.id, input, thread_created=True)
        async with self.runs.idempotency_lock(context.user_id, idempotency_key):
            existing = await self.runs.find_retried(context.user_id, idempotency_key, input)
            if existing is not None:
                await self.check_cursor(existing.thread_id, cursor)
                return existing
            await self.check_cursor(None, cursor)
            thread = await self.create_thread(context)
            handle = await self.start_turn(
                context, thread.id, input, idempotency_key=idempotency_key, thread_created=True
            )
        if handle.thread_id != thread.id:
            # Another process won the key with its own thread: ours stays unused.
            await self.store.delete_thread(thread.id)
        return handle

    async def stop(self, user_id: str, thread_id: str, *, reason: str = "stopped") -> bool:
        """Cancel the thread's running turn; True if there was one. Returns once it ended
        (locally) or once the owning instance was asked to end it."""
        thread = await self.get_thread(user_id, thread_id)
        return await self.runs.stop(thread, reason=reason)

    def stream_run(self, handle: RunHandle, after: int | None = None) -> AsyncIterator[StoredEvent]:
        """The events of one run from `after` (default: its start), ending with its last."""
        return self.runs.stream(handle, handle.start_seq if after is None else after)

    async def check_cursor(self, thread_id: str | None, cursor: int | None) -> None:
        """Refuse a cursor past the end of the thread's log (None: a thread not yet made):
        no client can have seen that event, and waiting for it would never end."""
        if not cursor:
            return
        last = 0 if thread_id is None else await self.store.max_seq(thread_id)
        if cursor > last:
            raise BadRequest(
                f"event {cursor} is beyond the last event of the thread ({last})",
                ErrorCode.INVALID_CURSOR,
            )

    def subscribe(self, thread_id: str, after: int) -> AsyncIterator[StoredEvent]:
        """Every event of the thread after `after`, stored then live, until closed."""
        return self.events.subscribe(thread_id, after)

    async def _check_retryable(self, thread_id: str, item_id: str) -> None:
        item = await self.store.get_item(item_id)
        if item is None or item.thread_id != thread_id:
            raise NotFound(f"item {item_id} not found", ErrorCode.ITEM_NOT_FOUND)
        if not isinstance(parse_thread_item(item.data), UserMessageItem):
            raise BadRequest(f"item {item_id} is not a user message; only those can be retried")
