"""Request metrics: one counter and one histogram observation per request, labelled by the
route template (never the raw path, whose ids would make a series per thread)."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatserver.metrics import UNMATCHED_ROUTE, Metrics


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                # The router has run by now and left the route it matched in the scope.
                path = getattr(scope.get("route"), "path", None)
                self.metrics.observe_request(
                    path if isinstance(path, str) else UNMATCHED_ROUTE,
                    scope["method"],
                    message["status"],
                    time.perf_counter() - started,
                )
            await send(message)

        await self.app(scope, receive, observed)
