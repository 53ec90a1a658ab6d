"""Brokers: how committed events, stop requests and tab takeovers reach every process.

`create_broker` picks one from the settings: Redis when `broker_url` names it, PostgreSQL
NOTIFY when the database is PostgreSQL (instances share it), else the in-process one.
"""

from __future__ import annotations

from chatserver.config import Settings
from chatserver.events import Broker, LocalBroker
from chatserver.store import Store

__all__ = ["create_broker"]


def create_broker(store: Store, settings: Settings, instance_id: str) -> Broker:
    if settings.broker_url is not None:
        try:
            from chatserver.brokers.redis import RedisBroker
        except ImportError as exc:
            raise RuntimeError(
                "CHATSERVER_BROKER_URL names Redis: install chatserver[redis]"
            ) from exc
        return RedisBroker(
            settings.broker_url,
            settings.broker_channel,
            settings.subscriber_queue_size,
            instance_id,
        )
    if store.backend == "postgresql":
        from chatserver.brokers.postgres import PostgresBroker

        return PostgresBroker(
            store, settings.broker_channel, settings.subscriber_queue_size, instance_id
        )
    return LocalBroker(settings.subscriber_queue_size)
