"""`chatserver serve --responder`: the command line chooses what answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import uvicorn

from chatserver import cli
from chatserver.responders.echo import EchoChatServer
from chatserver.responders.openai import OpenAIChatServer


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Any]:
    """The apps `serve` would run; uvicorn itself is not started."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "CHATSERVER_OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    apps: list[Any] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda server, *_: apps.append(server.config.app))
    return apps


def serve(*options: str) -> int:
    return cli.main(["serve", "--database-url", "sqlite+aiosqlite:///./chat.db", *options])


def test_responder_option_overrides_the_automatic_choice(
    served: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHATSERVER_OPENAI_BASE_URL", "http://localhost:11434/v1")

    assert serve() == 0
    assert serve("--responder", "echo") == 0

    assert [type(app.state.services.server) for app in served] == [
        OpenAIChatServer,
        EchoChatServer,
    ]


def test_responder_openai_without_a_model_service_exits_with_one_clear_message(
    served: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert serve("--responder", "openai") == 2

    assert served == []
    assert "responder openai needs CHATSERVER_OPENAI_API_KEY" in capsys.readouterr().err
