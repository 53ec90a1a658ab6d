"""This process among the instances sharing the database, and which of the others are gone.

An instance registers a row at start (renewed with its leases, marked stopped at a clean
shutdown). On PostgreSQL it also holds its presence lock on a connection of its own: the
database frees the lock the moment the process dies (kill -9, a crash), so a run whose owner
is gone is closed at once instead of when its lease lapses. Leases stay the fallback for
owners nobody can judge (a host that vanished without closing its connections).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from chatserver.clock import Clock
from chatserver.errors import ServiceUnavailable
from chatserver.store import Store
from chatserver.store.instances import PRESENCE_LOCK, PRESENCE_LOCK_NAMESPACE
from chatserver.store.models import InstanceRow

logger = logging.getLogger(__name__)

# How often the presence connection proves it is alive, and the backoff of reconnecting it.
_PRESENCE_CHECK_SECONDS = 5.0
_RECONNECT_FIRST_DELAY = 0.1
_RECONNECT_MAX_DELAY = 2.0
# After its own presence connection came back (the database restarted, a network blip),
# an instance waits this long before it takes a free presence lock for a dead owner: the
# others are reconnecting too, and have not taken their locks back yet.
_SETTLE_SECONDS = 2 * _RECONNECT_MAX_DELAY + 1.0
# How long start-up waits for the presence lock before it goes on without (leases only).
_START_TIMEOUT_SECONDS = 10.0


class Instances:
    def __init__(self, store: Store, clock: Clock, instance_id: str) -> None:
        self.store = store
        self.clock = clock
        self.instance_id = instance_id
        self._presence: asyncio.Task[None] | None = None
        self._holding = asyncio.Event()
        # Loop time from which a free presence lock counts as a dead owner (None: not now).
        self._judge_from: float | None = None

    async def start(self) -> None:
        """Register this instance; on PostgreSQL, once its presence lock is held (so no
        other instance can take a registered, live instance for dead)."""
        if self.store.backend == "postgresql":
            self._presence = asyncio.create_task(self._hold_presence(), name="chatserver-presence")
            try:
                await asyncio.wait_for(self._holding.wait(), _START_TIMEOUT_SECONDS)
            except TimeoutError:
                logger.warning(
                    "no presence lock yet: this instance does not register, and its runs are"
                    " recovered by their leases only"
                )
                return
        now = self.clock.now()
        await self.store.register_instance(
            InstanceRow(
                id=self.instance_id,
                host=socket.gethostname()[:255],
                pid=os.getpid(),
                started_at=now,
                heartbeat_at=now,
            )
        )

    async def heartbeat(self) -> None:
        await self.store.heartbeat_instance(self.instance_id, self.clock.now())

    async def close(self) -> None:
        """A clean stop: whatever this instance still owns is an orphan from now on."""
        try:
            await self.store.stop_instance(self.instance_id, self.clock.now())
        except ServiceUnavailable:
            logger.warning("could not mark instance %s stopped", self.instance_id)
        finally:
            if self._presence is not None:
                self._presence.cancel()
                await asyncio.gather(self._presence, return_exceptions=True)
                self._presence = None

    async def gone(self, owners: list[str]) -> set[str]:
        """Which of these run owners are gone (never this instance)."""
        others = [owner for owner in owners if owner != self.instance_id]
        loop = asyncio.get_running_loop()
        judging = self._judge_from is not None and loop.time() >= self._judge_from
        return await self.store.gone_instances(others, by_presence=judging)

    async def _hold_presence(self) -> None:
        loop = asyncio.get_running_loop()
        delay = _RECONNECT_FIRST_DELAY
        reconnecting = False
        while True:
            try:
                conn = await self.store.dedicated_connection(
                    f"chatserver presence {self.instance_id}"
                )
                async with conn:
                    await conn.execute(PRESENCE_LOCK, (PRESENCE_LOCK_NAMESPACE, self.instance_id))
                    settle = _SETTLE_SECONDS if reconnecting else 0.0
                    self._judge_from = loop.time() + settle
                    self._holding.set()
                    if reconnecting:
                        logger.info("presence of instance %s is back", self.instance_id)
                    delay = _RECONNECT_FIRST_DELAY
                    while True:
                        await asyncio.sleep(_PRESENCE_CHECK_SECONDS)
                        await conn.execute("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Another instance may take this one for dead meanwhile; its turns' writers
                # stop at the first event of theirs someone else wrote (events.py).
                logger.warning("presence connection lost (%r); reconnecting", exc)
            self._judge_from = None
            self._holding.clear()
            reconnecting = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_MAX_DELAY)
