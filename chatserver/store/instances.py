"""Instance rows: the server processes sharing the database, and the runs they own.

On PostgreSQL each instance also holds a session-level advisory lock (its presence) on a
connection of its own, which the server drops the moment the process dies: a free presence
lock means its owner is gone, without waiting for any lease.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa

from chatserver.statuses import OPEN_RUN_STATUSES
from chatserver.store import models
from chatserver.store.database import Database, as_row, whole
from chatserver.store.models import InstanceRow, RunRow

# The first key of every presence lock (two-int4 advisory locks: never the keys of `write()`).
PRESENCE_LOCK_NAMESPACE = 0x63686174
# Holds an instance's presence lock on its own connection, until that connection ends.
PRESENCE_LOCK = "SELECT pg_advisory_lock(%s, hashtext(%s))"


class InstanceStore(Database):
    @whole
    async def register_instance(self, row: InstanceRow) -> None:
        i = models.instances
        async with self.write(row.id) as conn:
            await conn.execute(sa.delete(i).where(i.c.id == row.id))
            await conn.execute(sa.insert(i).values(**row.model_dump()))

    async def get_instance(self, instance_id: str) -> InstanceRow | None:
        return await self._get(models.instances, InstanceRow, instance_id)

    @whole
    async def heartbeat_instance(self, instance_id: str, at: datetime) -> None:
        i = models.instances
        async with self.write() as conn:
            await conn.execute(sa.update(i).where(i.c.id == instance_id).values(heartbeat_at=at))

    @whole
    async def stop_instance(self, instance_id: str, at: datetime) -> None:
        i = models.instances
        async with self.write() as conn:
            await conn.execute(sa.update(i).where(i.c.id == instance_id).values(stopped_at=at))

    async def open_run_owners(self, excluding: str) -> list[str]:
        """The instances that own queued or running runs, other than `excluding`."""
        r = models.runs
        query = (
            sa.select(r.c.owner)
            .where(r.c.status.in_(OPEN_RUN_STATUSES), r.c.owner != excluding)
            .distinct()
        )
        async with self.read() as conn:
            return [owner for owner in (await conn.scalars(query)) if owner is not None]

    @whole
    async def gone_instances(self, owners: Sequence[str], *, by_presence: bool) -> set[str]:
        """Which of `owners` are known to be gone: they shut down, or (PostgreSQL, with
        `by_presence`) their presence lock is free. An owner without a row is not known
        (it never started its maintenance, or predates the table): leases decide for it."""
        if not owners:
            return set()
        i = models.instances
        async with self.write() as conn:
            rows = [
                as_row(InstanceRow, row)
                for row in await conn.execute(sa.select(i).where(i.c.id.in_(owners)))
            ]
            gone = {row.id for row in rows if row.stopped_at is not None}
            running = [row.id for row in rows if row.stopped_at is None]
            if by_presence and running and self.backend == "postgresql":
                # Taken for the length of this transaction only: free means nobody holds it.
                free = await conn.scalars(
                    sa.text(
                        "SELECT owner FROM unnest(CAST(:owners AS text[])) AS owner"
                        " WHERE pg_try_advisory_xact_lock(:namespace, hashtext(owner))"
                    ),
                    {"owners": running, "namespace": PRESENCE_LOCK_NAMESPACE},
                )
                gone.update(free)
            return gone

    async def list_runs_of_owners(self, owners: Sequence[str], limit: int) -> list[RunRow]:
        if not owners:
            return []
        r = models.runs
        query = (
            sa.select(r)
            .where(r.c.owner.in_(owners), r.c.status.in_(OPEN_RUN_STATUSES))
            .order_by(r.c.created_at)
            .limit(limit)
        )
        async with self.read() as conn:
            return [as_row(RunRow, row) for row in await conn.execute(query)]

    @whole
    async def take_over_run(
        self, run_id: str, gone_owner: str, owner: str, until: datetime
    ) -> bool:
        """Take over an open run from an owner that is gone; one claimant wins."""
        r = models.runs
        async with self.write() as conn:
            result = await conn.execute(
                sa.update(r)
                .where(r.c.id == run_id, r.c.owner == gone_owner, r.c.status.in_(OPEN_RUN_STATUSES))
                .values(owner=owner, lease_until=until)
            )
            return bool(result.rowcount)

    @whole
    async def forget_instances(self, silent_since: datetime) -> int:
        """Drop the rows of instances silent since then that own no open run."""
        i, r = models.instances, models.runs
        owns_open_run = (
            sa.select(r.c.id).where(r.c.owner == i.c.id, r.c.status.in_(OPEN_RUN_STATUSES)).exists()
        )
        async with self.write() as conn:
            result = await conn.execute(
                sa.delete(i).where(i.c.heartbeat_at < silent_since, ~owns_open_run)
            )
            return int(result.rowcount)
