"""The operator's endpoints: `GET /stats` (session analytics from the database, JSON) and
`GET /metrics` (Prometheus text). Both need `Authorization: Bearer <CHATSERVER_ADMIN_TOKEN>`;
without a configured admin token they do not exist (404), and a missing or wrong token is
401. User tokens never open them: they identify users, not operators."""

from __future__ import annotations

import secrets

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chatserver.config import CUSTOM_POLICY
from chatserver.errors import BadRequest, ErrorCode
from chatserver.http.errors import error_response
from chatserver.http.services import Services
from chatserver.metrics import stats_document

_HOURS = (1, 24 * 31)
_TOP = (1, 1000)


class AdminEndpoints:
    def __init__(self, services: Services) -> None:
        self._services = services
        self._server = services.server
        token = services.settings.admin_token
        self._token = None if token is None else token.get_secret_value().encode()

    async def stats(self, request: Request) -> Response:
        if (refused := self._refusal(request)) is not None:
            return refused
        hours = _bounded_int(request, "hours", 24, _HOURS)
        top = _bounded_int(request, "top", 10, _TOP)
        now = self._server.clock.now()
        stats = await self._server.store.session_stats(now, hours=hours, top=top)
        policies = [*self._services.settings.policy_seconds(), CUSTOM_POLICY]
        return JSONResponse(stats_document(stats, generated_at=now, hours=hours, policies=policies))

    async def metrics(self, request: Request) -> Response:
        if (refused := self._refusal(request)) is not None:
            return refused
        body, content_type = await self._services.metrics.exposition(request.headers.get("accept"))
        return Response(body, headers={"Content-Type": content_type})

    def _refusal(self, request: Request) -> Response | None:
        """None if the request carries the admin token; else the answer it gets."""
        if self._token is None:
            # Exactly what a path that does not exist answers.
            raise HTTPException(404)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and secrets.compare_digest(
            given.strip().encode(), self._token
        ):
            return None
        return error_response(
            ErrorCode.UNAUTHORIZED,
            "this endpoint needs the admin token: Authorization: Bearer <token>",
            headers={"WWW-Authenticate": 'Bearer realm="chatserver-admin"'},
        )


def _bounded_int(request: Request, name: str, default: int, bounds: tuple[int, int]) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    low, high = bounds
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}")
    return int(raw)
