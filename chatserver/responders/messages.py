"""Turn a stream of text chunks into ChatKit's assistant-message events."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from datetime import datetime

from chatserver.ids import IdKind, new_id
from chatserver.types import (
    AssistantMessageContent,
    AssistantMessageContentPartAdded,
    AssistantMessageContentPartDone,
    AssistantMessageContentPartTextDelta,
    AssistantMessageItem,
    ChatKitEvent,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
)


async def stream_assistant_message(
    thread_id: str, chunks: AsyncIterable[str], *, created_at: datetime
) -> AsyncIterator[ChatKitEvent]:
    item = AssistantMessageItem(
        id=new_id(IdKind.ITEM), thread_id=thread_id, created_at=created_at, content=[]
    )
    yield ThreadItemAddedEvent(item=item)
    yield ThreadItemUpdatedEvent(
        item_id=item.id,
        update=AssistantMessageContentPartAdded(
            content_index=0, content=AssistantMessageContent(text="")
        ),
    )
    parts: list[str] = []
    async for chunk in chunks:
        if not chunk:
            continue
        parts.append(chunk)
        yield ThreadItemUpdatedEvent(
            item_id=item.id,
            update=AssistantMessageContentPartTextDelta(content_index=0, delta=chunk),
        )
    content = AssistantMessageContent(text="".join(parts))
    yield ThreadItemUpdatedEvent(
        item_id=item.id,
        update=AssistantMessageContentPartDone(content_index=0, content=content),
    )
    yield ThreadItemDoneEvent(item=item.model_copy(update={"content": [content]}))
