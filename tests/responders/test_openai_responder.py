"""The OpenAI responder: streamed answers, the prompt and its window, tools, errors, stop."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import chatkit.types as ck
import pytest
from pydantic import TypeAdapter

from chatserver.responders.openai import OpenAIChatServer
from chatserver.responders.tools import tool
from chatserver.store import StoredEvent
from chatserver.types import (
    AssistantMessageContent,
    AssistantMessageItem,
    CustomTask,
    DurationSummary,
    HiddenContextItem,
    ThreadItemDoneEvent,
    ThreadMetadata,
    UserMessageItem,
    UserMessageTextContent,
    Workflow,
    WorkflowItem,
    dump_json,
)
from tests.http.http_harness import eventually
from tests.responders.conftest import (
    TOOLS,
    StartServer,
    ToolServer,
    collect,
    new_context,
    payloads,
    stored_items,
    user_input,
)
from tests.responders.fake_openai import (
    ErrorInStream,
    Fail,
    FakeOpenAI,
    Hang,
    Stall,
    Text,
    ToolCalls,
    tool_outputs,
)

chatkit_event = TypeAdapter[Any](ck.ThreadStreamEvent)

SYSTEM = {"role": "system", "content": "You are a test assistant."}
FULL_TEXT = {"annotations": [], "text": "Hello there, Alice.", "type": "output_text"}


def chatkit_payloads(events: list[StoredEvent]) -> list[dict[str, Any]]:
    """The ChatKit events of a run (not our run.* ones), each valid for ChatKit's types."""
    found = []
    for event in events:
        if event.type.startswith("run."):
            continue
        chatkit_event.validate_json(event.data)
        found.append(json.loads(event.data))
    return found


def answer_events(events: list[StoredEvent]) -> list[dict[str, Any]]:
    """What respond() said: the events between stream_options and the run's end."""
    types = [e.type for e in events]
    start = types.index("stream_options") + 1
    return [p for p in payloads(events)[start:] if not p["type"].startswith(("run.", "thread.up"))]


def deltas(events: list[dict[str, Any]]) -> list[str]:
    return [
        e["update"]["delta"]
        for e in events
        if e["type"] == "thread.item.updated"
        and e["update"]["type"] == "assistant_message.content_part.text_delta"
    ]


def without_ids(event: dict[str, Any]) -> dict[str, Any]:
    """An event with the ids and times it was given left out, to compare its substance."""
    event = json.loads(json.dumps(event))
    event.pop("item_id", None)
    for key in ("id", "thread_id", "created_at"):
        event.get("item", {}).pop(key, None)
    return event


async def test_answer_streams_as_chatkit_events_and_is_saved(
    server: OpenAIChatServer, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Text(["Hello", " there", ", Alice."]))
    context = await new_context(server)

    handle = await server.create_thread_and_start_turn(context, user_input("Say hello to Alice"))
    events = await collect(server, handle)

    assert [e.type for e in events] == [
        "run.started",
        "thread.created",
        "thread.item.done",
        "stream_options",
        "thread.item.added",
        "thread.item.updated",
        "thread.item.updated",
        "thread.item.updated",
        "thread.item.updated",
        "thread.item.updated",
        "thread.item.done",
        "thread.updated",
        "run.completed",
    ]
    chatkit_payloads(events)
    answer = answer_events(events)
    assert deltas(answer) == ["Hello", " there", ", Alice."]
    assert [without_ids(e) for e in answer] == [
        {
            "type": "thread.item.added",
            "item": {"type": "assistant_message", "content": [], "status": "in_progress"},
        },
        {
            "type": "thread.item.updated",
            "update": {
                "type": "assistant_message.content_part.added",
                "content_index": 0,
                "content": {"annotations": [], "text": "", "type": "output_text"},
            },
        },
        *[
            {
                "type": "thread.item.updated",
                "update": {
                    "type": "assistant_message.content_part.text_delta",
                    "content_index": 0,
                    "delta": d,
                },
            }
            for d in ["Hello", " there", ", Alice."]
        ],
        {
            "type": "thread.item.updated",
            "update": {
                "type": "assistant_message.content_part.done",
                "content_index": 0,
                "content": FULL_TEXT,
            },
        },
        {
            "type": "thread.item.done",
            "item": {
                "type": "assistant_message",
                "content": [FULL_TEXT],
                "status": "completed",
            },
        },
    ]
    items = await stored_items(server, handle.thread_id)
    assert [(kind, status) for kind, status, _ in items] == [
        ("user_message", "completed"),
        ("assistant_message", "completed"),
    ]
    assert items[1][2].content == [AssistantMessageContent(text="Hello there, Alice.")]
    thread = await server.store.get_thread(handle.thread_id)
    assert thread is not None and thread.title == "Say hello to Alice"
    [request] = fake_openai.requests
    assert request["model"] == "fake-model"
    assert request["stream"] is True
    assert request["messages"] == [SYSTEM, {"role": "user", "content": "Say hello to Alice"}]
    assert fake_openai.headers[0]["authorization"] == "Bearer sk-test"
    assert fake_openai.completed_streams == 1


async def test_prompt_holds_the_whole_conversation_with_the_new_message_once(
    server: OpenAIChatServer, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Text(["Paris."]), Text(["About 2.1 million."]))
    context = await new_context(server)
    first = await server.create_thread_and_start_turn(
        context, user_input("What is the capital of France?")
    )
    await collect(server, first)

    second = await server.start_turn(context, first.thread_id, user_input("How many live there?"))
    events = await collect(server, second)

    assert events[-1].type == "run.completed"
    assert fake_openai.messages(1) == [
        SYSTEM,
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "How many live there?"},
    ]


async def test_history_window_keeps_the_newest_messages_within_the_message_bound(
    start_server: StartServer, fake_openai: FakeOpenAI
) -> None:
    server = await start_server(openai_history_max_messages=3)
    context = await new_context(server)
    thread_id = None
    for n in range(1, 5):
        fake_openai.script(Text([f"answer {n}"]))
        if thread_id is None:
            handle = await server.create_thread_and_start_turn(context, user_input(f"question {n}"))
            thread_id = handle.thread_id
        else:
            handle = await server.start_turn(context, thread_id, user_input(f"question {n}"))
        await collect(server, handle)

    assert fake_openai.messages(-1) == [
        SYSTEM,
        {"role": "user", "content": "question 3"},
        {"role": "assistant", "content": "answer 3"},
        {"role": "user", "content": "question 4"},
    ]
    assert fake_openai.messages(1) == [
        SYSTEM,
        {"role": "user", "content": "question 1"},
        {"role": "assistant", "content": "answer 1"},
        {"role": "user", "content": "question 2"},
    ]


async def test_history_window_keeps_the_newest_messages_within_the_token_bound(
    start_server: StartServer, fake_openai: FakeOpenAI
) -> None:
    # 400 characters: ~100 tokens, ~104 with the message's framing.
    long = "x" * 396
    server = await start_server(openai_history_max_tokens=200)
    context = await new_context(server)
    fake_openai.script(Text([f"a1{long}"]), Text([f"a2{long}"]), Text(["short"]))
    first = await server.create_thread_and_start_turn(context, user_input(f"q1{long}"))
    await collect(server, first)
    await collect(server, await server.start_turn(context, first.thread_id, user_input("q2")))
    # Larger than the whole budget: still sent, alone.
    huge = "y" * 2000
    await collect(server, await server.start_turn(context, first.thread_id, user_input(huge)))

    assert fake_openai.messages(1) == [
        SYSTEM,
        {"role": "assistant", "content": f"a1{long}"},
        {"role": "user", "content": "q2"},
    ]
    assert fake_openai.messages(2) == [SYSTEM, {"role": "user", "content": huge}]


async def test_tool_round_trip_is_shown_as_a_workflow_and_its_result_reaches_the_model(
    server: OpenAIChatServer, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(
        ToolCalls([("add", {"a": 2, "b": 3})], text="Let me add that."), Text(["It is ", "5."])
    )
    context = await new_context(server)

    handle = await server.create_thread_and_start_turn(context, user_input("What is 2 + 3?"))
    events = await collect(server, handle)

    assert events[-1].type == "run.completed"
    chatkit_payloads(events)
    first, second = fake_openai.requests
    assert [t["function"]["name"] for t in first["tools"]] == ["add", "whoami", "refuse", "explode"]
    assert first["tools"][0] == {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers.",
            "parameters": {
                "additionalProperties": False,
                "properties": {
                    "a": {"title": "A", "type": "integer"},
                    "b": {"title": "B", "type": "integer"},
                },
                "required": ["a", "b"],
                "type": "object",
            },
        },
    }
    call = {
        "id": "call_0_add",
        "type": "function",
        "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
    }
    assert second["messages"] == [
        SYSTEM,
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "Let me add that."},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_0_add", "content": "5"},
    ]
    answer = [without_ids(e) for e in answer_events(events)]
    workflow_events = [e for e in answer if "workflow" in json.dumps(e)]
    loading = {"type": "custom", "title": "Add", "status_indicator": "loading"}
    done = {"type": "custom", "title": "Add", "content": "5", "status_indicator": "complete"}
    assert workflow_events == [
        {
            "type": "thread.item.added",
            "item": {
                "type": "workflow",
                "workflow": {"type": "custom", "tasks": [loading], "expanded": False},
            },
        },
        {
            "type": "thread.item.updated",
            "update": {"type": "workflow.task.updated", "task_index": 0, "task": done},
        },
        {
            "type": "thread.item.done",
            "item": {
                "type": "workflow",
                "workflow": {
                    "type": "custom",
                    "tasks": [done],
                    "summary": {"duration": 0},
                    "expanded": False,
                },
            },
        },
    ]
    items = await stored_items(server, handle.thread_id)
    assert [(kind, status) for kind, status, _ in items] == [
        ("user_message", "completed"),
        ("assistant_message", "completed"),
        ("workflow", "completed"),
        ("hidden_context_item", "completed"),
        ("assistant_message", "completed"),
    ]
    workflow = items[2][2]
    assert isinstance(workflow, WorkflowItem)
    assert workflow.workflow == Workflow(
        type="custom",
        tasks=[CustomTask(title="Add", content="5", status_indicator="complete")],
        summary=DurationSummary(duration=0),
    )
    hidden = items[3][2]
    assert isinstance(hidden, HiddenContextItem)
    assert hidden.content == {
        "type": "chatserver.tool_call",
        "call_id": "call_0_add",
        "name": "add",
        "arguments": '{"a": 2, "b": 3}',
        "output": "5",
    }
    final = items[4][2]
    assert isinstance(final, AssistantMessageItem)
    assert final.content[0].text == "It is 5."

    # A later turn still has the call and its result in the prompt.
    fake_openai.script(Text(["10."]))
    later = await server.start_turn(context, handle.thread_id, user_input("And doubled?"))
    await collect(server, later)
    assert fake_openai.messages(-1) == [
        *second["messages"],
        {"role": "assistant", "content": "It is 5."},
        {"role": "user", "content": "And doubled?"},
    ]


async def test_tools_get_the_request_context_and_parallel_calls_run_in_order(
    server: OpenAIChatServer, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(
        ToolCalls([("whoami", {}), ("add", {"a": 1, "b": 1})]), Text(["You are alice; 2."])
    )
    context = await new_context(server, "alice")

    handle = await server.create_thread_and_start_turn(context, user_input("Who am I? 1+1?"))
    events = await collect(server, handle)

    assert events[-1].type == "run.completed"
    assert tool_outputs(fake_openai.messages(1)) == {
        "call_0_whoami": '{"user_id": "alice"}',
        "call_1_add": "2",
    }
    tasks = [
        e["update"]["task"] if "update" in e else e["item"]["workflow"]["tasks"][0]
        for e in answer_events(events)
        if "workflow" in json.dumps(e) and e["type"] != "thread.item.done"
    ]
    assert [(t["title"], t["status_indicator"]) for t in tasks] == [
        ("Looking up your account", "loading"),
        ("Looking up your account", "complete"),
        ("Add", "loading"),
        ("Add", "complete"),
    ]


async def test_tool_failures_become_results_the_model_reads_and_the_turn_goes_on(
    server: OpenAIChatServer, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(
        ToolCalls(
            [
                ("add", {"a": "two", "b": 3}),
                ("add", "{not json"),
                ("refuse", {"reason": "no budget"}),
                ("explode", {}),
                ("teleport", {"to": "Mars"}),
            ]
        ),
        Text(["Sorry, none of that worked."]),
    )
    context = await new_context(server)

    handle = await server.create_thread_and_start_turn(context, user_input("Do things"))
    events = await collect(server, handle)

    assert events[-1].type == "run.completed"
    outputs = tool_outputs(fake_openai.messages(1))
    assert outputs["call_0_add"] == (
        "Invalid arguments for add: a: Input should be a valid integer, "
        "unable to parse string as an integer"
    )
    assert outputs["call_1_add"].startswith("Invalid arguments for add: arguments: Invalid JSON")
    assert outputs["call_2_refuse"] == "refused: no budget"
    assert outputs["call_3_explode"] == "The tool explode failed: RuntimeError: kaboom"
    assert outputs["call_4_teleport"] == "There is no tool named teleport."


async def test_after_the_last_tool_round_the_model_must_answer_without_tools(
    start_server: StartServer, fake_openai: FakeOpenAI
) -> None:
    server = await start_server(openai_max_tool_rounds=2)
    fake_openai.script(
        ToolCalls([("add", {"a": 1, "b": 1})]),
        ToolCalls([("add", {"a": 2, "b": 2})]),
        Text(["Done adding."]),
    )
    context = await new_context(server)

    handle = await server.create_thread_and_start_turn(context, user_input("Keep adding"))
    events = await collect(server, handle)

    assert events[-1].type == "run.completed"
    assert ["tools" in request for request in fake_openai.requests] == [True, True, False]
    items = await stored_items(server, handle.thread_id)
    assert [kind for kind, _, _ in items] == [
        "user_message",
        "workflow",
        "hidden_context_item",
        "hidden_context_item",
        "assistant_message",
    ]
    workflow = items[1][2]
    assert isinstance(workflow, WorkflowItem)
    assert [t.content for t in workflow.workflow.tasks] == ["2", "4"]


# --- errors -------------------------------------------------------------------------------

ERROR_CASES = {
    "unauthorized": (Fail(401, "invalid_api_key"), "model_auth_failed", False),
    "forbidden": (Fail(403), "model_auth_failed", False),
    "rate_limited": (Fail(429, "rate_limit_exceeded"), "model_rate_limited", True),
    "unknown_model_404": (Fail(404, "model_not_found"), "model_not_found", False),
    "unknown_model_400": (Fail(400, None, param="model"), "model_not_found", False),
    "bad_request": (Fail(400, "context_length_exceeded"), "model_request_rejected", False),
    "server_error": (Fail(500), "model_unavailable", True),
    "error_in_stream": (ErrorInStream(["Partial "]), "model_unavailable", True),
}
MESSAGES = {
    "model_auth_failed": "The model service refused the configured credentials.",
    "model_rate_limited": "The model service is rate limiting requests; try again shortly.",
    "model_not_found": "The model fake-model is not available.",
    "model_request_rejected": "The model service rejected the request.",
    "model_unavailable": "The model service failed to answer.",
    "model_timeout": "The model service did not answer in time.",
}


def error_and_end(events: list[StoredEvent]) -> list[dict[str, Any]]:
    tail = payloads(events)[-2:]
    tail[1].pop("run_id")
    return tail


@pytest.mark.parametrize(("reply", "code", "retry"), ERROR_CASES.values(), ids=ERROR_CASES)
async def test_model_service_failure_ends_the_turn_with_a_stable_error_code(
    server: OpenAIChatServer, fake_openai: FakeOpenAI, reply: Fail, code: str, retry: bool
) -> None:
    fake_openai.script(reply)
    context = await new_context(server)

    handle = await server.create_thread_and_start_turn(context, user_input("Hi"))
    events = await asyncio.wait_for(collect(server, handle), 20)

    message = MESSAGES[code]
    if isinstance(reply, ErrorInStream):
        message = "The model service failed while answering."
    assert error_and_end(events) == [
        {
            "type": "error",
            "code": "custom",
            "message": message,
            "allow_retry": retry,
            "error_code": code,
        },
        {"type": "run.failed", "error_code": code},
    ]
    chatkit_payloads(events)
    items = await stored_items(server, handle.thread_id)
    if isinstance(reply, ErrorInStream):
        # What was said before the failure is kept, marked incomplete.
        assert [(kind, status) for kind, status, _ in items] == [
            ("user_message", "completed"),
            ("assistant_message", "incomplete"),
        ]
        assert items[1][2].content[0].text == "Partial "
    else:
        assert [kind for kind, _, _ in items] == ["user_message"]
    run = await server.store.get_run(handle.run_id)
    assert run is not None and run.status == "failed"


async def test_retryable_failures_are_retried_by_the_client_then_succeed_or_fail(
    start_server: StartServer, fake_openai: FakeOpenAI
) -> None:
    server = await start_server(openai_max_retries=2)
    fast = {"retry-after-ms": "1"}
    fake_openai.script(
        Fail(429, headers=fast), Fail(503, headers=fast), Text(["Made it."]),
        Fail(429, headers=fast), Fail(429, headers=fast), Fail(429, headers=fast),
    )  # fmt: skip
    context = await new_context(server)

    ok = await server.create_thread_and_start_turn(context, user_input("Try hard"))
    ok_events = await collect(server, ok)
    failed = await server.start_turn(context, ok.thread_id, user_input("Again"))
    failed_events = await collect(server, failed)

    assert ok_events[-1].type == "run.completed"
    assert deltas(payloads(ok_events)) == ["Made it."]
    assert failed_events[-1].type == "run.failed"
    assert json.loads(failed_events[-1].data)["error_code"] == "model_rate_limited"
    # 3 for the first turn (2 retries, then success), 3 for the second (all refused).
    assert len(fake_openai.requests) == 6


async def test_model_that_stops_sending_mid_answer_times_out_and_keeps_the_partial_text(
    start_server: StartServer, fake_openai: FakeOpenAI
) -> None:
    server = await start_server(openai_timeout_seconds=0.5)
    fake_openai.script(Stall(["Thinking", " hard"]))
    context = await new_context(server)

    handle = await server.create_thread_and_start_turn(context, user_input("Hi"))
    events = await asyncio.wait_for(collect(server, handle), 20)

    assert error_and_end(events) == [
        {
            "type": "error",
            "code": "custom",
            "message": MESSAGES["model_timeout"],
            "allow_retry": True,
            "error_code": "model_timeout",
        },
        {"type": "run.failed", "error_code": "model_timeout"},
    ]
    items = await stored_items(server, handle.thread_id)
    assert [(kind, status) for kind, status, _ in items] == [
        ("user_message", "completed"),
        ("assistant_message", "incomplete"),
    ]
    assert items[1][2].content[0].text == "Thinking hard"


async def test_unreachable_model_service_fails_the_turn_as_unavailable(
    start_server: StartServer, fake_openai: FakeOpenAI
) -> None:
    # A port nobody listens on: the fake's, once it is stopped.
    url = fake_openai.base_url
    await fake_openai.stop()
    server = await start_server(openai_base_url=url)
    context = await new_context(server)

    handle = await server.create_thread_and_start_turn(context, user_input("Hi"))
    events = await asyncio.wait_for(collect(server, handle), 20)

    assert error_and_end(events) == [
        {
            "type": "error",
            "code": "custom",
            "message": "The model service could not be reached.",
            "allow_retry": True,
            "error_code": "model_unavailable",
        },
        {"type": "run.failed", "error_code": "model_unavailable"},
    ]


# --- stop ---------------------------------------------------------------------------------


async def test_stop_mid_answer_closes_the_upstream_stream_and_keeps_the_partial_answer(
    server: OpenAIChatServer, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Hang(["Once", " upon", " a time"]))
    context = await new_context(server)
    handle = await server.create_thread_and_start_turn(context, user_input("Tell me a story"))
    seen: list[StoredEvent] = []

    async def follow() -> None:
        async for event in server.stream_run(handle):
            seen.append(event)

    follower = asyncio.create_task(follow())
    await eventually(lambda: len(deltas(payloads(seen))) == 3)
    assert not fake_openai.closed_early.is_set()

    assert await server.stop("alice", handle.thread_id)
    await asyncio.wait_for(follower, 10)

    await asyncio.wait_for(fake_openai.closed_early.wait(), 10)
    assert fake_openai.completed_streams == 0
    tail = payloads(seen)[-2:]
    assert tail[0]["type"] == "thread.item.done"
    assert tail[0]["item"]["status"] == "incomplete"
    assert tail[0]["item"]["content"][0]["text"] == "Once upon a time"
    assert tail[1] == {"type": "run.cancelled", "run_id": handle.run_id, "reason": "stopped"}
    items = await stored_items(server, handle.thread_id)
    assert [(kind, status) for kind, status, _ in items] == [
        ("user_message", "completed"),
        ("assistant_message", "incomplete"),
    ]


async def test_retry_after_item_answers_again_from_that_message(
    server: OpenAIChatServer, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Text(["First try."]), Text(["Second try."]))
    context = await new_context(server)
    first = await server.create_thread_and_start_turn(context, user_input("Hi"))
    await collect(server, first)
    [(_, _, user_item), _] = await stored_items(server, first.thread_id)
    assert isinstance(user_item, UserMessageItem)

    retry = await server.start_turn(
        context, first.thread_id, None, retry_after_item_id=user_item.id
    )
    await collect(server, retry)

    assert fake_openai.messages(1) == [SYSTEM, {"role": "user", "content": "Hi"}]
    items = await stored_items(server, first.thread_id)
    assert [i.content[0].text for kind, _, i in items if kind == "assistant_message"] == [
        "Second try."
    ]


def test_done_event_of_a_hidden_tool_record_is_a_valid_chatkit_event() -> None:
    item = HiddenContextItem(
        id="itm_1",
        thread_id="thr_1",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        content={"type": "chatserver.tool_call", "call_id": "c", "name": "n"},
    )
    theirs = chatkit_event.validate_json(dump_json(ThreadItemDoneEvent(item=item)))
    assert theirs.item.content == item.content


async def test_closing_the_answer_between_two_events_closes_the_upstream_stream_at_once(
    server: OpenAIChatServer, fake_openai: FakeOpenAI
) -> None:
    # What the server does when a turn is stopped while it writes an event: it closes
    # respond()'s generator, suspended at a yield rather than in a read from the model.
    fake_openai.script(Hang(["Once", " upon"]))
    context = await new_context(server)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    thread = ThreadMetadata(id="thr_1", created_at=now)
    message = UserMessageItem(
        id="itm_1", thread_id="thr_1", created_at=now, content=[UserMessageTextContent(text="Hi")]
    )
    answer = server.responder.respond(thread, message, context)
    said: list[dict[str, Any]] = []
    async for event in answer:
        said.append(event.model_dump())
        if len(deltas(said)) == 2:
            break
    assert not fake_openai.closed_early.is_set()

    await answer.aclose()

    # Left to garbage collection, the connection would stay open past this bound.
    await asyncio.wait_for(fake_openai.closed_early.wait(), 10)
    assert fake_openai.completed_streams == 0


async def test_prompt_has_the_new_message_once_whether_or_not_history_holds_it_yet(
    server: OpenAIChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = await new_context(server)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    earlier = AssistantMessageItem(
        id="itm_1", thread_id="thr_1", created_at=now, content=[AssistantMessageContent(text="Hi!")]
    )
    message = UserMessageItem(
        id="itm_2", thread_id="thr_1", created_at=now, content=[UserMessageTextContent(text="Yo")]
    )
    expected = [SYSTEM, {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "Yo"}]

    for history in ([earlier, message], [earlier]):

        async def committed(limit: int | None = None, items: list[Any] = history) -> list[Any]:
            return list(items)

        monkeypatch.setattr(context, "history", committed)
        assert await server.responder.prompt(message, context) == expected


approval_requested = asyncio.Event()


@tool
async def wait_for_approval() -> str:
    """Waits for a human."""
    approval_requested.set()
    await asyncio.Event().wait()
    return "approved"


class BlockingToolServer(ToolServer):
    tools = (*TOOLS, wait_for_approval)


async def test_stop_while_a_tool_runs_saves_the_workflow_as_far_as_it_got(
    start_server: StartServer, fake_openai: FakeOpenAI
) -> None:
    global approval_requested
    approval_requested = asyncio.Event()
    server = await start_server(BlockingToolServer)
    fake_openai.script(ToolCalls([("add", {"a": 1, "b": 2}), ("wait_for_approval", {})]))
    context = await new_context(server)
    handle = await server.create_thread_and_start_turn(context, user_input("Add, then wait"))
    await asyncio.wait_for(approval_requested.wait(), 10)

    assert await server.stop("alice", handle.thread_id)
    events = await collect(server, handle)

    assert events[-1].type == "run.cancelled"
    items = await stored_items(server, handle.thread_id)
    assert [(kind, status) for kind, status, _ in items] == [
        ("user_message", "completed"),
        ("workflow", "incomplete"),
        ("hidden_context_item", "completed"),
    ]
    workflow = items[1][2]
    assert isinstance(workflow, WorkflowItem)
    assert workflow.workflow.tasks == [
        CustomTask(title="Add", content="3", status_indicator="complete"),
        CustomTask(title="Wait for approval", status_indicator="loading"),
    ]
    # Only the finished call is kept for the model: a call without its result is never sent.
    fake_openai.script(Text(["Stopped."]))
    await collect(server, await server.start_turn(context, handle.thread_id, user_input("Ok")))
    assert tool_outputs(fake_openai.messages(-1)) == {"call_0_add": "3"}
