"""Settings from the environment (CHATSERVER_*) and `.env`. Built explicitly, never at import."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DoubleTexting = Literal["queue", "reject", "interrupt"]
CleanupStrategy = Literal["immediate", "deferred", "lazy"]
# The policy of a session whose timeout was given in seconds rather than by name.
CUSTOM_POLICY = "custom"
_MIN_ADMIN_TOKEN_LENGTH = 16


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CHATSERVER_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
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

    heartbeat_seconds: float = Field(default=15.0, gt=0)
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    secret_key: SecretStr = SecretStr("change-me-in-production")
    # "token:user_id" pairs, comma separated, for API clients using bearer auth.
    bearer_tokens: str = ""
    # Bearer token for the operator's endpoints (/stats, /metrics); unset, they answer 404.
    admin_token: SecretStr | None = None
    shutdown_grace_seconds: float = Field(default=3.0, ge=0)
    log_level: str = "INFO"

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

    @model_validator(mode="after")
    def _bounds_are_ordered(self) -> Settings:
        if self.min_timeout_seconds > self.max_timeout_seconds:
            raise ValueError("min_timeout_seconds must not exceed max_timeout_seconds")
        unknown = set(self.cleanup_strategy_by_policy) - {*self.policy_seconds(), CUSTOM_POLICY}
        if unknown:
            raise ValueError(f"cleanup_strategy_by_policy: unknown policies {sorted(unknown)}")
        return self

    def cleanup_strategy_for(self, policy: str) -> CleanupStrategy:
        return self.cleanup_strategy_by_policy.get(policy, self.cleanup_strategy)

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

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
