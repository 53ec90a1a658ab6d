"""An Agents SDK run streamed as chatserver events, against the same fake model service."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from agents import (
    Agent,
    OpenAIChatCompletionsModel,
    RunConfig,
    Runner,
    ToolCallItem,
    function_tool,
)
from agents.stream_events import RunItemStreamEvent
from openai import AsyncOpenAI

from chatserver.clock import ManualClock
from chatserver.config import Settings
from chatserver.responders.agents import _RunDisplay, agent_input, stream_agent_run
from chatserver.responders.prompt import HistoryWindow
from chatserver.server import ChatServer
from chatserver.sessions import RequestContext
from chatserver.store import Store
from chatserver.types import (
    AssistantMessageItem,
    ChatKitEvent,
    CustomTask,
    HiddenContextItem,
    ThreadMetadata,
    UserMessageItem,
    WorkflowItem,
    dump_json,
)
from tests.http.http_harness import eventually
from tests.responders.conftest import collect, payloads, stored_items, user_input
from tests.responders.fake_openai import Fail, FakeOpenAI, Hang, Text, ToolCalls, tool_outputs
from tests.responders.test_openai_responder import answer_events, deltas, without_ids


@function_tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class AgentServer(ChatServer):
    def __init__(self, store: Store, settings: Settings, *, agent: Agent[Any], **kw: Any) -> None:
        super().__init__(store, settings, **kw)
        self.agent = agent

    async def respond(
        self, thread: ThreadMetadata, input: UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[ChatKitEvent]:
        items = await agent_input(input, context, HistoryWindow.of(self.settings))
        result = Runner.run_streamed(
            self.agent, items, context=context, run_config=RunConfig(tracing_disabled=True)
        )
        async for event in stream_agent_run(thread, result, context):
            yield event


@pytest.fixture
async def server(
    store: Store, database_url: str, fake_openai: FakeOpenAI
) -> AsyncIterator[AgentServer]:
    client = AsyncOpenAI(base_url=fake_openai.base_url, api_key="sk-test", max_retries=0)
    model = OpenAIChatCompletionsModel(model="fake-model", openai_client=client)
    billing = Agent(name="Billing", instructions="You handle billing.", model=model)
    agent = Agent(
        name="Front desk",
        instructions="You help.",
        model=model,
        tools=[add],
        handoffs=[billing],
    )
    settings = Settings(database_url=database_url, commit_window_ms=2)
    server = AgentServer(store, settings, agent=agent, clock=ManualClock())
    await server.start()
    try:
        yield server
    finally:
        await server.close(grace_seconds=1)
        await client.close()


async def test_run_streams_text_tool_calls_and_handoffs_as_chatkit_items(
    server: AgentServer, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(
        ToolCalls([("add", {"a": 1, "b": 2})], text="Adding."),
        ToolCalls([("transfer_to_billing", {})]),
        Text(["Billing ", "here: 3."]),
    )
    context = await server.sessions.context("alice", None)

    handle = await server.create_thread_and_start_turn(context, user_input("1+2, then billing"))
    events = await collect(server, handle)

    assert events[-1].type == "run.completed"
    answer = [without_ids(e) for e in answer_events(events)]
    assert deltas(answer) == ["Adding.", "Billing ", "here: 3."]
    # Whether hidden items reach clients is the server's rule (saved, never streamed); here
    # they are checked where they are kept, with the thread's items.
    shown = [
        (e["type"], (e.get("item") or {}).get("type") or e["update"]["type"])
        for e in answer
        if "text_delta" not in json.dumps(e) and "hidden_context_item" not in json.dumps(e)
    ]
    assert shown == [
        ("thread.item.added", "assistant_message"),
        ("thread.item.updated", "assistant_message.content_part.added"),
        ("thread.item.updated", "assistant_message.content_part.done"),
        ("thread.item.done", "assistant_message"),
        ("thread.item.added", "workflow"),
        ("thread.item.updated", "workflow.task.updated"),
        ("thread.item.updated", "workflow.task.added"),
        ("thread.item.done", "workflow"),
        ("thread.item.added", "assistant_message"),
        ("thread.item.updated", "assistant_message.content_part.added"),
        ("thread.item.updated", "assistant_message.content_part.done"),
        ("thread.item.done", "assistant_message"),
    ]
    items = await stored_items(server, handle.thread_id)
    assert [(kind, status) for kind, status, _ in items] == [
        ("user_message", "completed"),
        ("assistant_message", "completed"),
        ("workflow", "completed"),
        ("hidden_context_item", "completed"),
        ("assistant_message", "completed"),
    ]
    first, workflow, record, last = (item for _, _, item in items[1:])
    assert isinstance(first, AssistantMessageItem) and first.content[0].text == "Adding."
    assert isinstance(workflow, WorkflowItem)
    assert workflow.workflow.tasks == [
        CustomTask(title="Add", content="3", status_indicator="complete"),
        CustomTask(title="Handed off to Billing", status_indicator="complete"),
    ]
    assert isinstance(record, HiddenContextItem)
    assert record.content == {
        "type": "chatserver.tool_call",
        "call_id": "call_0_add",
        "name": "add",
        "arguments": '{"a": 1, "b": 2}',
        "output": "3",
    }
    assert isinstance(last, AssistantMessageItem) and last.content[0].text == "Billing here: 3."

    # The next turn's input holds the call and its result, from the saved record.
    fake_openai.script(Text(["Still 3."]))
    later = await server.start_turn(context, handle.thread_id, user_input("Sure?"))
    await collect(server, later)
    messages = fake_openai.messages(-1)
    assert messages[0] == {"role": "system", "content": "You help."}
    assert tool_outputs(messages) == {"call_0_add": "3"}
    assert [m["content"] for m in messages if m["role"] == "user"] == ["1+2, then billing", "Sure?"]
    assert [m.get("content") for m in messages if m["role"] == "assistant"][-1] == (
        "Billing here: 3."
    )


async def test_stop_cancels_the_run_and_closes_the_upstream_stream(
    server: AgentServer, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Hang(["Once", " upon"]))
    context = await server.sessions.context("alice", None)
    handle = await server.create_thread_and_start_turn(context, user_input("A story"))
    seen: list[Any] = []

    async def follow() -> None:
        async for event in server.stream_run(handle):
            seen.append(event)

    follower = asyncio.create_task(follow())
    await eventually(lambda: len(deltas(payloads(seen))) == 2)

    assert await server.stop("alice", handle.thread_id)
    await asyncio.wait_for(follower, 10)

    await asyncio.wait_for(fake_openai.closed_early.wait(), 10)
    assert seen[-1].type == "run.cancelled"
    items = await stored_items(server, handle.thread_id)
    assert [(kind, status) for kind, status, _ in items] == [
        ("user_message", "completed"),
        ("assistant_message", "incomplete"),
    ]
    assert items[1][2].content[0].text == "Once upon"


async def test_model_service_failure_in_a_run_gets_the_same_stable_code(
    server: AgentServer, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Fail(401, "invalid_api_key"))
    context = await server.sessions.context("alice", None)

    handle = await server.create_thread_and_start_turn(context, user_input("Hi"))
    events = await asyncio.wait_for(collect(server, handle), 20)

    error, end = payloads(events)[-2:]
    assert error == {
        "type": "error",
        "code": "custom",
        "message": "The model service refused the configured credentials.",
        "allow_retry": False,
        "error_code": "model_auth_failed",
    }
    assert end == {"type": "run.failed", "run_id": handle.run_id, "error_code": "model_auth_failed"}


async def test_closing_the_events_between_two_of_them_cancels_the_run_at_once(
    server: AgentServer, fake_openai: FakeOpenAI
) -> None:
    # What the server does when a turn is stopped while it writes an event: it closes
    # respond()'s generator, suspended at a yield rather than in a read from the model.
    fake_openai.script(Hang(["Once", " upon"]))
    context = await server.sessions.context("alice", None)
    thread = ThreadMetadata(id="thr_1", created_at=context.clock.now())
    result = Runner.run_streamed(
        server.agent, "A story", context=context, run_config=RunConfig(tracing_disabled=True)
    )
    events = stream_agent_run(thread, result, context)
    said: list[dict[str, Any]] = []
    async for event in events:
        said.append(event.model_dump())
        if len(deltas(said)) == 2:
            break
    assert not fake_openai.closed_early.is_set()

    await events.aclose()  # type: ignore[attr-defined]

    await asyncio.wait_for(fake_openai.closed_early.wait(), 10)
    assert result.is_complete


def test_a_call_the_service_ran_itself_is_complete_once_the_workflow_ends() -> None:
    # Hosted tools (web search, ...) have no output item; the fake service has none of them.
    run = _RunDisplay("thr_1", ManualClock())
    call = ToolCallItem(agent=Agent(name="a"), raw_item={"type": "web_search_call", "id": "ws_1"})

    shown = run.item(RunItemStreamEvent(name="tool_called", item=call)) + run.finish()

    payloads = [without_ids(json.loads(dump_json(event))) for event in shown]
    loading = {"type": "custom", "title": "Web search call", "status_indicator": "loading"}
    complete = loading | {"status_indicator": "complete"}
    assert [p["type"] for p in payloads] == [
        "thread.item.added",
        "thread.item.updated",
        "thread.item.done",
    ]
    assert payloads[0]["item"]["workflow"]["tasks"] == [loading]
    update = {"type": "workflow.task.updated", "task_index": 0, "task": complete}
    assert payloads[1]["update"] == update
    assert payloads[2]["item"]["workflow"]["tasks"] == [complete]
