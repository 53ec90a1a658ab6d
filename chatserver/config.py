"""Settings from the environment (CHATSERVER_*) and `.env`. Built explicitly, never at import."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from dotenv import dotenv_values
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DoubleTexting = Literal["queue", "reject", "interrupt"]
CleanupStrategy = Literal["immediate", "deferred", "lazy"]
# `auto`: the OpenAI responder when an API key or base URL is configured, else the echo.
ResponderChoice = Literal["auto", "echo", "openai"]
# The policy of a session whose timeout was given in seconds rather than by name.
CUSTOM_POLICY = "custom"
_MIN_ADMIN_TOKEN_LENGTH = 16

# The drivers the Store speaks: async SQLAlchemy, and psycopg 3 for PostgreSQL's hot path.
DATABASE_DRIVERS = ("sqlite+aiosqlite", "postgresql+psycopg")
# Anonymous users are `anon_<token>`: no configured user may look like one.
ANONYMOUS_PREFIX = "anon_"
MIN_SECRET_KEY_LENGTH = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CHATSERVER_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        # `NAME=` (as in a copied .env.example) means unset: the default, or the fallback.
        env_ignore_empty=True,
    )

    database_url: str = "sqlite+aiosqlite:///./chatserver.db"
    database_pool_size: int = Field(default=10, ge=1)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)

    # Session timeouts in seconds, by policy name (metadata `timeout_policy`).
    policy_aggressive_seconds: int = Field(default=10 * 60, gt=0)
    policy_standard_seconds: int = Field(default=30 * 60, gt=0)
    policy_lenient_seconds: int = Field(default=4 * 60 * 60, gt=0)
    policy_persistent_seconds: int = Field(default=7 * 24 * 60 * 60, gt=0)
    default_timeout_policy: str = "standard"
    # Bounds for a custom metadata `timeout_seconds`.
    min_timeout_seconds: int = Field(default=60, gt=0)
    max_timeout_seconds: int = Field(default=30 * 24 * 60 * 60, gt=0)
    # An unexpired session picked up after this much idle time counts as resumed.
    resume_gap_seconds: int = Field(default=60, ge=0)
    # How an ended (expired or closed) session becomes a tombstone, by default and by policy
    # (JSON in the environment: CHATSERVER_CLEANUP_STRATEGY_BY_POLICY='{"persistent":"lazy"}').
    cleanup_strategy: CleanupStrategy = "deferred"
    cleanup_strategy_by_policy: dict[str, CleanupStrategy] = Field(default_factory=dict)
    cleanup_grace_seconds: int = Field(default=60 * 60, ge=0)
    # The reaper sleeps this long after each pass; a pass handles this many rows per transaction.
    reaper_interval_seconds: float = Field(default=30.0, gt=0)
    reaper_batch_size: int = Field(default=200, ge=1)
    # Threads idle (no turn, no update) this long are deleted by the reaper; 0 keeps them forever.
    thread_retention_seconds: int = Field(default=0, ge=0)

    double_texting: DoubleTexting = "queue"
    # Group commit: flush buffered events after this window or this many events.
    commit_window_ms: float = Field(default=5.0, ge=0)
    commit_max_events: int = Field(default=500, ge=1)
    # A turn whose producer outruns the database waits once this many events are unflushed.
    max_pending_events: int = Field(default=5000, ge=1)
    subscriber_queue_size: int = Field(default=1000, ge=1)
    replay_page_size: int = Field(default=2000, ge=1)
    # The event log keeps at most this many events per thread (a finished turn's deltas are
    # dropped at its end: its items hold the result); older cursors get `resync`.
    event_log_max_per_thread: int = Field(default=1000, ge=100)
    history_limit: int = Field(default=100, ge=1)
    # A run's owner renews its lease; a run whose lease lapsed is closed by recovery.
    run_lease_seconds: float = Field(default=30.0, gt=0)
    queue_wait_seconds: float = Field(default=300.0, gt=0)
    # A turn whose database becomes unreachable keeps its events and retries this long;
    # past it, the turn ends with an error (recovery closes it once the database is back).
    database_outage_seconds: float = Field(default=10.0, ge=0)

    # Several instances on one database: PostgreSQL NOTIFY carries events and requests
    # between them unless this names a Redis server (redis://, rediss://, unix://) to use
    # instead; SQLite has the in-process broker (one instance).
    broker_url: str | None = Field(default=None, pattern=r"^(redis|rediss|unix)://")
    # The NOTIFY / pub-sub channel: instances that share one must share a database.
    broker_channel: str = Field(default="chatserver", pattern=r"^[A-Za-z0-9_.:-]{1,63}$")

    heartbeat_seconds: float = Field(default=15.0, gt=0)
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    # A request body must arrive within this many seconds of its headers (else 408).
    body_read_timeout_seconds: float = Field(default=30.0, gt=0)
    # A connection must send a request's complete headers within this many seconds of being
    # opened or of its previous response, else it is closed (`chatserver serve`).
    header_read_timeout_seconds: float = Field(default=10.0, gt=0)
    # An idle keep-alive connection is closed after this many seconds (`chatserver serve`).
    keep_alive_seconds: int = Field(default=5, ge=1)

    # Signs the anonymous-user cookie. Unset: a random key is generated on first start and
    # kept in the database for every instance (`chatserver rotate-secret` replaces it).
    secret_key: SecretStr | None = None
    # How often an instance re-reads the database key, so a rotation reaches every instance.
    secret_refresh_seconds: float = Field(default=60.0, gt=0)
    # An anonymous user's cookie lasts this long; used again after a quarter of it, it is
    # renewed, so only a user away for the whole lifetime loses their identity.
    anonymous_cookie_seconds: int = Field(default=30 * 24 * 60 * 60, ge=60)
    # "token:user_id" pairs, comma separated, for API clients using bearer auth.
    bearer_tokens: str = ""
    # Bearer token for the operator's endpoints (/stats, /metrics); unset, they answer 404.
    admin_token: SecretStr | None = None
    # Browser origins allowed to call the API (CORS), comma separated, e.g.
    # "https://app.example.com"; empty: none. "*" allows any origin, but without cookies.
    cors_origins: str = ""
    shutdown_grace_seconds: float = Field(default=3.0, ge=0)
    log_level: str = "INFO"

    # What `chatserver serve` answers with (create_default_app).
    responder: ResponderChoice = "auto"
    # The OpenAI responder (chatserver/responders/openai.py): OpenAI or any server speaking
    # its Chat Completions API. Unset, they fall back to OPENAI_API_KEY / OPENAI_BASE_URL.
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    openai_model: str = Field(default="gpt-4o-mini", min_length=1)
    openai_system_prompt: str = "You are a helpful assistant."
    # The prompt keeps the newest thread messages within both bounds; tokens are estimated
    # (about 4 characters each), and the user's new message is always sent.
    openai_history_max_messages: int = Field(default=40, ge=1)
    openai_history_max_tokens: int = Field(default=12_000, ge=1)
    # Seconds to connect, and to wait for each piece of the answer while it streams.
    openai_timeout_seconds: float = Field(default=60.0, gt=0)
    # Retries of a failed request (rate limit, 5xx, connection), by the openai client.
    openai_max_retries: int = Field(default=2, ge=0)
    # Times one turn may call tools; after that the model must answer without them.
    openai_max_tool_rounds: int = Field(default=8, ge=1)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            file_secret_settings,
            _ConventionalOpenAIVariables(settings_cls),
        )

    @field_validator("admin_token", mode="before")
    @classmethod
    def _admin_token_is_long_or_unset(cls, value: object) -> object:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is None or value == "":
            # `CHATSERVER_ADMIN_TOKEN=` means no admin endpoints, not an empty password.
            return None
        if isinstance(value, str) and len(value) < _MIN_ADMIN_TOKEN_LENGTH:
            raise ValueError(f"admin_token must be at least {_MIN_ADMIN_TOKEN_LENGTH} characters")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_driver_is_supported(cls, value: str) -> str:
        try:
            url = sa.make_url(value)
        except sa.exc.ArgumentError:
            raise ValueError(f"not a database URL: {value!r}") from None
        if url.drivername not in DATABASE_DRIVERS:
            raise ValueError(
                f"unsupported database driver {url.drivername!r}; the URL must start with "
                + " or ".join(f"{driver}://" for driver in DATABASE_DRIVERS)
            )
        return value

    @field_validator("secret_key", mode="before")
    @classmethod
    def _empty_secret_key_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("secret_key")
    @classmethod
    def _secret_key_is_long(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_SECRET_KEY_LENGTH:
            raise ValueError(
                f"secret_key must be at least {MIN_SECRET_KEY_LENGTH} characters; leave it unset "
                "to have one generated and kept in the database"
            )
        return value

    @model_validator(mode="after")
    def _bounds_are_ordered(self) -> Settings:
        if self.min_timeout_seconds > self.max_timeout_seconds:
            raise ValueError("min_timeout_seconds must not exceed max_timeout_seconds")
        unknown = set(self.cleanup_strategy_by_policy) - {*self.policy_seconds(), CUSTOM_POLICY}
        if unknown:
            raise ValueError(f"cleanup_strategy_by_policy: unknown policies {sorted(unknown)}")
        return self

    @model_validator(mode="after")
    def _openai_responder_is_configured(self) -> Settings:
        if self.responder == "openai" and not self.openai_configured:
            raise ValueError(
                "responder openai needs CHATSERVER_OPENAI_API_KEY (or OPENAI_API_KEY) or "
                "CHATSERVER_OPENAI_BASE_URL (or OPENAI_BASE_URL)"
            )
        return self

    def cleanup_strategy_for(self, policy: str) -> CleanupStrategy:
        return self.cleanup_strategy_by_policy.get(policy, self.cleanup_strategy)

    @model_validator(mode="after")
    def _bearer_users_are_not_anonymous(self) -> Settings:
        for user_id in self.bearer_token_users().values():
            if user_id.startswith(ANONYMOUS_PREFIX):
                raise ValueError(
                    f"bearer_tokens: user id {user_id!r} starts with {ANONYMOUS_PREFIX!r}, "
                    "which names anonymous users"
                )
        return self

    def policy_seconds(self) -> dict[str, int]:
        return {
            "aggressive": self.policy_aggressive_seconds,
            "standard": self.policy_standard_seconds,
            "lenient": self.policy_lenient_seconds,
            "persistent": self.policy_persistent_seconds,
        }

    def bearer_token_users(self) -> dict[str, str]:
        pairs = (entry.split(":", 1) for entry in self.bearer_tokens.split(",") if ":" in entry)
        return {token.strip(): user.strip() for token, user in pairs if token.strip()}

    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def openai_configured(self) -> bool:
        return bool(self.openai_api_key and self.openai_api_key.get_secret_value()) or bool(
            self.openai_base_url
        )


_CONVENTIONAL_OPENAI_VARIABLES = {
    "openai_api_key": "OPENAI_API_KEY",
    "openai_base_url": "OPENAI_BASE_URL",
}


class _ConventionalOpenAIVariables(PydanticBaseSettingsSource):
    """OPENAI_API_KEY and OPENAI_BASE_URL (environment, then `.env`), used only where no
    CHATSERVER_OPENAI_* value is set anywhere: the last source, so every other one wins."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # Unused: __call__ reads the two variables itself.
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        env_file = self.config.get("env_file")
        dotenv: dict[str, str | None] = {}
        if isinstance(env_file, str | Path) and Path(env_file).is_file():
            dotenv = dotenv_values(env_file, encoding=self.config.get("env_file_encoding"))
        values: dict[str, Any] = {}
        for field, variable in _CONVENTIONAL_OPENAI_VARIABLES.items():
            value = os.environ.get(variable) or dotenv.get(variable)
            if value:
                values[field] = value
        return values
