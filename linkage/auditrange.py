"""One range of a node's audit log checked on its own, so that `audit verify` can check
a large log in several processes at once (`linkage.auditlog.verify_store`).

Each entry's chain link needs only the stored hash of the entry before it: if every
link holds, the stored hashes are the chain from GENESIS, entry by entry, whatever
order the links were checked in. And a range that starts at a multiple of a power of
two no smaller than itself is a perfect subtree of the Merkle tree, or the left part of
one, so its compact range slots into the whole log's.

This module imports little on purpose: each worker process imports it afresh.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

from linkage.merkle import CompactRange, leaf_hash
from linkage.readonly import connect_read_only


@dataclass(frozen=True)
class RangeCheck:
    """A range's Merkle view, counted from its first leaf; `intact` is False at the first
    link that fails or entry out of place, and the rest is then left unread."""

    intact: bool
    compact: CompactRange = field(default_factory=CompactRange)
    at: dict[int, CompactRange] = field(default_factory=dict)  # the compact range at each size asked for


def read_only(path: Path) -> sqlite3.Connection:
    return connect_read_only(path)


def check_range(path: Path, start: int, end: int, before: bytes | None, marks: frozenset[int]) -> RangeCheck:
    """Entries start+1 to end (leaves start to end-1), chained on from `before`, or from
    the stored hash of entry `start` if None; with the compact range at each size (counted
    from `start`) in `marks`."""
    with closing(read_only(path)) as db:
        if before is None:
            row = db.execute("SELECT hash FROM audit WHERE seq = ?", (start,)).fetchone()
            if row is None:
                return RangeCheck(False)
            before = bytes(row[0])
        prev, expected = before, start + 1
        compact = CompactRange()
        at: dict[int, CompactRange] = {}
        # The entry as its stored UTF-8 bytes, which are what was hashed: not decoded to be encoded again
        # (about 8% of a range's time).
        rows = db.execute(
            "SELECT seq, CAST(entry AS BLOB), hash FROM audit WHERE seq > ? AND seq <= ? ORDER BY seq", (start, end)
        )
        for seq, data, stored in rows:
            if seq != expected or sha256(prev + data).digest() != stored:
                return RangeCheck(False)
            prev, expected = stored, expected + 1
            compact.append(leaf_hash(data))
            if compact.size in marks:
                at[compact.size] = compact.copy()
    return RangeCheck(expected == end + 1, compact, at)
