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
from chatserver.http.validation import require_id, require_storable
from chatserver.ids import IdKind
from chatserver.sessions import RequestContext, Session
from chatserver.tabs import TAB_STRATEGIES, check_tab_id, check_tab_strategy, tab_context

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


# The metadata keys the server reads; any other key is the application's, kept as given.
METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": (
        "Free-form JSON, kept with the session. The server reads three keys; keys and string "
        "values must not contain U+0000."
    ),
    "properties": {
        "timeout_policy": {
            "type": "string",
            "enum": ["aggressive", "standard", "lenient", "persistent"],
            "description": (
                "Idle time before the session expires: aggressive 10 min, standard 30 min "
                "(default), lenient 4 h, persistent 7 days (durations configurable)."
            ),
        },
        "timeout_seconds": {
            "type": "integer",
            "description": (
                "A custom idle timeout in seconds, within the server's bounds (default 60 s to "
                "30 days); wins over timeout_policy."
            ),
        },
        "tab_strategy": {
            "type": "string",
            "enum": list(TAB_STRATEGIES),
            "description": (
                "How tabs naming this session share it: shared (default) - every tab streams; "
                "per_tab - the client gives each tab its own session, this one is not shared; "
                "active_tab_wins - a tab opening the thread stream ends the session's older "
                "tab streams with a session.superseded event."
            ),
        },
    },
    "additionalProperties": True,
}


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metadata: dict[str, Any] = Field(default_factory=dict, json_schema_extra=METADATA_SCHEMA)


class SessionPatch(BaseModel):
    """Merged into the session's metadata (a `null` value removes that key)."""

    model_config = ConfigDict(extra="forbid")
    metadata: dict[str, Any] = Field(default_factory=dict, json_schema_extra=METADATA_SCHEMA)


def requested_session_id(request: Request, *, allow_query: bool = False) -> str | None:
    session_id = request.headers.get(SESSION_HEADER)
    if session_id is None and allow_query:
        session_id = request.query_params.get("session_id")
    if session_id is None:
        return None
    return require_id(IdKind.SESSION, session_id, "session id")


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


def _check_metadata(metadata: Mapping[str, Any]) -> None:
    require_storable(metadata)
    check_tab_strategy(metadata)


def _path_session_id(request: Request) -> str:
    return require_id(IdKind.SESSION, request.path_params["session_id"], "session id")


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
        _check_metadata(body.metadata)
        context = await self._sessions.context(user_id, None, body.metadata)
        add_response_header(request, SESSION_HEADER, context.session.id)
        return _json(context.session, status=201)

    async def get(self, request: Request) -> Response:
        user_id = await self._services.authenticate(request)
        return _json(await self._sessions.get(user_id, _path_session_id(request)))

    async def update(self, request: Request) -> Response:
        user_id = await self._services.authenticate(request)
        session_id = _path_session_id(request)
        patch = parse_body(SessionPatch, await self._body(request))
        _check_metadata(patch.metadata)
        return _json(await self._sessions.update(user_id, session_id, patch.metadata, merge=True))

    async def close(self, request: Request) -> Response:
        user_id = await self._services.authenticate(request)
        return _json(await self._sessions.close(user_id, _path_session_id(request)))

    async def _body(self, request: Request) -> bytes:
        settings = self._services.settings
        return await read_body(
            request,
            limit=settings.max_body_bytes,
            deadline_seconds=settings.body_read_timeout_seconds,
        )
