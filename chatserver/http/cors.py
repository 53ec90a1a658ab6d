"""Cross-origin access for browser clients on other origins (`Settings.cors_origins`).

Listed origins may send credentials (the anonymous-user cookie); `*` allows any origin but
without credentials, since echoing every origin with credentials would let any site act as
the visitor's anonymous user. The cookie is `SameSite=Lax`: browsers send it to another
origin of the same site (app.example.com → api.example.com), not across sites.
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from chatserver.config import Settings
from chatserver.http.chatkit import IDEMPOTENCY_HEADER, SNAPSHOT_SEQ_HEADER
from chatserver.http.sessions import SESSION_HEADER

TAB_HEADER = "X-Tab-Id"
ALLOWED_METHODS = ("GET", "POST", "PATCH", "DELETE")
ALLOWED_HEADERS = (
    "Authorization",
    "Content-Type",
    SESSION_HEADER,
    TAB_HEADER,
    IDEMPOTENCY_HEADER,
    "Last-Event-ID",
)
EXPOSED_HEADERS = (SESSION_HEADER, SNAPSHOT_SEQ_HEADER)
# Browsers may cache a preflight answer this long (they cap it themselves: 2 h in Chromium).
_PREFLIGHT_MAX_AGE_SECONDS = 600


def cors_middleware(settings: Settings) -> list[Middleware]:
    """The CORS layer, outermost so that every answer (errors too) carries its headers; none
    when no origin is configured."""
    origins = settings.cors_origin_list()
    if not origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_credentials="*" not in origins,
            allow_methods=ALLOWED_METHODS,
            allow_headers=ALLOWED_HEADERS,
            expose_headers=EXPOSED_HEADERS,
            max_age=_PREFLIGHT_MAX_AGE_SECONDS,
        )
    ]
