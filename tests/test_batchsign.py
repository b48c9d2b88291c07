"""Batch signatures (design.md §4): one signature over a Merkle tree of the items going
to one node, each item carrying its inclusion proof; a batch of one is signed as itself."""

from __future__ import annotations

import asyncio
import gc
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature

from linkage import batchsign
from linkage.batchsign import BatchSigner, Signature, sign_batch, signed_all, statement, verify
from linkage.clock import ManualClock
from linkage.contentkeys import ContentKeys
from linkage.directory import DirectoryView
from linkage.ed25519 import verify as ed25519_verify
from linkage.envelope import (
    MESSAGE_LABEL,
    RECEIPT_LABEL,
    Draft,
    draft,
    open_envelope,
    seal_signed,
    signed_receipt,
    verify_receipt,
)
from linkage.keys import MessageKeys, raw_public, raw_public_pq
from linkage.merkle import leaf_hash
from linkage.reasons import Reason, Rejected
from linkage.v1 import directory_pb2, envelope_pb2, workflow_pb2
from tests.crypto_fixtures import NOW, TOKENS, make_keyring
from tests.harness import PRACTITIONER, make_federation, running, wait_delivered
from tests.test_delivery import family_assessment, share

KEYS = MessageKeys.generate("a-k1", post_quantum=True)
PUBLIC = raw_public(KEYS.signing)
ITEMS = [f"item {i}".encode() for i in range(5)]


def test_a_batch_of_one_is_signed_as_itself() -> None:
    (alone,) = sign_batch(KEYS, MESSAGE_LABEL, [b"alone"])
    assert alone.proof is None
    KEYS.signing.public_key().verify(alone.signature, MESSAGE_LABEL + b"alone")  # the bytes signed before batches
    verify(PUBLIC, MESSAGE_LABEL, b"alone", alone.signature, None)


def test_every_item_of_a_batch_verifies_under_one_signature() -> None:
    signatures = sign_batch(KEYS, MESSAGE_LABEL, ITEMS)
    assert len({s.signature for s in signatures}) == 1
    assert [(s.proof.index, s.proof.size) for s in signatures if s.proof] == [(i, 5) for i in range(5)]
    for item, s in zip(ITEMS, signatures, strict=True):
        verify(PUBLIC, MESSAGE_LABEL, item, s.signature, s.proof)


def _root_from(leaf: bytes, index: int, size: int, path: list[bytes]) -> bytes:
    """The root an inclusion proof leads to, as RFC 9162 (section 2.1.3.2) verifies one."""
    fn, sn, r = index, size - 1, leaf
    for p in path:
        assert sn > 0, "the proof is longer than the tree is deep"
        if fn & 1 or fn == sn:
            r = hashlib.sha256(b"\x01" + p + r).digest()
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = hashlib.sha256(b"\x01" + r + p).digest()
        fn, sn = fn >> 1, sn >> 1
    assert sn == 0, "the proof is shorter than the tree is deep"
    return r


@pytest.mark.parametrize("size", [2, 3, 5, 8])
def test_a_batch_signature_is_the_bytes_envelope_proto_describes(size: int) -> None:
    """Leaves SHA-256(0x00 || label || item), RFC 9162's tree, and one Ed25519 signature over
    "linkage/v1/batch\\0" || label || uint32 size || root: built here from that text alone."""
    items = ITEMS[:size] + [f"more {i}".encode() for i in range(size - len(ITEMS))]
    for label, text in ((MESSAGE_LABEL, b"linkage/v1/message\x00"), (RECEIPT_LABEL, b"linkage/v1/receipt\x00")):
        assert label == text
        signatures = sign_batch(KEYS, label, items)
        roots = set()
        for index, (item, signature) in enumerate(zip(items, signatures, strict=True)):
            assert signature.proof is not None and (signature.proof.index, signature.proof.size) == (index, size)
            leaf = hashlib.sha256(b"\x00" + text + item).digest()
            roots.add(_root_from(leaf, index, size, list(signature.proof.path)))
        (root,) = roots
        (signed,) = {s.signature for s in signatures}
        KEYS.signing.public_key().verify(signed, b"linkage/v1/batch\x00" + text + size.to_bytes(4, "big") + root)


def test_the_signature_over_a_batch_is_checked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[bytes] = []

    def counting(public_key: bytes, signature: bytes, data: bytes) -> None:
        checked.append(data)
        ed25519_verify(public_key, signature, data)

    monkeypatch.setattr(batchsign, "ed25519_verify", counting)
    items = [f"counted {i}".encode() for i in range(7)]
    for item, s in zip(items, sign_batch(KEYS, MESSAGE_LABEL, items), strict=True):
        verify(PUBLIC, MESSAGE_LABEL, item, s.signature, s.proof)
    assert len(checked) == 1


Edit = Callable[[envelope_pb2.BatchProof], object]


def _proof(s: Signature, edit: Edit | None = None) -> envelope_pb2.BatchProof:
    """A copy of `s`'s proof, edited."""
    assert s.proof is not None
    proof = envelope_pb2.BatchProof()
    proof.CopyFrom(s.proof)
    if edit is not None:
        edit(proof)
    return proof


OTHER = MessageKeys.generate("b-k1")
OTHER_BATCH = sign_batch(OTHER, MESSAGE_LABEL, ITEMS)


def _forge(
    s: list[Signature],
    key: bytes = PUBLIC,
    label: bytes = MESSAGE_LABEL,
    item: bytes = ITEMS[2],
    signature: bytes = b"",
    edit: Edit | None = None,
) -> tuple[bytes, bytes, bytes, bytes, envelope_pb2.BatchProof]:
    """Item 2 of a genuine batch with one thing changed: verify()'s arguments."""
    return key, label, item, signature or s[2].signature, _proof(s[2], edit)


def _flip(proof: envelope_pb2.BatchProof) -> None:
    proof.path[0] = bytes([proof.path[0][0] ^ 1]) + proof.path[0][1:]


FORGERIES: dict[str, Callable[[list[Signature]], tuple[bytes, bytes, bytes, bytes, envelope_pb2.BatchProof]]] = {
    "another item": lambda s: _forge(s, item=b"item 9"),
    "another index": lambda s: _forge(s, edit=lambda p: setattr(p, "index", 3)),
    "another size": lambda s: _forge(s, edit=lambda p: setattr(p, "size", 6)),
    "a changed path": lambda s: _forge(s, edit=_flip),
    "a shortened path": lambda s: _forge(s, edit=lambda p: p.path.pop()),
    "a receipt's label": lambda s: _forge(s, label=RECEIPT_LABEL),
    "another signer's key": lambda s: _forge(s, key=raw_public(OTHER.signing)),
    "another signer's signature": lambda s: _forge(s, signature=OTHER_BATCH[2].signature),
}


@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_forged_item_does_not_verify_even_after_its_batch_did(forgery: str) -> None:
    signatures = sign_batch(KEYS, MESSAGE_LABEL, ITEMS)
    for item, s in zip(ITEMS, signatures, strict=True):  # the genuine batch is now remembered
        verify(PUBLIC, MESSAGE_LABEL, item, s.signature, s.proof)
    with pytest.raises(InvalidSignature):
        verify(*FORGERIES[forgery](signatures))


def test_an_item_has_one_signed_form_a_batch_of_one_is_not_a_second() -> None:
    leaf = leaf_hash(MESSAGE_LABEL + ITEMS[0])
    signature = KEYS.signing.sign(statement(MESSAGE_LABEL, 1, leaf))  # what a batch of one would sign
    with pytest.raises(InvalidSignature):
        verify(PUBLIC, MESSAGE_LABEL, ITEMS[0], signature, envelope_pb2.BatchProof(index=0, size=1))


def test_under_the_hybrid_suite_both_signatures_cover_the_batch() -> None:
    pq_public = raw_public_pq(KEYS.mldsa) if KEYS.mldsa else b""
    signatures = sign_batch(KEYS, MESSAGE_LABEL, ITEMS, hybrid=True)
    for item, s in zip(ITEMS, signatures, strict=True):
        verify(PUBLIC, MESSAGE_LABEL, item, s.signature, s.proof, (pq_public, s.pq_signature))
    other = sign_batch(KEYS, MESSAGE_LABEL, [b"x", b"y"], hybrid=True)
    with pytest.raises(InvalidSignature):  # the classical signature alone is not enough
        verify(
            PUBLIC,
            MESSAGE_LABEL,
            ITEMS[0],
            signatures[0].signature,
            signatures[0].proof,
            (pq_public, other[0].pq_signature),
        )
    with pytest.raises(Rejected) as refused:
        sign_batch(OTHER, MESSAGE_LABEL, ITEMS, hybrid=True)
    assert refused.value.reason is Reason.UNSUPPORTED_SUITE
    assert refused.value.detail == "the hybrid suite needs this node's ML-DSA key"


@pytest.mark.parametrize("count", [1, 5])
def test_the_classical_suite_carries_no_ml_dsa_signature_from_a_node_that_holds_a_key(count: int) -> None:
    """The suite decides, not the keys a node holds: ready for the hybrid suite, a node still
    signs the classical suite's messages with Ed25519 alone, not 3 KB more a message."""
    assert KEYS.mldsa is not None
    assert [s.pq_signature for s in sign_batch(KEYS, MESSAGE_LABEL, ITEMS[:count])] == [b""] * count


def test_a_remembered_batch_stands_only_for_the_keys_it_was_checked_under() -> None:
    """What verified classically, or under one ML-DSA key, proves nothing about another check."""
    genuine = raw_public_pq(KEYS.mldsa) if KEYS.mldsa else b""
    another = MessageKeys.generate("c-k1", post_quantum=True).mldsa
    assert another is not None
    items = [b"remembered 0", b"remembered 1"]
    first, second = sign_batch(KEYS, MESSAGE_LABEL, items, hybrid=True)
    verify(PUBLIC, MESSAGE_LABEL, items[0], first.signature, first.proof)  # classical alone: remembered
    with pytest.raises(InvalidSignature):  # the hybrid suite's check, with no ML-DSA signature
        verify(PUBLIC, MESSAGE_LABEL, items[0], first.signature, first.proof, (genuine, b""))
    verify(PUBLIC, MESSAGE_LABEL, items[1], second.signature, second.proof, (genuine, second.pq_signature))
    with pytest.raises(InvalidSignature):  # the same signatures, said to be under another ML-DSA key
        pq = (raw_public_pq(another), second.pq_signature)
        verify(PUBLIC, MESSAGE_LABEL, items[1], second.signature, second.proof, pq)


@pytest.mark.parametrize("batched", [False, True])
def test_under_the_hybrid_suite_a_signer_without_a_usable_ml_dsa_key_is_refused(batched: bool) -> None:
    """A directory entry with no ML-DSA key, or bytes that are not one, verifies nothing, alone
    or in a batch: the hybrid check never falls back to the classical signature alone."""
    items = [b"hybrid 0", b"hybrid 1"] if batched else [b"hybrid alone"]
    first = sign_batch(KEYS, MESSAGE_LABEL, items, hybrid=True)[0]
    genuine = raw_public_pq(KEYS.mldsa) if KEYS.mldsa else b""
    for pq_public in (b"", genuine[:-1], bytes(len(genuine))):
        with pytest.raises(InvalidSignature):
            verify(PUBLIC, MESSAGE_LABEL, items[0], first.signature, first.proof, (pq_public, first.pq_signature))
    verify(PUBLIC, MESSAGE_LABEL, items[0], first.signature, first.proof, (genuine, first.pq_signature))


def test_the_batches_remembered_are_the_newest_few(monkeypatch: pytest.MonkeyPatch) -> None:
    """The signatures that verified are kept up to a bound, oldest out first: a long-running
    node's memory does not grow with every batch it has checked."""
    monkeypatch.setattr(batchsign, "REMEMBERED", 3)
    monkeypatch.setattr(batchsign, "_verified", {})
    batches = [[f"kept {n}.{i}".encode() for i in range(2)] for n in range(5)]
    signed = [sign_batch(KEYS, MESSAGE_LABEL, items) for items in batches]
    for items, signatures in zip(batches, signed, strict=True):
        verify(PUBLIC, MESSAGE_LABEL, items[0], signatures[0].signature, signatures[0].proof)
    kept = [signature for _, _, signature, _ in batchsign._verified]
    assert kept == [signatures[0].signature for signatures in signed[2:]]


async def test_the_first_item_of_a_turn_is_signed_at_once_and_the_rest_together_per_destination() -> None:
    signer = BatchSigner(RECEIPT_LABEL)
    first = signer.sign(KEYS, "b", ITEMS[0])
    assert first.done() and first.result().proof is None  # a lone item waits for nothing
    to_b = [signer.sign(KEYS, "b", item) for item in ITEMS[1:4]]
    to_c = signer.sign(KEYS, "c", ITEMS[4])
    assert not any(f.done() for f in [*to_b, to_c])
    together = await asyncio.gather(*to_b)
    assert len({s.signature for s in together}) == 1
    assert [s.proof.size for s in together if s.proof] == [3, 3, 3]
    assert (await to_c).proof is None  # nothing sent to b is in c's batch
    later = signer.sign(KEYS, "b", ITEMS[1])  # a new turn: its first item again goes at once
    assert later.done() and later.result().proof is None


async def test_a_caller_that_gives_up_leaves_the_others_their_signatures() -> None:
    signer = BatchSigner(MESSAGE_LABEL)
    signer.sign(KEYS, "b", ITEMS[0])
    gone, kept = signer.sign(KEYS, "b", ITEMS[1]), signer.sign(KEYS, "b", ITEMS[2])
    gone.cancel()
    signature = await kept
    assert signature.proof is not None and signature.proof.size == 2
    verify(PUBLIC, MESSAGE_LABEL, ITEMS[2], signature.signature, signature.proof)


async def test_what_cannot_be_signed_fails_each_caller() -> None:
    signer = BatchSigner(MESSAGE_LABEL)
    waiting = [signer.sign(OTHER, "b", item, hybrid=True) for item in ITEMS[:3]]  # alone, then a batch of two
    for outcome in await asyncio.gather(*waiting, return_exceptions=True):
        assert isinstance(outcome, Rejected) and outcome.reason is Reason.UNSUPPORTED_SUITE


@pytest.mark.parametrize("batch_failed_first", [False, True])
async def test_when_a_signature_cannot_be_made_its_caller_hears_once_and_nothing_is_left_unretrieved(
    batch_failed_first: bool,
) -> None:
    """Whether the rest are still to come (cancelled) or have failed already (marked retrieved)."""
    unretrieved: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: unretrieved.append(context))
    try:
        signer = BatchSigner(MESSAGE_LABEL)
        waiting = [signer.sign(OTHER, "b", item, hybrid=True) for item in ITEMS[:3]]  # alone, then a batch of two
        if batch_failed_first:
            await asyncio.sleep(0)  # the turn ends before the caller looks: its batch fails too
            assert all(w.done() and not w.cancelled() for w in waiting[1:])  # failed, not yet retrieved
        with pytest.raises(Rejected):
            await signed_all(waiting)
        await asyncio.sleep(0)  # the turn ends: its batch is signed, or would be
        assert all(w.done() for w in waiting)
        del waiting
        gc.collect()  # asyncio reports a failure nobody retrieved as its future goes
        assert unretrieved == []
    finally:
        loop.set_exception_handler(None)


def _to_index_0(proof: envelope_pb2.BatchProof) -> None:
    proof.index = 0


def _drafts(view: DirectoryView, count: int) -> list[Draft]:
    """`count` messages from a to b."""
    return [
        draft(
            sender_node="a",
            recipient_node="b",
            recipient_key=view.sealing_key("b", NOW),
            suite=directory_pb2.HPKE_SUITE_X25519_SHA256_AES128GCM,
            message_id=f"01a20105-405a-7c0b-bc94-8ec599dbf7{i:02x}",
            link_tokens=TOKENS,
            kind=envelope_pb2.MESSAGE_KIND_CLARIFICATION_REQUEST,
            created_at_ms=NOW,
            share_id="share-1",
            content=lambda body: body.clarification_request.CopyFrom(workflow_pb2.ClarificationRequest(question="?")),
        )
        for i in range(count)
    ]


def test_a_recipient_opens_each_message_of_a_batch_and_refuses_a_proof_moved_to_another() -> None:
    ring = make_keyring()
    drafts = _drafts(ring.view, 3)
    signatures = sign_batch(ring.keys["a"], MESSAGE_LABEL, [d.body for d in drafts])
    for d, s in zip(drafts, signatures, strict=True):
        opened = open_envelope(
            seal_signed(d, s, ContentKeys()).envelope, me="b", keys=ring.keys["b"], directory=ring.view, now_ms=NOW
        )
        assert opened.signed.batch.size == 3
    moved = Signature(signatures[1].signature, signatures[1].key_id, proof=_proof(signatures[1], _to_index_0))
    with pytest.raises(Rejected) as refused:
        open_envelope(
            seal_signed(drafts[1], moved, ContentKeys()).envelope,
            me="b",
            keys=ring.keys["b"],
            directory=ring.view,
            now_ms=NOW,
        )
    assert refused.value.reason is Reason.BAD_SIGNATURE


def test_receipts_signed_in_a_batch_each_verify_for_their_sender() -> None:
    ring = make_keyring()
    bodies = [
        envelope_pb2.ReceiptBody(message_id=f"m{i}", sender_node="a", recipient_node="b", received_at_ms=NOW)
        for i in range(4)
    ]
    data = [b.SerializeToString() for b in bodies]
    for body, item, s in zip(bodies, data, sign_batch(ring.keys["b"], RECEIPT_LABEL, data), strict=True):
        assert verify_receipt(signed_receipt(item, s), me="a", directory=ring.view) == body


async def test_messages_sealed_together_share_a_signature_and_each_is_delivered(tmp_path: Path) -> None:
    """The node's own path: of four messages to one recipient sealed in the same turn, the
    first goes signed alone and the other three under one signature; the recipient accepts
    each, and every receipt verifies."""
    clock = ManualClock()
    federation = make_federation(tmp_path, clock, nodes=("amh", "csc"))
    async with running(federation, clock=clock) as cluster:
        await share(cluster, await family_assessment(cluster))
        amh, csc = cluster.nodes["amh"], cluster.nodes["csc"]
        assert amh.store is not None and csc.store is not None
        await wait_delivered(amh, 1)
        first = envelope_pb2.Envelope.FromString((await amh.store.fetchone("SELECT envelope FROM outbox_bodies"))[0])
        tokens = list(envelope_pb2.RoutingHeader.FromString(first.routing).link_tokens)
        question = workflow_pb2.ClarificationRequest(question="Is the risk still current?")
        sealed = await asyncio.gather(
            *(
                amh.ctx.messenger.seal_each(
                    ["csc"],
                    envelope_pb2.MESSAGE_KIND_CLARIFICATION_REQUEST,
                    tokens,
                    f"thread-{i}",
                    lambda _: lambda body: body.clarification_request.CopyFrom(question),
                    PRACTITIONER,
                )
                for i in range(4)
            )
        )
        async with amh.store.tx() as tx:
            for i, each in enumerate(sealed):
                await amh.ctx.messenger.queue(tx, each, f"thread-{i}", PRACTITIONER)
        await wait_delivered(amh, 1 + len(sealed))  # the share, then each question
        stored = [
            envelope_pb2.SignedMessage.FromString(r[0])
            for r in await csc.store.fetchall(
                "SELECT b.signed FROM inbox i JOIN inbox_bodies b ON b.seq = i.seq WHERE i.kind = ?",
                (envelope_pb2.MESSAGE_KIND_CLARIFICATION_REQUEST,),
            )
        ]
        alone = [s for s in stored if not s.HasField("batch")]
        together = [s for s in stored if s.HasField("batch")]
        assert len(alone) == 1 and sorted(s.batch.index for s in together) == [0, 1, 2]
        assert {s.batch.size for s in together} == {3} and len({s.signature for s in together}) == 1
        now = clock.now_ms()
        for row in await amh.store.fetchall("SELECT receipt FROM outbox"):
            receipt = envelope_pb2.Receipt.FromString(row[0])
            verify_receipt(receipt, me="amh", directory=amh.trust.current(now))
