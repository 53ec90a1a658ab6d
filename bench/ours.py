"""Our server as the bench runs it: the echo responder over the public API, with its pace set
per process (no delay for throughput, a model's pace for the latency scenario)."""

from __future__ import annotations

from starlette.applications import Starlette

from chatserver import EchoChatServer, Settings, Store, create_app
from chatserver.store import migrations


def app(database_url: str, *, word_delay: float, tokens: dict[str, str]) -> Starlette:
    migrations.upgrade(database_url)
    bearer = ",".join(f"{token}:{user}" for token, user in tokens.items())
    settings = Settings(_env_file=None, database_url=database_url, bearer_tokens=bearer)
    server = EchoChatServer(
        Store(settings.database_url, pool_size=settings.database_pool_size), settings
    )
    # Seconds between words: 0 streams as fast as the server can, 0.05 is a model's pace.
    server.word_delay = word_delay
    return create_app(server, settings)
