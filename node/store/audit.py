"""The node's audit log: append-only, hash-chained entries written in the same
transaction as the change they record.

hash(n) = SHA-256(hash(n-1) || canonical JSON of entry n), with 32 zero bytes
before the first entry. Editing, deleting, inserting or reordering an entry
breaks the chain from that point; `verify_chain` names the first bad entry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

GENESIS = bytes(32)


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    ts_ms: int
    event: str
    actor: dict[str, str]
    tokens: list[str] = field(default_factory=list)
    summary_id: str = ""
    message_id: str = ""
    counterpart: str = ""
    decision: str = ""
    lawful_ground: str = ""
    rationale: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    def canonical(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev: bytes, canonical: str) -> bytes:
    return hashlib.sha256(prev + canonical.encode()).digest()


@dataclass(frozen=True)
class ChainResult:
    ok: bool
    entries: int
    first_bad_seq: int | None = None
    problem: str = ""


def verify_chain(rows: Iterable[tuple[int, str, bytes]]) -> ChainResult:
    """Check (seq, entry, hash) rows in seq order; name the first that fails."""
    prev = GENESIS
    expected = 1
    count = 0
    for seq, entry, stored in rows:
        if seq != expected:
            return ChainResult(False, count, expected, f"entry {expected} is missing or out of order")
        if json.loads(entry).get("seq") != seq:
            return ChainResult(False, count, seq, "entry text names another position")
        prev = chain_hash(prev, entry)
        if prev != bytes(stored):
            return ChainResult(False, count, seq, "hash does not match the entry and its predecessor")
        expected += 1
        count += 1
    return ChainResult(True, count)
