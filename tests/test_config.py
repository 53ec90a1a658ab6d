"""Settings: the OpenAI ones fall back to the conventional OPENAI_* variables, never over ours."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from chatserver.config import Settings

VARIABLES = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "CHATSERVER_OPENAI_API_KEY",
    "CHATSERVER_OPENAI_BASE_URL",
    "CHATSERVER_RESPONDER",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No variable of the machine's, and a working directory whose .env the test writes."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def openai_of(settings: Settings) -> tuple[str | None, str | None]:
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    return key, settings.openai_base_url


def test_nothing_configured_means_no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()

    assert openai_of(settings) == (None, None)
    assert not settings.openai_configured


def test_openai_settings_fall_back_to_the_conventional_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-conventional")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:11434/v1")

    settings = Settings()

    assert openai_of(settings) == ("sk-conventional", "http://localhost:11434/v1")
    assert settings.openai_configured


def test_conventional_variables_are_read_from_dotenv_too() -> None:
    Path(".env").write_text("OPENAI_BASE_URL=http://vllm:8000/v1\n")

    assert openai_of(Settings()) == (None, "http://vllm:8000/v1")


def test_chatserver_variables_win_over_conventional_ones_wherever_each_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-conventional")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://conventional/v1")
    monkeypatch.setenv("CHATSERVER_OPENAI_BASE_URL", "http://ours/v1")
    Path(".env").write_text("CHATSERVER_OPENAI_API_KEY=sk-ours-in-dotenv\n")

    assert openai_of(Settings()) == ("sk-ours-in-dotenv", "http://ours/v1")
    assert openai_of(Settings(openai_api_key="sk-given")) == ("sk-given", "http://ours/v1")


def test_openai_responder_without_key_or_base_url_is_refused() -> None:
    with pytest.raises(ValidationError, match="responder openai needs"):
        Settings(responder="openai")

    assert Settings(responder="openai", openai_base_url="http://local/v1").responder == "openai"


def test_a_copied_env_example_leaves_the_conventional_key_in_charge(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    example = Path(__file__).resolve().parents[1] / ".env.example"
    Path(".env").write_text(example.read_text())
    monkeypatch.setenv("OPENAI_API_KEY", "sk-conventional")

    settings = Settings()

    assert openai_of(settings) == ("sk-conventional", None)
    assert settings.responder == "auto"
    assert settings.openai_configured


def test_env_example_lists_every_setting_with_its_default() -> None:
    example = Path(__file__).resolve().parents[1] / ".env.example"
    listed = {
        line.split("=", 1)[0].removeprefix("CHATSERVER_").lower(): line.split("=", 1)[1]
        for line in example.read_text().splitlines()
        if line.startswith("CHATSERVER_")
    }

    assert set(listed) == set(Settings.model_fields)
    defaults = Settings.model_construct()
    for name, text in listed.items():
        default = getattr(defaults, name)
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        # `NAME=` stands for unset (None), which the settings read the same way.
        expected = "" if default is None else str(default)
        assert text == expected, name


@pytest.mark.parametrize("token", ["", None])
def test_an_empty_admin_token_means_no_admin_endpoints(token: str | None) -> None:
    assert Settings(_env_file=None, admin_token=token).admin_token is None  # type: ignore[call-arg]


def test_a_short_admin_token_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least 16 characters"):
        Settings(_env_file=None, admin_token="guessable")  # type: ignore[call-arg]
