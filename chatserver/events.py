"""The event log of a thread: durable, densely numbered, replayable, live.

Writers buffer events and group-commit them; only committed events are published.
Subscribers register with the broker before reading the store, so none falls between
replay and live (ARCHITECTURE.md section 2, rules 1-3, 6).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.exc import IntegrityError

from chatserver.clock import Clock
from chatserver.config import Settings
from chatserver.errors import ChatServerError, ServiceUnavailable
from chatserver.store import ItemChange, NewEvent, RunEnd, Store, StoredEvent
from chatserver.types import ResyncEvent, dump_json

logger = logging.getLogger(__name__)

# Backoff between attempts to write a batch while the database is unreachable.
_RETRY_FIRST_DELAY = 0.05
_RETRY_MAX_DELAY = 1.0
# Times a batch moves after events another writer appended, before the writer gives up.
_MAX_RENUMBERINGS = 10


# A wake-up whose seq is unknown (a broker's link to the other processes was lost and is back).
FROM_ANYWHERE = sys.maxsize


class Subscription:
    """A subscriber's bounded live buffer. Overflow drops the buffer, not events: the
    subscriber notices and re-reads from the store, where everything committed is."""

    def __init__(self, thread_id: str, max_size: int) -> None:
        self.thread_id = thread_id
        self._max_size = max_size
        self._events: list[StoredEvent] = []
        self._wakeup = asyncio.Event()
        self.overflowed = False
        # Committed by another process up to this seq, so not pushed here: the subscriber
        # reads them from the store (FROM_ANYWHERE: which seq is not known, read anyway).
        self.committed_elsewhere = 0
        # Why nothing more will come (a deleted thread, a turn given up), once drained.
        self.ended: ChatServerError | None = None

    def push(self, events: list[StoredEvent]) -> None:
        if self.overflowed:
            return
        if len(self._events) + len(events) > self._max_size:
            self.overflowed = True
            self._events.clear()
        else:
            self._events.extend(events)
        self._wakeup.set()

    def wake(self, upto: int) -> None:
        """Events up to seq `upto` were committed by another process: they reach this
        subscriber through the store, from its cursor (FROM_ANYWHERE after a lost link)."""
        self.committed_elsewhere = max(self.committed_elsewhere, upto)
        self._wakeup.set()

    def behind(self, cursor: int) -> bool:
        """Whether the store holds events for this subscriber that its buffer does not."""
        return self.overflowed or self.committed_elsewhere > cursor

    def end(self, reason: ChatServerError) -> None:
        self.ended = reason
        self._wakeup.set()

    def reset(self) -> None:
        self.overflowed = False
        self.committed_elsewhere = 0
        self._events.clear()
        self._wakeup.clear()

    def take(self) -> list[StoredEvent]:
        taken, self._events = self._events, []
        self._wakeup.clear()
        return taken

    async def wait(self) -> None:
        await self._wakeup.wait()


# Asked of the process running a turn, wherever the request came in: stop (run_id, reason).
StopHandler = Callable[[str, str], None]
# A tab of the session opened its stream at this wall-clock time (session_id, opened_at):
# the session's tab streams opened before it end, on every process.
SupersedeHandler = Callable[[str, float], None]


class Broker(Protocol):
    """Fan-out of committed events to the subscribers of a thread, and the requests that
    must reach another process (stop a turn, supersede a tab). The in-process broker serves
    one instance; a broker shared by instances (PostgreSQL NOTIFY, Redis) also reaches the
    subscribers and turns of other processes."""

    def subscribe(self, thread_id: str) -> Subscription: ...

    def unsubscribe(self, subscription: Subscription) -> None: ...

    def publish(self, thread_id: str, events: list[StoredEvent]) -> None:
        """Called once the events are committed, in seq order."""
        ...

    def end_streams(self, thread_id: str, reason: ChatServerError) -> None:
        """End every subscription of the thread once it has delivered what it has, with
        `reason` (the thread was deleted; its turn was given up and the log cannot say so)."""
        ...

    def stop_run(self, run_id: str, reason: str) -> None:
        """Ask the process running `run_id`, this one or another, to stop it."""
        ...

    def supersede_tabs(self, session_id: str, opened_at: float) -> None:
        """End, on every process, the session's tab streams opened before `opened_at`."""
        ...

    def on_stop_run(self, handler: StopHandler) -> Callable[[], None]:
        """Call `handler` for every stop request; returns what unregisters it."""
        ...

    def on_supersede_tabs(self, handler: SupersedeHandler) -> Callable[[], None]:
        """Call `handler` for every tab takeover; returns what unregisters it."""
        ...

    async def start(self) -> None:
        """Connect to the other processes (if any); events are fanned out in-process before
        this and after `close`."""
        ...

    async def close(self) -> None: ...


class LocalBroker:
    """In-process fan-out of committed events to the subscribers of a thread."""

    def __init__(self, queue_size: int) -> None:
        self._queue_size = queue_size
        self._subscribers: dict[str, set[Subscription]] = {}
        self._stop_handlers: list[StopHandler] = []
        self._supersede_handlers: list[SupersedeHandler] = []

    def subscribe(self, thread_id: str) -> Subscription:
        subscription = Subscription(thread_id, self._queue_size)
        self._subscribers.setdefault(thread_id, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(subscription.thread_id)
        if subscribers is None:
            return
        subscribers.discard(subscription)
        if not subscribers:
            del self._subscribers[subscription.thread_id]

    def publish(self, thread_id: str, events: list[StoredEvent]) -> None:
        for subscription in tuple(self._subscribers.get(thread_id, ())):
            subscription.push(events)

    def end_streams(self, thread_id: str, reason: ChatServerError) -> None:
        for subscription in tuple(self._subscribers.get(thread_id, ())):
            subscription.end(reason)

    def stop_run(self, run_id: str, reason: str) -> None:
        for handler in tuple(self._stop_handlers):
            handler(run_id, reason)

    def supersede_tabs(self, session_id: str, opened_at: float) -> None:
        for handler in tuple(self._supersede_handlers):
            handler(session_id, opened_at)

    def on_stop_run(self, handler: StopHandler) -> Callable[[], None]:
        self._stop_handlers.append(handler)
        return lambda: self._stop_handlers.remove(handler)

    def on_supersede_tabs(self, handler: SupersedeHandler) -> Callable[[], None]:
        self._supersede_handlers.append(handler)
        return lambda: self._supersede_handlers.remove(handler)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


@dataclass(slots=True)
class _Pending:
    # None: a change written without an event (an item clients never see).
    event: StoredEvent | None
    item_change: ItemChange | None
    run_end: RunEnd | None = None


@dataclass
class ThreadWriter:
    """The single writer of a thread while a turn runs: it keeps the next seq in memory and
    group-commits buffered events (a few ms window or N events, whichever comes first)."""

    log: EventLog
    thread_id: str
    next_seq: int
    _buffer: list[_Pending] = field(default_factory=list)
    # Buffered units (events and event-less changes) so far, and how many are committed.
    _written: int = 0
    _committed: int = 0
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    _drained: asyncio.Condition = field(default_factory=asyncio.Condition)
    _failure: BaseException | None = None
    _task: asyncio.Task[None] | None = None
    _closing: bool = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"event-writer:{self.thread_id}")

    @property
    def failed(self) -> bool:
        """A batch could not be written: nothing more goes through this writer."""
        return self._failure is not None

    async def emit(
        self,
        run_id: str | None,
        type_: str,
        data: str,
        item_change: ItemChange | None = None,
        run_end: RunEnd | None = None,
    ) -> int:
        """Buffer one event and return its seq (moved later, unpublished, should another
        writer take it first). Waits only when the database falls behind."""
        seq = self.next_seq
        self.next_seq += 1
        await self._buffered(_Pending(StoredEvent(seq, run_id, type_, data), item_change, run_end))
        return seq

    async def save(self, item_change: ItemChange) -> None:
        """Buffer a change that no client is told about, committed in order with the events."""
        await self._buffered(_Pending(None, item_change))

    async def _buffered(self, pending: _Pending) -> None:
        if self._failure is not None:
            raise self._failure
        self._buffer.append(pending)
        self._written += 1
        if len(self._buffer) == 1 or len(self._buffer) >= self.log.settings.commit_max_events:
            self._wakeup.set()
        if self._written - self._committed > self.log.settings.max_pending_events:
            await self.flush()

    async def flush(self) -> None:
        """Return once everything buffered so far is committed and published."""
        target = self._written
        self._wakeup.set()
        async with self._drained:
            await self._drained.wait_for(
                lambda: self._failure is not None or self._committed >= target
            )
        if self._failure is not None:
            raise self._failure

    async def close_quietly(self) -> None:
        """Close; a failure was reported to whoever emitted or flushed."""
        with contextlib.suppress(Exception):
            await self.close()

    async def close(self) -> None:
        try:
            await self.flush()
        finally:
            self._closing = True
            self._wakeup.set()
            if self._task is not None:
                # A failure already surfaced through flush(); do not raise it twice.
                await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                # Cleared before the window, so a signal during it is never lost.
                self._wakeup.clear()
                if (
                    self._buffer
                    and self.log.window > 0
                    and len(self._buffer) < self.log.settings.commit_max_events
                ):
                    # Let a burst of deltas gather into one transaction.
                    await asyncio.sleep(self.log.window)
                while self._buffer:
                    batch = self._buffer[: self.log.settings.commit_max_events]
                    await self._commit(batch)
                    del self._buffer[: len(batch)]
                    self._committed += len(batch)
                    async with self._drained:
                        self._drained.notify_all()
                if self._closing:
                    return
        except BaseException as exc:
            self._failure = exc if isinstance(exc, Exception) else RuntimeError("writer stopped")
            async with self._drained:
                self._drained.notify_all()
            if not isinstance(exc, asyncio.CancelledError):
                logger.exception("event writer for thread %s failed", self.thread_id)
            raise

    async def _commit(self, batch: list[_Pending]) -> None:
        """Write the batch in one transaction, then publish it. While the database is
        unreachable the batch is kept and retried with backoff, up to the configured outage
        window; seqs another writer took move the batch after them (`_yield_seqs`); any
        other refusal (a constraint, bad data) is final at once."""
        events = [p.event for p in batch if p.event is not None]
        # Later changes of the same item in a batch supersede earlier ones.
        item_changes = {p.item_change.id: p.item_change for p in batch if p.item_change}
        run_end = next((p.run_end for p in batch if p.run_end is not None), None)
        loop = asyncio.get_running_loop()
        give_up_at: float | None = None
        delay = _RETRY_FIRST_DELAY
        renumbered = 0
        while True:
            try:
                await self.log.store.append_events(
                    self.thread_id,
                    [NewEvent(e.run_id, e.type, e.data) for e in events],
                    first_seq=events[0].seq if events else None,
                    item_changes=list(item_changes.values()),
                    run_end=run_end,
                    created_at=self.log.clock.now(),
                )
                break
            except ServiceUnavailable:
                now = loop.time()
                if give_up_at is None:
                    give_up_at = now + self.log.settings.database_outage_seconds
                    logger.warning(
                        "database unreachable: thread %s keeps its events and retries for %.0f s",
                        self.thread_id,
                        self.log.settings.database_outage_seconds,
                    )
                if now >= give_up_at:
                    raise
                await asyncio.sleep(min(delay, give_up_at - now))
                delay = min(delay * 2, _RETRY_MAX_DELAY)
            except IntegrityError:
                # A retried batch whose first attempt committed, its acknowledgement lost
                # with the connection: the rows are there, exactly as sent.
                if give_up_at is not None and events and await self._is_stored(events[0]):
                    break
                renumbered += 1
                if (
                    not events
                    or renumbered > _MAX_RENUMBERINGS
                    or not await self._yield_seqs(events[0])
                ):
                    raise
                events = [p.event for p in batch if p.event is not None]
        if give_up_at is not None:
            logger.info("database reachable again: thread %s writes on", self.thread_id)
        if events:
            self.log.published(self.thread_id, events)

    async def _is_stored(self, event: StoredEvent) -> bool:
        stored = await self.log.store.read_events(self.thread_id, event.seq - 1, 1)
        return bool(stored) and stored[0] == event

    async def _yield_seqs(self, first: StoredEvent) -> bool:
        """Another writer took seqs this one had handed out: a run that ended without ever
        holding the thread (a queued run that gave up on another instance, an orphan closed
        by recovery) appends its terminal event after the last committed one. Move every
        unpublished event of this writer after what was taken, and say whether to retry.
        Not when what was taken belongs to this writer's own runs: someone closed them
        (their owner was taken for dead), and this writer must stop, not write on."""
        newest = await self.log.store.max_seq(self.thread_id)
        if newest < first.seq:
            return False  # some other refusal: a missing thread, bad data
        taken = await self.log.store.read_events(
            self.thread_id, first.seq - 1, newest - first.seq + 1
        )
        ours = {p.event.run_id for p in self._buffer if p.event is not None} - {None}
        if any(event.run_id in ours for event in taken):
            return False
        shift = newest + 1 - first.seq
        for pending in self._buffer:
            if pending.event is not None:
                pending.event = pending.event._replace(seq=pending.event.seq + shift)
        self.next_seq += shift
        logger.info(
            "thread %s: %d events appended by another writer; this one writes on after them",
            self.thread_id,
            shift,
        )
        return True


class EventLog:
    def __init__(self, store: Store, broker: Broker, clock: Clock, settings: Settings) -> None:
        self.store = store
        self.broker = broker
        self.clock = clock
        self.settings = settings
        self.window = settings.commit_window_ms / 1000
        # Told of every batch of events once it is committed (metrics count them).
        self.on_committed: list[Callable[[str, int], None]] = []

    def published(self, thread_id: str, events: list[StoredEvent]) -> None:
        """Committed events go to their listeners, then every subscriber."""
        for listener in self.on_committed:
            listener(thread_id, len(events))
        self.broker.publish(thread_id, events)

    async def open_writer(self, thread_id: str) -> ThreadWriter:
        writer = ThreadWriter(self, thread_id, await self.store.max_seq(thread_id) + 1)
        writer.start()
        return writer

    async def append(self, thread_id: str, run_id: str | None, type_: str, data: str) -> int:
        """One event outside a turn (recovery, notices): its own transaction, seq read under
        the thread's lock."""
        seq = await self.store.append_events(
            thread_id, [NewEvent(run_id, type_, data)], created_at=self.clock.now()
        )
        self.published(thread_id, [StoredEvent(seq, run_id, type_, data)])
        return seq

    async def subscribe(
        self,
        thread_id: str,
        after: int,
        *,
        until: Callable[[StoredEvent], bool] | None = None,
        already_over: Callable[[], Awaitable[bool]] | None = None,
    ) -> AsyncIterator[StoredEvent]:
        """Every event with seq > `after`: stored ones, then live; no gap, no duplicate.

        Ends after an event for which `until` is true; otherwise runs until cancelled, or
        raises the reason the broker ended it for (`Broker.end_streams`).
        `already_over` is asked once, after the first replay: if what the caller waits for
        has already happened (its `until` event lies at or before the cursor), the stream
        ends once the store is drained instead of waiting for an event that has passed.
        A cursor older than what the log keeps first gets a `resync` event.
        """
        subscription = self.broker.subscribe(thread_id)
        try:
            cursor = after
            oldest = await self.store.min_seq(thread_id)
            if oldest > cursor + 1:
                resync = ResyncEvent(reason="cursor_too_old", earliest_seq=oldest)
                yield StoredEvent(oldest - 1, None, resync.type, dump_json(resync))
                cursor = oldest - 1
            first_round = True
            while True:
                # Reset before reading the store: whatever is published from here on is
                # either buffered or flags an overflow, never silently dropped.
                subscription.reset()
                async for event in self._replay(thread_id, cursor):
                    cursor = event.seq
                    yield event
                    if until is not None and until(event):
                        return
                if first_round and already_over is not None and await already_over():
                    async for event in self._replay(thread_id, cursor):
                        yield event
                    return
                first_round = False
                while not subscription.behind(cursor):
                    batch = subscription.take()
                    if not batch:
                        if subscription.ended is not None:
                            raise subscription.ended
                        await subscription.wait()
                        continue
                    for event in batch:
                        if event.seq <= cursor:
                            continue  # already replayed
                        if event.seq != cursor + 1:
                            break  # a gap (another writer's batch): re-read the store
                        cursor = event.seq
                        yield event
                        if until is not None and until(event):
                            return
                    else:
                        continue
                    break
        finally:
            self.broker.unsubscribe(subscription)

    async def _replay(self, thread_id: str, after: int) -> AsyncIterator[StoredEvent]:
        page = self.settings.replay_page_size
        while True:
            events = await self.store.read_events(thread_id, after, page)
            for event in events:
                yield event
            if len(events) < page:
                return
            after = events[-1].seq
