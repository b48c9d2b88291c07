"""The gateway's metadata log: who sent to whom, when, how large, and what became of
it; refusals and checkpoints. The same hash-chained structure as a node's audit log,
and no personal data: node ids, message ids, sizes, counts and reason codes only.

Entries are queued and committed in batches (group commit), so the log costs the
relay path a queue append, not a disk write per message. While the store cannot take
them (a full or failing disk), they wait in memory and the flush is tried again each
second; past `MAX_PENDING`, further events are only counted, by kind, and the count is
appended as one entry (`metalog.unrecorded`) once the store takes writes again. The
gateway meanwhile relays no new envelopes (GatewayService), so the gap is bounded.

It grows by two entries, about 750 bytes, per message. With `[retention] metalog_days`
set, entries older than that are purged, oldest first, under an anchor: the position
and chain hash of the last entry purged, from which what remains still verifies."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from gateway.db import GatewayDb
from linkage import logs
from linkage.auditlog import GENESIS, AuditEntry, chain_hash
from linkage.clock import DAY_MS, Clock
from linkage.writability import unwritable

FLUSH_EVERY_S = 0.05
RETRY_EVERY_S = 1.0  # a flush the store refused is tried again this often, though nothing new comes
MAX_PENDING = 20_000  # entries held in memory for a store that cannot take them: a few MB
PURGE_CHUNK = 2_000  # entries per transaction, so a first purge of a long log never holds the writer long
log = logs.get("gateway.metalog")


class MetaLog:
    def __init__(self, db: GatewayDb, clock: Clock, gateway_id: str) -> None:
        self.db = db
        self.clock = clock
        self.gateway_id = gateway_id  # the actor of the log's own events
        self._pending: list[tuple[int, str, str, str, dict[str, Any], str]] = []
        self._unrecorded: dict[str, int] = {}  # events past MAX_PENDING, by kind
        self._flushing_now = 0  # entries taken by a flush under way: they count against the bound too
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

    async def purge(self, keep_days: int, chunk: int = PURGE_CHUNK) -> int:
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
            self.record("metalog.purged", self.gateway_id, purged=purged, keep_days=keep_days, before_ms=cutoff)
            log.info("metalog.purged", purged=purged, keep_days=keep_days)
        return purged

    def record(
        self, event: str, node: str, counterpart: str = "", message_id: str = "", outcome: str = "", **detail: Any
    ) -> None:
        if len(self._pending) + self._flushing_now >= MAX_PENDING:
            self._unrecorded[event] = self._unrecorded.get(event, 0) + 1
            return
        self._pending.append((self.clock.now_ms(), event, node, counterpart, detail, f"{message_id}\x00{outcome}"))
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def flush(self) -> None:
        async with self._flushing:
            await self._flush()

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        unrecorded, self._unrecorded = self._unrecorded, {}
        if unrecorded:  # after what was held: the count covers the events that came after it
            now = self.clock.now_ms()
            batch.append((now, "metalog.unrecorded", self.gateway_id, "", {"events": unrecorded}, "\x00"))
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
        self._flushing_now = len(batch)
        try:
            async with self.db.tx() as db:
                await db.executemany(
                    "INSERT INTO metalog(seq, ts_ms, event, counterpart, entry, hash) VALUES (?, ?, ?, ?, ?, ?)", rows
                )
        except Exception:
            if unrecorded:
                batch.pop()
                for event, count in unrecorded.items():
                    self._unrecorded[event] = self._unrecorded.get(event, 0) + count
            self._pending[:0] = batch  # kept for the next flush, not lost
            raise
        finally:
            self._flushing_now = 0
        self._seq, self._hash = seq, prev
        self.db.writability.succeeded()  # it appended to the log: the store took new data

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(FLUSH_EVERY_S)  # gather a batch: one commit for many events
            try:
                # Shielded: stopping mid-flush must not leave a half-done transaction behind.
                await asyncio.shield(self.flush())
            except Exception as exc:
                if unwritable(exc) is None:  # the store says so itself, once (linkage.writability)
                    log.exception("metalog.flush_failed", pending=len(self._pending))
                await asyncio.sleep(RETRY_EVERY_S)
                self._wake.set()
