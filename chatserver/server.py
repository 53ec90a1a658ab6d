"""ChatServer: the respond() contract and everything around a turn.

A turn runs as a background task, independent of whoever listens: one turn per thread at
a time (queue | reject | interrupt for a second one), every event through the event log,
stop and failure close the turn cleanly, and runs left behind by a dead process are closed
by recovery (ARCHITECTURE.md section 2).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError

from chatserver.clock import Clock, SystemClock
from chatserver.config import DoubleTexting, Settings
from chatserver.errors import ChatServerError, Conflict, ErrorCode, NotFound, ThreadBusy
from chatserver.events import EventLog, LocalBroker, ThreadWriter
from chatserver.ids import IdKind, new_id
from chatserver.locks import KeyedLock
from chatserver.policies import TimeoutPolicies, TimeoutResolver
from chatserver.sessions import RequestContext, SessionManager
from chatserver.store import RunEnd, Store, StoredEvent
from chatserver.store.models import RunRow, SessionRow, ThreadRow
from chatserver.turn import TurnRecorder
from chatserver.types import (
    TERMINAL_RUN_EVENT_TYPES,
    ErrorEvent,
    Page,
    RunCancelledEvent,
    RunCompletedEvent,
    RunFailedEvent,
    RunStartedEvent,
    StreamOptions,
    StreamOptionsEvent,
    Thread,
    ThreadCreatedEvent,
    ThreadItem,
    ThreadItemDoneEvent,
    ThreadMetadata,
    ThreadUpdatedEvent,
    UserMessageInput,
    UserMessageItem,
    dump_json,
    parse_thread_item,
)

logger = logging.getLogger(__name__)

_STOP_WAIT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class RunHandle:
    run_id: str
    thread_id: str
    # The thread's last seq before the run was accepted: its events all come after it.
    start_seq: int


@dataclass(frozen=True, slots=True)
class _TurnRequest:
    run: RunRow
    context: RequestContext
    input: UserMessageInput | None
    thread_created: bool
    retry_after_item_id: str | None


class ChatServer:
    """Subclass and implement `respond()`; everything else is the server's."""

    def __init__(
        self,
        store: Store,
        settings: Settings | None = None,
        *,
        clock: Clock | None = None,
        resolve_timeout: TimeoutResolver | None = None,
        instance_id: str | None = None,
    ) -> None:
        self.store = store
        self.settings = settings or Settings()
        self.clock: Clock = clock or SystemClock()
        self.instance_id = instance_id or f"ins_{uuid.uuid4().hex[:16]}"
        self.broker = LocalBroker(self.settings.subscriber_queue_size)
        self.events = EventLog(store, self.broker, self.clock, self.settings)
        self.sessions = SessionManager(
            store,
            self.settings,
            self.clock,
            TimeoutPolicies.from_settings(self.settings, resolve_timeout),
        )
        self.sessions.on_session_closed.append(self.on_session_closed)
        self.sessions.on_session_expired.append(self.on_session_expired)
        self._turn_locks = KeyedLock()
        self._idempotency_locks = KeyedLock()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running_by_thread: dict[str, str] = {}
        # Runs accepted here whose terminal event is not yet emitted, per thread.
        self._open_runs: dict[str, set[str]] = {}
        self._cancel_reasons: dict[str, str] = {}
        self._maintenance: asyncio.Task[None] | None = None

    # -- the application's part ------------------------------------------------------------

    def respond(
        self,
        thread: ThreadMetadata,
        input: UserMessageItem | None,
        context: RequestContext,
    ) -> AsyncIterator[BaseModel]:
        """Yield ChatKit stream events answering `input`. `context.history()` gives the
        thread's earlier items; setting `thread.title` or `thread.metadata` persists it."""
        raise NotImplementedError

    async def on_session_closed(self, session: SessionRow) -> None:
        """Runs once when a session is closed."""

    async def on_session_expired(self, session: SessionRow) -> None:
        """Runs once when a session expires."""

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.recover()
        self._maintenance = asyncio.create_task(self._maintain(), name="chatserver-maintenance")

    async def close(self, grace_seconds: float | None = None) -> None:
        """Let quick turns finish, then stop the rest: their partial answers are kept."""
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
        grace = self.settings.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        tasks = list(self._tasks.values())
        if tasks and grace > 0:
            await asyncio.wait(tasks, timeout=grace)
        for run_id, task in list(self._tasks.items()):
            self._cancel_reasons.setdefault(run_id, "server_shutdown")
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

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
        self, user_id: str, *, limit: int, after: str | None = None, order: str = "desc"
    ) -> Page[ThreadMetadata]:
        rows, has_more = await self.store.list_threads(
            user_id, limit=limit, after=after, order="asc" if order == "asc" else "desc"
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
        order: str = "asc",
    ) -> Page[ThreadItem]:
        await self.get_thread(user_id, thread_id)
        rows, has_more = await self.store.list_items(
            thread_id, limit=limit, after=after, order="asc" if order == "asc" else "desc"
        )
        return Page[ThreadItem](
            data=[parse_thread_item(r.data) for r in rows],
            has_more=has_more,
            after=rows[-1].id if rows and has_more else None,
        )

    async def load_thread(
        self, user_id: str, thread_id: str, *, item_limit: int
    ) -> tuple[Thread, int]:
        """The thread with its items, and the seq this snapshot reflects: following the
        thread's events after it misses nothing and replays nothing the items already hold.

        Items hold what is done, not the deltas of an answer in progress; so while a run
        holds the thread, the snapshot's seq is the run's start, and the follower replays
        that run's events (item upserts are idempotent by id)."""
        seq = await self.store.max_seq(thread_id)
        # Read after the seq: a run that holds the thread now either started after `seq`
        # (all its events follow) or lowers the seq to its start.
        row = await self.get_thread(user_id, thread_id)
        if row.active_run_id is not None:
            run = await self.store.get_run(row.active_run_id)
            if run is not None:
                seq = min(seq, run.start_seq)
        items = await self.list_items(user_id, thread_id, limit=item_limit, order="asc")
        return Thread(**thread_metadata(row).model_dump(), items=items), seq

    async def update_thread(self, user_id: str, thread_id: str, *, title: str) -> ThreadRow:
        await self.get_thread(user_id, thread_id)
        return await self.store.update_thread(
            thread_id, {"title": title, "updated_at": self.clock.now()}
        )

    async def delete_thread(self, user_id: str, thread_id: str) -> None:
        await self.get_thread(user_id, thread_id)
        await self.stop(user_id, thread_id, reason="thread_deleted")
        await self.store.delete_thread(thread_id)

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
    ) -> RunHandle:
        """Accept a turn and run it in the background. Everything that can refuse the turn
        (missing thread, busy thread, bad item) raises here, before any event exists."""
        thread = await self.get_thread(context.user_id, thread_id)
        if idempotency_key is not None:
            existing = await self.store.find_run_by_idempotency_key(
                context.user_id, idempotency_key
            )
            if existing is not None:
                _check_same_thread(existing, thread_id, thread_created)
                return _handle(existing)
        policy = double_texting or self.settings.double_texting
        busy = await self._is_busy(thread)
        if busy and policy == "reject":
            raise ThreadBusy(f"thread {thread_id} is answering; try again when it is done")
        if retry_after_item_id is not None:
            item = await self.store.get_item(retry_after_item_id)
            if item is None or item.thread_id != thread_id:
                raise NotFound(f"item {retry_after_item_id} not found", ErrorCode.ITEM_NOT_FOUND)
        now = self.clock.now()
        run = RunRow(
            id=new_id(IdKind.RUN),
            thread_id=thread_id,
            user_id=context.user_id,
            session_id=context.session.id,
            status="queued",
            idempotency_key=idempotency_key,
            owner=self.instance_id,
            lease_until=now + timedelta(seconds=self.settings.run_lease_seconds),
            start_seq=await self.store.max_seq(thread_id),
            created_at=now,
        )
        try:
            await self.store.insert_run(run)
        except IntegrityError:
            # A concurrent retry with the same Idempotency-Key won the insert: join its run.
            assert idempotency_key is not None
            existing = await self.store.find_run_by_idempotency_key(
                context.user_id, idempotency_key
            )
            if existing is None:
                raise
            _check_same_thread(existing, thread_id, thread_created)
            return _handle(existing)
        if busy and policy == "interrupt":
            await self._request_cancel(thread, reason="interrupted", wait=False)
        self._open_runs.setdefault(thread_id, set()).add(run.id)
        request = _TurnRequest(run, context, input, thread_created, retry_after_item_id)
        self._tasks[run.id] = asyncio.create_task(self._run_turn(request), name=f"turn:{run.id}")
        return _handle(run)

    async def create_thread_and_start_turn(
        self,
        context: RequestContext,
        input: UserMessageInput,
        *,
        idempotency_key: str | None = None,
    ) -> RunHandle:
        if idempotency_key is None:
            thread = await self.create_thread(context)
            return await self.start_turn(context, thread.id, input, thread_created=True)
        # Serialized per key in this process, so retries do not even make spare threads;
        # across processes the runs' unique key decides and the losers drop their thread.
        async with self._idempotency_locks.hold(f"{context.user_id}\x00{idempotency_key}"):
            existing = await self.store.find_run_by_idempotency_key(
                context.user_id, idempotency_key
            )
            if existing is not None:
                return _handle(existing)
            thread = await self.create_thread(context)
            handle = await self.start_turn(
                context, thread.id, input, idempotency_key=idempotency_key, thread_created=True
            )
        if handle.thread_id != thread.id:
            await self.store.delete_thread(thread.id)
        return handle

    async def stop(self, user_id: str, thread_id: str, *, reason: str = "stopped") -> bool:
        """Cancel the thread's running turn; True if there was one. Returns once it ended
        (locally) or once the owning instance was asked to end it."""
        thread = await self.get_thread(user_id, thread_id)
        return await self._request_cancel(thread, reason=reason, wait=True)

    def stream_run(self, handle: RunHandle, after: int | None = None) -> AsyncIterator[StoredEvent]:
        """The events of one run from `after` (default: its start), ending with its last."""
        return self._stream_run(handle, handle.start_seq if after is None else after)

    async def _stream_run(self, handle: RunHandle, after: int) -> AsyncIterator[StoredEvent]:
        def ends_run(event: StoredEvent) -> bool:
            return event.run_id == handle.run_id and event.type in TERMINAL_RUN_EVENT_TYPES

        async def run_is_over() -> bool:
            run = await self.store.get_run(handle.run_id)
            return run is None or run.status in ("completed", "cancelled", "failed")

        async for event in self.events.subscribe(
            handle.thread_id, after, until=ends_run, already_over=run_is_over
        ):
            if event.run_id == handle.run_id or event.type == "resync":
                yield event

    def subscribe(self, thread_id: str, after: int) -> AsyncIterator[StoredEvent]:
        return self.events.subscribe(thread_id, after)

    # -- running a turn --------------------------------------------------------------------

    async def _run_turn(self, request: _TurnRequest) -> None:
        run = request.run
        try:
            async with self._turn_locks.hold(run.thread_id):
                if run.id in self._cancel_reasons:
                    await self._finish_unstarted(run, self._cancel_reasons.pop(run.id))
                    return
                thread = await self._claim(run)
                if thread is None:
                    return
                self._running_by_thread[run.thread_id] = run.id
                try:
                    await self._execute(request, thread)
                finally:
                    self._running_by_thread.pop(run.thread_id, None)
        except asyncio.CancelledError:
            # Cancelled while queued (shutdown, interrupt): nothing was emitted for this run;
            # recovery closes it if this process goes away.
            logger.info("run %s cancelled before it started", run.id)
        except Exception:
            logger.exception("run %s could not be run", run.id)
        finally:
            self._ending(run)
            self._tasks.pop(run.id, None)
            self._cancel_reasons.pop(run.id, None)

    def _ending(self, run: RunRow) -> None:
        """From here on the run no longer makes its thread busy for new requests."""
        open_runs = self._open_runs.get(run.thread_id)
        if open_runs is not None:
            open_runs.discard(run.id)
            if not open_runs:
                del self._open_runs[run.thread_id]

    async def _claim(self, run: RunRow) -> ThreadRow | None:
        """Take the thread in the database; wait while another instance's turn holds it."""
        deadline = asyncio.get_running_loop().time() + self.settings.queue_wait_seconds
        delay = 0.05
        while (claimed := await self.store.claim_thread(run.thread_id, run.id)) is None:
            thread = await self.store.get_thread(run.thread_id)
            if thread is None:
                return None
            if thread.active_run_id is not None:
                holder = await self.store.get_run(thread.active_run_id)
                if holder is None or holder.status not in ("queued", "running"):
                    await self.store.release_thread(run.thread_id, thread.active_run_id, {})
                    continue
            if asyncio.get_running_loop().time() > deadline:
                await self._finish_unstarted(run, "queue_timeout")
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        return claimed

    async def _execute(self, request: _TurnRequest, thread_row: ThreadRow) -> None:
        run, context = request.run, request.context
        context.thread_id = run.thread_id
        writer = await self.events.open_writer(run.thread_id)
        turn = TurnRecorder(writer, run.id)
        thread = thread_metadata(thread_row)
        before = thread.model_copy(deep=True)
        try:
            await self.store.update_run(run.id, {"status": "running"})
            await self._record_turn(context, run.thread_id)
            await turn.emit(RunStartedEvent(run_id=run.id))
            if request.thread_created:
                await turn.emit(ThreadCreatedEvent(thread=Thread.without_items(thread)))
            user_item = await self._user_item(request, turn)
            await turn.emit(StreamOptionsEvent(stream_options=StreamOptions(allow_cancel=True)))
            responses = self.respond(thread, user_item, context)
            try:
                async for event in responses:
                    await turn.emit(event)
            finally:
                # An abandoned async generator would run its cleanup at some later GC.
                close = getattr(responses, "aclose", None)
                if close is not None:
                    await close()
            changes = _thread_changes(before, thread)
            if changes:
                await turn.emit(ThreadUpdatedEvent(thread=Thread.without_items(thread)))
            self._ending(run)
            await turn.emit(
                RunCompletedEvent(run_id=run.id), self._run_end(run, "completed", changes)
            )
        except asyncio.CancelledError:
            reason = self._cancel_reasons.get(run.id, "stopped")
            changes = _thread_changes(before, thread)
            await asyncio.shield(self._close_cancelled(turn, run, reason, changes))
        except Exception as exc:
            changes = _thread_changes(before, thread)
            await asyncio.shield(self._close_failed(turn, run, exc, changes))
        finally:
            await asyncio.shield(self._release(run, writer))

    def _run_end(self, run: RunRow, status: str, changes: dict[str, Any]) -> RunEnd:
        return RunEnd(run.id, status, self.clock.now(), changes)

    async def _user_item(self, request: _TurnRequest, turn: TurnRecorder) -> UserMessageItem | None:
        run = request.run
        if request.retry_after_item_id is not None:
            item_row = await self.store.get_item(request.retry_after_item_id)
            await self.store.delete_items_after(run.thread_id, request.retry_after_item_id)
            if item_row is None:
                return None
            item = parse_thread_item(item_row.data)
            return item if isinstance(item, UserMessageItem) else None
        if request.input is None:
            return None
        item = UserMessageItem(
            id=new_id(IdKind.ITEM),
            thread_id=run.thread_id,
            created_at=self.clock.now(),
            content=request.input.content,
            quoted_text=request.input.quoted_text,
            inference_options=request.input.inference_options,
        )
        await turn.emit(ThreadItemDoneEvent(item=item))
        return item

    async def _record_turn(self, context: RequestContext, thread_id: str) -> None:
        try:
            context.session = await self.sessions.record_turn(
                context.user_id, context.session.id, thread_id
            )
        except ChatServerError as exc:
            # The session ended while the turn waited in the queue; the turn still runs for
            # the thread, which outlives sessions.
            logger.info("session %s not updated for turn: %s", context.session.id, exc.message)

    async def _close_cancelled(
        self, turn: TurnRecorder, run: RunRow, reason: str, changes: dict[str, Any]
    ) -> None:
        await turn.close_open_items()
        self._ending(run)
        await turn.emit(
            RunCancelledEvent(run_id=run.id, reason=reason),
            self._run_end(run, "cancelled", changes),
        )

    async def _close_failed(
        self, turn: TurnRecorder, run: RunRow, exc: Exception, changes: dict[str, Any]
    ) -> None:
        if isinstance(exc, ChatServerError):
            code = exc.code.value
            error = ErrorEvent(code="custom", message=exc.message, error_code=code)
        else:
            # Details stay in the server log; the client gets a stable code, no stack trace.
            logger.error("respond() failed in run %s", run.id, exc_info=exc)
            code = ErrorCode.RESPONDER_FAILED.value
            error = ErrorEvent(
                code="stream.error",
                message="The assistant could not finish this answer.",
                allow_retry=True,
                error_code=code,
            )
        try:
            await turn.close_open_items()
            await turn.emit(error)
            self._ending(run)
            await turn.emit(
                RunFailedEvent(run_id=run.id, error_code=code),
                self._run_end(run, "failed", changes),
            )
        except Exception:
            logger.exception("could not record the failure of run %s", run.id)

    async def _release(self, run: RunRow, writer: ThreadWriter) -> None:
        try:
            await writer.close()
        except Exception:
            # The database refused the last batch: the run stays open in the database, its
            # lease is no longer renewed, and recovery closes it from what was logged.
            logger.exception("events of run %s could not all be written", run.id)
            return
        if writer.next_seq - 1 > self.settings.event_log_max_per_thread:
            await self.store.trim_events(run.thread_id, self.settings.event_log_max_per_thread)

    async def _finish_unstarted(self, run: RunRow, reason: str) -> None:
        """A queued run that never started: tell its listeners it is over."""
        self._ending(run)
        await self.events.append(
            run.thread_id,
            run.id,
            "run.cancelled",
            dump_json(RunCancelledEvent(run_id=run.id, reason=reason)),
        )
        await self.store.update_run(
            run.id, {"status": "cancelled", "finished_at": self.clock.now()}
        )

    # -- busy, cancel ----------------------------------------------------------------------

    async def _is_busy(self, thread: ThreadRow) -> bool:
        if self._open_runs.get(thread.id):
            return True
        if thread.active_run_id is None:
            return False
        holder = await self.store.get_run(thread.active_run_id)
        return holder is not None and holder.status in ("queued", "running")

    async def _request_cancel(self, thread: ThreadRow, *, reason: str, wait: bool) -> bool:
        run_id = self._running_by_thread.get(thread.id)
        if run_id is not None:
            task = self._tasks.get(run_id)
            if task is not None:
                self._cancel_reasons[run_id] = reason
                task.cancel()
                if wait:
                    await asyncio.wait({task}, timeout=_STOP_WAIT_SECONDS)
                return True
        if thread.active_run_id is not None:
            # Owned by another instance: it polls for cancel requests.
            await self.store.update_run(thread.active_run_id, {"cancel_requested": True})
            return True
        return False

    # -- recovery and leases ---------------------------------------------------------------

    async def recover(self) -> int:
        """Close runs whose owner stopped renewing its lease (a crashed or killed process):
        their open items are kept as incomplete and the thread is usable again."""
        now = self.clock.now()
        recovered = 0
        for run in await self.store.list_lapsed_runs(now, limit=100):
            if run.id in self._tasks:
                continue  # ours and alive; its lease renewal merely lags
            until = now + timedelta(seconds=self.settings.run_lease_seconds)
            if not await self.store.claim_lapsed_run(run.id, self.instance_id, now, until):
                continue
            try:
                await self._close_orphan(run)
                recovered += 1
            except Exception:
                logger.exception("could not recover run %s", run.id)
        return recovered

    async def _close_orphan(self, run: RunRow) -> None:
        async with self._turn_locks.hold(run.thread_id):
            writer = await self.events.open_writer(run.thread_id)
            turn = TurnRecorder(writer, run.id)
            after = run.start_seq
            while True:
                events = await self.store.read_events(
                    run.thread_id, after, self.settings.replay_page_size
                )
                for event in events:
                    if event.run_id == run.id:
                        turn.replay(event)
                if len(events) < self.settings.replay_page_size:
                    break
                after = events[-1].seq
            code = ErrorCode.RUN_INTERRUPTED.value
            await turn.close_open_items()
            await turn.emit(
                ErrorEvent(
                    code="stream.error",
                    message="The server stopped while answering; the partial answer was kept.",
                    allow_retry=True,
                    error_code=code,
                )
            )
            await turn.emit(
                RunFailedEvent(run_id=run.id, error_code=code), self._run_end(run, "failed", {})
            )
            await writer.close()
            logger.warning("recovered run %s on thread %s", run.id, run.thread_id)

    async def _maintain(self) -> None:
        """Renew our runs' leases, honour cancel requests from other instances, recover
        runs of dead ones. A sleep loop: a slow round delays the next, never piles up."""
        interval = self.settings.run_lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                now = self.clock.now()
                until = now + timedelta(seconds=self.settings.run_lease_seconds)
                await self.store.renew_leases(self.instance_id, list(self._tasks), until)
                local = list(self._running_by_thread.values())
                for run_id in await self.store.list_cancel_requests(local):
                    task = self._tasks.get(run_id)
                    if task is not None:
                        self._cancel_reasons.setdefault(run_id, "stopped")
                        task.cancel()
                await self.recover()
            except Exception:
                logger.exception("maintenance round failed")


def _thread_changes(before: ThreadMetadata, after: ThreadMetadata) -> dict[str, Any]:
    """What respond() changed on the thread, as column values."""
    changes: dict[str, Any] = {}
    if after.title != before.title:
        changes["title"] = after.title
    if after.metadata != before.metadata:
        changes["meta"] = after.metadata
    return changes


def thread_metadata(row: ThreadRow) -> ThreadMetadata:
    return ThreadMetadata(id=row.id, title=row.title, created_at=row.created_at, metadata=row.meta)


def _check_same_thread(existing: RunRow, thread_id: str, thread_created: bool) -> None:
    """A key names one turn on one thread. A retried threads.create is the exception: its
    fresh thread loses to the run that already holds the key."""
    if existing.thread_id != thread_id and not thread_created:
        raise Conflict(
            "Idempotency-Key was already used for another thread", ErrorCode.IDEMPOTENCY_CONFLICT
        )


def _handle(run: RunRow) -> RunHandle:
    return RunHandle(run.id, run.thread_id, run.start_seq)
