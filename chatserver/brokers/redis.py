"""The broker for deployments that run Redis already (`CHATSERVER_BROKER_URL=redis://...`,
`pip install 'chatserver[redis]'`): Redis pub/sub instead of PostgreSQL NOTIFY.

Appends still commit to the database first; once committed, the writer's notice goes to
Redis (coalesced per thread, resent until Redis takes it), so other processes read the rows
from the database as with PostgreSQL. Redis keeps nothing here: a message published while a
process was not subscribed is lost to it, which is why every (re)subscription makes every
subscriber re-read from its cursor.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from chatserver.brokers.shared import RECONNECT_FIRST_DELAY, RECONNECT_MAX_DELAY, SharedBroker
from chatserver.store import StoredEvent

logger = logging.getLogger(__name__)

# Seconds between PINGs on the subscription, so a dead connection is found while idle; and
# how long one wait for a message lasts (the PING is sent between waits).
_HEALTH_CHECK_SECONDS = 5
_WAIT_SECONDS = 1.0


class RedisBroker(SharedBroker):
    def __init__(self, url: str, channel: str, queue_size: int, instance_id: str) -> None:
        super().__init__(queue_size, instance_id)
        self.channel = channel
        self._redis = Redis.from_url(
            url,
            health_check_interval=_HEALTH_CHECK_SECONDS,
            socket_connect_timeout=10,
            socket_keepalive=True,
            client_name=f"chatserver-{instance_id}",
        )

    def publish(self, thread_id: str, events: list[StoredEvent]) -> None:
        super().publish(thread_id, events)
        if events:
            self._announce(thread_id, events[-1].seq)

    async def close(self) -> None:
        await super().close()
        await self._redis.aclose()

    async def _listen(self) -> None:
        delay = RECONNECT_FIRST_DELAY
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                while True:
                    message = await pubsub.get_message(timeout=_WAIT_SECONDS)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        # Also after redis-py reconnected and subscribed again by itself.
                        self._link_up()
                        delay = RECONNECT_FIRST_DELAY
                    elif message["type"] == "message":
                        self._received(message["data"].decode())
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                logger.warning("broker lost its Redis subscription (%r); reconnecting", exc)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            self._link_down()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_DELAY)

    async def _send(self, payloads: list[str]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for payload in payloads:
                pipe.publish(self.channel, payload)
            await pipe.execute()
