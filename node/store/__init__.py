"""The node's store: SQLite (WAL, synchronous=FULL) via aiosqlite."""

from node.store.db import SchemaTooNew, Store, Tx

__all__ = ["SchemaTooNew", "Store", "Tx"]
