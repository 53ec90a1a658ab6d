"""Settings: `.env.example` lists every setting with its default, and settings that would
mislead are refused at startup."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from chatserver.config import Settings

EXAMPLE = Path(__file__).resolve().parents[1] / ".env.example"


def test_env_example_lists_every_setting_with_its_default() -> None:
    names = {
        line.split("=", 1)[0].removeprefix("CHATSERVER_").lower()
        for line in EXAMPLE.read_text().splitlines()
        if line.startswith("CHATSERVER_")
    }

    assert names == set(Settings.model_fields)
    assert Settings(_env_file=EXAMPLE) == Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.mark.parametrize("token", ["", None])
def test_an_empty_admin_token_means_no_admin_endpoints(token: str | None) -> None:
    assert Settings(_env_file=None, admin_token=token).admin_token is None  # type: ignore[call-arg]


def test_a_short_admin_token_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least 16 characters"):
        Settings(_env_file=None, admin_token="guessable")  # type: ignore[call-arg]
