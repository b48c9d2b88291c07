"""Sign, seal and name both ends (design.md §3).

The sender serialises the message body once and signs those exact bytes with
Ed25519 under a domain label, alone or in a batch of messages to the same
recipient (`linkage.batchsign`). The body names sender, recipient and message id,
and carries the SHA-256 of the clear routing header, so a recipient detects a
header changed on the way and a summary re-sealed by a recipient to a third
node. The signed message is encrypted for one recipient with the suite's AEAD
under a content key sealed to the recipient with HPKE (base mode, which
authenticates nobody, hence the signature), one key for many messages
(`linkage.contentkeys`); the routing header is the AEAD's `aad`.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from google.protobuf.message import DecodeError

from linkage.batchsign import Signature
from linkage.batchsign import verify as batch_verify
from linkage.content import SCHEMA_VERSION, check_content
from linkage.contentkeys import ContentKeys, Encrypted, OpenedKeys, PrivateKey, PublicKey, key_info
from linkage.directory import DirectoryView
from linkage.keys import MessageKeys
from linkage.reasons import Reason, Rejected
from linkage.v1 import directory_pb2, envelope_pb2, summary_pb2

MESSAGE_LABEL = b"linkage/v1/message\x00"
RECEIPT_LABEL = b"linkage/v1/receipt\x00"
INFO_LABEL = b"linkage/v1/envelope\x00"
MAX_CLOCK_SKEW_MS = 5 * 60 * 1000
MAX_AGE_MS = 30 * 24 * 3600 * 1000
DEFAULT_TTL_MS = 7 * 24 * 3600 * 1000
# Sealed plaintexts are padded up to one of these sizes (then multiples of the
# last), so the gateway learns little from ciphertext length.
PAD_BUCKETS = (1024, 4096, 16384, 65536)
# The largest message body a node signs. Signed (with the hybrid suite's second signature
# and a batch proof), padded to its multiple of 64 KiB and sealed, it still travels in one
# stream frame under the transport's limit: a larger one could never leave its sender, and
# would hold up everything queued behind it.
MAX_BODY_BYTES = 3 * PAD_BUCKETS[-1] - 8 * 1024

HYBRID = directory_pb2.HPKE_SUITE_MLKEM768X25519_SHA256_AES256GCM

# Each suite's HPKE, and the length of its AEAD's key (AES-GCM), for content keys.
_SUITES: dict[int, tuple[hpke.Suite, int]] = {
    directory_pb2.HPKE_SUITE_X25519_SHA256_AES128GCM: (
        hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM),
        16,
    ),
    # Hybrid ML-KEM-768 + X25519 (X-Wing style), for records that stay sensitive for decades.
    HYBRID: (hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM), 32),
}


def _recipient_public(suite: int, key: directory_pb2.NodeKey) -> PublicKey:
    classic = x25519.X25519PublicKey.from_public_bytes(key.hpke_public_key)
    if suite != HYBRID:
        return classic
    if not key.hpke_pq_public_key:
        raise Rejected(Reason.UNSUPPORTED_SUITE, "the recipient has no post-quantum key for the hybrid suite")
    return hpke.MLKEM768X25519PublicKey(mlkem.MLKEM768PublicKey.from_public_bytes(key.hpke_pq_public_key), classic)


def _own_private(suite: int, keys: MessageKeys) -> PrivateKey:
    if suite != HYBRID:
        return keys.hpke
    if keys.mlkem is None:
        raise Rejected(Reason.UNSUPPORTED_SUITE, "this node holds no post-quantum key for the hybrid suite")
    return hpke.MLKEM768X25519PrivateKey(keys.mlkem, keys.hpke)


def _suite(suite_id: int) -> tuple[hpke.Suite, int]:
    suite = _SUITES.get(suite_id)
    if suite is None:
        raise Rejected(Reason.UNSUPPORTED_SUITE, f"HPKE suite {suite_id} is not supported")
    return suite


def signing_generation(keys: MessageKeys, directory: DirectoryView, node_id: str, now_ms: int) -> MessageKeys:
    """The generation of this node's keys to sign with now: the newest the directory
    holds valid (during a rotation, the old one until the new one activates)."""
    try:
        return keys.for_id(directory.sealing_key(node_id, now_ms).key_id) or keys
    except Rejected:
        return keys


def envelope_digest(envelope: envelope_pb2.Envelope) -> bytes:
    """What a receipt binds: SHA-256 over the length-prefixed header and sealed key, the
    key's sequence number and the ciphertext."""
    h = hashlib.sha256(struct.pack(">I", len(envelope.routing)))
    h.update(envelope.routing)
    h.update(struct.pack(">I", len(envelope.sealed_key)))
    h.update(envelope.sealed_key)
    h.update(struct.pack(">Q", envelope.key_seq))
    h.update(envelope.ciphertext)
    return h.digest()


def _varint_len(n: int) -> int:
    length = 1
    while n >= 0x80:
        n >>= 7
        length += 1
    return length


def _padding_for(size: int) -> list[bytes]:
    """The padding (field 15's parts) that makes a message of `size` bytes fill the smallest
    bucket (or multiple of the largest) it fits with a part's tag and length: exactly, so
    that its length says nothing finer than its bucket."""
    last = PAD_BUCKETS[-1]
    target = next((b for b in PAD_BUCKETS if b >= size + 2), -(-(size + 2) // last) * last)
    gap = target - size
    for parts in ([gap], [2, gap - 2]):  # the second where no one part fills the gap (130 bytes, 16,387)
        lengths = [n for n in map(_part_for, parts) if n is not None]
        if len(lengths) == len(parts):
            return [bytes(n) for n in lengths]
    # Unreachable: a gap is at most a bucket, and the two parts fill every gap from 2 bytes to 2 MB.
    raise ValueError(f"no padding fills {gap} bytes")


def _part_for(taken: int) -> int | None:
    """The length of a padding part that takes exactly `taken` bytes with its tag (one
    byte, field 15) and its length (a varint), if one does."""
    for length_bytes in (1, 2, 3):
        n = taken - 1 - length_bytes
        if n >= 0 and _varint_len(n) == length_bytes:
            return n
    return None


@dataclass(frozen=True)
class Outgoing:
    """One message ready to leave: the envelope and what the sender keeps of it."""

    envelope: envelope_pb2.Envelope
    routing: envelope_pb2.RoutingHeader
    digest: bytes


@dataclass(frozen=True)
class Draft:
    """One message before it is signed and sealed."""

    routing: envelope_pb2.RoutingHeader
    routing_bytes: bytes
    body: bytes  # the serialised MessageBody: the exact bytes signed
    recipient_key: directory_pb2.NodeKey

    @property
    def hybrid(self) -> bool:
        return self.routing.suite == HYBRID


def draft(
    *,
    sender_node: str,
    recipient_node: str,
    recipient_key: directory_pb2.NodeKey,
    suite: directory_pb2.HpkeSuite.ValueType,
    message_id: str,
    link_tokens: Iterable[bytes],
    kind: envelope_pb2.MessageKind.ValueType,
    created_at_ms: int,
    share_id: str,
    summary: summary_pb2.RiskSummary | None = None,
    content: Callable[[envelope_pb2.MessageBody], None] | None = None,
    ttl_ms: int = DEFAULT_TTL_MS,
) -> Draft:
    """The routing header and body of one message for one recipient. The content is a
    summary, or whatever `content` writes into the body (notices, requests, replies)."""
    routing = envelope_pb2.RoutingHeader(
        message_id=message_id,
        sender_node=sender_node,
        recipient_node=recipient_node,
        link_tokens=list(link_tokens),
        created_at_ms=created_at_ms,
        expires_at_ms=created_at_ms + ttl_ms,
        suite=suite,
        kind=kind,
        recipient_key_id=recipient_key.key_id,
    )
    routing_bytes = routing.SerializeToString()
    body = envelope_pb2.MessageBody(
        schema_version=SCHEMA_VERSION,
        message_id=message_id,
        sender_node=sender_node,
        recipient_node=recipient_node,
        created_at_ms=created_at_ms,
        kind=kind,
        routing_sha256=hashlib.sha256(routing_bytes).digest(),
        share_id=share_id,
    )
    if summary is not None:
        body.summary.CopyFrom(summary)
    if content is not None:
        content(body)
    return Draft(routing, routing_bytes, body.SerializeToString(), recipient_key)


def seal_signed(message: Draft, signature: Signature, content_keys: ContentKeys) -> Outgoing:
    """Seal a signed draft for its recipient: padded, then encrypted under the current
    content key for the recipient's key."""
    signed = envelope_pb2.SignedMessage(
        body=message.body,
        signature=signature.signature,
        signing_key_id=signature.key_id,
        pq_signature=signature.pq_signature,
    )
    if signature.proof is not None:
        signed.batch.CopyFrom(signature.proof)
    return _seal(signed, message.routing, message.routing_bytes, message.recipient_key, content_keys)


def seal_again(
    signed: envelope_pb2.SignedMessage,
    routing_bytes: bytes,
    directory: DirectoryView,
    content_keys: ContentKeys,
) -> Outgoing:
    """A new envelope for a message already signed (its copy given back after a restore),
    to the key and with the routing header it first went with, which its signed body binds:
    to its recipient it is the same message, under another seal."""
    try:
        body = envelope_pb2.MessageBody.FromString(signed.body)
        routing = envelope_pb2.RoutingHeader.FromString(routing_bytes)
    except DecodeError:
        raise Rejected(Reason.MALFORMED, "the copy's signed body or routing header does not parse") from None
    if body.routing_sha256 != hashlib.sha256(routing_bytes).digest():
        raise Rejected(Reason.HEADER_MISMATCH, "the routing header is not the one the signed body names")
    key = directory.node_key(routing.recipient_node, routing.recipient_key_id, routing.created_at_ms)
    again = envelope_pb2.SignedMessage()
    again.CopyFrom(signed)
    again.ClearField("padding")
    return _seal(again, routing, routing_bytes, key, content_keys)


def _seal(
    signed: envelope_pb2.SignedMessage,
    routing: envelope_pb2.RoutingHeader,
    routing_bytes: bytes,
    recipient_key: directory_pb2.NodeKey,
    content_keys: ContentKeys,
) -> Outgoing:
    signed.padding.extend(_padding_for(signed.ByteSize()))
    envelope = encrypt(routing, routing_bytes, recipient_key, signed.SerializeToString(), content_keys)
    return Outgoing(envelope=envelope, routing=routing, digest=envelope_digest(envelope))


def encrypt(
    routing: envelope_pb2.RoutingHeader,
    routing_bytes: bytes,
    recipient_key: directory_pb2.NodeKey,
    plaintext: bytes,
    content_keys: ContentKeys,
) -> envelope_pb2.Envelope:
    """The envelope of `plaintext` under the sender's current content key for the recipient's key."""
    suite, key_bytes = _suite(routing.suite)
    encrypted = content_keys.encrypt(
        suite,
        key_bytes,
        lambda: _recipient_public(routing.suite, recipient_key),
        (routing.suite, routing.recipient_node, recipient_key.key_id, recipient_key.hpke_public_key),
        key_info(routing.sender_node, routing.recipient_node, recipient_key.key_id),
        plaintext,
        INFO_LABEL + routing_bytes,
        routing.created_at_ms,
    )
    return envelope_pb2.Envelope(
        routing=routing_bytes,
        ciphertext=encrypted.ciphertext,
        sealed_key=encrypted.sealed_key,
        key_seq=encrypted.seq,
    )


def decrypt(
    envelope: envelope_pb2.Envelope,
    routing: envelope_pb2.RoutingHeader,
    own: MessageKeys,
    opened_keys: OpenedKeys | None = None,
) -> bytes:
    """The plaintext of an envelope sealed to `own`; `InvalidTag` or `ValueError` when it
    does not open. `opened_keys` spares opening a content key opened before."""
    suite, key_bytes = _suite(routing.suite)
    return (opened_keys or OpenedKeys()).decrypt(
        suite,
        routing.suite,
        key_bytes,
        lambda: _own_private(routing.suite, own),
        key_info(routing.sender_node, routing.recipient_node, routing.recipient_key_id),
        Encrypted(envelope.sealed_key, envelope.key_seq, envelope.ciphertext),
        INFO_LABEL + envelope.routing,
    )


def parse_routing(envelope: envelope_pb2.Envelope) -> envelope_pb2.RoutingHeader:
    try:
        return envelope_pb2.RoutingHeader.FromString(envelope.routing)
    except DecodeError:
        raise Rejected(Reason.MALFORMED, "routing header does not parse") from None


@dataclass(frozen=True)
class Opened:
    """A message that passed every check, with the exact bytes that were signed."""

    routing: envelope_pb2.RoutingHeader
    body: envelope_pb2.MessageBody
    signed: envelope_pb2.SignedMessage
    digest: bytes
    routing_bytes: bytes = b""  # the header as it came, which the signed body binds


def check_freshness(routing: envelope_pb2.RoutingHeader, now_ms: int) -> None:
    if routing.created_at_ms > now_ms + MAX_CLOCK_SKEW_MS:
        raise Rejected(Reason.FUTURE, "created in the future beyond the allowed clock skew")
    if now_ms - routing.created_at_ms > MAX_AGE_MS:
        raise Rejected(Reason.STALE, "older than the replay window")
    if routing.expires_at_ms <= now_ms:
        raise Rejected(Reason.EXPIRED, "past its expiry")


def open_envelope(
    envelope: envelope_pb2.Envelope,
    *,
    me: str,
    keys: MessageKeys,
    directory: DirectoryView,
    now_ms: int,
    opened_keys: OpenedKeys | None = None,
) -> Opened:
    """Every recipient-side check of design.md §3.4, cheapest first."""
    routing = parse_routing(envelope)
    if routing.recipient_node != me:
        raise Rejected(Reason.WRONG_RECIPIENT, "routing header names another recipient")
    sender = directory.active_node(routing.sender_node)
    if routing.suite != directory.directory.suite:
        raise Rejected(Reason.UNSUPPORTED_SUITE, "suite differs from the one the directory names")
    own = keys.for_id(routing.recipient_key_id)
    if own is None:
        raise Rejected(Reason.UNKNOWN_KEY, "sealed to a key this node does not hold")
    check_freshness(routing, now_ms)
    try:
        signed = envelope_pb2.SignedMessage.FromString(decrypt(envelope, routing, own, opened_keys))
    except (InvalidTag, ValueError):
        raise Rejected(Reason.DECRYPT_FAILED, "ciphertext does not open with this node's key") from None
    except DecodeError:
        raise Rejected(Reason.MALFORMED, "sealed message does not parse") from None
    key = directory.node_key(routing.sender_node, signed.signing_key_id, routing.created_at_ms)
    pq = (key.mldsa_public_key, signed.pq_signature) if routing.suite == HYBRID else None  # both must verify
    try:
        batch_verify(key.signing_public_key, MESSAGE_LABEL, signed.body, signed.signature, _proof(signed), pq)
    except InvalidSignature:
        raise Rejected(Reason.BAD_SIGNATURE, "sender signature does not verify") from None
    try:
        body = envelope_pb2.MessageBody.FromString(signed.body)
    except DecodeError:
        raise Rejected(Reason.MALFORMED, "signed body does not parse") from None
    if body.recipient_node != me:
        raise Rejected(Reason.WRONG_RECIPIENT, "signed body names another recipient")
    if (
        body.routing_sha256 != hashlib.sha256(envelope.routing).digest()
        or body.sender_node != routing.sender_node
        or body.message_id != routing.message_id
        or body.created_at_ms != routing.created_at_ms
        or body.kind != routing.kind
    ):
        raise Rejected(Reason.HEADER_MISMATCH, "signed body does not match the routing header")
    check_content(body, sender)
    return Opened(routing, body, signed, envelope_digest(envelope), envelope.routing)


def _proof(signed: envelope_pb2.SignedMessage | envelope_pb2.Receipt) -> envelope_pb2.BatchProof | None:
    return signed.batch if signed.HasField("batch") else None


def signed_receipt(body: bytes, signature: Signature) -> envelope_pb2.Receipt:
    """A receipt for the serialised ReceiptBody `body`, signed alone or in a batch."""
    signed = envelope_pb2.Receipt(body=body, signature=signature.signature, signing_key_id=signature.key_id)
    if signature.proof is not None:
        signed.batch.CopyFrom(signature.proof)
    return signed


def verify_receipt(receipt: envelope_pb2.Receipt, *, me: str, directory: DirectoryView) -> envelope_pb2.ReceiptBody:
    """A receipt for a message this node sent, signed by the recipient it names."""
    try:
        body = envelope_pb2.ReceiptBody.FromString(receipt.body)
    except DecodeError:
        raise Rejected(Reason.MALFORMED, "receipt does not parse") from None
    if body.sender_node != me:
        raise Rejected(Reason.WRONG_RECIPIENT, "receipt is for another sender")
    public = directory.signing_key(body.recipient_node, receipt.signing_key_id, body.received_at_ms)
    try:
        batch_verify(public, RECEIPT_LABEL, receipt.body, receipt.signature, _proof(receipt))
    except InvalidSignature:
        raise Rejected(Reason.BAD_SIGNATURE, "receipt signature does not verify") from None
    return body


def verify_own_copy(
    signed: envelope_pb2.SignedMessage, *, me: str, holder: str, directory: DirectoryView
) -> envelope_pb2.MessageBody:
    """A copy of a message this node sent to `holder`, returned by it after a restore: the
    body, if this node's own key (as the directory names it for the time the message was
    made) signed it, addressed to `holder`, carrying what its kind needs."""
    try:
        body = envelope_pb2.MessageBody.FromString(signed.body)
    except DecodeError:
        raise Rejected(Reason.MALFORMED, "the copy's signed body does not parse") from None
    if body.sender_node != me or body.recipient_node != holder:
        raise Rejected(Reason.WRONG_RECIPIENT, f"the copy is not of a message from {me} to {holder}")
    key = directory.node_key(me, signed.signing_key_id, body.created_at_ms)
    # Its ML-DSA signature too where it carries one: the suite may have changed since it was sent.
    pq = (key.mldsa_public_key, signed.pq_signature) if signed.pq_signature else None
    try:
        batch_verify(key.signing_public_key, MESSAGE_LABEL, signed.body, signed.signature, _proof(signed), pq)
    except InvalidSignature:
        raise Rejected(Reason.BAD_SIGNATURE, "the copy's signature is not this node's") from None
    check_content(body, directory.active_node(me))
    return body
