"""The one Store: SQLAlchemy 2 async on SQLite (embedded default) or PostgreSQL (production),
one aggregate per module, composed here."""

from __future__ import annotations

from chatserver.store.analytics import AnalyticsStore
from chatserver.store.events import EventStore
from chatserver.store.instances import InstanceStore
from chatserver.store.items import ItemStore
from chatserver.store.lifecycle import LifecycleStore
from chatserver.store.runs import RunStore
from chatserver.store.sessions import SessionStore
from chatserver.store.threads import ThreadStore
from chatserver.store.values import Order

__all__ = ["Order", "Store"]


class Store(
    SessionStore,
    ThreadStore,
    ItemStore,
    EventStore,
    RunStore,
    InstanceStore,
    LifecycleStore,
    AnalyticsStore,
):
    """Sessions, threads, items, the event log, runs and instances in one database, with the
    background duties' batches and the analytics over them; the URL picks the backend
    (`sqlite+aiosqlite://...` or `postgresql+psycopg://...`)."""
