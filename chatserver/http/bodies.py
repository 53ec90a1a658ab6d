"""Request bodies: bounded in size and in time before and while they are read, parsed into
our types with 4xx errors, never a 500."""

from __future__ import annotations

import asyncio
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from chatserver.errors import BadRequest, ErrorCode
from chatserver.http.errors import invalid_request

Model = TypeVar("Model", bound=BaseModel)


async def read_body(request: Request, *, limit: int, deadline_seconds: float) -> bytes:
    """The body, refused as soon as it is known to exceed `limit` bytes: by its declared
    Content-Length, or while counting (chunked bodies declare nothing, and a header can lie);
    and refused (408) if it has not all arrived within `deadline_seconds`, so a client that
    announces a body and stalls does not hold its connection and its task forever."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise BadRequest("invalid Content-Length header")
        if int(declared) > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    total = 0
    try:
        async with asyncio.timeout(deadline_seconds):
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise BadRequest(
            f"the request body did not arrive within {deadline_seconds:g} seconds",
            ErrorCode.REQUEST_TIMEOUT,
        ) from None
    return b"".join(chunks)


def parse_body(model: type[Model], body: bytes) -> Model:
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        raise invalid_request(exc) from None


def _too_large(limit: int) -> BadRequest:
    return BadRequest(f"request body exceeds {limit} bytes", ErrorCode.PAYLOAD_TOO_LARGE)
