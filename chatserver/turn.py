"""One turn: the user's item committed, `respond()` run, every event through the event log,
and the turn closed as completed, cancelled or failed with what was said kept.

`TurnRecorder` is a turn's view of its items: the items it touches are tracked so that a
stopped, failed or crashed turn can still close them. `TurnRunner` runs a turn whose run holds
its thread, and applies ChatKit's persistence rules to what `respond()` yields.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from chatserver.clock import Clock
from chatserver.config import Settings
from chatserver.errors import ChatServerError, ErrorCode, InvalidEvent, ServiceUnavailable
from chatserver.events import EventLog, ThreadWriter
from chatserver.ids import IdKind, new_id
from chatserver.sessions import RequestContext, SessionManager
from chatserver.statuses import OPEN_RUN_STATUSES, ItemStatus, RunStatus
from chatserver.store import ItemDelete, ItemWrite, RunEnd, Store, StoredEvent
from chatserver.store.models import RunRow, ThreadRow
from chatserver.types import (
    CHATKIT_EVENT_TYPES,
    SERVER_EVENT_TYPES,
    AssistantMessageContentPartAdded,
    AssistantMessageContentPartAnnotationAdded,
    AssistantMessageContentPartDone,
    AssistantMessageContentPartTextDelta,
    AssistantMessageItem,
    ChatKitEvent,
    ErrorEvent,
    HiddenContextItem,
    RunCancelledEvent,
    RunCompletedEvent,
    RunFailedEvent,
    RunStartedEvent,
    StreamOptions,
    StreamOptionsEvent,
    Thread,
    ThreadCreatedEvent,
    ThreadItem,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemRemovedEvent,
    ThreadItemReplacedEvent,
    ThreadItemUpdatedEvent,
    ThreadMetadata,
    ThreadUpdatedEvent,
    UserMessageInput,
    UserMessageItem,
    WorkflowItem,
    WorkflowTaskAdded,
    WorkflowTaskUpdated,
    dump_json,
    parse_stream_event,
    parse_thread_item,
)

logger = logging.getLogger(__name__)

# What the log of a finished turn no longer needs: each item's `thread.item.done` carries in
# full what its `thread.item.updated` deltas built (a replay over the gap shows the same items).
COMPACTED_EVENT_TYPES = frozenset({"thread.item.updated"})

Responder = Callable[[ThreadMetadata, UserMessageItem | None, RequestContext], AsyncIterator[Any]]


class _OpenItem:
    """An item between `thread.item.added` and `thread.item.done`. Text deltas are kept as
    chunks and joined only when the item is closed, so a long answer costs O(n), not O(n^2)."""

    def __init__(self, item: ThreadItem) -> None:
        self.item = item
        self.chunks: dict[int, list[str]] = {}

    def apply(self, event: ThreadItemUpdatedEvent) -> None:
        item = self.item
        update = event.update
        if isinstance(item, WorkflowItem):
            # As ChatKit keeps it, so a stopped turn saves the workflow as far as it got.
            tasks = item.workflow.tasks
            if isinstance(update, WorkflowTaskAdded):
                tasks.append(update.task.model_copy(deep=True))
            elif isinstance(update, WorkflowTaskUpdated) and 0 <= update.task_index < len(tasks):
                tasks[update.task_index] = update.task.model_copy(deep=True)
            return
        if not isinstance(item, AssistantMessageItem) or isinstance(
            update, WorkflowTaskAdded | WorkflowTaskUpdated
        ):
            return
        index = update.content_index
        if isinstance(update, AssistantMessageContentPartAdded):
            self._materialize()
            item.content.insert(index, update.content.model_copy(deep=True))
        elif isinstance(update, AssistantMessageContentPartTextDelta):
            if 0 <= index < len(item.content):
                self.chunks.setdefault(index, []).append(update.delta)
        elif isinstance(update, AssistantMessageContentPartAnnotationAdded):
            if 0 <= index < len(item.content):
                item.content[index].annotations.insert(update.annotation_index, update.annotation)
        elif isinstance(update, AssistantMessageContentPartDone):
            self.chunks.pop(index, None)
            if 0 <= index < len(item.content):
                item.content[index] = update.content.model_copy(deep=True)

    def closed(self) -> ThreadItem:
        self._materialize()
        return self.item

    def _materialize(self) -> None:
        if not isinstance(self.item, AssistantMessageItem):
            return
        for index, chunks in self.chunks.items():
            if 0 <= index < len(self.item.content):
                self.item.content[index].text += "".join(chunks)
        self.chunks.clear()


def _item_write(item: ThreadItem, status: ItemStatus, data: str) -> ItemWrite:
    return ItemWrite(
        id=item.id,
        thread_id=item.thread_id,
        type=item.type,
        status=status,
        data=data,
        created_at=item.created_at,
    )


def _with_status(item: ThreadItem, status: ItemStatus) -> ThreadItem:
    if isinstance(item, AssistantMessageItem):
        return item.model_copy(update={"status": status.value})
    return item


class TurnRecorder:
    def __init__(self, writer: ThreadWriter, run_id: str | None) -> None:
        self.writer = writer
        self.run_id = run_id
        self._open: dict[str, _OpenItem] = {}

    async def emit(self, event: BaseModel, run_end: RunEnd | None = None) -> int:
        """Log an event the server built, with the item change it implies."""
        item_change: ItemWrite | ItemDelete | None = None
        if isinstance(event, ThreadItemAddedEvent):
            item = _with_status(event.item, ItemStatus.IN_PROGRESS)
            event = event.model_copy(update={"item": item})
            self._open[item.id] = _OpenItem(item.model_copy(deep=True))
            item_change = _item_write(item, ItemStatus.IN_PROGRESS, dump_json(item))
        elif isinstance(event, ThreadItemDoneEvent | ThreadItemReplacedEvent):
            item = _with_status(event.item, ItemStatus.COMPLETED)
            event = event.model_copy(update={"item": item})
            self._open.pop(item.id, None)
            item_change = _item_write(item, ItemStatus.COMPLETED, dump_json(item))
        elif isinstance(event, ThreadItemRemovedEvent):
            self._open.pop(event.item_id, None)
            item_change = ItemDelete(event.item_id, self.writer.thread_id)
        elif isinstance(event, ThreadItemUpdatedEvent):
            open_item = self._open.get(event.item_id)
            if open_item is None:
                logger.warning("update for unknown item %s ignored", event.item_id)
            else:
                open_item.apply(event)
        type_ = getattr(event, "type", None)
        if not isinstance(type_, str):
            raise TypeError(f"{event!r} is not a stream event")
        return await self.writer.emit(self.run_id, type_, dump_json(event), item_change, run_end)

    async def record_response(self, event: ChatKitEvent) -> None:
        """Log what `respond()` yielded, by ChatKit's persistence rules: items are saved on
        `thread.item.done`, deleted on `thread.item.removed`; hidden-context items are saved
        but never streamed. Events only the server emits are refused."""
        type_ = getattr(event, "type", None)
        if type_ in SERVER_EVENT_TYPES:
            raise InvalidEvent(
                f"respond() yielded {type_!r}, an event only the server emits; yield ChatKit "
                "events (chatserver.types.ChatKitEvent) only"
            )
        if type_ not in CHATKIT_EVENT_TYPES:
            raise InvalidEvent(f"respond() yielded {event!r}, which is not a ChatKit stream event")
        if isinstance(
            event, ThreadItemAddedEvent | ThreadItemDoneEvent | ThreadItemReplacedEvent
        ) and isinstance(event.item, HiddenContextItem):
            # For the model's eyes only: kept with the thread, never sent to a client.
            item = event.item
            await self.writer.save(_item_write(item, ItemStatus.COMPLETED, dump_json(item)))
            return
        await self.emit(event)

    def replay(self, event: StoredEvent) -> None:
        """Rebuild open items from logged events (crash recovery), without emitting."""
        if event.type not in ("thread.item.added", "thread.item.updated", "thread.item.done"):
            return
        parsed = parse_stream_event(event.data)
        if isinstance(parsed, ThreadItemAddedEvent):
            self._open[parsed.item.id] = _OpenItem(parsed.item.model_copy(deep=True))
        elif isinstance(parsed, ThreadItemUpdatedEvent):
            open_item = self._open.get(parsed.item_id)
            if open_item is not None:
                open_item.apply(parsed)
        elif isinstance(parsed, ThreadItemDoneEvent):
            self._open.pop(parsed.item.id, None)

    def moved_to(self, writer: ThreadWriter) -> TurnRecorder:
        """The same turn, its open items included, writing through another writer."""
        moved = TurnRecorder(writer, self.run_id)
        moved._open = self._open
        return moved

    async def close_open_items(self) -> None:
        """Keep what was generated so far, marked incomplete, and tell every client."""
        for open_item in list(self._open.values()):
            item = _with_status(open_item.closed(), ItemStatus.INCOMPLETE)
            await self.writer.emit(
                self.run_id,
                "thread.item.done",
                dump_json(ThreadItemDoneEvent(item=item)),
                _item_write(item, ItemStatus.INCOMPLETE, dump_json(item)),
            )
        self._open.clear()


@dataclass(frozen=True, slots=True)
class TurnRequest:
    """What a turn answers: a new user message, or (retry) the one after which it redoes."""

    run: RunRow
    context: RequestContext
    input: UserMessageInput | None
    thread_created: bool
    retry_after_item_id: str | None


class TurnRunner:
    def __init__(
        self,
        store: Store,
        events: EventLog,
        sessions: SessionManager,
        settings: Settings,
        clock: Clock,
        respond: Responder,
    ) -> None:
        self.store = store
        self.events = events
        self.sessions = sessions
        self.settings = settings
        self.clock = clock
        self.respond = respond

    async def run(
        self, request: TurnRequest, thread_row: ThreadRow, cancel_reason: Callable[[], str]
    ) -> None:
        """Run the turn of a run that holds its thread, to its terminal event. Cancelled
        (stop, interrupt, shutdown), it ends `run.cancelled` with `cancel_reason()`."""
        run, context = request.run, request.context
        context.thread_id = run.thread_id
        writer = await self.events.open_writer(run.thread_id)
        turn = TurnRecorder(writer, run.id)
        thread = thread_metadata(thread_row)
        before = thread.model_copy(deep=True)
        try:
            await self.store.update_run(run.id, {"status": RunStatus.RUNNING})
            await self._record_turn(context, run.thread_id)
            await turn.emit(RunStartedEvent(run_id=run.id))
            if request.thread_created:
                await turn.emit(ThreadCreatedEvent(thread=Thread.public(thread)))
            user_item = await self._user_item(request, turn)
            await turn.emit(StreamOptionsEvent(stream_options=StreamOptions(allow_cancel=True)))
            # The contract: respond() sees its user message in context.history().
            await writer.flush()
            responses = self.respond(thread, user_item, context)
            try:
                async for event in responses:
                    await turn.record_response(event)
            finally:
                # An abandoned async generator would run its cleanup at some later GC.
                close = getattr(responses, "aclose", None)
                if close is not None:
                    await close()
            changes = _thread_changes(before, thread)
            if changes:
                await turn.emit(ThreadUpdatedEvent(thread=Thread.public(thread)))
            await turn.emit(
                RunCompletedEvent(run_id=run.id), self._run_end(run, RunStatus.COMPLETED, changes)
            )
            # Inside the try: a last batch the database refuses still ends the run, now.
            await writer.flush()
        except asyncio.CancelledError:
            cancelled = RunCancelledEvent(run_id=run.id, reason=cancel_reason())
            changes = _thread_changes(before, thread)
            await asyncio.shield(self._end(turn, run, [cancelled], RunStatus.CANCELLED, changes))
        except Exception as exc:
            changes = _thread_changes(before, thread)
            failed = self._failure_events(run, exc)
            await asyncio.shield(self._end(turn, run, failed, RunStatus.FAILED, changes))
        finally:
            await asyncio.shield(self._release(run, writer))

    async def close_orphan(self, run: RunRow) -> None:
        """Close a run whose owner is gone: its open items are kept as incomplete, and a
        `run.failed` frees the thread. The caller holds the thread's turn lock."""
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
        try:
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
                RunFailedEvent(run_id=run.id, error_code=code),
                self._run_end(run, RunStatus.FAILED, {}),
            )
        finally:
            await writer.close()
        logger.warning("recovered run %s on thread %s", run.id, run.thread_id)

    async def finish_unstarted(self, run: RunRow, reason: str) -> None:
        """A queued run that never started: tell its listeners it is over."""
        await self.events.append(
            run.thread_id,
            run.id,
            "run.cancelled",
            dump_json(RunCancelledEvent(run_id=run.id, reason=reason)),
        )
        await self.store.update_run(
            run.id, {"status": RunStatus.CANCELLED, "finished_at": self.clock.now()}
        )

    def _run_end(self, run: RunRow, status: RunStatus, changes: dict[str, Any]) -> RunEnd:
        return RunEnd(run.id, status, self.clock.now(), changes)

    async def _user_item(self, request: TurnRequest, turn: TurnRecorder) -> UserMessageItem | None:
        run = request.run
        if request.retry_after_item_id is not None:
            return await self._retry_from(run.thread_id, request.retry_after_item_id, turn)
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

    async def _retry_from(
        self, thread_id: str, item_id: str, turn: TurnRecorder
    ) -> UserMessageItem | None:
        """Drop the items after the retried message, telling every client which."""
        item_row = await self.store.get_item(item_id)
        if item_row is None:
            return None
        for dropped in await self.store.item_ids_after(thread_id, item_id):
            await turn.emit(ThreadItemRemovedEvent(item_id=dropped))
        item = parse_thread_item(item_row.data)
        return item if isinstance(item, UserMessageItem) else None

    async def _record_turn(self, context: RequestContext, thread_id: str) -> None:
        try:
            context.session = await self.sessions.record_turn(
                context.user_id, context.session.id, thread_id
            )
        except ChatServerError as exc:
            # The session ended while the turn waited in the queue; the turn still runs for
            # the thread, which outlives sessions.
            logger.info("session %s not updated for turn: %s", context.session.id, exc.message)

    def _failure_events(self, run: RunRow, exc: Exception) -> list[BaseModel]:
        if isinstance(exc, ChatServerError):
            code = exc.code.value
            error = ErrorEvent(
                code="custom", message=exc.message, allow_retry=exc.allow_retry, error_code=code
            )
            if exc.code is ErrorCode.INVALID_EVENT:
                logger.error("run %s: %s", run.id, exc.message)
            else:
                logger.warning("run %s failed: %s", run.id, exc.message)
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
        return [error, RunFailedEvent(run_id=run.id, error_code=code)]

    async def _end(
        self,
        turn: TurnRecorder,
        run: RunRow,
        ending: Sequence[BaseModel],
        status: RunStatus,
        changes: dict[str, Any],
    ) -> None:
        """Close the turn's open items (kept, incomplete), then log `ending`, whose last
        event ends the run. If the turn's writer has failed, a fresh one (numbered from
        what is committed) writes the ending without the thread's changes, which may be what
        the database refused. If the database refuses even that, every listener is told now,
        outside the log, and recovery closes the run once the database is back."""
        if not turn.writer.failed and await self._write_ending(turn, run, ending, status, changes):
            return
        if await self._ended_elsewhere(run):
            return
        try:
            fresh = await self.events.open_writer(run.thread_id)
        except Exception:
            logger.exception("no writer to record the end of run %s", run.id)
        else:
            try:
                if await self._write_ending(turn.moved_to(fresh), run, ending, status, {}):
                    return
            finally:
                await fresh.close_quietly()
        self.events.broker.end_streams(
            run.thread_id,
            ServiceUnavailable(
                "The answer stopped: the database is unavailable. Reconnect to see how it "
                "ended once it is back."
            ),
        )

    async def _ended_elsewhere(self, run: RunRow) -> bool:
        """Whether another instance took this run for an orphan and closed it (its owner
        looked dead): it has its ending already, and a second one would contradict it."""
        try:
            current = await self.store.get_run(run.id)
        except ServiceUnavailable:
            return False
        if current is None or current.status in OPEN_RUN_STATUSES:
            return False
        logger.warning("run %s was closed by instance %s meanwhile", run.id, current.owner)
        return True

    async def _write_ending(
        self,
        turn: TurnRecorder,
        run: RunRow,
        ending: Sequence[BaseModel],
        status: RunStatus,
        changes: dict[str, Any],
    ) -> bool:
        *events, terminal = ending
        try:
            await turn.close_open_items()
            for event in events:
                await turn.emit(event)
            await turn.emit(terminal, self._run_end(run, status, changes))
            await turn.writer.flush()
        except Exception:
            logger.exception("could not record the end of run %s", run.id)
            return False
        return True

    async def _release(self, run: RunRow, writer: ThreadWriter) -> None:
        # A failure was dealt with by _end; the run's status says whether it was written.
        await writer.close_quietly()
        if writer.failed:
            return
        # The earlier turns' deltas are in their items now: the log keeps its shape and stays
        # bounded. This turn's stay until the next one ends, for clients still reading it.
        try:
            await self.store.compact_events(
                run.thread_id,
                run.start_seq,
                types=COMPACTED_EVENT_TYPES,
                keep=self.settings.event_log_max_per_thread,
            )
        except Exception as exc:
            # The run has ended well; the next turn's end compacts what this one could not.
            logger.warning("event log of thread %s not compacted: %r", run.thread_id, exc)


def thread_metadata(row: ThreadRow) -> ThreadMetadata:
    return ThreadMetadata(id=row.id, title=row.title, created_at=row.created_at, metadata=row.meta)


def _thread_changes(before: ThreadMetadata, after: ThreadMetadata) -> dict[str, Any]:
    """What respond() changed on the thread, as column values."""
    changes: dict[str, Any] = {}
    if after.title != before.title:
        changes["title"] = after.title
    if after.metadata != before.metadata:
        changes["meta"] = after.metadata
    return changes
