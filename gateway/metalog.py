"""The gateway's metadata log: who sent to whom, when, how large, and what became of
it; refusals and checkpoints. The same hash-chained structure as a node's audit log,
and no personal data: node ids, message ids, sizes, counts and reason codes only.

Entries are queued and committed in batches (group commit), so the log costs the
relay path a queue append, not a disk write per message.

It grows by two entries, about 750 bytes, per message. With `[retention] metalog_days`
set, entries older than that are purged, oldest first, under an anchor: the position
and chain hash of the last entry purged, from which what remains still verifies."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

from gateway.db import GatewayDb
from linkage import logs
from linkage.auditlog import GENESIS, AuditEntry, chain_hash
from linkage.clock import DAY_MS, Clock

FLUSH_EVERY_S = 0.05
PURGE_CHUNK = 2_000  # entries per transaction, so a first purge of a long log never holds the writer long
log = logs.get("gateway.metalog")


class MetaLog:
    def __init__(self, db: GatewayDb, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        self._pending: list[tuple[int, str, str, str, dict[str, Any], str]] = []
        self._seq = 0
        self._hash = GENESIS
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()  # the timer's flush and shutdown's must not chain from the same head

    async def load(self) -> None:
        """Chain on from the last entry, or from the anchor if retention purged every entry."""
        for seq, chain in await self.db.read(
            "SELECT seq, hash FROM (SELECT seq, hash FROM metalog ORDER BY seq DESC LIMIT 1) "
            "UNION ALL SELECT seq, hash FROM metalog_anchor ORDER BY seq DESC LIMIT 1"
        ):
            self._seq, self._hash = int(seq), bytes(chain)

    async def purge(self, keep_days: int, gateway_id: str, chunk: int = PURGE_CHUNK) -> int:
        """Delete the entries older than `keep_days`, oldest first, `chunk` to a transaction,
        moving the anchor with each; then record the purge in the log itself."""
        cutoff = self.clock.now_ms() - keep_days * DAY_MS
        purged = 0
        while True:
            async with self.db.tx() as db:
                rows = await db.execute_fetchall(
                    "SELECT seq, ts_ms, hash FROM metalog WHERE seq > COALESCE((SELECT seq FROM metalog_anchor), 0) "
                    "ORDER BY seq LIMIT ?",
                    (chunk,),
                )
                due = list(itertools.takewhile(lambda row: row[1] < cutoff, rows))
                if due:
                    seq, ts_ms, chain = due[-1]
                    await db.execute(
                        "INSERT INTO metalog_anchor(id, seq, ts_ms, hash) VALUES (1, ?, ?, ?) ON CONFLICT(id) "
                        "DO UPDATE SET seq = excluded.seq, ts_ms = excluded.ts_ms, hash = excluded.hash",
                        (seq, ts_ms, chain),
                    )
                    await db.execute("DELETE FROM metalog WHERE seq <= ?", (seq,))
            purged += len(due)
            if len(due) < chunk:
                break
        if purged:
            self.record("metalog.purged", gateway_id, purged=purged, keep_days=keep_days, before_ms=cutoff)
            log.info("metalog.purged", purged=purged, keep_days=keep_days)
        return purged

    def record(
        self, event: str, node: str, counterpart: str = "", message_id: str = "", outcome: str = "", **detail: Any
    ) -> None:
        self._pending.append((self.clock.now_ms(), event, node, counterpart, detail, f"{message_id}\x00{outcome}"))
        self._wake.set()

    async def flush(self) -> None:
        async with self._flushing:
            await self._flush()

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        seq, prev = self._seq, self._hash
        rows = []
        for ts_ms, event, node, counterpart, detail, ids in batch:
            message_id, outcome = ids.split("\x00")
            seq += 1
            entry = AuditEntry(
                seq=seq,
                ts_ms=ts_ms,
                event=event,
                actor={"id": node, "name": "", "role": "node"},
                message_id=message_id,
                counterpart=counterpart,
                decision=outcome,
                detail=detail,
            ).canonical()
            prev = chain_hash(prev, entry)
            rows.append((seq, ts_ms, event, counterpart, entry, prev))
        try:
            async with self.db.tx() as db:
                await db.executemany(
                    "INSERT INTO metalog(seq, ts_ms, event, counterpart, entry, hash) VALUES (?, ?, ?, ?, ?, ?)", rows
                )
        except Exception:
            self._pending[:0] = batch  # kept for the next flush, not lost
            raise
        self._seq, self._hash = seq, prev

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(FLUSH_EVERY_S)  # gather a batch: one commit for many events
            with contextlib.suppress(Exception):
                # Shielded: stopping mid-flush must not leave a half-done transaction behind.
                await asyncio.shield(self.flush())
