"""Where error codes become HTTP statuses, and the one JSON shape every error has:

{"error": {"code": "thread_not_found", "message": "thread thr_... not found"}}
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chatserver.errors import BadRequest, ChatServerError, ErrorCode

# Total over ErrorCode (a test checks it): a new code needs a decision here, not a default.
STATUS_BY_CODE: Final[Mapping[ErrorCode, int]] = MappingProxyType(
    {
        ErrorCode.INVALID_REQUEST: 400,
        ErrorCode.INVALID_JSON: 400,
        ErrorCode.INVALID_ID: 400,
        ErrorCode.INVALID_CURSOR: 400,
        ErrorCode.UNKNOWN_POLICY: 400,
        ErrorCode.NOT_SUPPORTED: 400,
        ErrorCode.PAYLOAD_TOO_LARGE: 413,
        ErrorCode.REQUEST_TIMEOUT: 408,
        ErrorCode.NOT_FOUND: 404,
        ErrorCode.SESSION_NOT_FOUND: 404,
        ErrorCode.THREAD_NOT_FOUND: 404,
        ErrorCode.ITEM_NOT_FOUND: 404,
        ErrorCode.SESSION_EXPIRED: 404,
        ErrorCode.SESSION_CLOSED: 404,
        ErrorCode.UNAUTHORIZED: 401,
        ErrorCode.CONFLICT: 409,
        ErrorCode.IDEMPOTENCY_KEY_REUSED: 422,
        ErrorCode.THREAD_BUSY: 409,
        ErrorCode.UNAVAILABLE: 503,
        ErrorCode.INTERNAL: 500,
        ErrorCode.RESPONDER_FAILED: 500,
        ErrorCode.RUN_INTERRUPTED: 500,
        ErrorCode.INVALID_EVENT: 500,
        # Failures of the model service behind us, as a gateway reports its upstream's.
        ErrorCode.MODEL_AUTH_FAILED: 502,
        ErrorCode.MODEL_RATE_LIMITED: 503,
        ErrorCode.MODEL_TIMEOUT: 504,
        ErrorCode.MODEL_NOT_FOUND: 502,
        ErrorCode.MODEL_UNAVAILABLE: 502,
        ErrorCode.MODEL_REQUEST_REJECTED: 502,
    }
)

# Headers some refusals need: how to authenticate; and that a connection whose body never
# arrived is not reused (its unread bytes would be taken for the next request).
_HEADERS_BY_CODE: Final[Mapping[ErrorCode, Mapping[str, str]]] = MappingProxyType(
    {
        ErrorCode.UNAUTHORIZED: {"WWW-Authenticate": "Bearer"},
        ErrorCode.REQUEST_TIMEOUT: {"Connection": "close"},
    }
)

_MAX_REPORTED_PROBLEMS = 5


def error_response(
    code: ErrorCode,
    message: str,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code.value, "message": message}},
        status_code=status or STATUS_BY_CODE.get(code, 500),
        headers=headers,
    )


def invalid_request(exc: ValidationError) -> BadRequest:
    """A readable 400 for a body that does not fit our types; never echoes the input."""
    problems = exc.errors(include_url=False, include_input=False)
    if any(p["type"] == "json_invalid" for p in problems):
        return BadRequest("the body is not valid JSON", ErrorCode.INVALID_JSON)
    parts = []
    for problem in problems[:_MAX_REPORTED_PROBLEMS]:
        where = ".".join(str(part) for part in problem["loc"])
        parts.append(f"{where}: {problem['msg']}" if where else problem["msg"])
    more = len(problems) - _MAX_REPORTED_PROBLEMS
    if more > 0:
        parts.append(f"and {more} more")
    return BadRequest("invalid request: " + "; ".join(parts), ErrorCode.INVALID_REQUEST)


async def on_chatserver_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ChatServerError)
    return error_response(exc.code, exc.message, headers=_HEADERS_BY_CODE.get(exc.code))


async def on_http_exception(_request: Request, exc: Exception) -> Response:
    # Routing-level refusals (no such path, wrong method) in our shape, with Starlette's status.
    assert isinstance(exc, HTTPException)
    code = ErrorCode.NOT_FOUND if exc.status_code == 404 else ErrorCode.INVALID_REQUEST
    return error_response(code, str(exc.detail), exc.status_code, exc.headers)


def internal_error() -> JSONResponse:
    return error_response(ErrorCode.INTERNAL, "internal server error")


# Unexpected exceptions are answered by `middleware.ApiMiddleware`, not here: Starlette hands
# an `Exception` handler to its outermost middleware, which re-raises after answering.
EXCEPTION_HANDLERS = {
    ChatServerError: on_chatserver_error,
    HTTPException: on_http_exception,
}
