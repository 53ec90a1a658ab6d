from chatserver.store.sql import ItemWrite, NewEvent, RunEnd, Store, StoredEvent

__all__ = ["ItemWrite", "NewEvent", "RunEnd", "Store", "StoredEvent"]
