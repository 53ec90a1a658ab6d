"""Run rows: who owns a turn (instance and lease), its status and its idempotency key."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from chatserver.statuses import OPEN_RUN_STATUSES
from chatserver.store import models
from chatserver.store.database import Database, as_row, whole
from chatserver.store.models import RunRow


class RunStore(Database):
    @whole
    async def insert_run(self, row: RunRow, *, only_if_idle: bool = False) -> bool:
        """Insert the run; with `only_if_idle`, only if no other run of its thread is queued
        or running, decided under the thread's lock (False: refused, nothing written)."""
        r = models.runs
        async with self.write(row.thread_id) as conn:
            if only_if_idle:
                busy = await conn.scalar(
                    sa.select(r.c.id)
                    .where(r.c.thread_id == row.thread_id, r.c.status.in_(OPEN_RUN_STATUSES))
                    .limit(1)
                )
                if busy is not None:
                    return False
            await conn.execute(sa.insert(r).values(**row.model_dump()))
            return True

    async def get_run(self, run_id: str) -> RunRow | None:
        return await self._get(models.runs, RunRow, run_id)

    async def find_run_by_idempotency_key(self, user_id: str, key: str) -> RunRow | None:
        r = models.runs
        query = sa.select(r).where(r.c.user_id == user_id, r.c.idempotency_key == key)
        async with self.read() as conn:
            found = (await conn.execute(query)).first()
            return as_row(RunRow, found) if found else None

    async def has_open_run(self, thread_id: str) -> bool:
        r = models.runs
        query = (
            sa.select(r.c.id)
            .where(r.c.thread_id == thread_id, r.c.status.in_(OPEN_RUN_STATUSES))
            .limit(1)
        )
        async with self.read() as conn:
            return await conn.scalar(query) is not None

    @whole
    async def update_run(self, run_id: str, values: Mapping[str, Any]) -> None:
        async with self.write() as conn:
            await conn.execute(
                sa.update(models.runs).where(models.runs.c.id == run_id).values(**values)
            )

    @whole
    async def renew_leases(self, owner: str, run_ids: Sequence[str], until: datetime) -> None:
        """Extend the leases of the runs this owner is still working on. Only those: a run
        whose last write failed must lapse so that recovery can close it."""
        if not run_ids:
            return
        r = models.runs
        async with self.write() as conn:
            await conn.execute(
                sa.update(r)
                .where(r.c.id.in_(run_ids), r.c.owner == owner, r.c.status.in_(OPEN_RUN_STATUSES))
                .values(lease_until=until)
            )

    async def list_lapsed_runs(self, now: datetime, limit: int) -> list[RunRow]:
        r = models.runs
        query = (
            sa.select(r)
            .where(r.c.status.in_(OPEN_RUN_STATUSES), r.c.lease_until < now)
            .order_by(r.c.lease_until)
            .limit(limit)
        )
        async with self.read() as conn:
            return [as_row(RunRow, row) for row in await conn.execute(query)]

    @whole
    async def claim_lapsed_run(
        self, run_id: str, owner: str, now: datetime, until: datetime
    ) -> bool:
        """Take over a run whose owner stopped renewing its lease; one claimant wins."""
        r = models.runs
        async with self.write() as conn:
            result = await conn.execute(
                sa.update(r)
                .where(
                    r.c.id == run_id,
                    r.c.status.in_(OPEN_RUN_STATUSES),
                    r.c.lease_until < now,
                )
                .values(owner=owner, lease_until=until)
            )
            return bool(result.rowcount)

    async def list_cancel_requests(self, run_ids: Sequence[str]) -> list[str]:
        if not run_ids:
            return []
        r = models.runs
        query = sa.select(r.c.id).where(r.c.id.in_(run_ids), r.c.cancel_requested.is_(True))
        async with self.read() as conn:
            return list((await conn.execute(query)).scalars())
