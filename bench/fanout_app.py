"""The server the fan-out benchmark runs: the echo responder, but every word it yields is the
wall-clock time it was yielded at, so a subscriber anywhere on this machine can tell how long
the word took to reach it (respond() yield -> group commit -> broker -> SSE)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette

from chatserver import Settings, Store, create_app
from chatserver.responders.echo import EchoChatServer


class TimestampServer(EchoChatServer):
    word_delay = float(os.environ.get("BENCH_WORD_DELAY", "0.01"))

    async def _words(self, text: str) -> AsyncIterator[str]:
        for _ in text.split():
            await asyncio.sleep(self.word_delay)
            yield f"{time.time():.6f} "


def app() -> Starlette:
    settings = Settings()
    store = Store(settings.database_url, pool_size=settings.database_pool_size)
    return create_app(TimestampServer(store, settings), settings)
