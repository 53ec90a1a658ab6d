"""Every HTTP route of the app, in one table."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from chatserver.http.admin import AdminEndpoints
from chatserver.http.chatkit import ChatKitEndpoint
from chatserver.http.health import HealthEndpoints
from chatserver.http.openapi import OpenApiEndpoint
from chatserver.http.services import Services
from chatserver.http.sessions import SessionEndpoints
from chatserver.http.threads import ThreadEndpoints
from chatserver.http.widget import widget_routes


def routes(services: Services) -> list[BaseRoute]:
    chatkit = ChatKitEndpoint(services)
    sessions = SessionEndpoints(services)
    threads = ThreadEndpoints(services)
    health = HealthEndpoints(services)
    admin = AdminEndpoints(services)
    return [
        Route("/chatkit", chatkit.handle, methods=["POST"]),
        Route("/threads/{thread_id}/events", threads.events, methods=["GET"]),
        Route("/threads/{thread_id}/stop", threads.stop, methods=["POST"]),
        Route("/sessions", sessions.create, methods=["POST"]),
        Route("/sessions/{session_id}", sessions.get, methods=["GET"]),
        Route("/sessions/{session_id}", sessions.update, methods=["PATCH"]),
        Route("/sessions/{session_id}", sessions.close, methods=["DELETE"]),
        Route("/healthz", health.live, methods=["GET"]),
        Route("/readyz", health.ready, methods=["GET"]),
        Route("/stats", admin.stats, methods=["GET"]),
        Route("/metrics", admin.metrics, methods=["GET"]),
        Route("/openapi.json", OpenApiEndpoint().handle, methods=["GET"]),
        *widget_routes(),
    ]
