"""The node's store: SQLite (WAL, synchronous=FULL) via aiosqlite."""

from node.store.db import FetchOne, SchemaTooNewError, Store, TransactionLost, Tx

__all__ = ["FetchOne", "SchemaTooNewError", "Store", "TransactionLost", "Tx"]
