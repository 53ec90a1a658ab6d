"""`/sessions`: create, inspect, update and close sessions; and how a request names its session
(`X-Session-Id`, or `?session_id=` where EventSource cannot set headers)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, cast, get_args

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from chatserver.errors import BadRequest
from chatserver.http.bodies import parse_body, read_body
from chatserver.http.middleware import add_response_header
from chatserver.http.services import Services
from chatserver.sessions import RequestContext, Session

SESSION_HEADER = "X-Session-Id"

TabStrategy = Literal["shared", "per_tab", "active_tab_wins"]
TAB_STRATEGIES: tuple[str, ...] = get_args(TabStrategy)


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


def tab_strategy(session: Session) -> TabStrategy:
    value = session.metadata.get("tab_strategy")
    return cast(TabStrategy, value) if value in TAB_STRATEGIES else "shared"


def requested_session_id(request: Request, *, allow_query: bool = False) -> str | None:
    session_id = request.headers.get(SESSION_HEADER)
    if session_id is None and allow_query:
        session_id = request.query_params.get("session_id")
    return session_id


async def session_context(
    services: Services,
    request: Request,
    user_id: str,
    session_id: str | None,
    *,
    request_metadata: Mapping[str, Any] | None = None,
) -> RequestContext:
    """Resume the named session or create it; unnamed, resume the user's latest live
    session or create one. Tell the client its id."""
    context = await services.server.sessions.context(
        user_id, session_id, request_metadata=request_metadata, reuse_latest=True
    )
    add_response_header(request, SESSION_HEADER, context.session.id)
    return context


def _check_metadata(metadata: Mapping[str, Any]) -> None:
    strategy = metadata.get("tab_strategy")
    if strategy is not None and strategy not in TAB_STRATEGIES:
        raise BadRequest(
            f"unknown tab_strategy {strategy!r}; known strategies: {', '.join(TAB_STRATEGIES)}"
        )


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
        return _json(await self._sessions.get(user_id, request.path_params["session_id"]))

    async def update(self, request: Request) -> Response:
        user_id = await self._services.authenticate(request)
        patch = parse_body(SessionPatch, await self._body(request))
        _check_metadata(patch.metadata)
        session_id = request.path_params["session_id"]
        return _json(await self._sessions.update(user_id, session_id, patch.metadata, merge=True))

    async def close(self, request: Request) -> Response:
        user_id = await self._services.authenticate(request)
        return _json(await self._sessions.close(user_id, request.path_params["session_id"]))

    async def _body(self, request: Request) -> bytes:
        return await read_body(request, self._services.settings.max_body_bytes)
