"""Every error chatserver raises, and the one place its stable codes are defined.

    ChatServerError
    ├── BadRequest            invalid_request, invalid_json, invalid_id, invalid_cursor,
    │                         unknown_policy, payload_too_large, request_timeout,
    │                         not_supported
    ├── NotFound              not_found, session_not_found, thread_not_found, item_not_found
    │   ├── SessionExpired    session_expired
    │   └── SessionClosed     session_closed
    ├── Unauthorized          unauthorized
    ├── Conflict              conflict, idempotency_key_reused
    │   └── ThreadBusy        thread_busy
    ├── ServiceUnavailable    unavailable
    ├── InvalidEvent          invalid_event (a turn's respond() yielded a server event)
    └── ModelError            model_auth_failed, model_rate_limited, model_timeout,
                              model_not_found, model_unavailable, model_request_rejected

Turn failures travel as `error` events with `error_code`: responder_failed, run_interrupted,
invalid_event, or the code of the ChatServerError respond() raised.

Codes are part of the API: clients switch on them, so they never change meaning.
The HTTP layer is the only place that turns a code into a status.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID_REQUEST = "invalid_request"
    INVALID_JSON = "invalid_json"
    INVALID_ID = "invalid_id"
    INVALID_CURSOR = "invalid_cursor"
    UNKNOWN_POLICY = "unknown_policy"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    REQUEST_TIMEOUT = "request_timeout"
    NOT_SUPPORTED = "not_supported"
    NOT_FOUND = "not_found"
    SESSION_NOT_FOUND = "session_not_found"
    THREAD_NOT_FOUND = "thread_not_found"
    ITEM_NOT_FOUND = "item_not_found"
    SESSION_EXPIRED = "session_expired"
    SESSION_CLOSED = "session_closed"
    UNAUTHORIZED = "unauthorized"
    CONFLICT = "conflict"
    # An Idempotency-Key sent again with a different request (as payment APIs answer).
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    THREAD_BUSY = "thread_busy"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal_error"
    RESPONDER_FAILED = "responder_failed"
    RUN_INTERRUPTED = "run_interrupted"
    INVALID_EVENT = "invalid_event"
    # The model service behind a responder: reported in the turn's `error` event.
    MODEL_AUTH_FAILED = "model_auth_failed"
    MODEL_RATE_LIMITED = "model_rate_limited"
    MODEL_TIMEOUT = "model_timeout"
    MODEL_NOT_FOUND = "model_not_found"
    MODEL_UNAVAILABLE = "model_unavailable"
    MODEL_REQUEST_REJECTED = "model_request_rejected"


class ChatServerError(Exception):
    default_code: ErrorCode = ErrorCode.INTERNAL
    # Whether the same request may succeed if tried again (ChatKit shows a retry button).
    allow_retry: bool = False

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code


class BadRequest(ChatServerError):
    default_code = ErrorCode.INVALID_REQUEST


class NotFound(ChatServerError):
    default_code = ErrorCode.NOT_FOUND


class SessionExpired(NotFound):
    default_code = ErrorCode.SESSION_EXPIRED


class SessionClosed(NotFound):
    default_code = ErrorCode.SESSION_CLOSED


class Unauthorized(ChatServerError):
    default_code = ErrorCode.UNAUTHORIZED


class Conflict(ChatServerError):
    default_code = ErrorCode.CONFLICT


class ThreadBusy(Conflict):
    default_code = ErrorCode.THREAD_BUSY


class ServiceUnavailable(ChatServerError):
    default_code = ErrorCode.UNAVAILABLE


class InvalidEvent(ChatServerError):
    """respond() broke its contract (yielded something that is not a ChatKit event)."""

    default_code = ErrorCode.INVALID_EVENT


_RETRYABLE_MODEL_CODES = frozenset(
    {ErrorCode.MODEL_RATE_LIMITED, ErrorCode.MODEL_TIMEOUT, ErrorCode.MODEL_UNAVAILABLE}
)


class ModelError(ChatServerError):
    """The model service failed a turn; the message is ours, the upstream detail is logged."""

    default_code = ErrorCode.MODEL_UNAVAILABLE

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message, code)
        self.allow_retry = self.code in _RETRYABLE_MODEL_CODES
