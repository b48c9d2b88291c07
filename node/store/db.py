"""Opening the store, migrating it, and the one way to change it: a write
transaction that carries its audit entries.

Every write runs under `BEGIN IMMEDIATE` (a deferred read-to-write upgrade can
fail with SQLITE_BUSY without waiting) and one asyncio lock, so there is a
single writer. The audit chain head is held in memory and only advanced when
the transaction commits.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import aiosqlite

from linkage import logs
from linkage.auditlog import GENESIS, AuditEntry, chain_hash, entry_leaf
from linkage.clock import Clock
from linkage.merkle import CompactRange
from linkage.v1 import summary_pb2
from node.store.schema import MIGRATIONS

log = logs.get("node.store")
SYSTEM_ACTOR = {"id": "system", "name": "", "role": "system"}


class SchemaTooNewError(RuntimeError):
    """The store was written by a newer Linkage; refusing to touch it."""


def actor_of(practitioner: summary_pb2.Practitioner | None) -> dict[str, str]:
    if practitioner is None:
        return SYSTEM_ACTOR
    return {"id": practitioner.id, "name": practitioner.name, "role": practitioner.role}


class Tx:
    """One write transaction. Audit entries join it and commit or vanish with it."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.db = store.db
        self.now_ms = store.clock.now_ms()
        self._seq = store._head_seq
        self._hash = store._head_hash
        self._frontier = CompactRange(store.frontier.size, store.frontier.hashes)

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> aiosqlite.Cursor:
        return await self.db.execute(sql, tuple(params))

    async def audit(
        self,
        event: str,
        actor: summary_pb2.Practitioner | None = None,
        *,
        tokens: Iterable[bytes] = (),
        summary_id: str = "",
        message_id: str = "",
        counterpart: str = "",
        decision: str = "",
        lawful_ground: str = "",
        rationale: str = "",
        detail: dict[str, Any] | None = None,
    ) -> int:
        self._seq += 1
        entry = AuditEntry(
            seq=self._seq,
            ts_ms=self.now_ms,
            event=event,
            actor=actor_of(actor),
            tokens=sorted(t.hex() for t in tokens),
            summary_id=summary_id,
            message_id=message_id,
            counterpart=counterpart,
            decision=decision,
            lawful_ground=lawful_ground,
            rationale=rationale,
            detail=detail or {},
        )
        canonical = entry.canonical()
        self._hash = chain_hash(self._hash, canonical)
        self._frontier.append(entry_leaf(canonical))
        await self.db.execute(
            "INSERT INTO audit(seq, ts_ms, event, counterpart, entry, hash) VALUES (?, ?, ?, ?, ?, ?)",
            (self._seq, self.now_ms, event, counterpart, canonical, self._hash),
        )
        return self._seq


class Store:
    def __init__(self, db: aiosqlite.Connection, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        self._lock = asyncio.Lock()
        self._head_seq = 0
        self._head_hash = GENESIS
        self.frontier = CompactRange()
        self.appended = asyncio.Event()  # set when audit entries commit (for checkpoints)

    @classmethod
    async def open(cls, path: Path, clock: Clock) -> Store:
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA foreign_keys=ON")
            await db.execute("PRAGMA busy_timeout=5000")
            store = cls(db, clock)
            await store._migrate(path)
            async with db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1") as cur:
                row = await cur.fetchone()
            if row is not None:
                store._head_seq, store._head_hash = int(row[0]), bytes(row[1])
            store.frontier = await store._load_frontier()
        except BaseException:
            await db.close()
            raise
        return store

    async def _load_frontier(self) -> CompactRange:
        """The Merkle frontier as last committed; rebuilt from the entries if it lags."""
        row = await self.fetchone("SELECT seq, frontier FROM audit_head WHERE id = 1")
        frontier = CompactRange.from_bytes(bytes(row[1])) if row else CompactRange()
        if frontier.size != self._head_seq:
            frontier = CompactRange()
            async with self.db.execute("SELECT entry FROM audit ORDER BY seq") as cursor:
                async for (entry,) in cursor:
                    frontier.append(entry_leaf(entry))
        return frontier

    async def _migrate(self, path: Path) -> None:
        async with self.db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        if version > len(MIGRATIONS):
            raise SchemaTooNewError(
                f"store schema version {version} is newer than this Linkage supports ({len(MIGRATIONS)}); "
                "upgrade Linkage instead of opening it with an older release"
            )
        if 0 < version < len(MIGRATIONS):
            # Never migrate the only copy: take a consistent backup first.
            backup = path.with_name(f"{path.name}.v{version}.{self.clock.now_ms()}.bak")
            with closing(sqlite3.connect(backup)) as target:
                await self.db.backup(target)
            log.info("store.backed_up_before_migration", schema=version, target=backup.name)
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            # executescript commits, so each migration is its own explicit transaction.
            await self.db.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")

    async def close(self) -> None:
        await self.db.close()

    @property
    def schema_version(self) -> int:
        return len(MIGRATIONS)

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[Tx]:
        async with self._lock:
            await self.db.execute("BEGIN IMMEDIATE")
            tx = Tx(self)
            try:
                yield tx
                if tx._seq != self._head_seq:
                    await self.db.execute(
                        "INSERT INTO audit_head(id, seq, frontier) VALUES (1, ?, ?) "
                        "ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, frontier = excluded.frontier",
                        (tx._seq, tx._frontier.to_bytes()),
                    )
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
            await self.db.execute("COMMIT")
            if tx._seq != self._head_seq:
                self._head_seq, self._head_hash, self.frontier = tx._seq, tx._hash, tx._frontier
                self.appended.set()

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        async with self.db.execute(sql, tuple(params)) as cur:
            return list(await cur.fetchall())

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> Any:
        async with self.db.execute(sql, tuple(params)) as cur:
            return await cur.fetchone()
