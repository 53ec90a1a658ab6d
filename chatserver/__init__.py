"""chatserver: a respond()-driven, ChatKit-compatible chat server with resumable streams.

The public API is what this module exports; everything else may move between releases.
"""

from chatserver.app import create_app, create_default_app
from chatserver.clock import Clock, ManualClock, SystemClock
from chatserver.config import Settings
from chatserver.errors import ChatServerError, ErrorCode
from chatserver.responders.echo import EchoChatServer
from chatserver.responders.messages import stream_assistant_message
from chatserver.responders.openai import OpenAIChatServer, OpenAIResponder
from chatserver.responders.tools import Tool, ToolError, tool
from chatserver.server import ChatServer
from chatserver.sessions import RequestContext
from chatserver.store import Store
from chatserver.types import (
    AssistantMessageContent,
    AssistantMessageItem,
    ChatKitEvent,
    ClientEffectEvent,
    CustomTask,
    ErrorEvent,
    HiddenContextItem,
    NoticeEvent,
    ProgressUpdateEvent,
    TaskItem,
    Thread,
    ThreadItem,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemRemovedEvent,
    ThreadItemReplacedEvent,
    ThreadItemUpdatedEvent,
    ThreadMetadata,
    UserMessageItem,
    UserMessageTextContent,
    Workflow,
    WorkflowItem,
)

__version__ = "0.1.0"

__all__ = [
    "AssistantMessageContent",
    "AssistantMessageItem",
    "ChatKitEvent",
    "ChatServer",
    "ChatServerError",
    "ClientEffectEvent",
    "Clock",
    "CustomTask",
    "EchoChatServer",
    "ErrorCode",
    "ErrorEvent",
    "HiddenContextItem",
    "ManualClock",
    "NoticeEvent",
    "OpenAIChatServer",
    "OpenAIResponder",
    "ProgressUpdateEvent",
    "RequestContext",
    "Settings",
    "Store",
    "SystemClock",
    "TaskItem",
    "Thread",
    "ThreadItem",
    "ThreadItemAddedEvent",
    "ThreadItemDoneEvent",
    "ThreadItemRemovedEvent",
    "ThreadItemReplacedEvent",
    "ThreadItemUpdatedEvent",
    "ThreadMetadata",
    "Tool",
    "ToolError",
    "UserMessageItem",
    "UserMessageTextContent",
    "Workflow",
    "WorkflowItem",
    "__version__",
    "create_app",
    "create_default_app",
    "stream_assistant_message",
    "tool",
]
