"""Every error chatserver raises, and the one place its stable codes are defined.

    ChatServerError
    ├── BadRequest            invalid_request, invalid_json, invalid_id, unknown_policy,
    │                         payload_too_large, request_timeout, not_supported
    ├── NotFound              not_found, session_not_found, thread_not_found, item_not_found
    │   ├── SessionExpired    session_expired
    │   └── SessionClosed     session_closed
    ├── Unauthorized          unauthorized
    ├── Conflict              conflict, idempotency_conflict
    │   └── ThreadBusy        thread_busy
    └── ServiceUnavailable    unavailable

Codes are part of the API: clients switch on them, so they never change meaning.
The HTTP layer is the only place that turns a code into a status.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID_REQUEST = "invalid_request"
    INVALID_JSON = "invalid_json"
    INVALID_ID = "invalid_id"
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
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    THREAD_BUSY = "thread_busy"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal_error"
    RESPONDER_FAILED = "responder_failed"
    RUN_INTERRUPTED = "run_interrupted"


class ChatServerError(Exception):
    default_code: ErrorCode = ErrorCode.INTERNAL

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
