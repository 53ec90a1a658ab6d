"""Wire types: ChatKit-shaped (openai-chatkit 1.6.5) requests, items and stream events.

Field names and `type` discriminators match ChatKit's so a ChatKit client works unchanged.
Our additions are extra fields or extra event types, never a different shape for a ChatKit one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar, get_args

from pydantic import BaseModel, Field, TypeAdapter
from typing_extensions import TypeIs

T = TypeVar("T")

# ChatKit accepts any positive limit; we cap it so one request cannot load a whole table.
MAX_PAGE_LIMIT = 200
MAX_TITLE_LENGTH = 500


class Page(BaseModel, Generic[T]):
    data: list[T] = Field(default_factory=list)
    has_more: bool = False
    after: str | None = None


# --- Thread items -------------------------------------------------------------------------


class ToolChoice(BaseModel):
    id: str


class InferenceOptions(BaseModel):
    tool_choice: ToolChoice | None = None
    model: str | None = None


class UserMessageTextContent(BaseModel):
    type: Literal["input_text"] = "input_text"
    text: str


class UserMessageTagContent(BaseModel):
    type: Literal["input_tag"] = "input_tag"
    id: str
    text: str
    data: dict[str, Any]
    group: str | None = None
    interactive: bool = False


UserMessageContent = Annotated[
    UserMessageTextContent | UserMessageTagContent, Field(discriminator="type")
]


class AssistantMessageContent(BaseModel):
    # Annotations stay untyped: we only pass through what respond() produces.
    annotations: list[dict[str, Any]] = Field(default_factory=list)
    text: str
    type: Literal["output_text"] = "output_text"


class ThreadItemBase(BaseModel):
    id: str
    thread_id: str
    created_at: datetime


class UserMessageItem(ThreadItemBase):
    type: Literal["user_message"] = "user_message"
    content: list[UserMessageContent]
    # ChatKit attachment objects, kept as dicts: we store them but never interpret them.
    attachments: list[dict[str, Any]] = Field(default_factory=list)
    quoted_text: str | None = None
    inference_options: InferenceOptions = Field(default_factory=InferenceOptions)


class AssistantMessageItem(ThreadItemBase):
    type: Literal["assistant_message"] = "assistant_message"
    content: list[AssistantMessageContent]
    # Extra field (ChatKit ignores it): tells a resuming client whether the text is final.
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class ClientToolCallItem(ThreadItemBase):
    type: Literal["client_tool_call"] = "client_tool_call"
    status: Literal["pending", "completed"] = "pending"
    call_id: str
    name: str
    arguments: dict[str, Any]
    output: Any | None = None


# --- Workflows: how ChatKit shows work done on the way to an answer (tool calls, steps) --


class BaseTask(BaseModel):
    # Inside a workflow: whether the task is still running ("loading") or done ("complete").
    status_indicator: Literal["none", "loading", "complete"] = "none"


class CustomTask(BaseTask):
    type: Literal["custom"] = "custom"
    title: str | None = None
    # ChatKit only accepts its own icon names here; we do not mirror that list.
    icon: str | None = None
    content: str | None = None


class ThoughtTask(BaseTask):
    type: Literal["thought"] = "thought"
    title: str | None = None
    content: str


Task = Annotated[CustomTask | ThoughtTask, Field(discriminator="type")]


class CustomSummary(BaseModel):
    title: str
    icon: str | None = None


class DurationSummary(BaseModel):
    # Whole seconds the workflow took.
    duration: int


class Workflow(BaseModel):
    type: Literal["custom", "reasoning"]
    tasks: list[Task]
    summary: CustomSummary | DurationSummary | None = None
    expanded: bool = False


class WorkflowItem(ThreadItemBase):
    type: Literal["workflow"] = "workflow"
    workflow: Workflow


class TaskItem(ThreadItemBase):
    type: Literal["task"] = "task"
    task: Task


class EndOfTurnItem(ThreadItemBase):
    type: Literal["end_of_turn"] = "end_of_turn"


class HiddenContextItem(ThreadItemBase):
    type: Literal["hidden_context_item"] = "hidden_context_item"
    # Defaulted so a None content survives dump_json (which drops it) and parsing back.
    content: Any = None


ThreadItem = Annotated[
    UserMessageItem
    | AssistantMessageItem
    | ClientToolCallItem
    | WorkflowItem
    | TaskItem
    | EndOfTurnItem
    | HiddenContextItem,
    Field(discriminator="type"),
]


# --- Threads ------------------------------------------------------------------------------


class ActiveStatus(BaseModel):
    type: Literal["active"] = "active"


class LockedStatus(BaseModel):
    type: Literal["locked"] = "locked"
    reason: str | None = None


class ClosedStatus(BaseModel):
    type: Literal["closed"] = "closed"
    reason: str | None = None


ThreadStatus = Annotated[ActiveStatus | LockedStatus | ClosedStatus, Field(discriminator="type")]


class ThreadMetadata(BaseModel):
    title: str | None = None
    id: str
    created_at: datetime
    status: ThreadStatus = Field(default_factory=ActiveStatus)
    allowed_image_domains: list[str] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class Thread(ThreadMetadata):
    items: Page[ThreadItem]

    @classmethod
    def public(cls, thread: ThreadMetadata, items: Page[ThreadItem] | None = None) -> Thread:
        """The thread as clients see it, as ChatKit sends it: `metadata` is the server's and
        never leaves it; items come separately (an empty page in events and lists)."""
        return cls(
            **thread.model_dump(exclude={"metadata", "items"}), items=items or Page[ThreadItem]()
        )


# --- Item updates -------------------------------------------------------------------------


class AssistantMessageContentPartAdded(BaseModel):
    type: Literal["assistant_message.content_part.added"] = "assistant_message.content_part.added"
    content_index: int
    content: AssistantMessageContent


class AssistantMessageContentPartTextDelta(BaseModel):
    type: Literal["assistant_message.content_part.text_delta"] = (
        "assistant_message.content_part.text_delta"
    )
    content_index: int
    delta: str


class AssistantMessageContentPartAnnotationAdded(BaseModel):
    type: Literal["assistant_message.content_part.annotation_added"] = (
        "assistant_message.content_part.annotation_added"
    )
    content_index: int
    annotation_index: int
    annotation: dict[str, Any]


class AssistantMessageContentPartDone(BaseModel):
    type: Literal["assistant_message.content_part.done"] = "assistant_message.content_part.done"
    content_index: int
    content: AssistantMessageContent


class WorkflowTaskAdded(BaseModel):
    type: Literal["workflow.task.added"] = "workflow.task.added"
    task_index: int
    task: Task


class WorkflowTaskUpdated(BaseModel):
    type: Literal["workflow.task.updated"] = "workflow.task.updated"
    task_index: int
    task: Task


ThreadItemUpdate = Annotated[
    AssistantMessageContentPartAdded
    | AssistantMessageContentPartTextDelta
    | AssistantMessageContentPartAnnotationAdded
    | AssistantMessageContentPartDone
    | WorkflowTaskAdded
    | WorkflowTaskUpdated,
    Field(discriminator="type"),
]


# --- ChatKit stream events ----------------------------------------------------------------


class ThreadCreatedEvent(BaseModel):
    type: Literal["thread.created"] = "thread.created"
    thread: Thread


class ThreadUpdatedEvent(BaseModel):
    type: Literal["thread.updated"] = "thread.updated"
    thread: Thread


class ThreadItemAddedEvent(BaseModel):
    type: Literal["thread.item.added"] = "thread.item.added"
    item: ThreadItem


class ThreadItemUpdatedEvent(BaseModel):
    type: Literal["thread.item.updated"] = "thread.item.updated"
    item_id: str
    update: ThreadItemUpdate


class ThreadItemDoneEvent(BaseModel):
    type: Literal["thread.item.done"] = "thread.item.done"
    item: ThreadItem


class ThreadItemRemovedEvent(BaseModel):
    type: Literal["thread.item.removed"] = "thread.item.removed"
    item_id: str


class ThreadItemReplacedEvent(BaseModel):
    type: Literal["thread.item.replaced"] = "thread.item.replaced"
    item: ThreadItem


class StreamOptions(BaseModel):
    allow_cancel: bool


class StreamOptionsEvent(BaseModel):
    type: Literal["stream_options"] = "stream_options"
    stream_options: StreamOptions


class ProgressUpdateEvent(BaseModel):
    type: Literal["progress_update"] = "progress_update"
    # ChatKit only accepts its own icon names here; we do not mirror that list.
    icon: str | None = None
    text: str


class ClientEffectEvent(BaseModel):
    type: Literal["client_effect"] = "client_effect"
    name: str
    data: dict[str, Any] = Field(default_factory=dict)


class ErrorEvent(BaseModel):
    type: Literal["error"] = "error"
    # ChatKit rejects any other code, so our stable code travels in `error_code`.
    code: Literal["stream.error", "custom"] = "custom"
    message: str | None = None
    allow_retry: bool = False
    error_code: str | None = None


class NoticeEvent(BaseModel):
    type: Literal["notice"] = "notice"
    level: Literal["info", "warning", "danger"]
    message: str
    title: str | None = None


_ChatKitEventVariants = (
    ThreadCreatedEvent
    | ThreadUpdatedEvent
    | ThreadItemAddedEvent
    | ThreadItemUpdatedEvent
    | ThreadItemDoneEvent
    | ThreadItemRemovedEvent
    | ThreadItemReplacedEvent
    | StreamOptionsEvent
    | ProgressUpdateEvent
    | ClientEffectEvent
    | ErrorEvent
    | NoticeEvent
)
ChatKitEvent = Annotated[_ChatKitEventVariants, Field(discriminator="type")]


# --- Extension stream events (ours; ChatKit clients skip unknown types) --------------------


class RunStartedEvent(BaseModel):
    type: Literal["run.started"] = "run.started"
    run_id: str


class RunCompletedEvent(BaseModel):
    type: Literal["run.completed"] = "run.completed"
    run_id: str


class RunCancelledEvent(BaseModel):
    type: Literal["run.cancelled"] = "run.cancelled"
    run_id: str
    reason: str | None = None


class RunFailedEvent(BaseModel):
    type: Literal["run.failed"] = "run.failed"
    run_id: str
    error_code: str


class SessionSupersededEvent(BaseModel):
    type: Literal["session.superseded"] = "session.superseded"
    session_id: str


class ResyncEvent(BaseModel):
    type: Literal["resync"] = "resync"
    reason: str
    earliest_seq: int | None = None


_ExtensionEventVariants = (
    RunStartedEvent
    | RunCompletedEvent
    | RunCancelledEvent
    | RunFailedEvent
    | SessionSupersededEvent
    | ResyncEvent
)
ExtensionEvent = Annotated[_ExtensionEventVariants, Field(discriminator="type")]

StreamEvent = Annotated[
    _ChatKitEventVariants | _ExtensionEventVariants, Field(discriminator="type")
]


def _type_tags(union: Any) -> frozenset[str]:
    return frozenset(model.model_fields["type"].default for model in get_args(union))


CHATKIT_EVENT_TYPES = _type_tags(_ChatKitEventVariants)
# Only the server emits these; respond() yielding one is refused.
SERVER_EVENT_TYPES = _type_tags(_ExtensionEventVariants)
TERMINAL_RUN_EVENT_TYPES = frozenset({"run.completed", "run.cancelled", "run.failed"})


# --- Requests -----------------------------------------------------------------------------


class UserMessageInput(BaseModel):
    content: list[UserMessageContent] = Field(min_length=1)
    attachments: list[str] = Field(default_factory=list)
    quoted_text: str | None = None
    inference_options: InferenceOptions = Field(default_factory=InferenceOptions)


class ThreadCreateParams(BaseModel):
    input: UserMessageInput


class ThreadAddUserMessageParams(BaseModel):
    input: UserMessageInput
    thread_id: str


class ThreadGetByIdParams(BaseModel):
    thread_id: str


class ThreadListParams(BaseModel):
    limit: int | None = Field(default=None, ge=1, le=MAX_PAGE_LIMIT)
    order: Literal["asc", "desc"] = "desc"
    after: str | None = None


class ItemsListParams(BaseModel):
    thread_id: str
    limit: int | None = Field(default=None, ge=1, le=MAX_PAGE_LIMIT)
    order: Literal["asc", "desc"] = "desc"
    after: str | None = None


class ThreadUpdateParams(BaseModel):
    thread_id: str
    title: str = Field(max_length=MAX_TITLE_LENGTH)


class ThreadDeleteParams(BaseModel):
    thread_id: str


class ThreadRetryAfterItemParams(BaseModel):
    thread_id: str
    item_id: str


class CustomAction(BaseModel):
    type: str
    payload: Any = None


class ThreadCustomActionParams(BaseModel):
    thread_id: str
    item_id: str | None = None
    action: CustomAction


class BaseRequest(BaseModel):
    metadata: dict[str, Any] = Field(default_factory=dict)


class ThreadsCreateRequest(BaseRequest):
    type: Literal["threads.create"] = "threads.create"
    params: ThreadCreateParams


class ThreadsAddUserMessageRequest(BaseRequest):
    type: Literal["threads.add_user_message"] = "threads.add_user_message"
    params: ThreadAddUserMessageParams


class ThreadsRetryAfterItemRequest(BaseRequest):
    type: Literal["threads.retry_after_item"] = "threads.retry_after_item"
    params: ThreadRetryAfterItemParams


class ThreadsCustomActionRequest(BaseRequest):
    type: Literal["threads.custom_action"] = "threads.custom_action"
    params: ThreadCustomActionParams


class ThreadsGetByIdRequest(BaseRequest):
    type: Literal["threads.get_by_id"] = "threads.get_by_id"
    params: ThreadGetByIdParams


class ThreadsListRequest(BaseRequest):
    type: Literal["threads.list"] = "threads.list"
    params: ThreadListParams


class ItemsListRequest(BaseRequest):
    type: Literal["items.list"] = "items.list"
    params: ItemsListParams


class ThreadsUpdateRequest(BaseRequest):
    type: Literal["threads.update"] = "threads.update"
    params: ThreadUpdateParams


class ThreadsDeleteRequest(BaseRequest):
    type: Literal["threads.delete"] = "threads.delete"
    params: ThreadDeleteParams


# The server answers `not_supported` to the requests below, so their params stay loose:
# a malformed body for an unsupported feature still gets the same answer.


class ThreadsAddClientToolOutputRequest(BaseRequest):
    type: Literal["threads.add_client_tool_output"] = "threads.add_client_tool_output"
    params: dict[str, Any]


class ThreadsAddStructuredInputRequest(BaseRequest):
    type: Literal["threads.add_structured_input"] = "threads.add_structured_input"
    params: dict[str, Any]


class ThreadsSyncCustomActionRequest(BaseRequest):
    type: Literal["threads.sync_custom_action"] = "threads.sync_custom_action"
    params: dict[str, Any]


class ItemsFeedbackRequest(BaseRequest):
    type: Literal["items.feedback"] = "items.feedback"
    params: dict[str, Any]


class AttachmentsCreateRequest(BaseRequest):
    type: Literal["attachments.create"] = "attachments.create"
    params: dict[str, Any]


class AttachmentsDeleteRequest(BaseRequest):
    type: Literal["attachments.delete"] = "attachments.delete"
    params: dict[str, Any]


class InputTranscribeRequest(BaseRequest):
    type: Literal["input.transcribe"] = "input.transcribe"
    params: dict[str, Any]


StreamingRequest = (
    ThreadsCreateRequest
    | ThreadsAddUserMessageRequest
    | ThreadsAddClientToolOutputRequest
    | ThreadsAddStructuredInputRequest
    | ThreadsRetryAfterItemRequest
    | ThreadsCustomActionRequest
)
NonStreamingRequest = (
    ThreadsGetByIdRequest
    | ThreadsListRequest
    | ItemsListRequest
    | ItemsFeedbackRequest
    | AttachmentsCreateRequest
    | AttachmentsDeleteRequest
    | ThreadsUpdateRequest
    | ThreadsDeleteRequest
    | InputTranscribeRequest
    | ThreadsSyncCustomActionRequest
)
ChatKitRequest = Annotated[StreamingRequest | NonStreamingRequest, Field(discriminator="type")]

STREAMING_REQUEST_TYPES = _type_tags(StreamingRequest)


def is_streaming(req: ChatKitRequest) -> TypeIs[StreamingRequest]:
    return req.type in STREAMING_REQUEST_TYPES


# --- Parsing and serialization ------------------------------------------------------------

_request_adapter: TypeAdapter[ChatKitRequest] = TypeAdapter(ChatKitRequest)
_stream_event_adapter: TypeAdapter[StreamEvent] = TypeAdapter(StreamEvent)
_thread_item_adapter: TypeAdapter[ThreadItem] = TypeAdapter(ThreadItem)


def parse_request(body: bytes | str) -> ChatKitRequest:
    return _request_adapter.validate_json(body)


def parse_stream_event(data: bytes | str) -> StreamEvent:
    return _stream_event_adapter.validate_json(data)


def parse_thread_item(data: bytes | str) -> ThreadItem:
    return _thread_item_adapter.validate_json(data)


def dump_json(model: BaseModel) -> str:
    # Same settings as ChatKit's server: unset optionals are omitted, not sent as null.
    return model.model_dump_json(by_alias=True, exclude_none=True)
