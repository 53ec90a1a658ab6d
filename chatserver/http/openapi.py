"""The OpenAPI description of our own endpoints (`/chatkit` is ChatKit's protocol, documented
by ChatKit). Written as data in one place; the body schemas come from the pydantic models."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chatserver.http.sessions import (
    SESSION_HEADER,
    TAB_HEADER,
    TAB_SESSION_HEADER,
    SessionCreate,
    SessionPatch,
    SessionPublic,
)

_REF = "#/components/schemas/{model}"


def _schema(model: type[Any]) -> dict[str, Any]:
    schema: dict[str, Any] = model.model_json_schema(ref_template=_REF)
    return schema


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(status): {"description": "error", "content": _json_content(_ref("Error"))}
        for status in statuses
    }


def _session_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json_content(_ref("Session"))}


_SESSION_ID = {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}}
_THREAD_ID = {"name": "thread_id", "in": "path", "required": True, "schema": {"type": "string"}}

_EVENTS = {
    "summary": "Stream a thread's events: stored after the cursor, then live, across turns",
    "parameters": [
        _THREAD_ID,
        {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
        {"name": "Last-Event-ID", "in": "header", "schema": {"type": "integer", "minimum": 0}},
        {"name": "session_id", "in": "query", "schema": {"type": "string"}},
        {"name": SESSION_HEADER, "in": "header", "schema": {"type": "string"}},
        {"name": "tab_id", "in": "query", "schema": {"type": "string"}},
        {"name": TAB_HEADER, "in": "header", "schema": {"type": "string"}},
    ],
    "responses": {
        "200": {
            "description": (
                f"Server-sent events; `id:` is the event's seq. Under `per_tab`, the tab's own "
                f"session is named in `{TAB_SESSION_HEADER}`"
            ),
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **_errors(400, 401, 404, 503),
    },
}


def build_schema() -> dict[str, Any]:
    session_body = {"content": _json_content(_ref("SessionCreate"))}
    patch_body = {"content": _json_content(_ref("SessionPatch"))}
    status = {"type": "object", "properties": {"status": {"type": "string"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "chatserver", "version": "0.1.0"},
        "paths": {
            "/sessions": {
                "post": {
                    "summary": "Create a session",
                    "requestBody": session_body,
                    "responses": {"201": _session_response("created"), **_errors(400, 401, 408)},
                }
            },
            "/sessions/{session_id}": {
                "parameters": [_SESSION_ID],
                "get": {
                    "summary": "A session as it is (expired and closed ones too)",
                    "responses": {
                        "200": _session_response("the session"),
                        **_errors(400, 401, 404),
                    },
                },
                "patch": {
                    "summary": "Merge metadata (policy, tab strategy); recomputes expiry",
                    "requestBody": patch_body,
                    "responses": {
                        "200": _session_response("updated"),
                        **_errors(400, 401, 404, 408),
                    },
                },
                "delete": {
                    "summary": "Close the session",
                    "responses": {"200": _session_response("closed"), **_errors(400, 401, 404)},
                },
            },
            "/threads/{thread_id}/events": {"get": _EVENTS},
            "/threads/{thread_id}/stop": {
                "post": {
                    "summary": "Cancel the thread's running turn, keeping its partial answer",
                    "parameters": [_THREAD_ID],
                    "responses": {
                        "200": {
                            "description": "whether a turn was running",
                            "content": _json_content(
                                {"type": "object", "properties": {"stopped": {"type": "boolean"}}}
                            ),
                        },
                        **_errors(400, 401, 404),
                    },
                }
            },
            "/stats": {
                "get": {
                    "summary": "Session analytics from the database (admin token)",
                    "security": [{"adminToken": []}],
                    "parameters": [
                        {
                            "name": "hours",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 744},
                        },
                        {
                            "name": "top",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "sessions by state and policy, durations, top "
                            "users, expiries and cleanups per hour",
                            "content": _json_content({"type": "object"}),
                        },
                        **_errors(400, 401, 404),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics of this process (admin token)",
                    "security": [{"adminToken": []}],
                    "responses": {
                        "200": {
                            "description": "Prometheus text format (OpenMetrics if asked)",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_errors(401, 404),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "The process is up",
                    "responses": {"200": {"description": "ok", "content": _json_content(status)}},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "The database is reachable",
                    "responses": {
                        "200": {"description": "ready", "content": _json_content(status)},
                        **_errors(503),
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Session": _schema(SessionPublic),
                "SessionCreate": _schema(SessionCreate),
                "SessionPatch": _schema(SessionPatch),
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        }
                    },
                },
            },
        },
    }


class OpenApiEndpoint:
    def __init__(self) -> None:
        self._schema = build_schema()

    async def handle(self, _request: Request) -> Response:
        return JSONResponse(self._schema)
