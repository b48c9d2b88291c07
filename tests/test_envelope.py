"""Sign, seal, open: every tampered byte is refused, and so is a re-sealed summary."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkage.batchsign import MAX_BATCH, sign_batch
from linkage.config import DeliverySettings
from linkage.contentkeys import ContentKeys
from linkage.envelope import (
    HYBRID,
    MAX_BODY_BYTES,
    MESSAGE_LABEL,
    PAD_BUCKETS,
    Draft,
    _padding_for,
    check_freshness,
    decrypt,
    draft,
    encrypt,
    open_envelope,
    parse_routing,
    seal_signed,
    verify_receipt,
)
from linkage.ids import uuid7
from linkage.keys import MessageKeys, raw_public, raw_public_pq
from linkage.reasons import Reason, Rejected
from linkage.tokens import MAX_TOKENS_PER_MESSAGE
from linkage.transport import MAX_MESSAGE_BYTES
from linkage.v1 import directory_pb2, envelope_pb2, gateway_pb2, summary_pb2, workflow_pb2
from tests.crypto_fixtures import AGENCY_TYPE, NOW, TOKENS, Keyring, make_keyring, seal, sign_receipt, synthetic_summary


@pytest.fixture(scope="module")
def ring() -> Keyring:
    return make_keyring()


def test_round_trip_names_both_ends(ring: Keyring) -> None:
    summary = synthetic_summary("Risk has decreased")
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


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sender_node", "c"),
        ("message_id", "01a20105-405a-7c0b-bc94-8ec599dbf70b"),
        ("created_at_ms", NOW - 1),
        ("kind", envelope_pb2.MESSAGE_KIND_WITHDRAWAL),
    ],
)
def test_a_body_its_sender_signed_against_its_own_header_is_rejected(ring: Keyring, field: str, value: object) -> None:
    """The header's hash is right and the signature is a's, but the body says otherwise of
    who sent it, which message it is, when, or what kind: which would the recipient act on?"""
    out = ring.seal("a", "b")
    body = envelope_pb2.MessageBody.FromString(_inner(ring, out.envelope).body)
    setattr(body, field, value)
    data = body.SerializeToString()
    (signature,) = sign_batch(ring.keys["a"], MESSAGE_LABEL, [data])
    signed = envelope_pb2.SignedMessage(body=data, signature=signature.signature, signing_key_id=signature.key_id)
    assert _reject(ring, _reseal(ring, signed, out.envelope.routing, "b")) == Reason.HEADER_MISMATCH


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


def test_a_member_that_seals_or_signs_what_is_not_a_message_is_refused_as_malformed(ring: Keyring) -> None:
    """Only a member of the federation can seal to b, and only a can sign as a: bytes under a
    valid seal, or under a valid signature, that are not a message are refused as malformed,
    never acted on nor crashed on."""
    out = ring.seal("a", "b")
    routing = parse_routing(out.envelope)
    garbage = b"\xff\xff\xff"  # a field tag cut short: no protobuf message parses from it
    not_signed = encrypt(routing, out.envelope.routing, ring.view.sealing_key("b", NOW), garbage, ContentKeys())
    (signature,) = sign_batch(ring.keys["a"], MESSAGE_LABEL, [garbage])
    signed = envelope_pb2.SignedMessage(body=garbage, signature=signature.signature, signing_key_id=signature.key_id)
    not_a_body = _reseal(ring, signed, out.envelope.routing, "b")
    for envelope, said in ((not_signed, "sealed message does not parse"), (not_a_body, "signed body does not parse")):
        with pytest.raises(Rejected) as raised:
            open_envelope(envelope, me="b", keys=ring.keys["b"], directory=ring.view, now_ms=NOW)
        assert (raised.value.reason, raised.value.detail) == (Reason.MALFORMED, said)


def test_a_suite_this_node_cannot_seal_or_open_is_refused_as_unsupported(ring: Keyring) -> None:
    """A suite no version of Linkage knows, or the hybrid suite where the recipient's entry or
    this node's keys lack the post-quantum half: refused by name, not sealed without it."""
    out = ring.seal("a", "b")
    key = ring.view.sealing_key("b", NOW)
    for suite, said in (
        (directory_pb2.HpkeSuite.ValueType(99), "HPKE suite 99 is not supported"),
        (HYBRID, "the recipient has no post-quantum key for the hybrid suite"),
    ):
        routing = parse_routing(out.envelope)
        routing.suite = suite
        with pytest.raises(Rejected) as raised:
            encrypt(routing, routing.SerializeToString(), key, b"", ContentKeys())
        assert (raised.value.reason, raised.value.detail) == (Reason.UNSUPPORTED_SUITE, said)
    routing = parse_routing(out.envelope)
    routing.suite = HYBRID
    with pytest.raises(Rejected) as raised:
        decrypt(out.envelope, routing, ring.keys["b"])
    assert (raised.value.reason, raised.value.detail) == (
        Reason.UNSUPPORTED_SUITE,
        "this node holds no post-quantum key for the hybrid suite",
    )


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


# Every node of a federation must draw the window alike, so its edges are written here in
# figures (five minutes, as the README tells agency IT; thirty days), not in the constants
# that would move with them.
FIVE_MINUTES, THIRTY_DAYS, SEVEN_DAYS = 5 * 60_000, 30 * 86_400_000, 7 * 86_400_000


@pytest.mark.parametrize(
    ("created_at", "expires_at", "reason"),
    [
        (NOW + FIVE_MINUTES, NOW + 1, None),
        (NOW + FIVE_MINUTES + 1, NOW + 1, Reason.FUTURE),
        (NOW - THIRTY_DAYS, NOW + 1, None),
        (NOW - THIRTY_DAYS - 1, NOW + 1, Reason.STALE),
        (NOW, NOW + 1, None),
        (NOW, NOW, Reason.EXPIRED),
    ],
)
def test_the_freshness_window_is_exact_at_its_edges(created_at: int, expires_at: int, reason: Reason | None) -> None:
    routing = envelope_pb2.RoutingHeader(created_at_ms=created_at, expires_at_ms=expires_at)
    if reason is None:
        check_freshness(routing, NOW)
        return
    with pytest.raises(Rejected) as raised:
        check_freshness(routing, NOW)
    assert raised.value.reason == reason


def test_a_message_expires_seven_days_after_it_is_made(ring: Keyring) -> None:
    """As long as its sender tries to deliver it (`[delivery] undeliverable_after_days`, 7 by default)."""
    routing = ring.seal("a", "b", created_at_ms=NOW).routing
    assert (routing.created_at_ms, routing.expires_at_ms) == (NOW, NOW + SEVEN_DAYS)
    assert DeliverySettings().undeliverable_after_ms == SEVEN_DAYS


def test_padding_hides_length_within_a_bucket(ring: Keyring) -> None:
    short = ring.seal("a", "b", summary_pb2.RiskSummary(headline="x"))
    longer = ring.seal("a", "b", summary_pb2.RiskSummary(headline="x" * 600))
    assert len(short.envelope.ciphertext) == len(longer.envelope.ciphertext)


def test_s17_the_gateway_sees_only_bucket_sizes_whatever_the_summary(ring: Keyring) -> None:
    """S17: summaries of 100 B to 10 KB, and every length in the last few hundred bytes below
    the two smaller buckets (where padding once failed): each ciphertext the gateway sees is a
    bucket and the AEAD's 16-byte tag."""
    tag = 16
    lengths = [*range(100, 10_240, 13), *range(600, 1024), *range(3_700, 4_096)]
    seen = {len(ring.seal("a", "b", summary_pb2.RiskSummary(headline="x" * n)).envelope.ciphertext) for n in lengths}
    assert seen == {b + tag for b in PAD_BUCKETS[:3]}


def _near_edges() -> list[int]:
    """Sizes of a signed message where padding is hardest: just below each bucket (and each
    multiple of the largest), and where a padding part's length needs one more byte."""
    edges = sorted({*PAD_BUCKETS, *(k * PAD_BUCKETS[-1] for k in (2, 3))})
    return sorted({e - gap - d for e in edges for gap in (0, 130, 16_387) for d in range(-8, 9) if e - gap - d >= 0})


def test_every_message_near_an_edge_is_padded_to_exactly_a_bucket() -> None:
    """Each of them, not a sample: one size alone can be the one a padding rule misses
    (a message 1 byte short of a bucket, or 2)."""
    for size in _near_edges():
        _padded_to_exactly_a_bucket(size)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 3 * PAD_BUCKETS[-1]))
def test_every_message_is_padded_to_exactly_a_bucket(size: int) -> None:
    _padded_to_exactly_a_bucket(size)


def _padded_to_exactly_a_bucket(size: int) -> None:
    """A message the gateway sees is one of few lengths, never its own: the smallest bucket
    (or multiple of the largest) that holds it and a padding part's tag and length."""
    signed = envelope_pb2.SignedMessage(body=bytes(size))
    before = signed.ByteSize()
    signed.padding.extend(_padding_for(before))
    buckets = [*PAD_BUCKETS, *range(2 * PAD_BUCKETS[-1], before + 2 + 2 * PAD_BUCKETS[-1], PAD_BUCKETS[-1])]
    assert signed.ByteSize() == min(b for b in buckets if b >= before + 2)


@pytest.mark.parametrize(("short", "parts"), [(2, [0]), (3, [1]), (130, [0, 126]), (16_387, [0, 16_382])])
def test_sizes_one_padding_part_cannot_fill_take_two(short: int, parts: list[int]) -> None:
    """130 bytes short of a bucket, a part of 128 bytes needs a two-byte length (131 in all)
    and one of 127 leaves a byte over; so do 16,387 bytes, a part's length then needing three."""
    signed = envelope_pb2.SignedMessage(body=bytes(65_536 - short - 4))  # `body`'s tag and length: 4 bytes
    assert signed.ByteSize() == 65_536 - short
    signed.padding.extend(_padding_for(signed.ByteSize()))
    assert ([len(p) for p in signed.padding], signed.ByteSize()) == (parts, 65_536)


def _closure_reply(answer: int, closure_id: str = "c-1") -> Callable[[envelope_pb2.MessageBody], None]:
    return lambda body: body.closure_response.CopyFrom(
        workflow_pb2.ClosureResponse(closure_id=closure_id, answer=answer)  # type: ignore[arg-type]
    )


def _information(
    answer: int, summary: summary_pb2.RiskSummary | None = None, outcome: int = summary_pb2.DECISION_OUTCOME_NOT_SHARED
) -> Callable[[envelope_pb2.MessageBody], None]:
    def write(body: envelope_pb2.MessageBody) -> None:
        response = body.information_response
        response.answer = answer  # type: ignore[assignment]
        response.decision.outcome = outcome  # type: ignore[assignment]
        if summary is not None:
            response.summary.CopyFrom(summary)

    return write


def _unknown_outcome() -> summary_pb2.RiskSummary:
    summary = synthetic_summary()
    summary.decision.outcome = 42  # type: ignore[assignment]
    return summary


def _typed(agency_type: str) -> summary_pb2.RiskSummary:
    summary = synthetic_summary()
    summary.agency_type = agency_type
    return summary


def _date(year: int, month: int, day: int) -> summary_pb2.Date:
    return summary_pb2.Date(year=year, month=month, day=day)


def _dated(
    review_date: summary_pb2.Date | None = None, period_to: summary_pb2.Date | None = None
) -> summary_pb2.RiskSummary:
    """A summary with a date where a member's wrong software may put one: stored, a date no
    day on the calendar would fail every view that reads it."""
    summary = synthetic_summary()
    if review_date is not None:
        summary.review_date.CopyFrom(review_date)
    if period_to is not None:
        summary.risk_items.add().period.to.CopyFrom(period_to)
    return summary


def _notice(
    agency_name: str = "A", agency_type: str = AGENCY_TYPE, contact_role: str = ""
) -> Callable[[envelope_pb2.MessageBody], None]:
    """a's notice that it has joined: by default saying of a what the directory lists."""
    notice = workflow_pb2.InvolvementNotice(
        joined=True, link_tokens=TOKENS, agency_name=agency_name, agency_type=agency_type, contact_role=contact_role
    )
    return lambda body: body.involvement.CopyFrom(notice)


SHARE, REPLY = envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE, envelope_pb2.MESSAGE_KIND_CLOSURE_RESPONSE
INFORMATION = envelope_pb2.MESSAGE_KIND_INFORMATION_RESPONSE
INVOLVEMENT = envelope_pb2.MESSAGE_KIND_INVOLVEMENT_NOTICE


@pytest.mark.parametrize(
    ("kind", "content", "why"),
    [
        (99, _closure_reply(workflow_pb2.CLOSURE_ANSWER_AGREE), "message kind 99 is not one this node knows"),
        (REPLY, lambda body: body.summary.CopyFrom(synthetic_summary()), "does not carry its closure_response"),
        (SHARE, lambda body: None, "does not carry its summary"),
        (SHARE, lambda body: body.summary.CopyFrom(synthetic_summary(summary_id="")), "the summary has no id"),
        (SHARE, lambda body: body.summary.CopyFrom(_unknown_outcome()), "decision outcome 42"),
        (  # signed by a, credited to c: the recipient's case system would believe c said it
            SHARE,
            lambda body: body.summary.CopyFrom(synthetic_summary(origin="c")),
            "the summary names another agency as its origin, not the one that sent it",
        ),
        (SHARE, lambda body: body.summary.CopyFrom(synthetic_summary(origin="")), "as its origin"),
        (  # a school's node saying a police force assessed it: read as the police's word
            SHARE,
            lambda body: body.summary.CopyFrom(_typed("POLICE")),
            "the summary gives another agency type than its sender's in the directory (SCHOOL)",
        ),
        (SHARE, lambda body: body.summary.CopyFrom(_typed("")), "another agency type than its sender's"),
        (
            INFORMATION,
            _information(workflow_pb2.INFORMATION_ANSWER_PROVIDED, _typed("POLICE")),
            "the summary gives another agency type",
        ),
        (
            INVOLVEMENT,
            _notice(agency_type="POLICE"),
            "the involvement notice gives another agency type than its sender's in the directory (SCHOOL)",
        ),
        (  # whom the notice says has joined, and whom to contact there: the directory's
            INVOLVEMENT,
            _notice(agency_name="County Police"),
            "the involvement notice gives another agency name than its sender's in the directory (A)",
        ),
        (
            INVOLVEMENT,
            _notice(contact_role="Duty team"),
            "the involvement notice gives another contact role than its sender's in the directory (none)",
        ),
        (
            INFORMATION,
            _information(workflow_pb2.INFORMATION_ANSWER_PROVIDED, synthetic_summary(origin="c")),
            "as its origin",
        ),
        (REPLY, _closure_reply(99), "closure answer 99 is not one this node knows"),
        (REPLY, _closure_reply(workflow_pb2.CLOSURE_ANSWER_OBJECT, closure_id=""), "names no closure"),
        (
            envelope_pb2.MESSAGE_KIND_WITHDRAWAL,
            lambda body: body.withdrawal.CopyFrom(workflow_pb2.Withdrawal(reason="Recorded in error")),
            "the withdrawal names no summary",
        ),
        (INFORMATION, _information(7), "information answer 7"),
        (INFORMATION, _information(workflow_pb2.INFORMATION_ANSWER_PROVIDED), "provided without its summary"),
        (INFORMATION, _information(workflow_pb2.INFORMATION_ANSWER_DECLINED, outcome=0), "no decision this node knows"),
        (
            INFORMATION,
            _information(workflow_pb2.INFORMATION_ANSWER_PARTIAL, _unknown_outcome()),
            "decision outcome 42",
        ),
        (
            envelope_pb2.MESSAGE_KIND_CHALLENGE,
            lambda body: body.challenge.CopyFrom(workflow_pb2.Challenge(stage="PRACTITIONER")),
            "the challenge has no stage or concern",
        ),
        (
            envelope_pb2.MESSAGE_KIND_CHALLENGE_RESPONSE,
            lambda body: body.challenge_response.CopyFrom(
                workflow_pb2.ChallengeResponse(answer=workflow_pb2.CHALLENGE_ANSWER_ACCEPTED)
            ),
            "names no challenge",
        ),
        (
            envelope_pb2.MESSAGE_KIND_CHALLENGE_RESPONSE,
            lambda body: body.challenge_response.CopyFrom(
                workflow_pb2.ChallengeResponse(challenge_message_id="m", answer=3)  # type: ignore[arg-type]
            ),
            "challenge answer 3 is not one this node knows",
        ),
        (
            envelope_pb2.MESSAGE_KIND_CHALLENGE,
            lambda body: body.challenge.CopyFrom(
                workflow_pb2.Challenge(stage="PRACTITIONER", concern="c", respond_by=_date(0, -1, 0))
            ),
            "a date in it is not on the calendar (0--1-0)",
        ),
        (
            envelope_pb2.MESSAGE_KIND_REDELIVERY_REQUEST,
            lambda body: body.redelivery.CopyFrom(
                workflow_pb2.RedeliveryRequest(restore_id="Ms Example's store, put back " * 1000, since_ms=NOW)
            ),
            "the redelivery request has no restore or time",
        ),
        (  # a restore from the beginning of time is no time at all
            envelope_pb2.MESSAGE_KIND_REDELIVERY_REQUEST,
            lambda body: body.redelivery.CopyFrom(
                workflow_pb2.RedeliveryRequest(restore_id="01a20105-405a-7c0b-bc94-8ec599dbf70c", since_ms=0)
            ),
            "the redelivery request has no restore or time",
        ),
        (
            envelope_pb2.MESSAGE_KIND_RETURNED_COPIES,
            lambda body: body.returned.CopyFrom(
                workflow_pb2.ReturnedCopies(
                    restore_id="not a restore's id", copies=[workflow_pb2.ReturnedCopy(signed=b"x")]
                )
            ),
            "the returned copies name no restore",
        ),
        (SHARE, lambda body: body.summary.CopyFrom(_dated(review_date=_date(2026, 6, 31))), "(2026-6-31)"),
        (SHARE, lambda body: body.summary.CopyFrom(_dated(period_to=_date(0, 5, 1))), "(0-5-1)"),
    ],
)
def test_a_message_its_recipient_cannot_act_on_is_refused_as_malformed(
    ring: Keyring, kind: int, content: Callable[[envelope_pb2.MessageBody], None], why: str
) -> None:
    """Signed by a member of the federation and still refused: a newer kind or answer than
    this node knows, content that is not its kind's, or a summary with no id (it would
    supersede every other summary without one)."""
    out = ring.seal("a", "b", message_id=uuid7(NOW), kind=kind, content=content)  # type: ignore[arg-type]
    with pytest.raises(Rejected) as raised:
        open_envelope(out.envelope, me="b", keys=ring.keys["b"], directory=ring.view, now_ms=NOW)
    assert raised.value.reason == Reason.MALFORMED and why in raised.value.detail


@pytest.mark.parametrize(
    ("version", "reason", "said"),
    [
        (0, Reason.MALFORMED, "the message names no schema version"),
        (2, Reason.UNSUPPORTED_SCHEMA, "schema version 2 is newer than the 1 this node reads: upgrade it"),
    ],
)
def test_a_message_in_a_format_this_node_does_not_read_is_refused(
    ring: Keyring, version: int, reason: Reason, said: str
) -> None:
    """A newer format may carry what this node would drop unread, so it is refused with a
    code that tells its sender an upgrade is due; a body naming none is not a message."""

    def written_in(body: envelope_pb2.MessageBody) -> None:
        body.summary.CopyFrom(synthetic_summary())
        body.schema_version = version

    out = ring.seal("a", "b", content=written_in)
    with pytest.raises(Rejected) as raised:
        open_envelope(out.envelope, me="b", keys=ring.keys["b"], directory=ring.view, now_ms=NOW)
    assert (raised.value.reason, raised.value.detail) == (reason, said)


def test_a_date_sent_empty_is_a_date_left_out(ring: Keyring) -> None:
    """Case systems that write every field send an empty Date where none was given: taken as
    left out, not refused as off the calendar."""
    summary = _dated(review_date=_date(0, 0, 0), period_to=_date(0, 0, 0))
    assert summary.HasField("review_date")
    out = ring.seal("a", "b", message_id=uuid7(NOW), kind=SHARE, content=lambda body: body.summary.CopyFrom(summary))
    opened = open_envelope(out.envelope, me="b", keys=ring.keys["b"], directory=ring.view, now_ms=NOW)
    assert opened.body.summary.review_date == _date(0, 0, 0)


def test_the_largest_body_a_node_signs_travels_in_one_frame_in_the_worst_case() -> None:
    """MAX_BODY_BYTES, in the hybrid suite (the larger key encapsulation and a second
    signature), with the longest batch proof and the most link tokens a header carries,
    sealed, still fits the frame that sends it and the frame that delivers it."""
    sender, recipient = (MessageKeys.generate(n, post_quantum=True) for n in ("a-k1", "b-k1"))
    recipient_key = directory_pb2.NodeKey(
        key_id=recipient.key_id,
        hpke_public_key=raw_public(recipient.hpke),
        hpke_pq_public_key=raw_public_pq(recipient.mlkem),  # type: ignore[arg-type]
    )

    def largest(question: str) -> Draft:
        return draft(
            sender_node="a",
            recipient_node="b",
            recipient_key=recipient_key,
            suite=HYBRID,
            message_id=uuid7(NOW),
            link_tokens=[bytes([n]) * 32 for n in range(MAX_TOKENS_PER_MESSAGE)],
            kind=envelope_pb2.MESSAGE_KIND_CLARIFICATION_REQUEST,
            created_at_ms=NOW,
            share_id=uuid7(NOW),
            content=lambda body: body.clarification_request.CopyFrom(
                workflow_pb2.ClarificationRequest(about_message_id=uuid7(NOW), question=question)
            ),
        )

    short = largest("?")
    message = largest("?" * (MAX_BODY_BYTES - len(short.body) + 1 - 4))  # two lengths, each two bytes longer
    assert len(message.body) == MAX_BODY_BYTES
    items = [message.body, *(bytes([n]) for n in range(MAX_BATCH - 1))]
    signature = sign_batch(sender, MESSAGE_LABEL, items, hybrid=True)[0]
    assert signature.proof is not None and len(signature.proof.path) == 8 and signature.pq_signature
    envelope = seal_signed(message, signature, ContentKeys()).envelope
    assert len(envelope.ciphertext) > 3 * PAD_BUCKETS[-1]  # padded to the largest multiple that fits
    for frame in (gateway_pb2.NodeFrame(send=envelope), gateway_pb2.GatewayFrame(deliver=envelope)):
        assert frame.ByteSize() <= MAX_MESSAGE_BYTES


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
