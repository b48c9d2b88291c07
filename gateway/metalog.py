"""The gateway's metadata log: who sent to whom, when, how large, and what became of
it; refusals and checkpoints. The same hash-chained structure as a node's audit log,
and no personal data: node ids, message ids, sizes, counts and reason codes only.

Entries are queued and committed in batches (group commit), so the log costs the
relay path a queue append, not a disk write per message. While the store cannot take
them (a full or failing disk), they wait in memory and the flush is tried again each
second; past `MAX_PENDING`, further events are only counted, by kind, and the count is
appended as one entry (`metalog.unrecorded`) once the store takes writes again. The
gateway meanwhile relays no new envelopes (GatewayService), so the gap is bounded. A
gateway stopped before its store takes them again writes what waits to a file beside the
store (`kept_path`), and enters it, once, at its next start that can (`metalog.kept`).

It grows by two entries, about 750 bytes, per message. With `[retention] metalog_days`
set, entries older than that are purged, oldest first, under an anchor: the position
and chain hash of the last entry purged, from which what remains still verifies."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

from gateway.db import GatewayDb
from linkage import logs
from linkage.auditlog import GENESIS, AuditEntry, chain_hash
from linkage.clock import DAY_MS, Clock
from linkage.files import fsync_dir, write_private
from linkage.ids import uuid7
from linkage.writability import unwritable

FLUSH_EVERY_S = 0.05
RETRY_EVERY_S = 1.0  # a flush the store refused is tried again this often, though nothing new comes
MAX_PENDING = 20_000  # entries held in memory for a store that cannot take them: a few MB
PURGE_CHUNK = 2_000  # entries per transaction, so a first purge of a long log never holds the writer long
KEPT_FORMAT = "linkage-metalog-kept/1"
log = logs.get("gateway.metalog")

Pending = tuple[int, str, str, str, dict[str, Any], str]  # ts_ms, event, node, counterpart, detail, ids


def kept_path(store: Path) -> Path:
    """Where a gateway that stops with entries its store would not take leaves them."""
    return store.with_name(store.name + ".metalog-kept")


class MetaLog:
    def __init__(self, db: GatewayDb, clock: Clock, gateway_id: str) -> None:
        self.db = db
        self.clock = clock
        self.gateway_id = gateway_id  # the actor of the log's own events
        self._pending: list[Pending] = []
        self._unrecorded: dict[str, int] = {}  # events past MAX_PENDING, by kind
        self._flushing_now = 0  # entries taken by a flush under way: they count against the bound too
        self._seq = 0
        self._hash = GENESIS
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()  # the timer's flush and shutdown's must not chain from the same head
        self._kept: Path | None = None  # a stop's file of entries, now pending: removed once they are committed

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
        """Entries not yet committed: waiting, or in a flush still under way (which moves them
        out of the queue while it writes, and puts them back if the store refuses them)."""
        return len(self._pending) + self._flushing_now

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
            message_id, _, outcome = ids.rpartition("\x00")  # the outcome is ours; the id may hold anything
            seq += 1
            actor = {"id": node, "name": "", "role": "node"}
            try:
                entry = AuditEntry(
                    seq=seq,
                    ts_ms=ts_ms,
                    event=event,
                    actor=actor,
                    message_id=message_id,
                    counterpart=counterpart,
                    decision=outcome,
                    detail=detail,
                ).canonical()
            except TypeError as exc:  # a defect in what was recorded: said in its place, not the batch lost
                log.error("metalog.unencodable", entry_event=event, error=str(exc))
                said = {"event": event, "error": type(exc).__name__}
                event, counterpart = "metalog.unencodable", ""
                entry = AuditEntry(seq=seq, ts_ms=ts_ms, event=event, actor=actor, detail=said).canonical()
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
        if self._kept is not None:
            kept, self._kept = self._kept, None
            try:
                _remove(kept)
            except OSError as exc:  # its entries are in: the next start finds them there and only removes it
                log.error("metalog.kept_not_removed", file=kept.name, error=exc.strerror)

    def keep(self, path: Path) -> int:
        """At stop, what waits for a store that would not take it, written whole to `path` for
        the next start to enter (`take_kept`): how many entries. OSError if it cannot be."""
        entries = [list(entry) for entry in self._pending]
        # after_seq: the log's last entry now, so that finding them entered reads only what came after.
        kept = {"format": KEPT_FORMAT, "kept_id": uuid7(self.clock.now_ms()), "after_seq": self._seq}
        write_private(path, json.dumps({**kept, "entries": entries, "unrecorded": self._unrecorded}).encode())
        return len(entries)

    async def take_kept(self, path: Path) -> int:
        """At start, before anything new: what a stop kept at `path`, ahead of it, with an entry
        saying so (`metalog.kept`), all committed in one flush, which then removes the file (a
        store that still refuses keeps them waiting, and the file). A file whose entries are in
        the log already (the gateway stopped between the two) is only removed; one that cannot
        be read is left, and said. How many entries were entered."""
        try:
            kept_id, after_seq, entries, unrecorded = _read_kept(path)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError) as exc:  # left for a person to look at
            log.error("metalog.kept_unreadable", file=path.name, problem=str(exc))
            return 0
        entered = await self.db.read(
            "SELECT 1 FROM metalog WHERE seq > ? AND event = 'metalog.kept' "
            "AND json_extract(entry, '$.detail.kept_id') = ?",
            (after_seq, kept_id),
        )
        if entered:
            _remove(path)
            return 0
        marker = {"kept_id": kept_id, "entries": len(entries)}
        self._pending[:0] = [*entries, (self.clock.now_ms(), "metalog.kept", self.gateway_id, "", marker, "\x00")]
        for event, count in unrecorded.items():
            self._unrecorded[event] = self._unrecorded.get(event, 0) + count
        self._kept = path
        try:
            await self.flush()
        except Exception as exc:  # still refused: they wait with the rest, the file until they are in
            if unwritable(exc) is None:
                log.exception("metalog.flush_failed", pending=len(self._pending))
            self._wake.set()
            return 0
        log.warning("metalog.kept_entered", entries=len(entries))
        return len(entries)

    def log_pending(self) -> None:
        """The last resort, at a stop that could neither commit nor keep them: each entry in
        the operational log, which carries ids, sizes and counts as this log does."""
        for ts_ms, event, node, counterpart, detail, ids in self._pending:
            message_id, _, outcome = ids.rpartition("\x00")  # the outcome is ours; the id may hold anything
            log.error(
                "metalog.unflushed_entry",
                at_ms=ts_ms,
                entry_event=event,
                node=node,
                counterpart=counterpart,
                message_id=message_id,
                outcome=outcome,
                detail=detail,
            )
        if self._unrecorded:
            log.error("metalog.unflushed_entry", entry_event="metalog.unrecorded", detail={"events": self._unrecorded})

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


def _read_kept(path: Path) -> tuple[str, int, list[Pending], dict[str, int]]:
    kept = json.loads(path.read_bytes())
    if kept.get("format") != KEPT_FORMAT:
        raise ValueError(f"not a {KEPT_FORMAT} file")
    entries: list[Pending] = [(int(t), e, n, c, dict(d), i) for t, e, n, c, d, i in kept["entries"]]
    unrecorded = {str(k): int(v) for k, v in dict(kept["unrecorded"]).items()}
    return str(kept["kept_id"]), int(kept["after_seq"]), entries, unrecorded


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)
