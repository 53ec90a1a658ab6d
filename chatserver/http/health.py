"""`/healthz`: the process answers. `/readyz`: it can also reach its database."""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chatserver.errors import ErrorCode
from chatserver.http.errors import error_response
from chatserver.http.services import Services

logger = logging.getLogger(__name__)

# A database that does not answer in time is as unready as one that refuses.
_PING_TIMEOUT_SECONDS = 5.0


class HealthEndpoints:
    def __init__(self, services: Services) -> None:
        self._store = services.server.store

    async def live(self, _request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(self, _request: Request) -> Response:
        try:
            await asyncio.wait_for(self._store.ping(), _PING_TIMEOUT_SECONDS)
        except Exception as exc:
            logger.warning("readiness check failed: %r", exc)
            return error_response(ErrorCode.UNAVAILABLE, "the database is not reachable")
        return JSONResponse({"status": "ready"})
