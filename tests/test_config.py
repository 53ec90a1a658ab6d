"""Settings: the OpenAI ones fall back to the conventional OPENAI_* variables, never over ours."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


# -- settings refused: what cannot work or is unsafe ---------------------------------------


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def refusal(**values: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        settings(**values)
    [problem] = caught.value.errors()
    return str(problem["msg"])


def test_no_secret_key_by_default_and_an_empty_one_is_none() -> None:
    assert settings().secret_key is None
    assert settings(secret_key="").secret_key is None


@pytest.mark.parametrize("key", ["change-me-in-production", "short", "x" * 31])
def test_a_short_secret_key_is_refused(key: str) -> None:
    assert "at least 32 characters" in refusal(secret_key=key)


def test_a_long_secret_key_is_kept() -> None:
    key = settings(secret_key="x" * 32).secret_key
    assert key is not None and key.get_secret_value() == "x" * 32


def test_a_bearer_user_cannot_be_named_like_an_anonymous_one() -> None:
    assert "'anon_bob'" in refusal(bearer_tokens="t1:alice, t2:anon_bob")
    assert settings(bearer_tokens="t1:alice,t2:bob").bearer_token_users() == {
        "t1": "alice",
        "t2": "bob",
    }


@pytest.mark.parametrize(
    "url",
    [
        "postgres://u@h/db",
        "postgresql://u@h/db",
        "postgresql+asyncpg://u@h/db",
        "sqlite:///x.db",
        "mysql+aiomysql://u@h/db",
        "not a url",
    ],
)
def test_a_database_url_the_store_cannot_use_is_refused(url: str) -> None:
    message = refusal(database_url=url)
    assert "sqlite+aiosqlite://" in message or "not a database URL" in message


def test_cors_origins_are_a_comma_separated_list() -> None:
    assert settings().cors_origin_list() == []
    origins = settings(cors_origins=" https://a.example, https://b.example:8443 ,")
    assert origins.cors_origin_list() == ["https://a.example", "https://b.example:8443"]
