"""Tool calls as ChatKit items: what the user sees and what the model reads on later turns.

The user sees a workflow item (ChatKit's way of showing work done on the way to an answer)
with one task per call, loading while the tool runs, complete with its result after. The
model needs the exact call and result on later turns; ChatKit has no visible item for a
server-side call, so each one is saved as a hidden-context item holding a `ToolCallRecord`:
stored with the thread, never sent to clients, turned back into a tool call by the prompt.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ValidationError

from chatserver.clock import Clock
from chatserver.ids import IdKind, new_id
from chatserver.types import (
    ChatKitEvent,
    CustomTask,
    DurationSummary,
    HiddenContextItem,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
    Workflow,
    WorkflowItem,
    WorkflowTaskAdded,
    WorkflowTaskUpdated,
)

# Longest tool result shown in a workflow task; the model always gets the whole result.
_SHOWN_OUTPUT_CHARS = 500


class ToolCallRecord(BaseModel):
    """One tool call and its result, as a model needs them in its prompt."""

    type: Literal["chatserver.tool_call"] = "chatserver.tool_call"
    call_id: str
    name: str
    # The arguments as the model wrote them (JSON text).
    arguments: str
    output: str

    def item(self, thread_id: str, clock: Clock) -> HiddenContextItem:
        return HiddenContextItem(
            id=new_id(IdKind.ITEM),
            thread_id=thread_id,
            created_at=clock.now(),
            content=self.model_dump(),
        )

    @classmethod
    def of(cls, item: HiddenContextItem) -> ToolCallRecord | None:
        """The record an item holds, if it holds one (applications keep their own too)."""
        content = item.content
        if not isinstance(content, dict) or content.get("type") != "chatserver.tool_call":
            return None
        try:
            return cls.model_validate(content)
        except ValidationError:
            return None


def shown_output(output: str) -> str:
    if len(output) <= _SHOWN_OUTPUT_CHARS:
        return output
    return output[: _SHOWN_OUTPUT_CHARS - 1] + "…"


class WorkflowDisplay:
    """One workflow item at a time: opened by its first task, closed by `end()` (which the
    responder calls before any other visible item, as ChatKit's agents helper does)."""

    def __init__(self, thread_id: str, clock: Clock) -> None:
        self._thread_id = thread_id
        self._clock = clock
        self._item: WorkflowItem | None = None

    def add(self, task: CustomTask) -> tuple[int, ChatKitEvent]:
        """Show a new task; returns its index (for `update`) and the event that shows it."""
        if self._item is None:
            self._item = WorkflowItem(
                id=new_id(IdKind.ITEM),
                thread_id=self._thread_id,
                created_at=self._clock.now(),
                workflow=Workflow(type="custom", tasks=[task]),
            )
            return 0, ThreadItemAddedEvent(item=self._item.model_copy(deep=True))
        tasks = self._item.workflow.tasks
        tasks.append(task)
        index = len(tasks) - 1
        return index, ThreadItemUpdatedEvent(
            item_id=self._item.id,
            update=WorkflowTaskAdded(task_index=index, task=task.model_copy(deep=True)),
        )

    def update(self, index: int, task: CustomTask) -> ChatKitEvent:
        assert self._item is not None, "update() of a task that was never added"
        self._item.workflow.tasks[index] = task
        return ThreadItemUpdatedEvent(
            item_id=self._item.id,
            update=WorkflowTaskUpdated(task_index=index, task=task.model_copy(deep=True)),
        )

    def end(self) -> ChatKitEvent | None:
        """Close the open workflow (collapsed, with how long it took), if there is one."""
        item, self._item = self._item, None
        if item is None:
            return None
        elapsed = self._clock.now() - item.created_at
        if item.workflow.summary is None:
            item.workflow.summary = DurationSummary(duration=int(elapsed.total_seconds()))
        item.workflow.expanded = False
        return ThreadItemDoneEvent(item=item)
