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
from collections.abc import Iterable
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf.message import DecodeError

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
    return ChainResult(True, count)


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
