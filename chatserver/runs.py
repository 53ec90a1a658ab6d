"""Runs: accepting a turn (idempotency, double-texting), running it in the background one per
thread, stopping it, and keeping ownership honest across processes (leases, recovery).

A run is accepted by inserting its row (`queued`); its task then takes the thread's turn lock
in this process and claims the thread in the database (`threads.active_run_id`), which is the
lock across processes. While it runs, its owner renews its lease; a run whose lease lapsed has
no live owner and is closed by whoever finds it: the maintenance duty, or the next run of its
thread, which holds the turn lock already and so never waits on itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.exc import IntegrityError

from chatserver.clock import Clock
from chatserver.config import DoubleTexting, Settings
from chatserver.errors import Conflict, ErrorCode, ServiceUnavailable, ThreadBusy
from chatserver.events import EventLog, Subscription
from chatserver.ids import IdKind, new_id
from chatserver.instances import Instances
from chatserver.locks import KeyedLock
from chatserver.sessions import RequestContext
from chatserver.statuses import OPEN_RUN_STATUSES, RunStatus
from chatserver.store import Store, StoredEvent
from chatserver.store.models import RunRow, ThreadRow
from chatserver.turn import TurnRequest, TurnRunner
from chatserver.types import TERMINAL_RUN_EVENT_TYPES, UserMessageInput

logger = logging.getLogger(__name__)

_STOP_WAIT_SECONDS = 10.0
# Runs recovered per maintenance round; the rest wait for the next round.
_RECOVERY_BATCH = 100
# Waiting for another instance's run: polls back off between these, and a run waiting for
# its thread checks at most this often whether the holder let go, however often it is woken.
_POLL_FIRST_SECONDS = 0.05
_POLL_MAX_SECONDS = 1.0
_CLAIM_GAP_SECONDS = 0.05
# Recovery runs at least this often, so that a dead owner's runs (PostgreSQL: its presence
# lock is free) are closed within seconds, whatever the lease.
_RECOVERY_MAX_INTERVAL_SECONDS = 5.0
# The row of an instance silent for this many leases, owning no open run, is dropped.
_FORGET_AFTER_LEASES = 100


@dataclass(frozen=True, slots=True)
class RunHandle:
    run_id: str
    thread_id: str
    # The thread's last seq before the run was accepted: its events all come after it.
    start_seq: int


@dataclass(eq=False)
class _LocalRun:
    """A run accepted by this process, until its task ends."""

    request: TurnRequest
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None
    # Holds its thread and runs respond(); before that it waits in the thread's queue.
    started: bool = False

    @property
    def row(self) -> RunRow:
        return self.request.run


class Runs:
    def __init__(
        self,
        store: Store,
        events: EventLog,
        runner: TurnRunner,
        settings: Settings,
        clock: Clock,
        instances: Instances,
    ) -> None:
        self.store = store
        self.events = events
        self.runner = runner
        self.settings = settings
        self.clock = clock
        self.instances = instances
        self.instance_id = instances.instance_id
        self._local: dict[str, _LocalRun] = {}
        self._turn_locks = KeyedLock()
        self._idempotency_locks = KeyedLock()
        self._duties: list[asyncio.Task[None]] = []
        # Stop requests sent to any instance reach this one through the broker.
        events.broker.on_stop_run(self._stop_requested)

    @property
    def running(self) -> int:
        """Turns of this process running now (not those queued behind them)."""
        return sum(1 for local in self._local.values() if local.started)

    # -- accepting -------------------------------------------------------------------------

    async def accept(
        self,
        context: RequestContext,
        thread: ThreadRow,
        input: UserMessageInput | None,
        *,
        idempotency_key: str | None = None,
        double_texting: DoubleTexting | None = None,
        thread_created: bool = False,
        retry_after_item_id: str | None = None,
    ) -> RunHandle:
        """Accept a turn on `thread` and run it in the background, or raise (ThreadBusy,
        Conflict) with nothing written."""
        request_hash = _fingerprint(
            None if thread_created else thread.id, input, retry_after_item_id
        )
        if idempotency_key is not None:
            existing = await self.store.find_run_by_idempotency_key(
                context.user_id, idempotency_key
            )
            if existing is not None:
                return _retried(existing, request_hash)
        policy = double_texting or self.settings.double_texting
        now = self.clock.now()
        run = RunRow(
            id=new_id(IdKind.RUN),
            thread_id=thread.id,
            user_id=context.user_id,
            session_id=context.session.id,
            status=RunStatus.QUEUED,
            idempotency_key=idempotency_key,
            request_hash=request_hash if idempotency_key is not None else None,
            owner=self.instance_id,
            lease_until=now + timedelta(seconds=self.settings.run_lease_seconds),
            start_seq=await self.store.max_seq(thread.id),
            created_at=now,
        )
        try:
            # `reject` is decided in the same locked transaction as the insert: of several
            # concurrent sends to an idle thread, exactly one is accepted.
            accepted = await self.store.insert_run(run, only_if_idle=policy == "reject")
        except IntegrityError:
            # A concurrent retry with the same Idempotency-Key won the insert: join its run.
            assert idempotency_key is not None
            existing = await self.store.find_run_by_idempotency_key(
                context.user_id, idempotency_key
            )
            if existing is None:
                raise
            return _retried(existing, request_hash)
        if not accepted:
            raise ThreadBusy(f"thread {thread.id} is answering; try again when it is done")
        if policy == "interrupt":
            await self._cancel_holder(thread.id, reason="interrupted", wait=False, spare=run.id)
        local = _LocalRun(TurnRequest(run, context, input, thread_created, retry_after_item_id))
        self._local[run.id] = local
        local.task = asyncio.create_task(self._run(local), name=f"turn:{run.id}")
        return _handle(run)

    def idempotency_lock(self, user_id: str, key: str) -> AbstractAsyncContextManager[None]:
        """Serializes in this process the requests that carry one key, so that retries do
        not even make spare threads; across processes the runs' unique key decides."""
        return self._idempotency_locks.hold(f"{user_id}\x00{key}")

    async def find_retried(
        self, user_id: str, idempotency_key: str, input: UserMessageInput
    ) -> RunHandle | None:
        """The run a retried threads.create with this key started, if any."""
        existing = await self.store.find_run_by_idempotency_key(user_id, idempotency_key)
        return None if existing is None else _retried(existing, _fingerprint(None, input, None))

    # -- stopping and streaming ------------------------------------------------------------

    async def stop(self, thread: ThreadRow, *, reason: str = "stopped") -> bool:
        """Cancel the thread's running turn, whichever instance runs it; True if there was
        one. Returns once it ended (or after a bound, if its instance does not answer)."""
        return await self._cancel_holder(thread.id, reason=reason, wait=True)

    async def cancel_all(self, thread: ThreadRow, *, reason: str) -> None:
        """Stop the thread's running turn and drop the ones queued behind it here (they end
        without a word: the thread is going away); returns once all of them ended."""
        queued = [
            local
            for local in self._local.values()
            if local.row.thread_id == thread.id and not local.started and local.task
        ]
        for local in queued:
            local.cancel_reason = reason
            assert local.task is not None
            local.task.cancel()
        await self._cancel_holder(thread.id, reason=reason, wait=True)
        if queued:
            await asyncio.wait([local.task for local in queued if local.task is not None])

    def stream(self, handle: RunHandle, after: int) -> AsyncIterator[StoredEvent]:
        """The events of one run after `after`, ending with its terminal event."""

        def ends_run(event: StoredEvent) -> bool:
            return event.run_id == handle.run_id and event.type in TERMINAL_RUN_EVENT_TYPES

        async def run_is_over() -> bool:
            run = await self.store.get_run(handle.run_id)
            return run is None or run.status not in OPEN_RUN_STATUSES

        return _only_run(
            self.events.subscribe(
                handle.thread_id, after, until=ends_run, already_over=run_is_over
            ),
            handle.run_id,
        )

    async def _cancel_holder(
        self, thread_id: str, *, reason: str, wait: bool, spare: str | None = None
    ) -> bool:
        for local in self._local.values():
            if local.row.thread_id == thread_id and local.started and local.row.id != spare:
                local.cancel_reason = local.cancel_reason or reason
                assert local.task is not None
                local.task.cancel()
                if wait:
                    await asyncio.wait({local.task}, timeout=_STOP_WAIT_SECONDS)
                return True
        thread = await self.store.get_thread(thread_id)
        holder = None if thread is None else thread.active_run_id
        if holder is None or holder == spare:
            return False
        # Run by another instance: the broker carries the request there at once; the flag
        # is for an owner the broker cannot reach, which polls for it.
        await self.store.update_run(holder, {"cancel_requested": True})
        self.events.broker.stop_run(holder, reason)
        if wait:
            await self._until_over(thread_id, holder, _STOP_WAIT_SECONDS)
        return True

    def _stop_requested(self, run_id: str, reason: str) -> None:
        local = self._local.get(run_id)
        if local is not None and local.started and local.task is not None:
            local.cancel_reason = local.cancel_reason or reason
            local.task.cancel()

    async def _until_over(self, thread_id: str, run_id: str, seconds: float) -> None:
        """Wait (at most `seconds`) until a run of another instance has ended; its last
        events wake the wait."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        subscription = self.events.broker.subscribe(thread_id)
        try:
            while loop.time() < deadline:
                run = await self.store.get_run(run_id)
                if run is None or run.status not in OPEN_RUN_STATUSES:
                    return
                await _woken(subscription, min(_POLL_MAX_SECONDS, deadline - loop.time()))
        finally:
            self.events.broker.unsubscribe(subscription)

    # -- running ---------------------------------------------------------------------------

    async def _run(self, local: _LocalRun) -> None:
        run = local.row
        try:
            async with self._turn_locks.hold(run.thread_id):
                if local.cancel_reason is not None:
                    await self.runner.finish_unstarted(run, local.cancel_reason)
                    return
                thread = await self._claim(run)
                if thread is None:
                    return
                local.started = True
                await self.runner.run(
                    local.request, thread, lambda: local.cancel_reason or "stopped"
                )
        except asyncio.CancelledError:
            if not local.started:
                # Cancelled while queued (shutdown): nothing was emitted for this run, and
                # recovery closes it once its lease lapses.
                logger.info("run %s cancelled before it started", run.id)
        except Exception:
            logger.exception("run %s could not be run", run.id)
        finally:
            self._local.pop(run.id, None)

    async def _claim(self, run: RunRow) -> ThreadRow | None:
        """Take the thread in the database; wait while another instance's turn holds it, and
        close the holder at once if its owner is gone (it died, or its lease lapsed). The
        holder's last events wake the wait; polling is the fallback."""
        subscription = self.events.broker.subscribe(run.thread_id)
        try:
            return await self._claim_woken_by(subscription, run)
        finally:
            self.events.broker.unsubscribe(subscription)

    async def _claim_woken_by(self, subscription: Subscription, run: RunRow) -> ThreadRow | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.queue_wait_seconds
        delay = _POLL_FIRST_SECONDS
        while (claimed := await self.store.claim_thread(run.thread_id, run.id)) is None:
            thread = await self.store.get_thread(run.thread_id)
            if thread is None:
                return None
            holder_id = thread.active_run_id
            if holder_id is not None:
                holder = await self.store.get_run(holder_id)
                if holder is None or holder.status not in OPEN_RUN_STATUSES:
                    await self.store.release_thread(run.thread_id, holder_id)
                    continue
                # We hold the thread's turn lock, so no local turn of it is running: the
                # holder is another process's, alive while it is there and its lease runs.
                if await self._take_over_orphan(holder):
                    continue
            if loop.time() > deadline:
                await self.runner.finish_unstarted(run, "queue_timeout")
                return None
            await self._until_let_go(subscription, run.thread_id, holder_id, loop.time() + delay)
            delay = min(delay * 2, _POLL_MAX_SECONDS)
        return claimed

    async def _until_let_go(
        self, subscription: Subscription, thread_id: str, holder_id: str | None, until: float
    ) -> None:
        """Wait until `holder_id` no longer holds the thread, or until `until` (loop time).
        Each batch of the holder's events wakes this; one read checks, at most every
        _CLAIM_GAP_SECONDS."""
        loop = asyncio.get_running_loop()
        while loop.time() < until:
            await _woken(subscription, until - loop.time())
            thread = await self.store.get_thread(thread_id)
            if thread is None or thread.active_run_id != holder_id:
                return
            await asyncio.sleep(_CLAIM_GAP_SECONDS)

    # -- lifecycle, leases and recovery ----------------------------------------------------

    async def start(self) -> None:
        await self.recover()
        interval = self.settings.run_lease_seconds / 3
        self._duties = [
            asyncio.create_task(
                _every(interval, self._renew_leases), name="chatserver-lease-renewal"
            ),
            asyncio.create_task(
                _every(interval, self._honour_cancel_requests), name="chatserver-cancel-requests"
            ),
            asyncio.create_task(
                _every(min(interval, _RECOVERY_MAX_INTERVAL_SECONDS), self.recover),
                name="chatserver-run-recovery",
            ),
        ]

    async def close(self, grace_seconds: float) -> None:
        """Let quick turns finish, then stop the rest: their partial answers are kept."""
        for duty in self._duties:
            duty.cancel()
        await asyncio.gather(*self._duties, return_exceptions=True)
        self._duties = []
        tasks = [local.task for local in self._local.values() if local.task is not None]
        if tasks and grace_seconds > 0:
            await asyncio.wait(tasks, timeout=grace_seconds)
        for local in list(self._local.values()):
            local.cancel_reason = local.cancel_reason or "server_shutdown"
            if local.task is not None:
                local.task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def recover(self) -> int:
        """Close runs whose owner is gone: it shut down or died (on PostgreSQL its presence
        lock is free: at once), or stopped renewing its lease (a process that hangs, a host
        that vanished): their open items are kept as incomplete and the thread is usable
        again. A thread whose turn lock is held here is left to the run holding it, which
        closes the orphan itself (see `_claim`): this never waits on a lock."""
        now = self.clock.now()
        gone = await self.instances.gone(await self.store.open_run_owners(self.instance_id))
        orphans = {run.id: run for run in await self.store.list_lapsed_runs(now, _RECOVERY_BATCH)}
        for run in await self.store.list_runs_of_owners(sorted(gone), _RECOVERY_BATCH):
            orphans.setdefault(run.id, run)
        recovered = 0
        for run in orphans.values():
            if run.id in self._local or self._turn_locks.locked(run.thread_id):
                continue
            async with self._turn_locks.hold(run.thread_id):
                recovered += await self._take_over_orphan(run, gone)
        silent_since = now - timedelta(
            seconds=_FORGET_AFTER_LEASES * self.settings.run_lease_seconds
        )
        await self.store.forget_instances(silent_since)
        return recovered

    async def _take_over_orphan(self, run: RunRow, gone: set[str] | None = None) -> bool:
        """Close `run` if its owner is gone or its lease lapsed, and this instance wins the
        claim on it. `gone`: the owners known to be gone (None: ask). The caller holds the
        thread's turn lock."""
        now = self.clock.now()
        until = now + timedelta(seconds=self.settings.run_lease_seconds)
        if run.lease_until is not None and run.lease_until < now:
            claimed = await self.store.claim_lapsed_run(run.id, self.instance_id, now, until)
        elif run.owner is not None and run.owner != self.instance_id:
            if gone is None:
                gone = await self.instances.gone([run.owner])
            if run.owner not in gone:
                return False
            claimed = await self.store.take_over_run(run.id, run.owner, self.instance_id, until)
        else:
            return False
        if not claimed:
            return False
        try:
            await self.runner.close_orphan(run)
        except Exception:
            logger.exception("could not recover run %s", run.id)
            return False
        return True

    async def _renew_leases(self) -> None:
        until = self.clock.now() + timedelta(seconds=self.settings.run_lease_seconds)
        await self.store.renew_leases(self.instance_id, list(self._local), until)
        await self.instances.heartbeat()

    async def _honour_cancel_requests(self) -> None:
        started = [run_id for run_id, local in self._local.items() if local.started]
        for run_id in await self.store.list_cancel_requests(started):
            local = self._local.get(run_id)
            if local is not None and local.task is not None:
                local.cancel_reason = local.cancel_reason or "stopped"
                local.task.cancel()


async def _woken(subscription: Subscription, seconds: float) -> None:
    """Wait until the subscription's thread has news (or `seconds`), then forget it."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(subscription.wait(), max(seconds, 0.0))
    subscription.reset()


async def _every(interval: float, duty: Callable[[], Awaitable[object]]) -> None:
    """A sleep loop: a slow round delays the next, never piles up; a failed one is logged.
    Each duty has its own loop, so one that is slow never holds up another."""
    while True:
        await asyncio.sleep(interval)
        try:
            await duty()
        except ServiceUnavailable:
            logger.warning("maintenance duty %s waits for the database", _name(duty))
        except Exception:
            logger.exception("maintenance duty %s failed", _name(duty))


def _name(duty: Callable[[], Awaitable[object]]) -> str:
    return getattr(duty, "__name__", repr(duty)).lstrip("_")


async def _only_run(source: AsyncIterator[StoredEvent], run_id: str) -> AsyncIterator[StoredEvent]:
    # aclosing: the subscription ends with this stream, not at some later garbage collection.
    async with aclosing(source) as events:  # type: ignore[type-var]
        async for event in events:
            if event.run_id == run_id or event.type == "resync":
                yield event


def _fingerprint(
    thread_id: str | None, input: UserMessageInput | None, retry_after_item_id: str | None
) -> str:
    """What a turn request asks for (a new thread: no thread id), as a stable hash."""
    asked = {
        "thread_id": thread_id,
        "input": None if input is None else input.model_dump(mode="json"),
        "retry_after_item_id": retry_after_item_id,
    }
    return hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()


def _retried(existing: RunRow, request_hash: str) -> RunHandle:
    """A key names one request: sent again with the same request, it re-attaches to that
    request's run; with another, it is refused rather than silently answered with the first."""
    if existing.request_hash != request_hash:
        raise Conflict(
            "this Idempotency-Key was already used for a different request; use a new key",
            ErrorCode.IDEMPOTENCY_KEY_REUSED,
        )
    return _handle(existing)


def _handle(run: RunRow) -> RunHandle:
    return RunHandle(run.id, run.thread_id, run.start_seq)
