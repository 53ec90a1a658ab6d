from chatserver.store.sql import ItemWrite, NewEvent, Store, StoredEvent

__all__ = ["ItemWrite", "NewEvent", "Store", "StoredEvent"]
