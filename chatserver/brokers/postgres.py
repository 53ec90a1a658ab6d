"""The broker of instances sharing a PostgreSQL database: LISTEN/NOTIFY, nothing else to run.

Every append transaction also NOTIFYs the channel (`Store.append_notice`), so the notice
becomes visible exactly when the rows do, at commit. Each process keeps one dedicated
autocommit connection outside the pool that LISTENs (a pooled or transaction-pooled
connection would drop the LISTEN); requests are NOTIFYs sent through the pool.
"""

from __future__ import annotations

import asyncio
import logging

import sqlalchemy as sa
from psycopg import sql

from chatserver.brokers.shared import (
    RECONNECT_FIRST_DELAY,
    RECONNECT_MAX_DELAY,
    SharedBroker,
    notice,
)
from chatserver.store import Store
from chatserver.store.events import AppendNotice

logger = logging.getLogger(__name__)

# How often an idle listener proves its connection is alive.
_CHECK_SECONDS = 5.0


class PostgresBroker(SharedBroker):
    def __init__(self, store: Store, channel: str, queue_size: int, instance_id: str) -> None:
        if store.backend != "postgresql":
            raise ValueError("PostgresBroker needs a PostgreSQL store")
        super().__init__(queue_size, instance_id)
        self.store = store
        self.channel = channel
        self._notice = AppendNotice(channel, self._payload)

    def _payload(self, thread_id: str, last_seq: int) -> str:
        return notice(self.instance_id, thread_id, last_seq)

    async def start(self) -> None:
        if self.store.append_notice is not None:
            raise RuntimeError(
                "this Store already notifies for another broker: give each ChatServer its own"
            )
        self.store.append_notice = self._notice
        await super().start()

    async def close(self) -> None:
        if self.store.append_notice is self._notice:
            self.store.append_notice = None
        await super().close()

    async def _listen(self) -> None:
        delay = RECONNECT_FIRST_DELAY
        listen = sql.SQL("LISTEN {}").format(sql.Identifier(self.channel))
        while True:
            try:
                conn = await self.store.dedicated_connection(
                    f"chatserver listener {self.instance_id}"
                )
                async with conn:
                    await conn.execute(listen)
                    self._link_up()
                    delay = RECONNECT_FIRST_DELAY
                    while True:
                        async for message in conn.notifies(timeout=_CHECK_SECONDS):
                            self._received(message.payload)
                        # Notifications arriving meanwhile wait in psycopg's backlog.
                        await conn.execute("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("broker listener lost its connection (%r); reconnecting", exc)
            self._link_down()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_DELAY)

    async def _send(self, payloads: list[str]) -> None:
        async with self.store.write() as conn:
            for payload in payloads:
                await conn.execute(
                    sa.text("SELECT pg_notify(:channel, :payload)"),
                    {"channel": self.channel, "payload": payload},
                )
