"""Settings refuse what cannot work or is unsafe, each with a message that says why."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from chatserver.config import Settings


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


def test_env_example_lists_every_setting_with_its_default() -> None:
    example = Path(__file__).resolve().parents[1] / ".env.example"
    names = set(re.findall(r"^CHATSERVER_(\w+)=", example.read_text(), re.MULTILINE))

    assert names == {name.upper() for name in Settings.model_fields}
    assert Settings(_env_file=example) == settings()  # type: ignore[call-arg]
