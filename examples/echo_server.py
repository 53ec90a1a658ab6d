"""The smallest chat server: a ChatServer subclass whose respond() shouts the message back.

Run it (from the repository root):

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
from pydantic import BaseModel

from chatserver.app import create_app
from chatserver.config import Settings
from chatserver.responders import stream_assistant_message
from chatserver.server import ChatServer
from chatserver.sessions import RequestContext
from chatserver.store import Store
from chatserver.types import ThreadMetadata, UserMessageItem, UserMessageTextContent


class ShoutingServer(ChatServer):
    async def respond(
        self, thread: ThreadMetadata, input: UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[BaseModel]:
        text = " ".join(
            part.text
            for part in (input.content if input else [])
            if isinstance(part, UserMessageTextContent)
        )

        async def words() -> AsyncIterator[str]:
            for word in text.upper().split():
                await asyncio.sleep(0.1)  # slow enough to watch it stream
                yield word + " "

        async for event in stream_assistant_message(
            thread.id, words(), created_at=context.clock.now()
        ):
            yield event


def main() -> None:
    settings = Settings(
        database_url="sqlite+aiosqlite:///./echo_server.db", bearer_tokens="demo:demo-user"
    )
    server = ShoutingServer(Store(settings.database_url), settings)
    app = create_app(server, settings, migrate=True)
    uvicorn.run(app, host=settings.host, port=settings.port)


if __name__ == "__main__":
    main()
