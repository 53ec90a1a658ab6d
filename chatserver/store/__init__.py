from chatserver.store.sql import Store
from chatserver.store.values import (
    ItemChange,
    ItemDelete,
    ItemWrite,
    NewEvent,
    Order,
    RunEnd,
    StoredEvent,
)

__all__ = [
    "ItemChange",
    "ItemDelete",
    "ItemWrite",
    "NewEvent",
    "Order",
    "RunEnd",
    "Store",
    "StoredEvent",
]
