"""`GET /threads/{id}/events` (the long-lived, resumable stream of a thread) and
`POST /threads/{id}/stop` (the only way to cancel a turn: closing a stream never does)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chatserver.errors import ServiceUnavailable
from chatserver.http.services import Services
from chatserver.http.sessions import requested_session_id, session_context
from chatserver.http.sse import SessionKey, parse_cursor, sse_response
from chatserver.http.validation import require_id
from chatserver.ids import IdKind
from chatserver.tabs import tab_strategy


class ThreadEndpoints:
    def __init__(self, services: Services) -> None:
        self._services = services
        self._server = services.server

    async def events(self, request: Request) -> Response:
        """Stored events after the cursor, then live ones, across turns, until the client
        leaves. The header wins over `?after=`: EventSource sends it on reconnect, newer than
        the URL it was opened with."""
        user_id = await self._services.authenticate(request)
        thread_id = require_id(IdKind.THREAD, request.path_params["thread_id"], "thread id")
        cursor = parse_cursor(request.headers.get("last-event-id"), "Last-Event-ID")
        if cursor is None:
            cursor = parse_cursor(request.query_params.get("after"), "after")
        # Without a session the stream only reads; with one, it counts as the session's tab.
        session_id = requested_session_id(request, allow_query=True)
        session = None
        if session_id is not None:
            context = await session_context(
                self._services, request, user_id, session_id, allow_query=True
            )
            session = context.session
        await self._server.get_thread(user_id, thread_id)
        await self._server.check_cursor(thread_id, cursor)
        if self._services.streams.closing:
            raise ServiceUnavailable("the server is shutting down; reconnect shortly")
        stream = self._services.streams.open(
            self._server.subscribe(thread_id, cursor or 0),
            session=None if session is None else SessionKey(user_id, session.id),
            is_tab=True,
            takes_over=session is not None and tab_strategy(session) == "active_tab_wins",
        )
        return sse_response(stream, self._services.settings.heartbeat_seconds)

    async def stop(self, request: Request) -> Response:
        user_id = await self._services.authenticate(request)
        thread_id = require_id(IdKind.THREAD, request.path_params["thread_id"], "thread id")
        stopped = await self._server.stop(user_id, thread_id)
        return JSONResponse({"stopped": stopped})
