"""`/` and `/widget/...`: the demo page and the widget's files, served from the package."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from chatserver.app import create_app
from chatserver.config import Settings
from chatserver.http.widget import DEMO_PAGE, STATIC_DIR, WIDGET_DIR
from chatserver.responders.echo import EchoChatServer
from chatserver.store import Store

ROOT = Path(__file__).resolve().parents[2]
# `import ... from "./x.js"` and `import("./x.js")`: every module the widget loads.
IMPORT = re.compile(r"""(?:\bfrom\s*|\bimport\s*\(?\s*)["']([^"']+)["']""")


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    # Static routes touch neither the database nor the lifespan: ASGI in process is enough.
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}")
    app = create_app(EchoChatServer(store, Settings()))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client
    await store.close()


async def test_root_is_the_demo_page_with_the_widget_full_screen(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/")

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.text == DEMO_PAGE.read_text()
    assert "data-chatserver" in response.text
    assert '<script type="module" src="/widget/chatserver.js"></script>' in response.text
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp


async def test_every_module_the_widget_imports_is_served_as_javascript_from_here(
    client: httpx.AsyncClient,
) -> None:
    pending = ["chatserver.js"]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        response = await client.get(f"/widget/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"] == "text/javascript; charset=utf-8", name
        assert response.headers["x-content-type-options"] == "nosniff"
        for specifier in IMPORT.findall(response.text):
            # No CDN, no bare package names a bundler would resolve: files next to it only.
            assert specifier.startswith("./"), (name, specifier)
            pending.append(str(Path(name).parent / specifier.removeprefix("./")))
    on_disk = {str(p.relative_to(WIDGET_DIR)) for p in WIDGET_DIR.rglob("*.js")}
    on_disk |= {str(p.relative_to(WIDGET_DIR)) for p in WIDGET_DIR.rglob("*.mjs")}
    assert seen == on_disk


async def test_widget_files_revalidate_and_unknown_ones_are_json_404s(
    client: httpx.AsyncClient,
) -> None:
    css = await client.get("/widget/chatserver.css")
    etag = css.headers["etag"]
    again = await client.get("/widget/chatserver.css", headers={"If-None-Match": etag})
    missing = await client.get("/widget/nope.js")
    outside = await client.get("/widget/%2e%2e/index.html")

    assert css.status_code == 200
    assert css.headers["content-type"] == "text/css; charset=utf-8"
    assert css.headers["cache-control"] == "no-cache"
    assert again.status_code == 304
    for refused in (missing, outside):
        assert refused.status_code == 404
        assert refused.json()["error"]["code"] == "not_found"


def test_vendored_libraries_are_the_recorded_npm_releases() -> None:
    vendor = WIDGET_DIR / "vendor"
    recorded = re.findall(r"^([0-9a-f]{64})  (\S+)$", (vendor / "README.md").read_text(), re.M)
    assert {name for _, name in recorded} == {"marked.esm.js", "purify.es.mjs"}
    for digest, name in recorded:
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name
    for licence in ("LICENSE-marked.md", "LICENSE-dompurify", "LICENSE-dompurify-MPL"):
        assert (vendor / licence).stat().st_size > 0


@pytest.mark.slow
def test_a_built_wheel_carries_every_static_file(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("chatserver-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packed = set(archive.namelist())
    static = {
        str(path.relative_to(ROOT))
        for path in STATIC_DIR.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert static and static <= packed, static - packed
