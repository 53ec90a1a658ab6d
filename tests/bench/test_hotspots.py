"""The profile summary: each py-spy sample lands in the area and task it belongs to."""

from __future__ import annotations

from bench.hotspots import (
    DRIVER,
    GC,
    PYDANTIC,
    SOCKET,
    SQLALCHEMY,
    analyze,
    render,
)

LOOP = (
    "thread (1): MainThread;<module> (bench/serve.py:68);Runner.run (asyncio/runners.py:118);"
    "run_forever (loop.c:33192);task_step (_asynciomodule.c:2990);"
    "task_step_impl (_asynciomodule.c:2704)"
)
RAW = [
    # pydantic under the turn task, reached through our recorder
    f"{LOOP};ChatServer._run_turn (chatserver/server.py:371);TurnRecorder.emit "
    "(chatserver/turn.py:120);dump_json (chatserver/types.py:544);BaseModel.model_dump_json "
    "(pydantic/main.py:470);0x7f00 (pydantic_core/_pydantic_core.so) 6",
    # a thread hand-off: the C frames above aiosqlite belong to it
    f"{LOOP};Store.append_events (chatserver/store/sql.py:387);Connection._execute "
    "(aiosqlite/core.py:120);PyThread_release_lock (libpython3.11.so.1.0);sem_post "
    "(libc.so.6) 3",
    # a socket write under sse-starlette's task
    f"{LOOP};TaskHandle._run_coro (anyio/_core/_tasks.py:327);EventSourceResponse."
    "_stream_response (sse_starlette/sse.py:394);write (libc.so.6) 2",
    # the collector, wherever it runs
    f"{LOOP};OpenStream._pump (chatserver/http/sse.py:133);gc_collect_main "
    "(libpython3.11.so.1.0) 1",
    # SQLAlchemy's greenlet: no task above it
    "thread (1): MainThread;greenlet::UserGreenlet::g_switch (greenlet/TUserGreenlet.cpp:600);"
    "Connection.execute (sqlalchemy/engine/base.py:1494) 4",
    # another thread: counted apart
    "thread (2): Thread-3 (_connection_worker_thread);_connection_worker_thread "
    "(aiosqlite/core.py:63) 5",
]


def test_samples_are_summed_by_area_and_task_and_other_threads_apart() -> None:
    result = analyze(line + "\n" for line in RAW)

    assert result.samples == 16
    assert dict(result.by_area) == {PYDANTIC: 6, DRIVER: 3, SOCKET: 2, GC: 1, SQLALCHEMY: 4}
    tasks = {name.split(" [")[0]: n for name, n in result.by_task.items()}
    assert tasks == {
        "the turn task: setup, respond(), recording events": 6,
        "a store write transaction": 3,
        "anyio task group: a streaming response's body and sends": 2,
        "our SSE pump: subscription to the stream's queue": 1,
        "(a SQLAlchemy greenlet: sync Core code run for an await)": 4,
    }
    assert dict(result.other_threads) == {"Thread-3 (_connection_worker_thread)": 5}


def test_the_summary_converts_shares_into_microseconds_per_event() -> None:
    text = render(analyze(RAW), us_per_event=100.0, main_share=0.8)

    assert "80.0 us" in text
    assert f"37.5%    30.0 us/ev  {PYDANTIC}" in text
