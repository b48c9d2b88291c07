"""The gateway's one SQLite file: subscriptions, witnessed checkpoints and the
metadata log. Never content, never identifiers. One writer at a time."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from linkage import logs
from linkage.exclusive import Exclusive
from linkage.writability import Writability, opening

log = logs.get("gateway.db")

SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriptions(
  token BLOB NOT NULL,
  node_id TEXT NOT NULL,
  PRIMARY KEY (token, node_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS witnessed(
  node_id TEXT PRIMARY KEY,
  tree_size INTEGER NOT NULL,
  root BLOB NOT NULL,
  signed BLOB NOT NULL,
  cosignature BLOB  -- this gateway's, when it has a witness key
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS witness_breaks(
  node_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  tree_size INTEGER NOT NULL,
  root BLOB NOT NULL,
  signed BLOB NOT NULL,
  broken_at_ms INTEGER NOT NULL,
  PRIMARY KEY (node_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS metalog(
  seq INTEGER PRIMARY KEY,
  ts_ms INTEGER NOT NULL,
  event TEXT NOT NULL,
  counterpart TEXT NOT NULL,
  entry TEXT NOT NULL,
  hash BLOB NOT NULL
);
CREATE TRIGGER IF NOT EXISTS metalog_append_only_update BEFORE UPDATE ON metalog
  BEGIN SELECT RAISE(ABORT, 'the metadata log is append-only'); END;
-- Retention: the last entry purged (its position and chain hash), from which the rest still
-- verifies. Entries are deleted only up to it; it is set only to an entry of the log, and
-- only ever moves forward. (Gateways before retention forbade every delete.)
CREATE TABLE IF NOT EXISTS metalog_anchor(
  id INTEGER PRIMARY KEY CHECK (id = 1),
  seq INTEGER NOT NULL,
  ts_ms INTEGER NOT NULL,
  hash BLOB NOT NULL
);
DROP TRIGGER IF EXISTS metalog_append_only_delete;
CREATE TRIGGER IF NOT EXISTS metalog_purged_only BEFORE DELETE ON metalog
  WHEN OLD.seq > COALESCE((SELECT seq FROM metalog_anchor), 0)
  BEGIN SELECT RAISE(ABORT, 'the metadata log is append-only: only entries up to the retention anchor go'); END;
CREATE TRIGGER IF NOT EXISTS metalog_anchor_set BEFORE INSERT ON metalog_anchor
  WHEN NEW.hash IS NOT (SELECT hash FROM metalog WHERE seq = NEW.seq)
  BEGIN SELECT RAISE(ABORT, 'the retention anchor must be an entry of the metadata log'); END;
CREATE TRIGGER IF NOT EXISTS metalog_anchor_moved BEFORE UPDATE ON metalog_anchor
  WHEN NEW.seq < OLD.seq OR NEW.hash IS NOT (SELECT hash FROM metalog WHERE seq = NEW.seq)
  BEGIN SELECT RAISE(ABORT, 'the retention anchor only moves forward, to an entry of the metadata log'); END;
CREATE TRIGGER IF NOT EXISTS metalog_anchor_kept BEFORE DELETE ON metalog_anchor
  BEGIN SELECT RAISE(ABORT, 'the retention anchor is never removed'); END;
"""

# Each node's number of subscriptions, kept by triggers in the transaction that changes them,
# so a restarted gateway knows every node's total before its index is packed. Run once, in one
# transaction, when the table is missing: for a gateway from before it, the totals are counted.
SUBSCRIPTION_COUNTS = """
BEGIN IMMEDIATE;
CREATE TABLE subscription_counts(
  node_id TEXT PRIMARY KEY,
  subscriptions INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO subscription_counts(node_id, subscriptions)
  SELECT node_id, COUNT(*) FROM subscriptions GROUP BY node_id;
CREATE TRIGGER subscription_counted AFTER INSERT ON subscriptions BEGIN
  INSERT INTO subscription_counts(node_id, subscriptions) VALUES (NEW.node_id, 1)
    ON CONFLICT(node_id) DO UPDATE SET subscriptions = subscriptions + 1;
END;
CREATE TRIGGER subscription_uncounted AFTER DELETE ON subscriptions BEGIN
  UPDATE subscription_counts SET subscriptions = subscriptions - 1 WHERE node_id = OLD.node_id;
END;
COMMIT;
"""

# Gateways before the witness checked consistency kept every checkpoint lodged. Each node's
# largest becomes the one witnessed (the first root, if two were lodged at that size), and
# every checkpoint at a size lodged with two roots is kept as a break: the evidence stays.
FROM_EVERY_CHECKPOINT = """
BEGIN IMMEDIATE;
INSERT OR IGNORE INTO witnessed(node_id, tree_size, root, signed)
  SELECT node_id, tree_size, root, signed FROM checkpoints AS c
  WHERE tree_size = (SELECT MAX(tree_size) FROM checkpoints WHERE node_id = c.node_id)
  ORDER BY node_id, root;
INSERT INTO witness_breaks(node_id, seq, tree_size, root, signed, broken_at_ms)
  SELECT node_id, ROW_NUMBER() OVER (PARTITION BY node_id ORDER BY tree_size, root), tree_size, root, signed, at_ms
  FROM checkpoints AS c
  WHERE EXISTS (SELECT 1 FROM checkpoints AS d
                WHERE d.node_id = c.node_id AND d.tree_size = c.tree_size AND d.root != c.root)
    AND NOT EXISTS (SELECT 1 FROM witnessed AS w
                    WHERE w.node_id = c.node_id AND w.tree_size = c.tree_size AND w.root = c.root);
DROP TABLE checkpoints;
COMMIT;
"""


class GatewayDb:
    def __init__(self, db: aiosqlite.Connection, path: Path, exclusive: Exclusive) -> None:
        self.db = db
        self.path = path
        self._lock = asyncio.Lock()
        self._exclusive = exclusive  # this process's alone while open
        # Cleared by the metadata log's next append (MetaLog._flush): see linkage.writability.
        self.writability = Writability(log)

    @classmethod
    async def open(cls, path: Path) -> GatewayDb:
        exclusive = Exclusive.take(path)
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
        except BaseException:
            exclusive.release()
            raise
        try:
            with opening(path):  # a damaged file, or not a store, says so and what to do
                await db.execute("PRAGMA journal_mode=WAL")
                await db.execute("PRAGMA synchronous=FULL")
                await db.executescript(SCHEMA)
                if await db.execute_fetchall("SELECT 1 FROM sqlite_master WHERE name = 'checkpoints'"):
                    await db.executescript(FROM_EVERY_CHECKPOINT)
                if not await db.execute_fetchall("SELECT 1 FROM sqlite_master WHERE name = 'subscription_counts'"):
                    await db.executescript(SUBSCRIPTION_COUNTS)
                columns = {row[1] for row in await db.execute_fetchall("PRAGMA table_info(witnessed)")}
                if "cosignature" not in columns:  # a gateway from before cosigning
                    await db.execute("ALTER TABLE witnessed ADD COLUMN cosignature BLOB")
        except BaseException:
            await db.close()
            exclusive.release()
            raise
        return cls(db, path, exclusive)

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            try:
                await self._settled()
                await self.db.execute("BEGIN IMMEDIATE")
                yield self.db
                await self.db.execute("COMMIT")  # a failed COMMIT is rolled back too
            except BaseException as exc:
                self.writability.failed(exc)
                # Queued after whatever the connection's thread is still doing, so it also
                # undoes a BEGIN whose caller was cancelled while it ran.
                try:
                    await self.db.execute("ROLLBACK")
                except sqlite3.OperationalError as undo:
                    if self.db.in_transaction:  # not only "no transaction is active": `_settled` tries again
                        log.error("store.rollback_failed", error=type(undo).__name__)
                raise

    async def read(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        """Committed rows only. Reads share the connection with transactions, so they are taken
        between them, and each runs to its end in one job: no statement is left holding a
        snapshot open for the reads behind it."""
        async with self._lock:
            await self._settled()
            return list(await self.db.execute_fetchall(sql, tuple(params)))

    async def _settled(self) -> None:
        """Roll back a transaction whose ROLLBACK in `tx` failed before the connection is used
        again: nothing may read what it wrote, or build on it."""
        if self.db.in_transaction:
            try:
                await self.db.execute("ROLLBACK")
            except sqlite3.OperationalError:
                if self.db.in_transaction:  # else one still queued from `tx` (cancelled as it waited) ended it
                    raise

    async def close(self) -> None:
        await self.db.close()
        self._exclusive.release()
