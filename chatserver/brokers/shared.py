"""What every broker shared by instances does, whatever carries its messages.

Committed events are pushed to this process's subscribers directly (no round trip); other
processes get a notice, `n <origin> <thread_id> <last seq>`, and their subscribers of that
thread read the new rows from the store, from their own cursors. A subscriber never depends
on a notice arriving: whenever the link to the others is (re)established, every subscriber
re-reads from its cursor, so a notice lost while the link was down loses no event.

Requests travel the same way (`<kind> <origin> <json>`): stop a run, supersede a session's
tabs, end a thread's streams. A process ignores what it sent itself, having done it already.
"""

from __future__ import annotations

import asyncio
import json
import logging
from abc import abstractmethod
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from chatserver.errors import ChatServerError, ErrorCode
from chatserver.events import FROM_ANYWHERE, LocalBroker

logger = logging.getLogger(__name__)

_NOTICE = "n"
_STOP = "s"
_SUPERSEDE = "t"
_END_STREAMS = "x"

# Backoff of reconnecting the link, and of resending what could not be sent.
RECONNECT_FIRST_DELAY = 0.1
RECONNECT_MAX_DELAY = 2.0
# A request older than this is dropped rather than sent: it would act on a later state.
_SEND_GIVE_UP_SECONDS = 10.0
# Requests waiting to be sent; beyond it the oldest are dropped (the link is down).
_OUTBOX_LIMIT = 10_000
# How long start-up waits for the link before it goes on (it keeps reconnecting).
_START_TIMEOUT_SECONDS = 10.0


def notice(origin: str, thread_id: str, last_seq: int) -> str:
    return f"{_NOTICE} {origin} {thread_id} {last_seq}"


class SharedBroker(LocalBroker):
    def __init__(self, queue_size: int, instance_id: str) -> None:
        super().__init__(queue_size)
        self.instance_id = instance_id
        self._outbox: deque[tuple[float, str]] = deque(maxlen=_OUTBOX_LIMIT)
        self._notices: dict[str, int] = {}
        self._outbox_ready = asyncio.Event()
        self._linked = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- what the transport provides ------------------------------------------------------

    @abstractmethod
    async def _listen(self) -> None:
        """Receive from the other processes until cancelled, reconnecting with backoff:
        `_link_up()` once listening, `_received(payload)` for each message."""

    @abstractmethod
    async def _send(self, payloads: list[str]) -> None:
        """Deliver to every process (this one included is fine); raise if it failed."""

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="chatserver-broker-listen"),
            asyncio.create_task(self._deliver(), name="chatserver-broker-send"),
        ]
        try:
            await asyncio.wait_for(self._linked.wait(), _START_TIMEOUT_SECONDS)
        except TimeoutError:
            logger.warning("broker not linked to the other instances yet; it keeps trying")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._linked.clear()

    @property
    def linked(self) -> bool:
        return self._linked.is_set()

    # -- requests to every process ---------------------------------------------------------

    def stop_run(self, run_id: str, reason: str) -> None:
        super().stop_run(run_id, reason)
        self._post(_STOP, {"run_id": run_id, "reason": reason})

    def supersede_tabs(self, session_id: str, opened_at: float) -> None:
        super().supersede_tabs(session_id, opened_at)
        self._post(_SUPERSEDE, {"session_id": session_id, "opened_at": opened_at})

    def end_streams(self, thread_id: str, reason: ChatServerError) -> None:
        super().end_streams(thread_id, reason)
        self._post(
            _END_STREAMS,
            {"thread_id": thread_id, "code": reason.code.value, "message": reason.message},
        )

    def _post(self, kind: str, body: dict[str, Any]) -> None:
        self._enqueue(f"{kind} {self.instance_id} {json.dumps(body, separators=(',', ':'))}")

    def _enqueue(self, payload: str) -> None:
        self._outbox.append((asyncio.get_running_loop().time(), payload))
        self._outbox_ready.set()

    def _announce(self, thread_id: str, last_seq: int) -> None:
        """Send a notice of committed events (for transports the store does not notify
        through). Notices of one thread coalesce: the last seq says all there is."""
        self._notices[thread_id] = max(last_seq, self._notices.get(thread_id, 0))
        self._outbox_ready.set()

    async def _deliver(self) -> None:
        loop = asyncio.get_running_loop()
        delay = RECONNECT_FIRST_DELAY
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox or self._notices:
                now = loop.time()
                while self._outbox and now - self._outbox[0][0] > _SEND_GIVE_UP_SECONDS:
                    logger.warning("broker dropped an undelivered message: %s", self._outbox[0][1])
                    self._outbox.popleft()
                notices, self._notices = self._notices, {}
                requests = [payload for _, payload in self._outbox]
                batch = [notice(self.instance_id, t, seq) for t, seq in notices.items()]
                try:
                    await self._send(batch + requests)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # Notices are never stale: keep them (merged with newer ones).
                    for thread_id, seq in notices.items():
                        self._notices[thread_id] = max(seq, self._notices.get(thread_id, 0))
                    logger.warning("broker could not send (%r); retrying", exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RECONNECT_MAX_DELAY)
                    continue
                delay = RECONNECT_FIRST_DELAY
                for _ in requests:
                    self._outbox.popleft()

    # -- what the other processes said -----------------------------------------------------

    def _link_up(self) -> None:
        """Listening (again): what was committed while nobody listened is in the store."""
        self._linked.set()
        for subscriptions in tuple(self._subscribers.values()):
            for subscription in tuple(subscriptions):
                subscription.wake(FROM_ANYWHERE)

    def _link_down(self) -> None:
        self._linked.clear()

    def _received(self, payload: str) -> None:
        try:
            kind, origin, rest = payload.split(" ", 2)
            if origin == self.instance_id:
                return
            if kind == _NOTICE:
                thread_id, seq = rest.split(" ")
                for subscription in tuple(self._subscribers.get(thread_id, ())):
                    subscription.wake(int(seq))
                return
            request = self._request(kind, json.loads(rest))
        except (ValueError, KeyError, TypeError):
            logger.warning("broker ignored a malformed message: %.200s", payload)
            return
        try:
            request()
        except Exception:
            logger.exception("broker could not act on: %.200s", payload)

    def _request(self, kind: str, body: dict[str, Any]) -> Callable[[], None]:
        """Another process's request, done here as this process's own part of it."""
        local = LocalBroker
        if kind == _STOP:
            return partial(local.stop_run, self, str(body["run_id"]), str(body["reason"]))
        if kind == _SUPERSEDE:
            session_id, opened_at = str(body["session_id"]), float(body["opened_at"])
            return partial(local.supersede_tabs, self, session_id, opened_at)
        if kind == _END_STREAMS:
            reason = ChatServerError(str(body["message"]), ErrorCode(body["code"]))
            return partial(local.end_streams, self, str(body["thread_id"]), reason)
        raise ValueError(f"unknown message kind {kind!r}")
