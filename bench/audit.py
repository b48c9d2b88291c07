"""Audit-log figures: `verify` over a large log, as `linkage audit verify` checks it (in
one process per CPU) and in one process, and a filtered `list`, against a baseline
measured in the same run (hashing the same bytes with nothing else, in one process)."""

from __future__ import annotations

import hashlib
import sqlite3
import tempfile
import time
from pathlib import Path

from linkage.auditlog import GENESIS, RANGE, AuditEntry, chain_hash, usable_cpus, verify_store
from linkage.cli.audit_entries import EntryFilter, find_entries


def build(path: Path, entries: int) -> None:
    """A synthetic audit log of `entries` rows, written as a node writes them."""
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE audit(seq INTEGER PRIMARY KEY, ts_ms INTEGER, event TEXT, counterpart TEXT, "
            "entry TEXT, hash BLOB)"
        )
        prev = GENESIS
        rows = []
        for seq in range(1, entries + 1):
            entry = AuditEntry(
                seq=seq,
                ts_ms=1_767_225_600_000 + seq,
                event="message.delivered" if seq % 3 else "share.decision",
                actor={"id": "p-1", "name": "", "role": "Social worker"},
                tokens=[f"{seq % 997:064x}"],
                message_id=f"m-{seq}",
                counterpart="csc" if seq % 2 else "school",
                decision="DECISION_OUTCOME_SHARED",
                detail={} if seq % 3 else {"share_id": f"s-{seq}"},
            ).canonical()
            prev = chain_hash(prev, entry)
            rows.append((seq, 0, "e", "", entry, prev))
            if len(rows) == 50_000:
                db.executemany("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?)", rows)
                rows.clear()
        db.executemany("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?)", rows)


def build_cross_check(gateway_db: Path, node_store: Path, node_id: str, messages: int) -> None:
    """A gateway's metadata log and a node's outbox that agree: `messages` sent by the node,
    each forwarded and its receipt relayed, and as many again from another node."""
    with sqlite3.connect(node_store) as db:
        db.execute(
            "CREATE TABLE outbox(seq INTEGER PRIMARY KEY, message_id TEXT NOT NULL UNIQUE, recipient TEXT NOT NULL, "
            "state TEXT NOT NULL, receipt BLOB, created_at_ms INTEGER NOT NULL)"
        )
        db.executemany(
            "INSERT INTO outbox(message_id, recipient, state, receipt, created_at_ms) VALUES (?, ?, 'delivered', ?, ?)",
            ((f"m-{n}", _recipient(n), bytes(300), 1_767_225_600_000 + n) for n in range(messages)),
        )
    with sqlite3.connect(gateway_db) as db:
        db.execute(
            "CREATE TABLE metalog(seq INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, event TEXT NOT NULL, "
            "counterpart TEXT NOT NULL, entry TEXT NOT NULL, hash BLOB NOT NULL)"
        )
        prev, seq, rows = GENESIS, 0, []
        for n in range(messages):
            for sender, message_id in ((node_id, f"m-{n}"), ("police", f"p-{n}")):
                for event, node, counterpart in (
                    ("envelope.forwarded", sender, _recipient(n)),
                    ("receipt.relayed", _recipient(n), sender),
                ):
                    seq += 1
                    entry = AuditEntry(
                        seq=seq,
                        ts_ms=1_767_225_600_000 + n,
                        event=event,
                        actor={"id": node, "name": "", "role": "node"},
                        message_id=message_id,
                        counterpart=counterpart,
                        detail={"size": 2_100},
                    ).canonical()
                    prev = chain_hash(prev, entry)
                    rows.append((seq, 1_767_225_600_000 + n, event, counterpart, entry, prev))
            if len(rows) >= 50_000:
                db.executemany("INSERT INTO metalog VALUES (?, ?, ?, ?, ?, ?)", rows)
                rows.clear()
        db.executemany("INSERT INTO metalog VALUES (?, ?, ?, ?, ?, ?)", rows)


def _recipient(n: int) -> str:
    return "csc" if n % 2 else "school"


def measure(entries: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.sqlite"
        build(path, entries)
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT seq, entry, hash FROM audit ORDER BY seq").fetchall()
            started = time.perf_counter()
            for _, entry, _ in rows:  # baseline: one SHA-256 per entry, nothing else
                hashlib.sha256(entry.encode()).digest()
            baseline = time.perf_counter() - started
            timed: dict[int, float] = {}
            for jobs in (0, 1):  # as the CLI runs it, then in one process
                started = time.perf_counter()
                report = verify_store(path, [], jobs)
                timed[jobs] = time.perf_counter() - started
                assert report.ok and report.entries == entries
            started = time.perf_counter()  # what `linkage audit list --person ... --counterpart csc` reads
            listed = sum(1 for _ in find_entries(db, EntryFilter(token=f"{42:064x}", counterpart="csc")))
            filtered = time.perf_counter() - started
    return {
        "entries": entries,
        "verify_per_s": entries / timed[0],
        "verify_jobs": min(usable_cpus(), -(-entries // RANGE)),  # one range each at most
        "verify_one_process_per_s": entries / timed[1],
        "baseline_sha256_per_s": entries / baseline,
        "ratio": baseline / timed[0],
        "list_filtered_per_s": entries / filtered,
        "listed": listed,
    }


if __name__ == "__main__":
    import sys

    result = measure(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
    for key, value in result.items():
        print(f"{key} {value:,.0f}" if key != "ratio" else f"{key} {value:.3f}")
