"""The node's store: SQLite (WAL, synchronous=FULL) via aiosqlite."""

from node.store.db import FetchAll, FetchOne, SchemaTooNewError, Store, TransactionLost, Tx

__all__ = ["FetchAll", "FetchOne", "SchemaTooNewError", "Store", "TransactionLost", "Tx"]
