"""The offline default: echoes the user's message word by word, so streaming, resume and
stop are visible without any model or API key."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from chatserver.responders.messages import stream_assistant_message
from chatserver.server import ChatServer
from chatserver.sessions import RequestContext
from chatserver.types import ChatKitEvent, ThreadMetadata, UserMessageItem, UserMessageTextContent

_TITLE_LENGTH = 40


def user_text(item: UserMessageItem | None) -> str:
    if item is None:
        return ""
    return " ".join(p.text for p in item.content if isinstance(p, UserMessageTextContent))


class EchoChatServer(ChatServer):
    # Seconds between words: enough to watch the answer stream in, and to stop it.
    word_delay: float = 0.05

    async def respond(
        self, thread: ThreadMetadata, input: UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[ChatKitEvent]:
        text = user_text(input) or "(nothing to echo)"
        if thread.title is None:
            thread.title = text[:_TITLE_LENGTH]
        async for event in stream_assistant_message(
            thread.id, self._words(text), created_at=context.clock.now()
        ):
            yield event

    async def _words(self, text: str) -> AsyncIterator[str]:
        for word in re.findall(r"\S+\s*", text):
            if self.word_delay:
                await asyncio.sleep(self.word_delay)
            yield word
