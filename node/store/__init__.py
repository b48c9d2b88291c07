"""The node's store: SQLite (WAL, synchronous=FULL) via aiosqlite."""

from node.store.db import SchemaTooNewError, Store, TransactionLost, Tx

__all__ = ["SchemaTooNewError", "Store", "TransactionLost", "Tx"]
