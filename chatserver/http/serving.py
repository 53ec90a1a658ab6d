"""How `chatserver serve` runs the app under uvicorn, bounded against clients that stall.

uvicorn closes a keep-alive connection that stays idle after a response (`timeout_keep_alive`)
but has no bound on reading a request's head: a connection that is opened and says nothing,
or stops mid-headers, is held forever, and enough of them exhaust the file descriptors. So
the HTTP protocol here gives every request head a deadline, counted from the connection's
start or its previous response, and a size bound (h11 has one built in; httptools, uvicorn's
default parser, has none). The body's deadline is the application's (`http.bodies`): only
it knows when a body is complete.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.types import ASGIApp

from chatserver.config import Settings

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Parser
except ImportError:  # pragma: no cover - httptools comes with uvicorn[standard]
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Parser  # type: ignore[assignment]

# Request line and headers together, as h11 bounds them by default (nginx: 4 x 8 KiB).
MAX_HEAD_BYTES = 16 * 1024

if TYPE_CHECKING:
    _Mixin = _Parser
else:
    _Mixin = object


class _HeadDeadline(_Mixin):
    """Closes a connection that has not sent a complete request head in time, or whose head
    outgrows the bound. Mixed into uvicorn's protocol: a request is under way from its
    complete head (uvicorn then creates its `cycle`) to its response's end."""

    head_timeout_seconds: float
    _deadline: asyncio.TimerHandle | None = None
    _head_bytes = 0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._expect_head()

    def data_received(self, data: bytes) -> None:
        awaiting = self._awaiting_head()
        super().data_received(data)
        if not awaiting:
            return
        if not self._awaiting_head():
            self._head_bytes = 0
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
            self.send_400_response("Request headers too large")

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._expect_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def _awaiting_head(self) -> bool:
        cycle = self.cycle
        return cycle is None or cycle.response_complete

    def _expect_head(self) -> None:
        self._cancel_deadline()
        self._head_bytes = 0
        self._deadline = self.loop.call_later(self.head_timeout_seconds, self._head_overdue)

    def _head_overdue(self) -> None:
        self._deadline = None
        if self._awaiting_head() and not self.transport.is_closing():
            self.transport.close()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


def http_protocol(head_timeout_seconds: float) -> type[asyncio.Protocol]:
    return type(
        "BoundedHttpProtocol",
        (_HeadDeadline, _Parser),
        {"head_timeout_seconds": head_timeout_seconds},
    )


def uvicorn_config(app: ASGIApp, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """uvicorn's configuration for `app` under `settings`; `overrides` go to uvicorn.Config."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level.lower(),
        "lifespan": "on",
        "http": http_protocol(settings.header_read_timeout_seconds),
        "timeout_keep_alive": settings.keep_alive_seconds,
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
    }
    return uvicorn.Config(app, **(options | overrides))
