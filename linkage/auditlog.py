"""Audit logs (a node's, and the gateway's metadata log): append-only entries,
each written in the same transaction as the change it records.

Two structures cover every entry. A hash chain, hash(n) = SHA-256(hash(n-1) ||
canonical JSON of entry n) from 32 zero bytes, names the first edited, deleted,
inserted or reordered entry. An RFC 9162 Merkle tree over the same entries
gives signed checkpoints (size + root) that are lodged outside the node, so a
log rewritten as a whole, hashes and all, no longer matches them.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import sqlite3
from collections.abc import Generator, Iterable
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf.message import DecodeError

from linkage.auditrange import RangeCheck, check_range, read_only
from linkage.directory import DirectoryView
from linkage.ed25519 import verify as ed25519_verify
from linkage.merkle import CompactRange, leaf_hash
from linkage.reasons import Reason, Rejected
from linkage.v1 import audit_pb2

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
        """Sorted keys, no spaces, UTF-8 as is: the text `json.dumps(..., sort_keys=True,
        separators=(",", ":"), ensure_ascii=False)` gives, which `audit list` searches."""
        # Field by field, not dataclasses.asdict: that deep-copies every value. orjson, not
        # the json module: several entries per message, each 5 µs of the sender's loop with json.
        fields = {f: getattr(self, f) for f in _FIELDS}
        return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS).decode()


_FIELDS = tuple(f.name for f in dataclasses.fields(AuditEntry))


def chain_hash(prev: bytes, canonical: str) -> bytes:
    return sha256(prev + canonical.encode()).digest()


@dataclass(frozen=True)
class ChainResult:
    ok: bool
    entries: int
    first_bad_seq: int | None = None
    problem: str = ""
    head: bytes = b""  # the last entry's chain hash, when all are good


def verify_chain(rows: Iterable[tuple[int, str, bytes]], after: tuple[int, bytes] = (0, GENESIS)) -> ChainResult:
    """Check (seq, entry, hash) rows in seq order, chained on from `after` (the position and
    hash of the entry before the first: a retention anchor); name the first that fails."""
    expected, prev = after[0] + 1, after[1]
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
    return ChainResult(True, count, head=prev)


def metalog_anchor(db: sqlite3.Connection) -> tuple[int, int, bytes] | None:
    """The last entry retention purged from the gateway's metadata log: seq, time, chain hash."""
    if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'metalog_anchor'").fetchone():
        return None  # a gateway from before retention
    row = db.execute("SELECT seq, ts_ms, hash FROM metalog_anchor").fetchone()
    return (int(row[0]), int(row[1]), bytes(row[2])) if row else None


def verify_metalog(db: sqlite3.Connection, anchor: tuple[int, int, bytes] | None) -> ChainResult:
    """The gateway's metadata log, chained on from its retention anchor (`metalog_anchor`) if
    it has one: the caller reads it, to say what was purged as well."""
    rows = db.execute("SELECT seq, entry, hash FROM metalog ORDER BY seq")
    return verify_chain(rows, (anchor[0], anchor[2]) if anchor else (0, GENESIS))


# -- the Merkle view and signed checkpoints -------------------------------------------

CHECKPOINT_LABEL = b"linkage/v1/checkpoint\x00"
COSIGNATURE_LABEL = b"linkage/v1/cosignature\x00"


def entry_leaf(entry: str) -> bytes:
    """The RFC 9162 leaf hash of one canonical entry."""
    return leaf_hash(entry.encode())


def sign_checkpoint(
    key: ed25519.Ed25519PrivateKey, key_id: str, node_id: str, size: int, root: bytes, at_ms: int
) -> audit_pb2.SignedCheckpoint:
    body = audit_pb2.Checkpoint(node_id=node_id, tree_size=size, root=root, at_ms=at_ms, key_id=key_id)
    data = body.SerializeToString()
    return audit_pb2.SignedCheckpoint(checkpoint=data, signature=key.sign(CHECKPOINT_LABEL + data))


def open_checkpoint(signed: audit_pb2.SignedCheckpoint, directory: DirectoryView) -> audit_pb2.Checkpoint:
    """The checkpoint, if signed by the key the directory names for its node."""
    try:
        body = audit_pb2.Checkpoint.FromString(signed.checkpoint)
    except DecodeError:
        raise Rejected(Reason.MALFORMED, "checkpoint does not parse") from None
    entry = directory.nodes.get(body.node_id)
    key = next((k for k in entry.keys if k.key_id == body.key_id), None) if entry else None
    if key is None:
        raise Rejected(Reason.UNKNOWN_KEY, f"no key {body.key_id!r} for node {body.node_id!r}")
    try:
        ed25519_verify(key.signing_public_key, signed.signature, CHECKPOINT_LABEL + signed.checkpoint)
    except InvalidSignature:
        raise Rejected(Reason.BAD_SIGNATURE, "checkpoint signature does not verify") from None
    return body


def _cosigned(gateway_id: str, at_ms: int, checkpoint: bytes) -> bytes:
    return COSIGNATURE_LABEL + gateway_id.encode() + b"\x00" + at_ms.to_bytes(8, "big", signed=True) + checkpoint


def cosign(
    key: ed25519.Ed25519PrivateKey, gateway_id: str, signed: audit_pb2.SignedCheckpoint, at_ms: int
) -> audit_pb2.Cosignature:
    """A witness's signature that at `at_ms` it held `signed` as the node's latest checkpoint."""
    return audit_pb2.Cosignature(
        gateway_id=gateway_id, at_ms=at_ms, signature=key.sign(_cosigned(gateway_id, at_ms, signed.checkpoint))
    )


def check_cosignature(
    cosignature: audit_pb2.Cosignature, signed: audit_pb2.SignedCheckpoint, directory: DirectoryView
) -> None:
    """Rejected unless the witness key the directory names for the gateway signed this checkpoint."""
    key = directory.witness_key(cosignature.gateway_id)
    message = _cosigned(cosignature.gateway_id, cosignature.at_ms, signed.checkpoint)
    try:
        ed25519_verify(key, cosignature.signature, message)
    except InvalidSignature:
        raise Rejected(Reason.BAD_SIGNATURE, "the witness's cosignature does not verify") from None


@dataclass
class LogReport:
    """What `verify_log` found: everything an IG officer needs to act on."""

    entries: int = 0
    root: bytes = b""
    first_bad_seq: int | None = None
    problems: list[str] = field(default_factory=list)
    confirmed: list[int] = field(default_factory=list)  # checkpoint sizes the log matches

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_log(rows: Iterable[tuple[int, str, bytes]], checkpoints: Iterable[audit_pb2.Checkpoint]) -> LogReport:
    """One pass over (seq, entry, hash) rows: the chain, and the Merkle root at every
    lodged checkpoint size. Catches edits, deletions, insertions, reordering,
    truncation, and a whole log rewritten with fresh hashes."""
    wanted: dict[int, list[audit_pb2.Checkpoint]] = {}
    for cp in checkpoints:
        wanted.setdefault(cp.tree_size, []).append(cp)
    report = LogReport()
    compact = CompactRange()
    prev, expected = GENESIS, 1
    for seq, entry, stored in rows:
        data = entry.encode()  # hashed twice, encoded once: this loop is the whole of a verify
        if report.first_bad_seq is None:
            if seq != expected:
                report.first_bad_seq = expected
                report.problems.append(f"entry {expected} is missing or out of order")
            else:
                prev = sha256(prev + data).digest()  # chain_hash
                if prev != stored:
                    report.first_bad_seq = seq
                    report.problems.append(f"entry {seq} was changed: its hash does not match it and its predecessor")
        expected += 1
        compact.append(leaf_hash(data))  # entry_leaf, the entry encoded once
        for cp in wanted.get(compact.size, []):
            if compact.root() == cp.root:
                report.confirmed.append(cp.tree_size)
            else:
                good = max(report.confirmed, default=0)
                report.problems.append(
                    f"entries 1-{cp.tree_size} differ from the checkpoint signed at {cp.at_ms}: the log was "
                    f"rewritten at or after entry {good + 1}"
                )
                if report.first_bad_seq is None:
                    report.first_bad_seq = good + 1
    report.entries = compact.size
    report.root = compact.root()
    longest = max(wanted, default=0)
    if longest > compact.size:
        report.problems.append(
            f"the log has {compact.size} entries but a checkpoint vouches for {longest}: "
            f"entries {compact.size + 1}-{longest} were removed"
        )
        if report.first_bad_seq is None:
            report.first_bad_seq = compact.size + 1
    return report


# Leaves a worker checks at a time: a power of two, so that each range is a perfect
# subtree; at 1 M entries, 16 ranges keep two workers evenly busy to the end.
RANGE = 1 << 16


def verify_store(
    path: Path, checkpoints: Iterable[audit_pb2.Checkpoint], jobs: int = 0, per_range: int = RANGE
) -> LogReport:
    """`verify_log` over the audit log of the store at `path`, in `jobs` processes (0: one
    per CPU this process may use). Ranges of the log are checked at once; a log that
    fails anywhere is checked again in one pass, so that what is reported of it, the
    first bad entry and every problem, is exactly `verify_log`'s."""
    if per_range < 1 or per_range & (per_range - 1):
        raise ValueError(f"a range of {per_range} leaves is not a power of two")
    checkpoints = list(checkpoints)
    wanted: dict[int, list[audit_pb2.Checkpoint]] = {}
    for cp in checkpoints:
        wanted.setdefault(cp.tree_size, []).append(cp)
    with closing(read_only(path)) as db:
        first, last = db.execute("SELECT MIN(seq), MAX(seq) FROM audit").fetchone()
    if first == 1 and max(wanted, default=0) <= last:  # else it fails: the single pass says how
        ranges = [(start, min(start + per_range, last)) for start in range(0, last, per_range)]
        with closing(_check_ranges(path, ranges, wanted, jobs or usable_cpus())) as checks:
            report = _assemble(ranges, checks, wanted)
        if report is not None:
            return report
    with closing(read_only(path)) as db:
        return verify_log(db.execute("SELECT seq, entry, hash FROM audit ORDER BY seq"), checkpoints)


def usable_cpus() -> int:
    """The CPUs this process may run on (all of them where the system cannot say)."""
    if hasattr(os, "sched_getaffinity"):  # Linux; not macOS
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _check_ranges(
    path: Path, ranges: list[tuple[int, int]], wanted: dict[int, list[audit_pb2.Checkpoint]], jobs: int
) -> Generator[RangeCheck, None, None]:
    """Each range's check, in order; closed early, it abandons the ranges not yet begun."""
    args = (
        [path] * len(ranges),
        [start for start, _ in ranges],
        [end for _, end in ranges],
        [GENESIS if start == 0 else None for start, _ in ranges],
        [frozenset(size - start for size in wanted if start < size <= end) for start, end in ranges],
    )
    if jobs < 2 or len(ranges) < 2:
        yield from map(check_range, *args)
        return
    try:  # forkserver: a worker is forked from a fresh process, never from a caller's threads
        pool = ProcessPoolExecutor(min(jobs, len(ranges)), mp_context=multiprocessing.get_context("forkserver"))
    except (OSError, NotImplementedError):  # no semaphores for a pool here (a locked-down sandbox): one process
        yield from map(check_range, *args)
        return
    try:
        yield from pool.map(check_range, *args)
    finally:
        pool.shutdown(cancel_futures=True)


def _assemble(
    ranges: list[tuple[int, int]], checks: Iterable[RangeCheck], wanted: dict[int, list[audit_pb2.Checkpoint]]
) -> LogReport | None:
    """The report of a log whose every range is intact and matches every checkpoint within
    it, or None at the first that does not."""
    report = LogReport()
    whole = CompactRange()
    for (start, _), check in zip(ranges, checks, strict=True):
        if not check.intact:
            return None
        for size, part in sorted(check.at.items()):
            then = whole.copy()
            then.extend(part)
            root = then.root()
            for cp in wanted[start + size]:
                if cp.root != root:
                    return None
                report.confirmed.append(cp.tree_size)
        whole.extend(check.compact)
    report.entries, report.root = whole.size, whole.root()
    return report
