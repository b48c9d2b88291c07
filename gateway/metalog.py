"""The gateway's metadata log: who sent to whom, when, how large, and what became of
it; refusals and checkpoints. The same hash-chained structure as a node's audit log,
and no personal data: node ids, message ids, sizes, counts and reason codes only.

Entries are queued and committed in batches (group commit), so the log costs the
relay path a queue append, not a disk write per message."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from gateway.db import GatewayDb
from linkage.auditlog import GENESIS, AuditEntry, chain_hash
from linkage.clock import Clock

FLUSH_EVERY_S = 0.05


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
        for seq, chain in await self.db.read("SELECT seq, hash FROM metalog ORDER BY seq DESC LIMIT 1"):
            self._seq, self._hash = int(seq), bytes(chain)

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
