"""One signature for many items (design.md §4, as X-Road signs batches).

A batch is an RFC 9162 Merkle tree over its items; one Ed25519 signature (and one
ML-DSA signature under the hybrid suite) covers the root, and each item carries its
inclusion proof (`BatchProof`). Only items going to the same node share a batch, so a
proof shows its holder nothing about messages sent to anyone else. A batch of one is
signed as itself, exactly as before batches existed: a message sent alone costs
nothing more and reads the same to any recipient.

A verifier follows the proof to the root and checks the signature over that root once;
it remembers signatures that verified, so each further item of the batch costs a few
hashes instead of a signature check.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa

from linkage.ed25519 import verify as ed25519_verify
from linkage.keys import MessageKeys
from linkage.merkle import ProofError, leaf_hash, root_and_proofs, root_from_inclusion
from linkage.reasons import Reason, Rejected
from linkage.v1 import envelope_pb2

BATCH_LABEL = b"linkage/v1/batch\x00"
PQ_CONTEXT = b"linkage/v1/message"  # ML-DSA context: part of the protocol version
MAX_BATCH = 256  # items under one signature; a proof then has at most 8 hashes
REMEMBERED = 4096  # batch signatures that verified, kept until this many newer ones push them out


@dataclass(frozen=True)
class Signature:
    """What an item carries to prove who signed it."""

    signature: bytes
    key_id: str
    pq_signature: bytes = b""
    proof: envelope_pb2.BatchProof | None = None  # None: signed as itself


def statement(label: bytes, size: int, root: bytes) -> bytes:
    """The bytes a batch signature covers: its kind of item, its size and its root."""
    return BATCH_LABEL + label + struct.pack(">I", size) + root


def sign_batch(keys: MessageKeys, label: bytes, items: list[bytes], hybrid: bool = False) -> list[Signature]:
    """Sign `items` (each under `label`) with one signature; one Signature per item."""
    if hybrid and keys.mldsa is None:
        raise Rejected(Reason.UNSUPPORTED_SUITE, "the hybrid suite needs this node's ML-DSA key")
    if len(items) == 1:
        pq = keys.mldsa.sign(items[0], context=PQ_CONTEXT) if hybrid and keys.mldsa else b""
        return [Signature(keys.signing.sign(label + items[0]), keys.key_id, pq)]
    root, proofs = root_and_proofs([leaf_hash(label + item) for item in items])
    signed = statement(label, len(items), root)
    signature = keys.signing.sign(signed)
    pq = keys.mldsa.sign(signed, context=PQ_CONTEXT) if hybrid and keys.mldsa else b""
    return [
        Signature(signature, keys.key_id, pq, envelope_pb2.BatchProof(index=i, size=len(items), path=path))
        for i, path in enumerate(proofs)
    ]


# An ordered set, oldest first, of every input of a check that passed: the ML-DSA key and
# signature too, so a classical check never stands in for a hybrid one, nor one key for another.
_verified: dict[tuple[bytes, bytes, bytes, tuple[bytes, bytes] | None], None] = {}


def verify(
    public_key: bytes,
    label: bytes,
    item: bytes,
    signature: bytes,
    proof: envelope_pb2.BatchProof | None,
    pq: tuple[bytes, bytes] | None = None,
) -> None:
    """Raise InvalidSignature unless `item` (under `label`) is signed with `public_key`,
    as itself or through `proof`; with `pq` (ML-DSA public key, signature), by both.

    Which keys may sign what is the caller's check; a signature that verified is a fact
    about these bytes alone, so remembering it is safe for any caller in the process."""
    if proof is None:
        ed25519_verify(public_key, signature, label + item)
        if pq is not None:
            _verify_pq(pq, item)
        return
    if proof.size < 2:
        raise InvalidSignature()  # a batch of one is signed as itself: no second form for it
    try:
        root = root_from_inclusion(proof.index, proof.size, leaf_hash(label + item), list(proof.path))
    except ProofError:
        raise InvalidSignature() from None
    signed = statement(label, proof.size, root)
    remembered = (public_key, signed, signature, pq)
    if remembered in _verified:
        return
    ed25519_verify(public_key, signature, signed)
    if pq is not None:
        _verify_pq(pq, signed)
    _verified[remembered] = None
    if len(_verified) > REMEMBERED:
        del _verified[next(iter(_verified))]


def _verify_pq(pq: tuple[bytes, bytes], data: bytes) -> None:
    public_key, signature = pq
    if not public_key:
        raise InvalidSignature()
    try:
        mldsa.MLDSA65PublicKey.from_public_bytes(public_key).verify(signature, data, context=PQ_CONTEXT)
    except ValueError:
        raise InvalidSignature() from None


@dataclass
class _Group:
    keys: MessageKeys
    hybrid: bool
    items: list[bytes] = field(default_factory=list)
    waiting: list[asyncio.Future[Signature]] = field(default_factory=list)


class BatchSigner:
    """Signs together what is asked for in one turn of the event loop, per signing key,
    kind of item and destination node.

    Nothing ever waits for company. The first item asked for in a turn is signed at once,
    alone, and its caller goes on without yielding, so a message sent on its own is
    neither delayed nor reordered behind other work. Whatever the callers already
    running ask for after it in the same turn is signed together at the turn's end: under
    load, that is most of them."""

    def __init__(self, label: bytes) -> None:
        self.label = label
        self._turn = False  # an item was signed this turn: later ones gather until its end
        self._groups: dict[tuple[str, str, bool], _Group] = {}

    def sign(self, keys: MessageKeys, to: str, item: bytes, hybrid: bool = False) -> asyncio.Future[Signature]:
        """The signature of `item` for node `to`: done already if it is the turn's first,
        else once the turn's batch is signed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Signature] = loop.create_future()
        if not self._turn:
            self._turn = True
            loop.call_soon(self._flush)
            _settle([future], partial(sign_batch, keys, self.label, [item], hybrid))
            return future
        group = self._groups.setdefault((keys.key_id, to, hybrid), _Group(keys, hybrid))
        group.items.append(item)
        group.waiting.append(future)
        return future

    def _flush(self) -> None:
        self._turn = False
        groups, self._groups = self._groups, {}
        for group in groups.values():
            for start in range(0, len(group.items), MAX_BATCH):
                items = group.items[start : start + MAX_BATCH]
                signing = partial(sign_batch, group.keys, self.label, items, group.hybrid)
                _settle(group.waiting[start : start + MAX_BATCH], signing)


async def signed_all(waiting: list[asyncio.Future[Signature]]) -> list[Signature]:
    """Each signature asked for, in order. If one cannot be made, or the caller is cancelled,
    that is raised, and the rest are given up: those still to come are cancelled, and a
    failure already set is marked retrieved, so asyncio reports none of them as nobody's."""
    try:
        return [await signature for signature in waiting]  # one already made costs no yield
    except BaseException:
        for signature in waiting:
            if not signature.done():
                signature.cancel()  # its batch passes it by
            elif not signature.cancelled():
                signature.exception()
        raise


def _settle(waiting: list[asyncio.Future[Signature]], signing: Callable[[], list[Signature]]) -> None:
    """Give each waiting caller its signature, or the reason there is none."""
    try:
        signatures = signing()
    except Exception as exc:
        for future in waiting:
            if not future.done():
                future.set_exception(exc)
        return
    for future, signature in zip(waiting, signatures, strict=True):
        if not future.done():  # its caller may have given up
            future.set_result(signature)
