"""`create_default_app` (what `chatserver serve` runs) picks its responder from the settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chatserver.app import create_default_app
from chatserver.config import Settings
from chatserver.http.services import Services
from chatserver.responders.echo import EchoChatServer
from chatserver.responders.openai import OpenAIChatServer

CASES = {
    "auto_without_model": ({}, EchoChatServer, "responder: echo (offline;"),
    "auto_with_key": (
        {"openai_api_key": "sk-test"},
        OpenAIChatServer,
        "responder: openai, model gpt-4o-mini at the OpenAI API",
    ),
    "auto_with_base_url": (
        {"openai_base_url": "http://localhost:11434/v1", "openai_model": "llama3.2"},
        OpenAIChatServer,
        "responder: openai, model llama3.2 at http://localhost:11434/v1",
    ),
    "echo_chosen_over_a_key": (
        {"responder": "echo", "openai_api_key": "sk-test"},
        EchoChatServer,
        "responder: echo",
    ),
    "openai_chosen": (
        {"responder": "openai", "openai_base_url": "http://local/v1"},
        OpenAIChatServer,
        "responder: openai, model gpt-4o-mini at http://local/v1",
    ),
}


@pytest.mark.parametrize(("options", "expected", "logged"), CASES.values(), ids=CASES)
async def test_default_app_runs_and_logs_the_configured_responder(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    options: dict[str, Any],
    expected: type,
    logged: str,
) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'db'}", **options)
    caplog.set_level("INFO", logger="chatserver.app")

    app = create_default_app(settings)

    services: Services = app.state.services
    server = services.server
    try:
        assert type(server) is expected
        [message] = [r.getMessage() for r in caplog.records if r.name == "chatserver.app"]
        assert message.startswith(logged)
    finally:
        await server.close()
        await server.store.close()
