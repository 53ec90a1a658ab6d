"""`/sessions`: create, inspect, update and close sessions; and how a request names its session
(`X-Session-Id`, or `?session_id=` where EventSource cannot set headers) and its tab
(`X-Tab-Id` / `?tab_id=`, which matters under `tab_strategy=per_tab`: see chatserver/tabs.py)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from chatserver.http.bodies import parse_body, read_body
from chatserver.http.middleware import add_response_header
from chatserver.http.services import Services
from chatserver.sessions import RequestContext, Session
from chatserver.tabs import check_tab_id, check_tab_strategy, tab_context

SESSION_HEADER = "X-Session-Id"
TAB_HEADER = "X-Tab-Id"
# Under `per_tab`, the tab's own session (the client keeps naming the one it chose).
TAB_SESSION_HEADER = "X-Tab-Session-Id"


class SessionPublic(BaseModel):
    id: str
    state: str
    timeout_policy: str
    timeout_seconds: int
    expires_at: datetime
    created_at: datetime
    last_activity_at: datetime
    resume_count: int
    turn_count: int
    metadata: dict[str, Any]
    thread_id: str | None

    @classmethod
    def of(cls, session: Session) -> SessionPublic:
        return cls(
            id=session.id,
            state=session.state,
            timeout_policy=session.timeout_policy,
            timeout_seconds=session.timeout_seconds,
            expires_at=session.expires_at,
            created_at=session.created_at,
            last_activity_at=session.last_activity_at,
            resume_count=session.resume_count,
            turn_count=session.turn_count,
            metadata=dict(session.metadata),
            thread_id=session.thread_id,
        )


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metadata: dict[str, Any] = Field(default_factory=dict)


class SessionPatch(BaseModel):
    """Merged into the session's metadata (a `null` value removes that key)."""

    model_config = ConfigDict(extra="forbid")
    metadata: dict[str, Any] = Field(default_factory=dict)


def requested_session_id(request: Request, *, allow_query: bool = False) -> str | None:
    session_id = request.headers.get(SESSION_HEADER)
    if session_id is None and allow_query:
        session_id = request.query_params.get("session_id")
    return session_id


def requested_tab_id(request: Request, *, allow_query: bool = False) -> str | None:
    tab_id = request.headers.get(TAB_HEADER)
    if tab_id is None and allow_query:
        tab_id = request.query_params.get("tab_id")
    return None if tab_id is None else check_tab_id(tab_id)


async def session_context(
    services: Services,
    request: Request,
    user_id: str,
    session_id: str | None,
    *,
    request_metadata: Mapping[str, Any] | None = None,
    allow_query: bool = False,
) -> RequestContext:
    """Resume the named session or create it; unnamed, resume the user's latest live
    session or create one. Tell the client its id. A named `per_tab` session gives the
    request's tab its own session, which the context is then of."""
    tab_id = requested_tab_id(request, allow_query=allow_query)
    sessions = services.server.sessions
    context = await sessions.context(
        user_id, session_id, request_metadata=request_metadata, reuse_latest=True
    )
    add_response_header(request, SESSION_HEADER, context.session.id)
    if session_id is None:
        return context
    tab = await tab_context(sessions, context, tab_id)
    if tab is not context:
        add_response_header(request, TAB_SESSION_HEADER, tab.session.id)
    return tab


def _json(session: Session, status: int = 200) -> Response:
    return Response(
        SessionPublic.of(session).model_dump_json(),
        status_code=status,
        media_type="application/json",
    )


class SessionEndpoints:
    def __init__(self, services: Services) -> None:
        self._services = services
        self._sessions = services.server.sessions

    async def create(self, request: Request) -> Response:
        user_id = await self._services.authenticate(request)
        body = parse_body(SessionCreate, await self._body(request))
        check_tab_strategy(body.metadata)
        context = await self._sessions.context(user_id, None, body.metadata)
        add_response_header(request, SESSION_HEADER, context.session.id)
        return _json(context.session, status=201)

    async def get(self, request: Request) -> Response:
        user_id = await self._services.authenticate(request)
        return _json(await self._sessions.get(user_id, request.path_params["session_id"]))

    async def update(self, request: Request) -> Response:
        user_id = await self._services.authenticate(request)
        patch = parse_body(SessionPatch, await self._body(request))
        check_tab_strategy(patch.metadata)
        session_id = request.path_params["session_id"]
        return _json(await self._sessions.update(user_id, session_id, patch.metadata, merge=True))

    async def close(self, request: Request) -> Response:
        user_id = await self._services.authenticate(request)
        return _json(await self._sessions.close(user_id, request.path_params["session_id"]))

    async def _body(self, request: Request) -> bytes:
        return await read_body(request, self._services.settings.max_body_bytes)
