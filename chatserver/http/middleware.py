"""Per-request response headers (session id, identity cookie) on every answer, errors and
streams included, and the last line of defence: an unexpected exception becomes our 500."""

from __future__ import annotations

import logging

from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatserver.http.errors import internal_error

logger = logging.getLogger(__name__)

_HEADERS_KEY = "chatserver.response_headers"


def add_response_header(request: Request, name: str, value: str) -> None:
    """Send this header with whatever response the request ends up with."""
    headers: list[tuple[bytes, bytes]] = request.scope.setdefault(_HEADERS_KEY, [])
    headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))


class ApiMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Created here, so handlers and this wrapper share one list whatever scope copies are made.
        extra: list[tuple[bytes, bytes]] = scope.setdefault(_HEADERS_KEY, [])
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except ClientDisconnect:
            return  # gone while sending its body: nobody to answer
        except Exception:
            if started:
                raise
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            await internal_error()(scope, receive, send_with_headers)
