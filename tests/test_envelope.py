"""Sign, seal, open: every tampered byte is refused, and so is a re-sealed summary."""

from __future__ import annotations

import hashlib

import pytest

from linkage.contentkeys import ContentKeys
from linkage.envelope import MESSAGE_LABEL, decrypt, encrypt, open_envelope, parse_routing, verify_receipt
from linkage.reasons import Reason, Rejected
from linkage.v1 import directory_pb2, envelope_pb2, summary_pb2
from tests.crypto_fixtures import NOW, TOKENS, Keyring, make_keyring, seal, sign_receipt


@pytest.fixture(scope="module")
def ring() -> Keyring:
    return make_keyring()


def test_round_trip_names_both_ends(ring: Keyring) -> None:
    summary = summary_pb2.RiskSummary(headline="Risk has decreased", summary_id="s-1")
    out = ring.seal("a", "b", summary)
    opened = open_envelope(out.envelope, me="b", keys=ring.keys["b"], directory=ring.view, now_ms=NOW)
    assert opened.body.summary == summary
    assert (opened.body.sender_node, opened.body.recipient_node) == ("a", "b")
    assert opened.body.routing_sha256 == hashlib.sha256(out.envelope.routing).digest()
    assert list(opened.routing.link_tokens) == TOKENS
    assert opened.digest == out.digest


def test_ciphertext_hides_the_content(ring: Keyring) -> None:
    out = ring.seal("a", "b", summary_pb2.RiskSummary(headline="CANARY-7f3e"))
    assert b"CANARY-7f3e" not in out.envelope.SerializeToString()


def _reject(ring: Keyring, envelope: envelope_pb2.Envelope, me: str = "b") -> Reason:
    with pytest.raises(Rejected) as raised:
        open_envelope(envelope, me=me, keys=ring.keys[me], directory=ring.view, now_ms=NOW)
    return raised.value.reason


def test_every_flipped_byte_of_header_or_ciphertext_is_rejected(ring: Keyring) -> None:
    out = ring.seal("a", "b")
    reasons: set[Reason] = set()
    for field in ("routing", "sealed_key", "ciphertext"):
        original = getattr(out.envelope, field)
        for i in range(len(original)):
            tampered = bytearray(original)
            tampered[i] ^= 0x01
            envelope = envelope_pb2.Envelope()
            envelope.CopyFrom(out.envelope)
            setattr(envelope, field, bytes(tampered))
            reasons.add(_reject(ring, envelope))
    assert Reason.DECRYPT_FAILED in reasons
    assert reasons <= {
        Reason.DECRYPT_FAILED,
        Reason.MALFORMED,
        Reason.WRONG_RECIPIENT,
        Reason.UNKNOWN_SENDER,
        Reason.UNKNOWN_KEY,
        Reason.UNSUPPORTED_SUITE,
        Reason.STALE,
        Reason.FUTURE,
        Reason.EXPIRED,
    }


def _inner(ring: Keyring, envelope: envelope_pb2.Envelope, me: str = "b") -> envelope_pb2.SignedMessage:
    return envelope_pb2.SignedMessage.FromString(decrypt(envelope, parse_routing(envelope), ring.keys[me]))


def _reseal(ring: Keyring, signed: envelope_pb2.SignedMessage, routing: bytes, to: str) -> envelope_pb2.Envelope:
    """What an attacker holding a decrypted message can build: a fresh, valid seal."""
    header = envelope_pb2.RoutingHeader.FromString(routing)
    return encrypt(header, routing, ring.view.sealing_key(to, NOW), signed.SerializeToString(), ContentKeys())


def test_every_flipped_byte_of_the_signature_or_signed_body_is_rejected(ring: Keyring) -> None:
    out = ring.seal("a", "b")
    signed = _inner(ring, out.envelope)
    for field in ("signature", "body"):
        original = getattr(signed, field)
        for i in range(len(original)):
            tampered = bytearray(original)
            tampered[i] ^= 0x80
            forged = envelope_pb2.SignedMessage()
            forged.CopyFrom(signed)
            setattr(forged, field, bytes(tampered))
            assert _reject(ring, _reseal(ring, forged, out.envelope.routing, "b")) == Reason.BAD_SIGNATURE


def test_recipient_cannot_reseal_a_summary_to_a_third_node(ring: Keyring) -> None:
    """Surreptitious forwarding (Davis): b decrypts a->b and re-seals it to c."""
    out = ring.seal("a", "b")
    signed = _inner(ring, out.envelope)
    routing = envelope_pb2.RoutingHeader.FromString(out.envelope.routing)
    routing.recipient_node = "c"
    routing.recipient_key_id = "c-k1"
    forwarded = _reseal(ring, signed, routing.SerializeToString(), "c")
    assert _reject(ring, forwarded, me="c") == Reason.WRONG_RECIPIENT
    # ...and keeping the original header does not help: it names b.
    assert _reject(ring, _reseal(ring, signed, out.envelope.routing, "c"), me="c") == Reason.WRONG_RECIPIENT


def test_header_changed_under_a_valid_seal_is_rejected(ring: Keyring) -> None:
    """A gateway that re-seals with altered routing (e.g. other tokens) is caught by the signed header hash."""
    out = ring.seal("a", "b")
    signed = _inner(ring, out.envelope)
    routing = envelope_pb2.RoutingHeader.FromString(out.envelope.routing)
    routing.link_tokens.append(bytes(32))
    assert _reject(ring, _reseal(ring, signed, routing.SerializeToString(), "b")) == Reason.HEADER_MISMATCH


def test_signature_by_another_node_is_rejected(ring: Keyring) -> None:
    out = ring.seal("a", "b")
    signed = _inner(ring, out.envelope)
    signed.signature = ring.keys["c"].signing.sign(MESSAGE_LABEL + signed.body)
    assert _reject(ring, _reseal(ring, signed, out.envelope.routing, "b")) == Reason.BAD_SIGNATURE


def test_signature_without_the_domain_label_is_rejected(ring: Keyring) -> None:
    out = ring.seal("a", "b")
    signed = _inner(ring, out.envelope)
    signed.signature = ring.keys["a"].signing.sign(signed.body)
    assert _reject(ring, _reseal(ring, signed, out.envelope.routing, "b")) == Reason.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("created_at", "reason"),
    [(NOW + 10 * 60_000, Reason.FUTURE), (NOW - 40 * 86_400_000, Reason.STALE)],
)
def test_messages_outside_the_freshness_window_are_rejected(ring: Keyring, created_at: int, reason: Reason) -> None:
    ring.view.nodes["a"].keys[0].not_before_ms = created_at - 1  # the key itself is valid then
    try:
        envelope = seal(
            keys=ring.keys["a"],
            sender_node="a",
            recipient_node="b",
            recipient_key=ring.view.nodes["b"].keys[0],
            suite=directory_pb2.HPKE_SUITE_X25519_SHA256_AES128GCM,
            message_id="01a20105-405a-7c0b-bc94-8ec599dbf70a",
            link_tokens=TOKENS,
            kind=envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE,
            created_at_ms=created_at,
            share_id="s",
        ).envelope
        assert _reject(ring, envelope) == reason
    finally:
        ring.view.nodes["a"].keys[0].not_before_ms = NOW - 86_400_000


def test_padding_hides_length_within_a_bucket(ring: Keyring) -> None:
    short = ring.seal("a", "b", summary_pb2.RiskSummary(headline="x"))
    longer = ring.seal("a", "b", summary_pb2.RiskSummary(headline="x" * 600))
    assert len(short.envelope.ciphertext) == len(longer.envelope.ciphertext)


def test_receipt_binds_message_and_digest_and_is_signed_by_the_recipient(ring: Keyring) -> None:
    out = ring.seal("a", "b")
    body = envelope_pb2.ReceiptBody(
        message_id=out.routing.message_id,
        sender_node="a",
        recipient_node="b",
        envelope_sha256=out.digest,
        received_at_ms=NOW,
        status=envelope_pb2.RECEIPT_STATUS_ACCEPTED,
    )
    receipt = sign_receipt(ring.keys["b"], body)
    assert verify_receipt(receipt, me="a", directory=ring.view) == body
    forged = sign_receipt(ring.keys["c"], body)  # c claims to be b
    forged.signing_key_id = "b-k1"
    with pytest.raises(Rejected) as raised:
        verify_receipt(forged, me="a", directory=ring.view)
    assert raised.value.reason == Reason.BAD_SIGNATURE
    with pytest.raises(Rejected):
        verify_receipt(receipt, me="c", directory=ring.view)
