"""Each example in examples/, run as its docstring says, against a real server."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from chatserver.clock import ManualClock
from chatserver.config import Settings
from tests.examples.conftest import EXAMPLES, Serve, load_example
from tests.http.http_harness import (
    TOKENS,
    add_message,
    chatkit_items_page,
    create_thread,
    request,
    stream,
    thread_id_of,
    validate_event,
)
from tests.responders.fake_openai import FakeOpenAI, Text, ToolCalls, tool_outputs

MakeSettings = Callable[..., Settings]


def answer_of(events: list[Any]) -> str:
    return "".join(
        e.payload["update"]["delta"]
        for e in events
        if e.type == "thread.item.updated" and e.payload["update"]["type"].endswith("text_delta")
    )


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[user]}"}


# --- echo_server.py and the two clients ---------------------------------------------------


async def test_echo_server_answers_a_chatkit_client(settings: MakeSettings, serve: Serve) -> None:
    echo = load_example("echo_server")
    running = await serve(echo.build_app(settings()))

    async with running.client(headers=bearer("alice")) as client:
        _, events = await stream(client, create_thread("hello there"))

    for event in events:
        validate_event(event)
    assert answer_of(events) == "HELLO THERE "
    assert events[-1].type == "run.completed"


async def test_resume_client_drops_mid_answer_and_prints_the_whole_answer_once(
    settings: MakeSettings, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    echo = load_example("echo_server")
    client = load_example("resume_client")
    running = await serve(echo.build_app(settings()))
    text = "one two three four five six seven eight"

    log = io.StringIO()
    answer = await client.ask(running.base_url, TOKENS["alice"], text, drop_after=2, log=log)

    assert answer.text == "ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT "
    # Every event of the turn exactly once, across the two connections.
    assert answer.seqs == list(range(1, len(answer.seqs) + 1))
    dropped, reconnected = log.getvalue().splitlines()
    cursor = int(dropped.removeprefix("(dropped the connection after event ").removesuffix(")"))
    assert reconnected == f"(reconnected with Last-Event-ID: {cursor})"
    assert 1 < cursor < answer.seqs[-1]

    # As a script: the answer, printed once.
    argv = ["--url", running.base_url, "--token", TOKENS["alice"], "--drop-after", "3", text]
    assert await asyncio.to_thread(client.main, argv) == 0
    assert capsys.readouterr().out == "ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT \n"


async def test_multi_tab_client_shows_one_answer_in_both_tabs(
    settings: MakeSettings, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    echo = load_example("echo_server")
    tabs = load_example("multi_tab_client")
    running = await serve(echo.build_app(settings()))

    argv = ["--url", running.base_url, "--token", TOKENS["bob"], "hello there", "and again"]
    assert await asyncio.to_thread(tabs.main, argv) == 0

    assert capsys.readouterr().out.splitlines() == [
        "[tab 1] user: and again",
        "[tab 1] assistant: AND AGAIN ",
        "[tab 2] user: and again",
        "[tab 2] assistant: AND AGAIN ",
    ]


# --- openai_agent.py ----------------------------------------------------------------------


async def test_openai_agent_calls_its_tool_on_the_model_service(
    settings: MakeSettings, serve: Serve, fake_openai: FakeOpenAI
) -> None:
    agent = load_example("openai_agent")
    clock = ManualClock(datetime(2026, 3, 1, 12, 30, tzinfo=UTC))
    model = settings(openai_base_url=fake_openai.base_url, openai_model="llama3.2")
    running = await serve(agent.build_app(model, clock=clock))
    fake_openai.script(
        ToolCalls(
            [
                ("current_time", {"timezone": "Asia/Tokyo"}),
                ("current_time", {"timezone": "Mars/Olympus_Mons"}),
            ]
        ),
        Text(["In Tokyo it is ", "21:30."]),
    )

    async with running.client(headers=bearer("alice")) as client:
        _, events = await stream(client, create_thread("What time is it in Tokyo?"))
        listed = await client.post(
            "/chatkit", json=request("items.list", thread_id=thread_id_of(events), order="asc")
        )

    # A ChatKit client sees the tool calls as a workflow; their saved records stay hidden.
    page = chatkit_items_page.validate_json(listed.text)
    assert [item.type for item in page.data] == ["user_message", "workflow", "assistant_message"]
    for event in events:
        validate_event(event)
    assert answer_of(events) == "In Tokyo it is 21:30."
    first, second = fake_openai.requests
    assert first["model"] == "llama3.2"
    assert [t["function"]["name"] for t in first["tools"]] == ["current_time"]
    assert first["messages"][0]["content"].startswith("You are a concise assistant.")
    assert tool_outputs(second["messages"]) == {
        "call_0_current_time": "2026-03-01T21:30+09:00",
        "call_1_current_time": "'Mars/Olympus_Mons' is not an IANA time zone name",
    }
    workflow = [e.payload for e in events if e.type == "thread.item.done"][-2]
    assert [t["title"] for t in workflow["item"]["workflow"]["tasks"]] == [
        "Current time",
        "Current time",
    ]


# --- task_agent.py ------------------------------------------------------------------------


def complete_the_created_task(request: dict[str, Any]) -> ToolCalls:
    """The model's part: find the task the earlier turn created (its tool result is in the
    prompt) and complete it."""
    [created] = [json.loads(output) for output in tool_outputs(request["messages"]).values()]
    return ToolCalls([("complete_task", {"task_id": created["id"]})])


async def test_task_agent_completes_a_task_in_a_session_resumed_two_hours_later(
    settings: MakeSettings, serve: Serve, fake_openai: FakeOpenAI
) -> None:
    example = load_example("task_agent")
    clock = ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    app = example.build_app(settings(openai_base_url=fake_openai.base_url), clock=clock)
    running = await serve(app)
    store = app.state.services.server.store
    try:
        async with running.client(headers=bearer("alice")) as alice:
            lenient = {"metadata": {"timeout_policy": "lenient"}}
            session = {"X-Session-Id": (await alice.post("/sessions", json=lenient)).json()["id"]}

            fake_openai.script(
                ToolCalls([("create_task", {"title": "Review Q4 budget"})]),
                Text(["Created the task ", "“Review Q4 budget”."]),
            )
            request = create_thread("Create a task: Review Q4 budget")
            _, first = await stream(alice, request, session)
            assert answer_of(first) == "Created the task “Review Q4 budget”."
            [task] = await example.user_tasks(store, "alice")
            assert (task.title, task.done) == ("Review Q4 budget", False)

            clock.advance(timedelta(hours=2).total_seconds())
            fake_openai.script(complete_the_created_task, Text(["Done: marked it complete."]))
            thread_id = thread_id_of(first)
            _, second = await stream(alice, add_message(thread_id, "Mark it complete"), session)
            resumed = (await alice.get(f"/sessions/{session['X-Session-Id']}")).json()

        assert answer_of(second) == "Done: marked it complete."
        # The same session, picked up again after two idle hours (lenient: 4 h), then used.
        assert (resumed["resume_count"], resumed["turn_count"]) == (1, 2)
        assert resumed["state"] == "active" and resumed["thread_id"] == thread_id
        expires_at = datetime.fromisoformat(resumed["expires_at"])
        assert expires_at == clock.now() + timedelta(hours=4)
        [task] = await example.user_tasks(store, "alice")
        assert (task.title, task.done, task.completed_at) == ("Review Q4 budget", True, clock.now())
        # The later prompt held the whole conversation, the earlier tool call included.
        later = fake_openai.messages(2)
        assert [m["role"] for m in later] == [
            "system",
            "user",
            "assistant",
            "tool",
            "assistant",
            "user",
        ]
        assert later[-1]["content"] == "Mark it complete"

        # Tasks are per user: bob sees none of alice's and cannot complete hers.
        fake_openai.script(
            ToolCalls([("list_tasks", {}), ("complete_task", {"task_id": task.id})]),
            Text(["You have no tasks."]),
        )
        async with running.client(headers=bearer("bob")) as bob:
            await stream(bob, create_thread("What are my tasks? Complete task 1."))
        assert tool_outputs(fake_openai.messages(-1)) == {
            "call_0_list_tasks": "[]",
            "call_1_complete_task": (
                f"The user has no task {task.id}; list_tasks shows their tasks."
            ),
        }
        [task] = await example.user_tasks(store, "alice")
        assert task.done
    finally:
        # The example's own table is not one the test database resets between tests.
        async with store.write() as conn:
            await conn.execute(sa.delete(example.tasks))


def test_every_example_is_run_by_a_test() -> None:
    tested = {"echo_server", "resume_client", "multi_tab_client", "openai_agent", "task_agent"}
    assert {path.stem for path in EXAMPLES.glob("*.py")} == tested


# --- README -------------------------------------------------------------------------------


def readme_python(section: str) -> str:
    readme = (EXAMPLES.parent / "README.md").read_text()
    start = readme.index("```python\n", readme.index(f"## {section}")) + len("```python\n")
    return readme[start : readme.index("```", start)]


async def test_readme_agent_runs_as_written(
    serve: Serve,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As written: its own SQLite file, settings from the environment.
    code = readme_python("Write your own agent")
    assert len(code.splitlines()) <= 16
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHATSERVER_OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("CHATSERVER_BEARER_TOKENS", f"{TOKENS['alice']}:alice")
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    running = await serve(namespace["app"])
    fake_openai.script(
        ToolCalls([("shipping_cost", {"country": "France", "kilograms": 3})]),
        Text(["Shipping costs 12.50 EUR."]),
    )

    async with running.client(headers=bearer("alice")) as client:
        _, events = await stream(client, create_thread("Shipping 3 kg to France?"))

    assert answer_of(events) == "Shipping costs 12.50 EUR."
    system = fake_openai.messages(0)[0]["content"]
    assert system == "You help customers of a small web shop. Be brief."
    assert tool_outputs(fake_openai.messages(1)) == {"call_0_shipping_cost": "12.50 EUR to France"}
