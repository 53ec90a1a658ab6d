"""A thread's items as a Chat Completions prompt, within a window of the newest messages.

Each item becomes a group of messages that stays whole (a tool call never loses its result);
the window takes groups from the newest back while both bounds hold, and always keeps the
newest one, the user's new message. Tokens are estimated, not counted: about 4 characters
per token, as OpenAI suggests for English. A tokenizer (tiktoken) would download its tables
on first use and only knows OpenAI's own models, while the server may talk to any other.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chatserver.config import Settings
from chatserver.responders.workflow import ToolCallRecord
from chatserver.sessions import RequestContext
from chatserver.types import (
    AssistantMessageItem,
    ClientToolCallItem,
    HiddenContextItem,
    ThreadItem,
    UserMessageItem,
    UserMessageTagContent,
    UserMessageTextContent,
)

# One Chat Completions message (`ChatCompletionMessageParam`), as the JSON the API takes.
ChatMessage = dict[str, Any]

_CHARS_PER_TOKEN = 4
# Role and framing cost a few tokens per message whatever its text.
_TOKENS_PER_MESSAGE = 4


@dataclass(frozen=True, slots=True)
class HistoryWindow:
    max_messages: int
    max_tokens: int

    @classmethod
    def of(cls, settings: Settings) -> HistoryWindow:
        return cls(settings.openai_history_max_messages, settings.openai_history_max_tokens)

    @property
    def items_to_read(self) -> int:
        # Items the prompt has no message for (workflows: at most one per turn with tools)
        # are fewer than those it has, so twice the window, plus the new message, suffices.
        return 2 * self.max_messages + 1


async def thread_history(
    input: UserMessageItem | None, context: RequestContext, window: HistoryWindow
) -> list[ThreadItem]:
    """The thread's newest items, ending with the turn's message, enough to fill `window`."""
    items = await context.history(limit=window.items_to_read)
    # history() ends with the turn's own message once it is committed before respond()
    # runs; where it is not, the message is added here, once.
    if input is not None and all(item.id != input.id for item in items):
        items.append(input)
    return items


def chat_prompt(
    items: Sequence[ThreadItem], *, system_prompt: str | None, window: HistoryWindow
) -> list[ChatMessage]:
    groups = [group for group in map(item_messages, items) if group]
    kept: list[list[ChatMessage]] = []
    messages = tokens = 0
    for group in reversed(groups):
        group_tokens = estimate_tokens(group)
        fits = (
            messages + len(group) <= window.max_messages
            and tokens + group_tokens <= window.max_tokens
        )
        if kept and not fits:
            break
        kept.append(group)
        messages += len(group)
        tokens += group_tokens
    prompt = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for group in reversed(kept):
        prompt.extend(group)
    return prompt


def estimate_tokens(messages: Sequence[ChatMessage]) -> int:
    chars = 0
    for message in messages:
        chars += len(message.get("content") or "")
        for call in message.get("tool_calls", ()):
            chars += len(call["function"]["name"]) + len(call["function"]["arguments"])
    return -(-chars // _CHARS_PER_TOKEN) + _TOKENS_PER_MESSAGE * len(messages)


def item_messages(item: ThreadItem) -> list[ChatMessage]:
    """What the model reads of one item; display-only items (workflows, tasks, end-of-turn
    markers) have nothing to say to it."""
    if isinstance(item, UserMessageItem):
        messages = [{"role": "user", "content": message_text(item)}]
        if item.quoted_text:
            quoted = f"The user is referring to this in particular:\n{item.quoted_text}"
            messages.append({"role": "user", "content": quoted})
        return messages
    if isinstance(item, AssistantMessageItem):
        text = "".join(part.text for part in item.content)
        return [{"role": "assistant", "content": text}] if text else []
    if isinstance(item, HiddenContextItem):
        record = ToolCallRecord.of(item)
        if record is not None:
            return tool_call_messages(record)
        if item.content is None:
            return []
        content = item.content if isinstance(item.content, str) else json.dumps(item.content)
        return [{"role": "user", "content": f"Context, not shown to the user:\n{content}"}]
    if isinstance(item, ClientToolCallItem) and item.status == "completed":
        return tool_call_messages(
            ToolCallRecord(
                call_id=item.call_id,
                name=item.name,
                arguments=json.dumps(item.arguments),
                output=json.dumps(item.output),
            )
        )
    return []


def tool_call_messages(record: ToolCallRecord) -> list[ChatMessage]:
    call = {
        "id": record.call_id,
        "type": "function",
        "function": {"name": record.name, "arguments": record.arguments},
    }
    return [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": record.call_id, "content": record.output},
    ]


def message_text(item: UserMessageItem) -> str:
    """The user's message as typed: tags read as `@name`."""
    parts = []
    for part in item.content:
        if isinstance(part, UserMessageTextContent):
            parts.append(part.text)
        elif isinstance(part, UserMessageTagContent):
            parts.append(f"@{part.text}")
    return "".join(parts)
