"""One turn's view of its items: every event goes to the log, and the items it touches are
tracked so that a stopped, failed or crashed turn can still close them with what was said."""

from __future__ import annotations

import logging

from pydantic import BaseModel

from chatserver.events import ThreadWriter
from chatserver.store import ItemWrite, RunEnd, StoredEvent
from chatserver.types import (
    AssistantMessageContentPartAdded,
    AssistantMessageContentPartAnnotationAdded,
    AssistantMessageContentPartDone,
    AssistantMessageContentPartTextDelta,
    AssistantMessageItem,
    ThreadItem,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemReplacedEvent,
    ThreadItemUpdatedEvent,
    WorkflowItem,
    WorkflowTaskAdded,
    WorkflowTaskUpdated,
    dump_json,
    parse_stream_event,
)

logger = logging.getLogger(__name__)


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


def _item_write(item: ThreadItem, status: str, data: str) -> ItemWrite:
    return ItemWrite(
        id=item.id,
        thread_id=item.thread_id,
        type=item.type,
        status=status,
        data=data,
        created_at=item.created_at,
    )


def _with_status(item: ThreadItem, status: str) -> ThreadItem:
    if isinstance(item, AssistantMessageItem):
        return item.model_copy(update={"status": status})
    return item


class TurnRecorder:
    def __init__(self, writer: ThreadWriter, run_id: str | None) -> None:
        self.writer = writer
        self.run_id = run_id
        self._open: dict[str, _OpenItem] = {}

    async def emit(self, event: BaseModel, run_end: RunEnd | None = None) -> int:
        item_write: ItemWrite | None = None
        if isinstance(event, ThreadItemAddedEvent):
            item = _with_status(event.item, "in_progress")
            event = event.model_copy(update={"item": item})
            self._open[item.id] = _OpenItem(item.model_copy(deep=True))
            data = dump_json(event)
            item_write = _item_write(item, "in_progress", dump_json(item))
        elif isinstance(event, ThreadItemDoneEvent | ThreadItemReplacedEvent):
            item = _with_status(event.item, "completed")
            event = event.model_copy(update={"item": item})
            self._open.pop(item.id, None)
            data = dump_json(event)
            item_write = _item_write(item, "completed", dump_json(item))
        else:
            if isinstance(event, ThreadItemUpdatedEvent):
                open_item = self._open.get(event.item_id)
                if open_item is None:
                    logger.warning("update for unknown item %s ignored", event.item_id)
                else:
                    open_item.apply(event)
            data = dump_json(event)
        type_ = getattr(event, "type", None)
        if not isinstance(type_, str):
            raise TypeError(f"respond() yielded {event!r}, which is not a stream event")
        return await self.writer.emit(self.run_id, type_, data, item_write, run_end)

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

    @property
    def has_open_items(self) -> bool:
        return bool(self._open)

    async def close_open_items(self) -> None:
        """Keep what was generated so far, marked incomplete, and tell every client."""
        for open_item in list(self._open.values()):
            item = _with_status(open_item.closed(), "incomplete")
            data = dump_json(item)
            await self.writer.emit(
                self.run_id,
                "thread.item.done",
                dump_json(ThreadItemDoneEvent(item=item)),
                _item_write(item, "incomplete", data),
            )
        self._open.clear()
