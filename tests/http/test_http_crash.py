"""A real crash: `kill -9` of a serving process mid-answer, then a new process on the same
database. Nothing already streamed is lost and the conversation is not stuck."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.http.http_harness import SseReader, create_thread, request, thread_id_of

pytestmark = pytest.mark.slow

LEASE_SECONDS = 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serving(database_url: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = _free_port()
    env = {
        **os.environ,
        "CHATSERVER_BEARER_TOKENS": "tok-alice:alice",
        "CHATSERVER_RUN_LEASE_SECONDS": str(LEASE_SECONDS),
        "CHATSERVER_LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "chatserver", "serve", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--database-url", database_url],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, "server exited during start-up"
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        yield process, base
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=15)


def _client(base: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base, headers={"Authorization": "Bearer tok-alice"}, timeout=30
    )


async def test_kill_9_mid_answer_keeps_what_was_streamed_and_frees_the_thread(
    database_url: str,
) -> None:
    words = [f"word{n}" for n in range(300)]  # ~15 s at the echo's pace: still running
    with serving(database_url) as (process, base):
        async with (
            _client(base) as client,
            client.stream("POST", "/chatkit", json=create_thread(" ".join(words))) as response,
        ):
            assert response.status_code == 200
            seen = []
            async for event in SseReader(response):
                seen.append(event)
                deltas = [e for e in seen if e.data.count("content_part.text_delta")]
                if len(deltas) == 10:
                    break
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    streamed_text = "".join(e.payload["update"]["delta"] for e in deltas)
    thread_id = thread_id_of(seen)
    await asyncio.sleep(LEASE_SECONDS + 0.5)  # the dead owner's lease lapses

    with serving(database_url) as (_, base):
        async with _client(base) as client:
            items = (
                await client.post("/chatkit", json=request("items.list", thread_id=thread_id))
            ).json()["data"]
            answer = next(i for i in items if i["type"] == "assistant_message")
            assert answer["status"] == "incomplete"
            assert answer["content"][0]["text"].startswith(streamed_text)

            async with client.stream(
                "GET", f"/threads/{thread_id}/events", headers={"Last-Event-ID": "0"}
            ) as replay:
                log = await SseReader(replay).until_run_ends()
            assert [e.seq for e in log] == list(range(1, len(log) + 1))
            assert [e.data for e in log[: len(seen)]] == [e.data for e in seen]
            assert [e.type for e in log[-3:]] == ["thread.item.done", "error", "run.failed"]
            assert log[-2].payload["error_code"] == "run_interrupted"

            next_turn = {
                "type": "threads.add_user_message",
                "params": {
                    "thread_id": thread_id,
                    "input": {"content": [{"type": "input_text", "text": "still there?"}]},
                },
            }
            async with client.stream("POST", "/chatkit", json=next_turn) as response:
                assert response.status_code == 200
                events = await SseReader(response).until_run_ends()
            assert events[-1].type == "run.completed"
