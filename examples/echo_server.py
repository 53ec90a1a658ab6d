"""The smallest chat server: a ChatServer subclass whose respond() shouts the message back.

Run it (from the repository root, after `pip install -e .`):

    .venv/bin/python examples/echo_server.py

then talk to it on http://127.0.0.1:8000, for example:

    curl -N -H 'Authorization: Bearer demo' http://127.0.0.1:8000/chatkit -d \
      '{"type":"threads.create","params":{"input":{"content":[{"type":"input_text","text":"hi"}]}}}'

The database is SQLite in ./echo_server.db, created on the first run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette

from chatserver import (
    ChatKitEvent,
    ChatServer,
    RequestContext,
    Settings,
    Store,
    ThreadMetadata,
    UserMessageItem,
    UserMessageTextContent,
    create_app,
    stream_assistant_message,
)


class ShoutingServer(ChatServer):
    # Seconds between words: slow enough to watch the answer stream in.
    word_delay = 0.1

    async def respond(
        self, thread: ThreadMetadata, input: UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[ChatKitEvent]:
        text = " ".join(
            part.text
            for part in (input.content if input else [])
            if isinstance(part, UserMessageTextContent)
        )

        async def words() -> AsyncIterator[str]:
            for word in text.upper().split():
                await asyncio.sleep(self.word_delay)
                yield word + " "

        async for event in stream_assistant_message(
            thread.id, words(), created_at=context.clock.now()
        ):
            yield event


def build_app(settings: Settings) -> Starlette:
    return create_app(ShoutingServer(Store(settings.database_url), settings), migrate=True)


def main() -> None:
    settings = Settings(
        database_url="sqlite+aiosqlite:///./echo_server.db", bearer_tokens="demo:demo-user"
    )
    uvicorn.run(build_app(settings), host=settings.host, port=settings.port)


if __name__ == "__main__":
    main()
