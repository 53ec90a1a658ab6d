"""The reaper: background cleanup. Each pass expires the sessions whose time is up, makes
tombstones of ended sessions as their cleanup strategy says, and deletes threads idle past
`thread_retention_seconds`; every duty in batches of `reaper_batch_size` rows, one
transaction each, until it has nothing left.

It is a sleep loop: a pass, then `reaper_interval_seconds` of sleep, so a long pass delays
the next instead of overlapping it. On PostgreSQL one instance reaps at a time (an advisory
lock); the others skip their pass. A session with a turn in progress is never expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from chatserver.errors import ErrorCode, NotFound, ServiceUnavailable
from chatserver.events import Broker
from chatserver.sessions import SessionManager

logger = logging.getLogger(__name__)

# How long stop() lets a pass finish its batch before cancelling it.
_STOP_WAIT_SECONDS = 5.0


@dataclass
class ReapReport:
    """What one pass did (so far, while it runs)."""

    expired: int = 0
    cleaned_up: int = 0
    threads_deleted: int = 0
    batches: int = 0
    seconds: float = 0.0
    # False: another instance held the reaper lock, so this pass did nothing.
    reaped: bool = True

    @property
    def rows(self) -> int:
        return self.expired + self.cleaned_up + self.threads_deleted


Progress = Callable[[ReapReport], None]


class Reaper:
    def __init__(self, sessions: SessionManager, broker: Broker | None = None) -> None:
        self.sessions = sessions
        self.store = sessions.store
        self.settings = sessions.settings
        self.clock = sessions.clock
        # Told the streams of threads it deletes end (those of this process).
        self.broker = broker
        # Called with the report of every finished pass (metrics).
        self.on_pass: list[Progress] = []
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def run_once(self, progress: Progress | None = None) -> ReapReport:
        """One pass over every duty; `progress` is called after each batch."""
        report = ReapReport()
        started = time.perf_counter()
        async with self.store.reaper_lock() as held:
            if not held:
                report.reaped = False
                return report
            batch_size = self.settings.reaper_batch_size

            async def drain(duty: Callable[[int], Awaitable[Sequence[object]]], field: str) -> None:
                while not self._stopping.is_set():
                    done = len(await duty(batch_size))
                    setattr(report, field, getattr(report, field) + done)
                    report.batches += 1
                    report.seconds = time.perf_counter() - started
                    if progress is not None:
                        progress(report)
                    if done < batch_size:
                        return
                    # Let requests in between batches.
                    await asyncio.sleep(0)

            await drain(self.sessions.expire_due, "expired")
            await drain(self.sessions.clean_up_ended, "cleaned_up")
            if self.settings.thread_retention_seconds:
                await drain(self._delete_idle_threads, "threads_deleted")
        report.seconds = time.perf_counter() - started
        for observer in self.on_pass:
            observer(report)
        return report

    async def _delete_idle_threads(self, limit: int) -> list[str]:
        retention = timedelta(seconds=self.settings.thread_retention_seconds)
        deleted = await self.store.delete_idle_threads(self.clock.now() - retention, limit)
        if self.broker is not None:
            for thread_id in deleted:
                self.broker.end_streams(
                    thread_id,
                    NotFound(
                        f"thread {thread_id} was deleted after its retention period",
                        ErrorCode.THREAD_NOT_FOUND,
                    ),
                )
        return deleted

    # -- the background loop ---------------------------------------------------------------

    def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._loop(), name="chatserver-reaper")

    async def stop(self) -> None:
        """End the loop after the batch in hand (its listeners run), or cancel it if that
        takes longer than a few seconds."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), _STOP_WAIT_SECONDS)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                report = await self.run_once()
            except ServiceUnavailable:
                logger.warning("reaper pass skipped: the database is unavailable")
            except Exception:
                logger.exception("reaper pass failed")
            else:
                if report.rows:
                    logger.info(
                        "reaper: %d sessions expired, %d cleaned up, %d threads deleted in %.2f s",
                        report.expired,
                        report.cleaned_up,
                        report.threads_deleted,
                        report.seconds,
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.reaper_interval_seconds)
