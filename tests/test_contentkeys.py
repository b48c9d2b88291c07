"""Content keys: one HPKE seal for many messages, each still opening alone, and
nothing opens under a key sealed for another pair, another number or other bytes."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from linkage import contentkeys
from linkage.batchsign import sign_batch
from linkage.contentkeys import ContentKeys, Encrypted, OpenedKeys, key_info
from linkage.envelope import MESSAGE_LABEL, Outgoing, draft, envelope_digest, open_envelope, seal_signed
from linkage.reasons import Reason, Rejected
from linkage.v1 import directory_pb2, envelope_pb2
from tests.crypto_fixtures import NOW, TOKENS, Keyring, make_keyring, synthetic_summary

SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)


@pytest.fixture(scope="module")
def ring() -> Keyring:
    return make_keyring()


def _seal(ring: Keyring, keys: ContentKeys, sender: str, recipient: str, n: int, at_ms: int = NOW) -> Outgoing:
    message = draft(
        sender_node=sender,
        recipient_node=recipient,
        recipient_key=ring.view.sealing_key(recipient, at_ms),
        suite=directory_pb2.HPKE_SUITE_X25519_SHA256_AES128GCM,
        message_id=f"01a20105-405a-7c0b-bc94-8ec599dbf7{n:02x}",
        link_tokens=TOKENS,
        kind=envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE,
        created_at_ms=at_ms,
        share_id=f"share-{n}",
        summary=synthetic_summary(f"synthetic {n}", origin=sender),
    )
    (signature,) = sign_batch(ring.keys[sender], MESSAGE_LABEL, [message.body])
    return seal_signed(message, signature, keys)


def _open(ring: Keyring, envelope: envelope_pb2.Envelope, opened: OpenedKeys | None = None, me: str = "b") -> str:
    return open_envelope(
        envelope, me=me, keys=ring.keys[me], directory=ring.view, now_ms=NOW, opened_keys=opened
    ).body.summary.headline


class CountingSuite:
    """The suite, counting the content keys it opens."""

    def __init__(self) -> None:
        self.opens = 0

    def decrypt(self, *args: Any, **kwargs: Any) -> bytes:
        self.opens += 1
        return SUITE.decrypt(*args, **kwargs)


def test_messages_to_one_key_share_a_sealed_key_and_each_opens_alone_in_any_order(ring: Keyring) -> None:
    keys = ContentKeys()
    sent = [_seal(ring, keys, "a", "b", n) for n in range(4)]
    assert len({s.envelope.sealed_key for s in sent}) == 1
    assert [s.envelope.key_seq for s in sent] == [0, 1, 2, 3]
    opened = OpenedKeys()
    assert [_open(ring, s.envelope, opened) for s in reversed(sent)] == [f"synthetic {n}" for n in (3, 2, 1, 0)]
    assert _open(ring, sent[2].envelope) == "synthetic 2"  # and without the cache, as after a restart
    # Another recipient, or another sender's keys, never share it.
    assert _seal(ring, keys, "a", "c", 9).envelope.sealed_key != sent[0].envelope.sealed_key
    assert _seal(ring, ContentKeys(), "a", "b", 9).envelope.sealed_key != sent[0].envelope.sealed_key


def test_an_envelope_opens_as_envelope_proto_describes_it(ring: Keyring) -> None:
    """Another implementation of the federation has only the contract: the content key, the
    nonce and the associated data, each built here from its description in envelope.proto."""
    keys = ContentKeys()
    envelopes = [_seal(ring, keys, "a", "b", n).envelope for n in (1, 2)]
    assert envelopes[0].sealed_key == envelopes[1].sealed_key  # one content key for both
    recipient = ring.keys["b"]
    for n, envelope in enumerate(envelopes, start=1):
        info = b"linkage/v1/content-key\x00" + b"a" + b"\x00" + b"b" + b"\x00" + recipient.key_id.encode()
        content_key = SUITE.decrypt(envelope.sealed_key, recipient.hpke, info=info)
        nonce = bytes(4) + envelope.key_seq.to_bytes(8, "big")
        plaintext = AESGCM(content_key).decrypt(
            nonce, envelope.ciphertext, b"linkage/v1/envelope\x00" + envelope.routing
        )
        body = envelope_pb2.MessageBody.FromString(envelope_pb2.SignedMessage.FromString(plaintext).body)
        assert body.summary.headline == f"synthetic {n}"
    assert envelopes[1].key_seq == envelopes[0].key_seq + 1


def test_a_content_key_is_replaced_when_spent_or_old(ring: Keyring, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(contentkeys, "KEY_MESSAGES", 2)
    keys = ContentKeys()
    first, second, third = (_seal(ring, keys, "a", "b", n) for n in range(3))
    assert first.envelope.sealed_key == second.envelope.sealed_key != third.envelope.sealed_key
    assert third.envelope.key_seq == 0
    _seal(ring, keys, "a", "c", 5)
    later = _seal(ring, keys, "a", "b", 4, at_ms=NOW + contentkeys.KEY_AGE_MS)
    assert later.envelope.sealed_key != third.envelope.sealed_key and later.envelope.key_seq == 0
    assert len(keys._current) == 1  # c's key, out of date, went when b's new one was drawn
    for n, out in enumerate((first, second, third)):
        assert _open(ring, out.envelope) == f"synthetic {n}"


def test_a_recipient_opens_each_content_key_once_and_keeps_a_bounded_number() -> None:
    recipient = x25519.X25519PrivateKey.generate()
    senders = {name: ContentKeys() for name in "acde"}  # each sender node has its own content keys
    suite = CountingSuite()
    opened = OpenedKeys(capacity=2)

    def send(sender: str) -> tuple[bytes, Encrypted]:
        info = key_info(sender, "b", "b-k1")
        return info, senders[sender].encrypt(
            SUITE, 16, recipient.public_key, (1, "b", "b-k1", b""), info, sender.encode(), b"aad", NOW
        )

    def receive(info: bytes, encrypted: Encrypted) -> bytes:
        return opened.decrypt(suite, 1, 16, lambda: recipient, info, encrypted, b"aad")  # type: ignore[arg-type]

    a1, a2, c1, d1 = send("a"), send("a"), send("c"), send("d")
    assert [receive(*m) for m in (a1, a2, c1, a1)] == [b"a", b"a", b"c", b"a"]
    assert suite.opens == 2  # a's key once, c's once: both kept
    receive(*d1)  # a third key: the least recently used (c's, though a's was opened first) is dropped
    receive(*a2)
    assert suite.opens == 3
    receive(*c1)
    assert suite.opens == 4
    # A message that does not open leaves no key behind, even when its sealed key is genuine.
    e1 = send("e")
    with pytest.raises(InvalidTag):
        receive(e1[0], Encrypted(e1[1].sealed_key, e1[1].seq, b"\x00" * len(e1[1].ciphertext)))
    assert receive(*e1) == b"e" and suite.opens == 6


def test_a_content_key_opens_only_under_the_pair_and_key_it_was_sealed_for(ring: Keyring) -> None:
    """The sealed key's HPKE `info` names sender, recipient and key id, and the cache is
    keyed by them too: a's key, already opened at b, does not open c's message."""
    recipient = x25519.X25519PrivateKey.generate()
    sender = ContentKeys()
    identity = (1, "b", "b-k1", b"")
    from_a, from_c = key_info("a", "b", "b-k1"), key_info("c", "b", "b-k1")
    genuine = sender.encrypt(SUITE, 16, recipient.public_key, identity, from_a, b"from a", b"aad", NOW)
    # The same content key used for a message claiming to come from c.
    borrowed = sender.encrypt(SUITE, 16, recipient.public_key, identity, from_c, b"from c", b"aad", NOW)
    assert borrowed.sealed_key == genuine.sealed_key
    opened = OpenedKeys()
    assert opened.decrypt(SUITE, 1, 16, lambda: recipient, from_a, genuine, b"aad") == b"from a"
    with pytest.raises(InvalidTag):
        opened.decrypt(SUITE, 1, 16, lambda: recipient, from_c, borrowed, b"aad")


def test_a_changed_sealed_key_or_number_does_not_open(ring: Keyring) -> None:
    keys = ContentKeys()
    first, second = _seal(ring, keys, "a", "b", 0), _seal(ring, keys, "a", "b", 1)
    opened = OpenedKeys()
    assert _open(ring, first.envelope, opened) == "synthetic 0"
    renumbered = envelope_pb2.Envelope()
    renumbered.CopyFrom(second.envelope)
    renumbered.key_seq = 0  # second's ciphertext under first's nonce: the tag fails
    for attempt in (renumbered, envelope_pb2.Envelope(routing=second.envelope.routing)):
        with pytest.raises(Rejected) as refused:
            _open(ring, attempt, opened)
        assert refused.value.reason is Reason.DECRYPT_FAILED
    assert envelope_digest(renumbered) != envelope_digest(second.envelope)  # a receipt binds the number too
