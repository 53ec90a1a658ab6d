"""An OpenAI Agents SDK run as chatserver events (the optional `chatserver[agents]` extra).

    class AgentServer(ChatServer):
        async def respond(self, thread, input, context):
            items = await agent_input(input, context, HistoryWindow.of(self.settings))
            result = Runner.run_streamed(agent, items, context=context)
            async for event in stream_agent_run(thread, result, context):
                yield event

The answer's text streams as an assistant message; tool calls and handoffs are shown as the
tasks of a workflow item, and each function call with its result is saved for later turns,
as the OpenAI responder does (see `workflow.py`), so `agent_input` gives them back to the
model. Stopping the turn cancels the run, and with it the model's HTTP stream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import openai
from agents import (
    HandoffOutputItem,
    RunResultStreaming,
    ToolCallItem,
    ToolCallOutputItem,
    TResponseInputItem,
)
from agents.stream_events import RawResponsesStreamEvent, RunItemStreamEvent

from chatserver.clock import Clock
from chatserver.ids import IdKind, new_id
from chatserver.responders.openai import model_error
from chatserver.responders.prompt import ChatMessage, HistoryWindow, chat_prompt, thread_history
from chatserver.responders.workflow import ToolCallRecord, WorkflowDisplay, shown_output
from chatserver.sessions import RequestContext
from chatserver.types import (
    AssistantMessageContent,
    AssistantMessageContentPartAdded,
    AssistantMessageContentPartDone,
    AssistantMessageContentPartTextDelta,
    AssistantMessageItem,
    ChatKitEvent,
    CustomTask,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
    ThreadMetadata,
    UserMessageItem,
)

__all__ = ["agent_input", "stream_agent_run"]


async def agent_input(
    input: UserMessageItem | None, context: RequestContext, window: HistoryWindow
) -> list[TResponseInputItem]:
    """The thread's newest items, within `window`, as a run's input; the agent's own
    instructions take the place of a system prompt."""
    items = await thread_history(input, context, window)
    return [
        entry
        for message in chat_prompt(items, system_prompt=None, window=window)
        for entry in _input_items(message)
    ]


def _input_items(message: ChatMessage) -> list[TResponseInputItem]:
    """A Chat Completions message as Responses input items (what the Agents SDK takes)."""
    if message["role"] == "tool":
        return [
            {
                "type": "function_call_output",
                "call_id": message["tool_call_id"],
                "output": message["content"],
            }
        ]
    calls: list[TResponseInputItem] = [
        {
            "type": "function_call",
            "call_id": call["id"],
            "name": call["function"]["name"],
            "arguments": call["function"]["arguments"],
        }
        for call in message.get("tool_calls", ())
    ]
    if message.get("content"):
        calls.insert(0, {"role": message["role"], "content": message["content"]})
    return calls


async def stream_agent_run(
    thread: ThreadMetadata, result: RunResultStreaming, context: RequestContext
) -> AsyncIterator[ChatKitEvent]:
    """Yield a streamed run's text, tool calls and handoffs as ChatKit events."""
    run = _RunDisplay(thread.id, context.clock)
    try:
        async for event in result.stream_events():
            if isinstance(event, RawResponsesStreamEvent):
                for shown in run.raw(event.data):
                    yield shown
            elif isinstance(event, RunItemStreamEvent):
                for shown in run.item(event):
                    yield shown
    except openai.OpenAIError as exc:
        raise model_error(exc) from exc
    finally:
        # On stop (or any failure here) the run's task and its model request end too.
        if not result.is_complete:
            result.cancel()
    for shown in run.finish():
        yield shown


@dataclass
class _Call:
    index: int
    title: str
    name: str
    arguments: str | None


class _RunDisplay:
    def __init__(self, thread_id: str, clock: Clock) -> None:
        self._thread_id = thread_id
        self._clock = clock
        self._workflow = WorkflowDisplay(thread_id, clock)
        self._message: AssistantMessageItem | None = None
        self._text: list[str] = []
        self._calls: dict[str, _Call] = {}

    def raw(self, data: Any) -> list[ChatKitEvent]:
        if data.type in ("response.output_text.delta", "response.refusal.delta"):
            return self._delta(data.delta)
        if data.type == "response.output_item.done" and data.item.type == "message":
            return self._end_message()
        return []

    def item(self, event: RunItemStreamEvent) -> list[ChatKitEvent]:
        item = event.item
        if isinstance(item, ToolCallItem):
            return self._end_message() + self._tool_called(item)
        if isinstance(item, ToolCallOutputItem):
            return self._tool_output(item)
        if isinstance(item, HandoffOutputItem):
            title = f"Handed off to {item.target_agent.name}"
            _, shown = self._workflow.add(CustomTask(title=title, status_indicator="complete"))
            return [*self._end_message(), shown]
        return []

    def finish(self) -> list[ChatKitEvent]:
        return self._end_message() + self._end_workflow()

    def _end_workflow(self) -> list[ChatKitEvent]:
        # Calls the model's service ran itself (web search, ...) have no output item of their
        # own: they are done by the time anything else is shown.
        events = [
            self._workflow.update(
                call.index, CustomTask(title=call.title, status_indicator="complete")
            )
            for call in self._calls.values()
        ]
        self._calls.clear()
        if (ended := self._workflow.end()) is not None:
            events.append(ended)
        return events

    def _delta(self, text: str) -> list[ChatKitEvent]:
        if not text:
            return []
        events: list[ChatKitEvent] = []
        if self._message is None:
            # A message after tool calls closes their workflow, as in ChatKit.
            events.extend(self._end_workflow())
            self._message = AssistantMessageItem(
                id=new_id(IdKind.ITEM),
                thread_id=self._thread_id,
                created_at=self._clock.now(),
                content=[],
            )
            events.append(ThreadItemAddedEvent(item=self._message))
            events.append(
                ThreadItemUpdatedEvent(
                    item_id=self._message.id,
                    update=AssistantMessageContentPartAdded(
                        content_index=0, content=AssistantMessageContent(text="")
                    ),
                )
            )
        self._text.append(text)
        events.append(
            ThreadItemUpdatedEvent(
                item_id=self._message.id,
                update=AssistantMessageContentPartTextDelta(content_index=0, delta=text),
            )
        )
        return events

    def _end_message(self) -> list[ChatKitEvent]:
        message, self._message = self._message, None
        if message is None:
            return []
        content = AssistantMessageContent(text="".join(self._text))
        self._text = []
        return [
            ThreadItemUpdatedEvent(
                item_id=message.id,
                update=AssistantMessageContentPartDone(content_index=0, content=content),
            ),
            ThreadItemDoneEvent(item=message.model_copy(update={"content": [content]})),
        ]

    def _tool_called(self, item: ToolCallItem) -> list[ChatKitEvent]:
        raw = item.raw_item
        name = _field(raw, "name") or _field(raw, "type") or "tool"
        call_id = _field(raw, "call_id") or _field(raw, "id") or new_id(IdKind.ITEM)
        title = getattr(item, "title", None) or name.replace("_", " ").capitalize()
        index, shown = self._workflow.add(CustomTask(title=title, status_indicator="loading"))
        # Only function calls (name and JSON arguments) can be given back to a model later.
        arguments = _field(raw, "arguments") if _field(raw, "type") == "function_call" else None
        self._calls[call_id] = _Call(index, title, name, arguments)
        return [shown]

    def _tool_output(self, item: ToolCallOutputItem) -> list[ChatKitEvent]:
        call_id = _field(item.raw_item, "call_id")
        call = self._calls.pop(call_id, None) if call_id else None
        if call_id is None or call is None:
            return []
        raw_output = _field(item.raw_item, "output")
        output = raw_output if isinstance(raw_output, str) else json.dumps(item.output, default=str)
        events = [
            self._workflow.update(
                call.index,
                CustomTask(
                    title=call.title, content=shown_output(output), status_indicator="complete"
                ),
            )
        ]
        if call.arguments is not None:
            record = ToolCallRecord(
                call_id=call_id, name=call.name, arguments=call.arguments, output=output
            )
            saved = record.item(self._thread_id, self._clock)
            events.append(ThreadItemDoneEvent(item=saved))
        return events


def _field(raw: Any, name: str) -> Any:
    """A field of a raw Responses item, which the SDK gives as a model or as a dict."""
    if isinstance(raw, dict):
        return raw.get(name)
    return getattr(raw, name, None)
