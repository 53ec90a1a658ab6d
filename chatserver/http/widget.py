"""The browser widget: `/` is a demo page with the widget full-screen, `/widget/...` serves
its files (plain ES modules and CSS, shipped as package data: no build step, nothing fetched
from another origin)."""

from __future__ import annotations

import os
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import NotModifiedResponse, StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
WIDGET_DIR = STATIC_DIR / "widget"
DEMO_PAGE = STATIC_DIR / "index.html"

# Set here, not guessed from the platform's MIME table: browsers refuse a module script
# served as anything but JavaScript, and some systems map `.js` to text/plain.
_MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".html": "text/html; charset=utf-8",
}
_TEXT = "text/plain; charset=utf-8"

# Unversioned file names: the browser keeps its copy but revalidates it (a 304 when
# unchanged), so an upgraded server never runs against a stale widget.
_ASSET_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

# The demo page runs only the widget's own files and talks only to this server; should a
# payload ever slip past the widget's sanitiser, the browser still refuses to run it.
DEMO_CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)


class WidgetFiles(StaticFiles):
    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        media_type = _MEDIA_TYPES.get(Path(full_path).suffix, _TEXT)
        response = FileResponse(
            full_path,
            status_code=status_code,
            stat_result=stat_result,
            media_type=media_type,
            headers=_ASSET_HEADERS,
        )
        if self.is_not_modified(response.headers, Request(scope).headers):
            return NotModifiedResponse(response.headers)
        return response


async def demo_page(_request: Request) -> Response:
    return FileResponse(
        DEMO_PAGE,
        media_type=_MEDIA_TYPES[".html"],
        headers={**_ASSET_HEADERS, "Content-Security-Policy": DEMO_CSP},
    )


def widget_routes() -> list[BaseRoute]:
    return [
        Route("/", demo_page, methods=["GET"]),
        Mount("/widget", app=WidgetFiles(directory=WIDGET_DIR), name="widget"),
    ]
