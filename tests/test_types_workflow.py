"""Workflow and task items (how tool calls are shown) in ChatKit's exact shapes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, get_args

import chatkit.types as ck
import pytest
from pydantic import BaseModel, TypeAdapter

from chatserver.types import (
    CustomSummary,
    CustomTask,
    DurationSummary,
    Task,
    TaskItem,
    ThoughtTask,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
    Workflow,
    WorkflowItem,
    WorkflowTaskAdded,
    WorkflowTaskUpdated,
    dump_json,
    parse_stream_event,
    parse_thread_item,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
chatkit_item = TypeAdapter[Any](ck.ThreadItem)
chatkit_event = TypeAdapter[Any](ck.ThreadStreamEvent)

ITEMS = [
    WorkflowItem(
        id="itm_1",
        thread_id="thr_1",
        created_at=NOW,
        workflow=Workflow(
            type="custom",
            tasks=[
                CustomTask(title="Create task", content='{"id": 1}', status_indicator="complete"),
                CustomTask(title="List tasks", icon="search", status_indicator="loading"),
            ],
        ),
    ),
    WorkflowItem(
        id="itm_2",
        thread_id="thr_1",
        created_at=NOW,
        workflow=Workflow(
            type="reasoning",
            tasks=[ThoughtTask(content="First, the budget.")],
            summary=DurationSummary(duration=3),
            expanded=True,
        ),
    ),
    WorkflowItem(
        id="itm_3",
        thread_id="thr_1",
        created_at=NOW,
        workflow=Workflow(type="custom", tasks=[], summary=CustomSummary(title="Planned")),
    ),
    TaskItem(id="itm_4", thread_id="thr_1", created_at=NOW, task=CustomTask(title="Saved")),
]


@pytest.mark.parametrize("item", ITEMS, ids=lambda item: item.id)
def test_item_reads_the_same_on_chatkit_and_round_trips(item: BaseModel) -> None:
    wire = dump_json(item)

    theirs = chatkit_item.validate_json(wire)

    assert json.loads(theirs.model_dump_json(exclude_none=True)) == json.loads(wire)
    assert parse_thread_item(wire) == item


EVENTS = [
    ThreadItemAddedEvent(item=ITEMS[0]),
    ThreadItemDoneEvent(item=ITEMS[1]),
    ThreadItemUpdatedEvent(
        item_id="itm_1",
        update=WorkflowTaskAdded(task_index=2, task=CustomTask(title="Complete task")),
    ),
    ThreadItemUpdatedEvent(
        item_id="itm_1",
        update=WorkflowTaskUpdated(
            task_index=0, task=CustomTask(title="Create task", status_indicator="complete")
        ),
    ),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda event: event.type)
def test_event_reads_the_same_on_chatkit_and_round_trips(event: BaseModel) -> None:
    wire = dump_json(event)

    theirs = chatkit_event.validate_json(wire)

    assert json.loads(theirs.model_dump_json(exclude_none=True)) == json.loads(wire)
    assert parse_stream_event(wire) == event


def test_task_types_are_a_subset_of_chatkit() -> None:
    def tags(union: Any) -> set[str]:
        members = get_args(get_args(union)[0])
        return {model.model_fields["type"].default for model in members}

    assert tags(Task) <= tags(ck.Task)
