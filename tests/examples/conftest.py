"""Every example runs for real: the servers under uvicorn on the test database, the clients
against them, the model examples against the fake OpenAI-compatible server."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from starlette.applications import Starlette

from chatserver.config import Settings
from tests.http.http_harness import TOKENS, RunningApp
from tests.responders.conftest import fake_openai  # noqa: F401  (a fixture the tests use)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

Serve = Callable[[Starlette], Awaitable[RunningApp]]


def load_example(name: str) -> ModuleType:
    """Import examples/<name>.py as a module, the way `python examples/<name>.py` reads it."""
    module_name = f"example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def settings(database_url: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        options: dict[str, Any] = {
            "database_url": database_url,
            "bearer_tokens": ",".join(f"{token}:{user}" for user, token in TOKENS.items()),
            "commit_window_ms": 2,
            "shutdown_grace_seconds": 1,
        }
        return Settings(**(options | overrides))

    return make


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    running: list[RunningApp] = []

    async def start(app: Starlette) -> RunningApp:
        running.append(await RunningApp.start(app))
        return running[-1]

    try:
        yield start
    finally:
        for app in running:
            await app.stop()
