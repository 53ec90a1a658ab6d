"""respond() is typed: mypy refuses a subclass that yields something other than a ChatKit
event, and accepts one that yields ChatKit events."""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api

GOOD = """
from collections.abc import AsyncIterator

from chatserver import (
    ChatKitEvent, ChatServer, RequestContext, ThreadMetadata, UserMessageItem,
    stream_assistant_message,
)


class Good(ChatServer):
    async def respond(
        self, thread: ThreadMetadata, input: UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[ChatKitEvent]:
        async def words() -> AsyncIterator[str]:
            yield "hi"

        now = context.clock.now()
        async for event in stream_assistant_message(thread.id, words(), created_at=now):
            yield event
"""

BAD = """
from collections.abc import AsyncIterator

from pydantic import BaseModel

from chatserver import ChatServer, RequestContext, ThreadMetadata, UserMessageItem
from chatserver.types import RunCompletedEvent


class Bad(ChatServer):
    async def respond(
        self, thread: ThreadMetadata, input: UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[BaseModel]:
        yield RunCompletedEvent(run_id="run_x")
"""


@pytest.mark.slow
def test_mypy_accepts_chatkit_events_and_refuses_other_yields(tmp_path: Path) -> None:
    (tmp_path / "good.py").write_text(GOOD)
    (tmp_path / "bad.py").write_text(BAD)
    stdout, _stderr, status = api.run(
        [
            "--strict",
            "--follow-imports=silent",
            f"--cache-dir={tmp_path / '.mypy_cache'}",
            str(tmp_path / "good.py"),
            str(tmp_path / "bad.py"),
        ]
    )
    errors = [line for line in stdout.splitlines() if ": error:" in line]
    assert status == 1
    assert len(errors) == 1, stdout
    assert errors[0].startswith(str(tmp_path / "bad.py"))
    assert 'Return type "AsyncIterator[BaseModel]" of "respond" incompatible' in errors[0]
