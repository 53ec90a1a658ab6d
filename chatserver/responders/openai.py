"""Answers from a model behind OpenAI's Chat Completions API: OpenAI itself or any server
that speaks it (vLLM, Ollama, LM Studio, ...) through `base_url`.

A turn sends the thread's newest items (see `prompt.py`) and streams the answer's text as it
comes. When the model calls tools, each call is shown as a task of a workflow item and saved
for later turns (see `workflow.py`), its result is sent back, and the model is asked again,
at most `openai_max_tool_rounds` times. Failures of the model service end the turn with an
`error` event carrying a stable `model_*` code; retries of failed requests are the openai
client's (`openai_max_retries`). Stopping the turn closes the HTTP stream to the model, so
generation (and its cost) stops too.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from chatserver.config import Settings
from chatserver.errors import ErrorCode, ModelError
from chatserver.ids import IdKind, new_id
from chatserver.responders.messages import stream_assistant_message
from chatserver.responders.prompt import (
    ChatMessage,
    HistoryWindow,
    chat_prompt,
    message_text,
    thread_history,
    tool_call_messages,
)
from chatserver.responders.tools import Tool
from chatserver.responders.workflow import ToolCallRecord, WorkflowDisplay, shown_output
from chatserver.server import ChatServer
from chatserver.sessions import RequestContext
from chatserver.store import Store
from chatserver.types import (
    ChatKitEvent,
    CustomTask,
    ThreadItemDoneEvent,
    ThreadMetadata,
    UserMessageItem,
)

logger = logging.getLogger(__name__)

_TITLE_LENGTH = 40
# Sent when only a base URL is configured: local servers need no key, the client needs one.
_NO_API_KEY = "no-key"


def openai_client(settings: Settings) -> AsyncOpenAI:
    """A client for the configured service, with the configured timeout and retries."""
    if not settings.openai_configured:
        raise ValueError(
            "the OpenAI responder needs CHATSERVER_OPENAI_API_KEY (or OPENAI_API_KEY) or "
            "CHATSERVER_OPENAI_BASE_URL (or OPENAI_BASE_URL)"
        )
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    return AsyncOpenAI(
        api_key=key or _NO_API_KEY,
        base_url=settings.openai_base_url or None,
        timeout=settings.openai_timeout_seconds,
        max_retries=settings.openai_max_retries,
    )


class OpenAIResponder:
    """Streams a model's answer as ChatKit events; usable from any `respond()`."""

    def __init__(
        self,
        client: AsyncOpenAI,
        *,
        model: str,
        system_prompt: str | None = None,
        tools: Sequence[Tool] = (),
        window: HistoryWindow,
        max_tool_rounds: int,
        owns_client: bool = False,
    ) -> None:
        names = [t.name for t in tools]
        if len(set(names)) != len(names):
            raise ValueError(f"tool names must be unique: {names}")
        self.client = client
        self.model = model
        self.system_prompt = system_prompt
        self.tools = {t.name: t for t in tools}
        self.window = window
        self.max_tool_rounds = max_tool_rounds
        self._owns_client = owns_client

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        tools: Sequence[Tool] = (),
        client: AsyncOpenAI | None = None,
        model: str | None = None,
        system_prompt: str | None = None,
    ) -> OpenAIResponder:
        """The configured responder. A `client` given here stays the caller's to close."""
        return cls(
            client or openai_client(settings),
            model=model or settings.openai_model,
            system_prompt=settings.openai_system_prompt if system_prompt is None else system_prompt,
            tools=tools,
            window=HistoryWindow.of(settings),
            max_tool_rounds=settings.openai_max_tool_rounds,
            owns_client=client is None,
        )

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.close()

    async def prompt(
        self, input: UserMessageItem | None, context: RequestContext
    ) -> list[ChatMessage]:
        items = await thread_history(input, context, self.window)
        return chat_prompt(items, system_prompt=self.system_prompt, window=self.window)

    async def respond(
        self, thread: ThreadMetadata, input: UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[ChatKitEvent]:
        if thread.title is None and input is not None:
            thread.title = message_text(input)[:_TITLE_LENGTH] or None
        messages = await self.prompt(input, context)
        workflow = WorkflowDisplay(thread.id, context.clock)
        try:
            for round_ in range(self.max_tool_rounds + 1):
                offer_tools = bool(self.tools) and round_ < self.max_tool_rounds
                reply = _Reply()
                # Closed at once if the turn ends mid-way: it holds the model's HTTP stream.
                async with aclosing(
                    self._stream_reply(thread.id, messages, offer_tools, reply, workflow, context)
                ) as events:
                    async for event in events:
                        yield event
                if reply.text:
                    messages.append({"role": "assistant", "content": reply.text})
                if not reply.calls:
                    if not reply.text:
                        logger.warning("the model's answer in thread %s was empty", thread.id)
                    break
                if not offer_tools:
                    logger.warning("model called tools it was not offered; calls ignored")
                    break
                for call in reply.calls:
                    record = ToolCallRecord(
                        call_id=call.id or f"call_{new_id(IdKind.ITEM)}",
                        name=call.name,
                        arguments=call.arguments,
                        output="",
                    )
                    async for event in self._run_tool(thread.id, record, workflow, context):
                        yield event
                    messages.extend(tool_call_messages(record))
        except openai.OpenAIError as exc:
            raise model_error(exc, self.model) from exc
        if (ended := workflow.end()) is not None:
            yield ended

    async def _stream_reply(
        self,
        thread_id: str,
        messages: list[ChatMessage],
        offer_tools: bool,
        reply: _Reply,
        workflow: WorkflowDisplay,
        context: RequestContext,
    ) -> AsyncGenerator[ChatKitEvent, None]:
        """One completion: its text streamed as an assistant message (if it has any), its
        tool calls collected in `reply`."""
        stream = await self._request(messages, offer_tools)
        try:
            async with aclosing(reply.read(stream)) as texts:
                first = await anext(texts, None)
                if first is None:
                    return
                # A message after tool calls closes their workflow, as in ChatKit.
                if (ended := workflow.end()) is not None:
                    yield ended
                async for event in stream_assistant_message(
                    thread_id, _starting_with(first, texts), created_at=context.clock.now()
                ):
                    yield event
        finally:
            # Also when the turn stops: closing the response ends the model's generation.
            await stream.close()

    async def _request(
        self, messages: list[ChatMessage], offer_tools: bool
    ) -> openai.AsyncStream[ChatCompletionChunk]:
        return await self.client.chat.completions.create(
            model=self.model,
            messages=cast("list[ChatCompletionMessageParam]", messages),
            tools=[cast(Any, t.definition()) for t in self.tools.values()]
            if offer_tools
            else openai.omit,
            stream=True,
        )

    async def _run_tool(
        self,
        thread_id: str,
        record: ToolCallRecord,
        workflow: WorkflowDisplay,
        context: RequestContext,
    ) -> AsyncIterator[ChatKitEvent]:
        """Show the call, run it, show and save its result: `record.output` is set after."""
        tool = self.tools.get(record.name)
        title = tool.title if tool is not None else record.name
        index, shown = workflow.add(CustomTask(title=title, status_indicator="loading"))
        yield shown
        if tool is None:
            record.output = f"There is no tool named {record.name}."
        else:
            record.output = await tool(record.arguments, context)
        yield workflow.update(
            index,
            CustomTask(
                title=title, content=shown_output(record.output), status_indicator="complete"
            ),
        )
        yield ThreadItemDoneEvent(item=record.item(thread_id, context.clock))


class OpenAIChatServer(ChatServer):
    """A ChatServer that answers with the configured OpenAI-compatible model. Subclass it
    and set `tools` (and `system_prompt`, `model`) to make an agent of your own."""

    tools: ClassVar[Sequence[Tool]] = ()
    # None: the settings' (CHATSERVER_OPENAI_SYSTEM_PROMPT, CHATSERVER_OPENAI_MODEL).
    system_prompt: ClassVar[str | None] = None
    model: ClassVar[str | None] = None

    def __init__(
        self,
        store: Store,
        settings: Settings | None = None,
        *,
        client: AsyncOpenAI | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(store, settings, **kwargs)
        self.responder = OpenAIResponder.from_settings(
            self.settings,
            tools=self.tools,
            client=client,
            model=self.model,
            system_prompt=self.system_prompt,
        )

    def respond(
        self, thread: ThreadMetadata, input: UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[ChatKitEvent]:
        return self.responder.respond(thread, input, context)

    async def close(self, grace_seconds: float | None = None) -> None:
        try:
            await super().close(grace_seconds)
        finally:
            await self.responder.aclose()


# --- reading a streamed reply -------------------------------------------------------------


@dataclass
class _Call:
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class _Reply:
    """What one streamed completion said: its text, and its tool calls once it ended."""

    text: str = ""
    _calls: dict[int, _Call] = field(default_factory=dict)

    @property
    def calls(self) -> list[_Call]:
        return [self._calls[index] for index in sorted(self._calls)]

    async def read(self, stream: AsyncIterable[ChatCompletionChunk]) -> AsyncGenerator[str, None]:
        """Yield the text deltas; tool-call fragments are assembled on the way."""
        async for chunk in stream:
            for choice in chunk.choices[:1]:
                delta = choice.delta
                for fragment in delta.tool_calls or ():
                    # A server that sends each call whole may leave out the index.
                    index = len(self._calls) if fragment.index is None else fragment.index
                    call = self._calls.setdefault(index, _Call())
                    call.id = fragment.id or call.id
                    if fragment.function is not None:
                        # Some servers repeat the name in every fragment: it is never split.
                        call.name = fragment.function.name or call.name
                        call.arguments += fragment.function.arguments or ""
                text = delta.content or delta.refusal
                if text:
                    self.text += text
                    yield text


async def _starting_with(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    yield first
    async for text in rest:
        yield text


# --- errors -------------------------------------------------------------------------------


def model_error(exc: openai.OpenAIError, model: str | None = None) -> ModelError:
    """Our stable code and message for a failure of the model service; its own message (which
    may name accounts or keys) goes to the log only."""
    logger.warning("model request failed: %s: %s", type(exc).__name__, exc)
    missing = f"The model {model} is not available." if model else "The model is not available."
    match exc:
        case openai.AuthenticationError() | openai.PermissionDeniedError():
            return ModelError(
                "The model service refused the configured credentials.",
                ErrorCode.MODEL_AUTH_FAILED,
            )
        case openai.RateLimitError():
            return ModelError(
                "The model service is rate limiting requests; try again shortly.",
                ErrorCode.MODEL_RATE_LIMITED,
            )
        case openai.APITimeoutError():
            return ModelError("The model service did not answer in time.", ErrorCode.MODEL_TIMEOUT)
        case openai.APIConnectionError():
            return ModelError(
                "The model service could not be reached.", ErrorCode.MODEL_UNAVAILABLE
            )
        case openai.NotFoundError():
            return ModelError(missing, ErrorCode.MODEL_NOT_FOUND)
        case openai.BadRequestError() if _names_the_model(exc):
            return ModelError(missing, ErrorCode.MODEL_NOT_FOUND)
        case openai.APIStatusError() if exc.status_code >= 500:
            return ModelError("The model service failed to answer.", ErrorCode.MODEL_UNAVAILABLE)
        case openai.APIStatusError():
            return ModelError(
                "The model service rejected the request.", ErrorCode.MODEL_REQUEST_REJECTED
            )
        case _:
            # An error reported inside the stream, or an answer the client could not read.
            return ModelError(
                "The model service failed while answering.", ErrorCode.MODEL_UNAVAILABLE
            )


def _names_the_model(exc: openai.BadRequestError) -> bool:
    # Servers that answer an unknown model with 400 (not OpenAI's 404) say so in code/param.
    return exc.code == "model_not_found" or exc.param == "model"
