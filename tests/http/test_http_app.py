"""create_app's hooks and create_default_app, served for real."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from http_harness import RunningApp, SseReader, create_thread, request
from starlette.requests import Request

from chatserver.app import create_app, create_default_app
from chatserver.config import Settings
from chatserver.errors import Unauthorized
from chatserver.responders.echo import EchoChatServer
from chatserver.store import Store

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "echo_server.py"


async def test_default_app_migrates_its_sqlite_database_and_answers(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    running = await RunningApp.start(create_default_app(Settings(database_url=url)))
    try:
        async with running.client() as client:
            assert (await client.get("/readyz")).status_code == 200
            async with client.stream("POST", "/chatkit", json=create_thread("hi")) as response:
                events = await SseReader(response).rest()
    finally:
        await running.stop()

    assert events[-1].type == "run.completed"
    engine = sa.create_engine(url.replace("+aiosqlite", ""))
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    engine.dispose()


async def test_authenticate_hook_decides_who_is_asking(database_url: str) -> None:
    async def by_header(request: Request) -> str:
        user = request.headers.get("x-user")
        if user is None:
            raise Unauthorized("say who you are")
        return user

    store = Store(database_url)
    await store.create_schema()
    example = _load_example()
    server = example.ShoutingServer(store, Settings(database_url=database_url))
    running = await RunningApp.start(create_app(server, authenticate=by_header))
    try:
        async with running.client() as anonymous:
            refused = await anonymous.post("/chatkit", json=request("threads.list"))
            async with running.client(headers={"X-User": "carol"}) as carol:
                async with carol.stream("POST", "/chatkit", json=create_thread("hi you")) as r:
                    events = await SseReader(r).rest()
                mine = await carol.post("/chatkit", json=request("threads.list"))
            async with running.client(headers={"X-User": "dave"}) as dave:
                theirs = await dave.post("/chatkit", json=request("threads.list"))
    finally:
        await running.stop()

    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "unauthorized")
    done = [e.payload["item"] for e in events if e.type == "thread.item.done"]
    assert done[-1]["content"][0]["text"] == "HI YOU "
    assert len(mine.json()["data"]) == 1
    assert theirs.json()["data"] == []


def _load_example() -> Any:
    spec = importlib.util.spec_from_file_location("echo_server_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_an_app_on_an_unmigrated_database_refuses_to_start_saying_to_migrate(
    empty_database_url: str,
) -> None:
    store = Store(empty_database_url)
    app = create_app(EchoChatServer(store, Settings(database_url=empty_database_url)))

    with pytest.raises(RuntimeError) as refused:
        async with app.router.lifespan_context(app):
            pass

    assert str(refused.value) == (
        "the database has no chatserver schema yet: run `chatserver migrate` first"
    )
