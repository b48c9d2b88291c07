"""A restored node believes a copy given back to it only if it signed it itself, to the
agency returning it (node/returned_copies.py): real keys, directory and store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import cast

from linkage.batchsign import sign_batch
from linkage.clock import DAY_MS, ManualClock
from linkage.contentkeys import ContentKeys
from linkage.envelope import MESSAGE_LABEL, Opened, open_envelope
from linkage.v1 import envelope_pb2, summary_pb2, workflow_pb2
from node.messaging import Messenger
from node.redelivery import Redelivery
from node.returned_copies import COPIES_BYTES, Recovered, copies_for, recover
from node.store import Store, Tx
from node.withdrawals import summary_tokens
from tests.crypto_fixtures import AGENCY_TYPE, NOW, TOKENS, Keyring, make_keyring, synthetic_summary
from tests.harness import audit_events

ID = "01a20105-405a-7c0b-bc94-8ec599dbf7{:02x}"


def _summary(summary_id: str, origin: str = "a") -> summary_pb2.RiskSummary:
    summary = synthetic_summary(summary_id=summary_id, origin=origin)
    summary.people.add(link_token=bytes([3]) * 32, role_in_risk="PARENT")
    summary.people.add(link_token=bytes([4]) * 32, role_in_risk="CHILD", protect_identity=True)
    summary.decision.recipients.add(node_id="c", data_categories=["EDUCATION"])
    summary.decision.recipients.add(node_id="b", data_categories=["HEALTH", "MENTAL_HEALTH"])
    return summary


def _held(ring: Keyring, sender: str, recipient: str, n: int) -> Opened:
    """A message as its recipient holds it: opened, its signed message and routing header kept."""
    out = ring.seal(sender, recipient, _summary("s-1", sender), message_id=ID.format(n))
    keys = ring.keys[recipient]
    return open_envelope(out.envelope, me=recipient, keys=keys, directory=ring.view, now_ms=NOW)


async def _given_back(store: Store, ring: Keyring, copies: list[workflow_pb2.ReturnedCopy]) -> Recovered:
    """What a recovers of `copies`, given back by b in answer to the request a sent it (q-1)."""
    returned = workflow_pb2.ReturnedCopies(restore_id="r-1", copies=copies)
    answer = envelope_pb2.MessageBody(message_id="m-1", in_reply_to="q-1", returned=returned)
    async with store.tx() as tx:
        await _asked(tx)
        return await recover(tx, "a", ring.view, ContentKeys(), "b", answer)


async def _asked(tx: Tx) -> None:
    """This node's request, after its restore, that b send again what it lost (q-1), delivered."""
    await tx.execute(
        "INSERT INTO outbox(message_id, share_id, recipient, digest, state, next_attempt_at_ms, created_at_ms, "
        "kind) VALUES ('q-1', 'r-1', 'b', x'', 'delivered', 0, ?, 17)",
        (NOW,),
    )


async def test_only_a_copy_this_node_signed_to_the_agency_returning_it_is_put_back(tmp_path: Path) -> None:
    """...and put back sealed again as it first went, to be sent again should the agency that
    returned it lose it too: its recipient opens the new envelope to the same signed message."""
    ring = make_keyring()

    held = _held(ring, "a", "b", 1)
    genuine = held.signed
    genuine.ClearField("padding")  # as the holder returns it
    to_another = _held(ring, "a", "c", 2).signed  # b returning what a sent c
    altered = envelope_pb2.SignedMessage()
    altered.CopyFrom(genuine)
    altered.body = altered.body.replace(b"s-1", b"s-9")
    forged = envelope_pb2.SignedMessage()  # b's signature under a's key id
    forged.CopyFrom(_held(ring, "a", "b", 3).signed)
    (signature,) = sign_batch(ring.keys["b"], MESSAGE_LABEL, [forged.body])
    forged.signature = signature.signature
    returned = workflow_pb2.ReturnedCopies(
        restore_id="r-1",
        copies=[
            workflow_pb2.ReturnedCopy(signed=s, received_at_ms=NOW + 5, routing=held.routing_bytes)
            for s in (
                genuine.SerializeToString(),
                genuine.SerializeToString(),  # the same again: held by then
                to_another.SerializeToString(),
                altered.SerializeToString(),
                forged.SerializeToString(),
                b"\xff\xff",
            )
        ],
    )

    answer = envelope_pb2.MessageBody(message_id="m-1", in_reply_to="q-1", returned=returned)
    store = await Store.open(tmp_path / "a.sqlite", ManualClock(NOW + 10))
    try:
        async with store.tx() as tx:  # a's request went to c, not b: b's copies answer nothing a asked
            await tx.execute(
                "INSERT INTO outbox(message_id, share_id, recipient, digest, state, next_attempt_at_ms, created_at_ms, "
                "kind) VALUES ('q-1', 'r-1', 'c', x'', 'delivered', 0, ?, ?)",
                (NOW, envelope_pb2.MESSAGE_KIND_REDELIVERY_REQUEST),
            )
            unasked = await recover(tx, "a", ring.view, ContentKeys(), "b", answer)
            assert (unasked.recovered, unasked.held, unasked.replies, unasked.refused) == (
                [],
                0,
                0,  # no answers applied: none can be looked for without the request
                [{"reason": "unasked", "detail": "it answers no redelivery request this node sent there"}],
            )
            await tx.execute("UPDATE outbox SET recipient = 'b' WHERE message_id = 'q-1'")
            done = await recover(tx, "a", ring.view, ContentKeys(), "b", answer)
        assert done.recovered == [ID.format(1)] and done.held == 1 and not done.unsealable
        assert [(r["copy"], r["reason"]) for r in done.refused] == [
            (2, "wrong_recipient"),
            (3, "bad_signature"),
            (4, "bad_signature"),
            (5, "malformed"),
        ]
        rows = await store.fetchall(
            "SELECT o.message_id, o.recipient, o.state, o.created_at_ms, o.delivered_at_ms, o.body_kept, o.summary_id, "
            "r.restore_id, r.tokens FROM outbox o JOIN outbox_recovered r ON r.seq = o.seq"
        )
        assert [tuple(r) for r in rows] == [  # the tokens the routing header names
            (ID.format(1), "b", "delivered", NOW, NOW + 5, 1, "s-1", "r-1", b"".join(TOKENS))
        ]
        digest, kept = await store.fetchone(
            "SELECT o.digest, b.envelope FROM outbox o JOIN outbox_bodies b ON b.seq = o.seq"
        )
        envelope = envelope_pb2.Envelope.FromString(kept)
        again = open_envelope(envelope, me="b", keys=ring.keys["b"], directory=ring.view, now_ms=NOW + 10)
        assert again.signed.body == genuine.body and again.signed.signature == genuine.signature
        assert again.routing_bytes == held.routing_bytes and again.digest == digest != held.digest
        assert again.signed.padding  # padded again, as every message leaves
        assert (await store.fetchone("SELECT outcome, kind FROM shares WHERE share_id = 'share-1'")) == (
            "DECISION_OUTCOME_SHARED",
            envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE,
        )
        events = [
            (event, counterpart)
            for event, counterpart in await store.fetchall("SELECT event, counterpart FROM audit ORDER BY seq")
        ]
        assert events == [("redelivery.returned", "b"), ("message.recovered", "b"), ("redelivery.returned", "b")]
        (entry,) = await audit_events(store, "message.recovered")
        # The share register reads what went to b, not what the decision sent c.
        assert entry["detail"]["data_categories"] == ["HEALTH", "MENTAL_HEALTH"]
    finally:
        await store.close()


async def test_copies_are_returned_in_parts_that_each_fit_one_message(tmp_path: Path) -> None:
    """In the order their sender made them, without their padding; one too large for any
    message to carry (a body near the largest a node signs) is named, not returned."""
    ring = make_keyring()
    store = await Store.open(tmp_path / "b.sqlite", ManualClock(NOW))
    big = _summary("s-big")
    big.headline = "x" * (COPIES_BYTES // 3)
    huge = _summary("s-huge")
    huge.headline = "x" * (COPIES_BYTES + 1)
    made = [ID.format(n) for n in range(8)]
    try:
        async with store.tx() as tx:
            for n in (7, 0, 1, 2, 6, 3, 4, 5):  # arrival order is not the order they were made
                out = ring.seal("a", "b", huge if n == 4 else big, message_id=made[n])
                opened = open_envelope(out.envelope, me="b", keys=ring.keys["b"], directory=ring.view, now_ms=NOW)
                assert opened.signed.padding
                cursor = await tx.execute(
                    "INSERT INTO inbox(sender, message_id, digest, received_at_ms, kind, share_id) "
                    "VALUES ('a', ?, x'', ?, 1, 'share-1')",
                    (made[n], NOW + 1 + (n != 0)),
                )
                await tx.execute(
                    "INSERT INTO inbox_bodies(seq, signed) VALUES (?, ?)",
                    (cursor.lastrowid, opened.signed.SerializeToString()),
                )
            returning = await copies_for(tx, "a", NOW + 2)  # not the first: received before
        assert returning.too_large == [made[4]]
        assert [len(p) for p in returning.parts] == [2, 2, 2] and returning.copies == 6
        copies = [envelope_pb2.SignedMessage.FromString(c.signed) for p in returning.parts for c in p]
        assert [envelope_pb2.MessageBody.FromString(c.body).message_id for c in copies] == made[1:4] + made[5:]
        assert not any(c.padding for c in copies)
        for part in returning.parts:
            assert workflow_pb2.ReturnedCopies(restore_id="r", copies=part).ByteSize() <= COPIES_BYTES
    finally:
        await store.close()


async def test_a_copy_that_names_no_summary_is_recorded_with_no_one_elses_tokens(tmp_path: Path) -> None:
    """A read notification carries no summary and no tokens of its own: it is recorded with
    none, not with those of whichever other message named no summary either (a subject
    access report would list it under people it is not about)."""
    ring = make_keyring()
    read = ring.seal(
        "a",
        "b",
        message_id=ID.format(1),
        kind=envelope_pb2.MESSAGE_KIND_READ_NOTIFICATION,
        content=lambda body: body.read.CopyFrom(workflow_pb2.ReadNotification(read_message_id="m-0", read_at_ms=NOW)),
    )
    signed = open_envelope(read.envelope, me="b", keys=ring.keys["b"], directory=ring.view, now_ms=NOW).signed
    involved = ring.seal("a", "c", _summary("s-1"), message_id=ID.format(0))  # a message naming no summary here
    store = await Store.open(tmp_path / "a.sqlite", ManualClock(NOW + 10))
    try:
        async with store.tx() as tx:
            for message_id, kind, recipient in (("q-1", 17, "b"), (ID.format(0), 6, "c")):
                cursor = await tx.execute(
                    "INSERT INTO outbox(message_id, share_id, recipient, digest, state, next_attempt_at_ms, "
                    "created_at_ms, kind) VALUES (?, 'r-1', ?, x'', 'delivered', 0, ?, ?)",
                    (message_id, recipient, NOW - 1, kind),
                )
                if kind == 6:
                    await tx.execute(
                        "INSERT INTO outbox_bodies(seq, envelope) VALUES (?, ?)",
                        (cursor.lastrowid, involved.envelope.SerializeToString()),
                    )
            returned = workflow_pb2.ReturnedCopies(
                restore_id="r-1", copies=[workflow_pb2.ReturnedCopy(signed=signed.SerializeToString())]
            )
            answer = envelope_pb2.MessageBody(message_id="m-1", in_reply_to="q-1", returned=returned)
            done = await recover(tx, "a", ring.view, ContentKeys(), "b", answer)
        assert done.recovered == [ID.format(1)]
        assert await store.fetchall("SELECT tokens FROM outbox_recovered") == [(b"",)]
        (entry,) = await audit_events(store, "message.recovered")
        assert entry["tokens"] == []
    finally:
        await store.close()


async def test_a_withdrawal_and_an_involvement_notice_given_back_are_recorded_under_whom_they_were_about(
    tmp_path: Path,
) -> None:
    """A withdrawal given back is recorded as made, for a later one on a consent ground to
    check; without its routing header it is listed under its summary's people, and an
    involvement notice under the people it names."""
    ring = make_keyring()
    family = [bytes([7]) * 32]
    share = _held(ring, "a", "b", 1)
    withdrawn = ring.seal(
        "a",
        "b",
        message_id=ID.format(2),
        kind=envelope_pb2.MESSAGE_KIND_WITHDRAWAL,
        content=lambda body: body.withdrawal.CopyFrom(
            workflow_pb2.Withdrawal(summary_id="s-1", reason="Shared in error.", ground="SHARED_IN_ERROR", erase=True)
        ),
    )
    joined = ring.seal(
        "a",
        "b",
        message_id=ID.format(3),
        kind=envelope_pb2.MESSAGE_KIND_INVOLVEMENT_NOTICE,
        content=lambda body: body.involvement.CopyFrom(
            workflow_pb2.InvolvementNotice(joined=True, link_tokens=family, agency_name="A", agency_type=AGENCY_TYPE)
        ),
    )
    copies = [workflow_pb2.ReturnedCopy(signed=share.signed.SerializeToString(), routing=share.routing_bytes)]
    for out in (withdrawn, joined):  # stored by b before nodes kept a routing header
        opened = open_envelope(out.envelope, me="b", keys=ring.keys["b"], directory=ring.view, now_ms=NOW)
        copies.append(workflow_pb2.ReturnedCopy(signed=opened.signed.SerializeToString()))
    store = await Store.open(tmp_path / "a.sqlite", ManualClock(NOW + 10))
    try:
        done = await _given_back(store, ring, copies)
        assert done.recovered == [ID.format(n) for n in (1, 2, 3)]
        assert await store.fetchall("SELECT summary_id, ground, erase FROM withdrawals") == [
            ("s-1", "SHARED_IN_ERROR", 1)
        ]
        tokens = [e["tokens"] for e in await audit_events(store, "message.recovered")]
        assert tokens[1] == tokens[0] == sorted(t.hex() for t in share.routing.link_tokens)
        assert tokens[2] == [t.hex() for t in family]
    finally:
        await store.close()


async def test_a_copy_whose_body_or_header_does_not_parse_is_refused_or_kept_unsendable_saying_which(
    tmp_path: Path,
) -> None:
    """What an agency gives back is bytes from outside: a signed body that does not parse is
    refused; a good copy with a routing header that does not parse is put back, but cannot be
    sealed again, and why is said."""
    ring = make_keyring()
    good = _held(ring, "a", "b", 1)
    garbled = envelope_pb2.SignedMessage(body=b"\xff\xff", signature=good.signed.signature)
    copies = [
        workflow_pb2.ReturnedCopy(signed=garbled.SerializeToString()),
        workflow_pb2.ReturnedCopy(signed=b"\xff\xff"),
        workflow_pb2.ReturnedCopy(signed=good.signed.SerializeToString(), routing=b"\xff\xff"),
    ]
    store = await Store.open(tmp_path / "a.sqlite", ManualClock(NOW + 10))
    try:
        done = await _given_back(store, ring, copies)
        assert done.recovered == [ID.format(1)]
        assert done.refused == [
            {"copy": 0, "reason": "malformed", "detail": "the copy's signed body does not parse"},
            {"copy": 1, "reason": "malformed", "detail": "the copy does not parse"},
        ]
        assert done.unsealable == [
            {"message_id": ID.format(1), "reason": "the copy's signed body or routing header does not parse"}
        ]
    finally:
        await store.close()


async def test_a_copy_without_the_routing_header_its_body_names_is_put_back_but_cannot_be_sent_again(
    tmp_path: Path,
) -> None:
    """Returned without its routing header (stored before nodes kept one), or with another
    message's: recorded as sent, with no envelope, and the reason said in both entries."""
    ring = make_keyring()
    first, second = _held(ring, "a", "b", 1), _held(ring, "a", "b", 2)
    copies = [
        workflow_pb2.ReturnedCopy(signed=first.signed.SerializeToString(), received_at_ms=NOW + 1),
        workflow_pb2.ReturnedCopy(
            signed=second.signed.SerializeToString(), routing=first.routing_bytes, received_at_ms=NOW + 2
        ),
    ]
    store = await Store.open(tmp_path / "a.sqlite", ManualClock(NOW + 10))
    try:
        done = await _given_back(store, ring, copies)
        assert done.recovered == [ID.format(1), ID.format(2)]
        why = [
            "the agency that gave it back stored it before nodes kept its routing header",
            "the routing header is not the one the signed body names",
        ]
        assert [u["message_id"] for u in done.unsealable] == done.recovered
        assert [u["reason"] for u in done.unsealable] == why
        kept = "SELECT body_kept, digest, (SELECT COUNT(*) FROM outbox_bodies) FROM outbox WHERE kind = 1"
        assert await store.fetchall(kept) == [(0, b"", 0), (0, b"", 0)]
        entries = await audit_events(store)
        assert [e["detail"]["sendable_again"] for e in entries[:2]] == [False, False]
        assert entries[2]["detail"]["not_sendable_again"] == done.unsealable
        # With no envelope kept, a withdrawal of the summary is addressed by the people it names,
        # as its share was: never by a protected identity's token.
        assert await summary_tokens(store.fetchone, "s-1") == [bytes([3]) * 32]

        # Then b's store is put back in turn, and it asks for them: they cannot go again, and why is said.
        lost = workflow_pb2.RedeliveryRequest(restore_id="r-2", since_ms=NOW)
        async with store.tx() as tx:  # a holds nothing b sent it, so nothing is sealed to return
            await Redelivery(DAY_MS, cast(Messenger, None)).requested(tx, "b", "m-2", lost)
        undeliverable = "SELECT reason FROM outbox WHERE kind = 1 AND state = 'undeliverable' ORDER BY seq"
        reasons = [str(r) for (r,) in await store.fetchall(undeliverable)]
        assert len(reasons) == 2 and all("this node's own store was put back to a copy since" in r for r in reasons)
    finally:
        await store.close()


async def test_requests_and_challenges_sent_since_are_followed_again_with_the_answers_that_came_first(
    tmp_path: Path,
) -> None:
    """Copies of an information request, a challenge and a clarification this node sent since
    its backup put back its record of each, under the case naming their people; the answers
    and the read notification the holder sent again before returning the copies (they found
    nothing to update then) are applied once the copies are in. A request about people no
    case here names is put back in the outbox only, saying so."""
    ring = make_keyring()
    family = [bytes([7]) * 32, bytes([8]) * 32]

    def sent(
        n: int, kind: envelope_pb2.MessageKind.ValueType, fill: Callable[[envelope_pb2.MessageBody], None]
    ) -> bytes:
        out = ring.seal("a", "b", message_id=ID.format(n), kind=kind, content=fill)
        opened = open_envelope(out.envelope, me="b", keys=ring.keys["b"], directory=ring.view, now_ms=NOW)
        copy = opened.signed
        copy.ClearField("padding")
        return workflow_pb2.ReturnedCopy(
            signed=copy.SerializeToString(), routing=opened.routing_bytes
        ).SerializeToString()

    def reply(
        n: int, kind: envelope_pb2.MessageKind.ValueType, to: int, fill: Callable[[envelope_pb2.MessageBody], None]
    ) -> tuple[int, str, bytes]:
        def content(body: envelope_pb2.MessageBody) -> None:
            body.in_reply_to = ID.format(to)
            fill(body)

        out = ring.seal("b", "a", message_id=ID.format(n), kind=kind, content=content, created_at_ms=NOW + n)
        opened = open_envelope(out.envelope, me="a", keys=ring.keys["a"], directory=ring.view, now_ms=NOW + n)
        return kind, ID.format(to), opened.signed.SerializeToString()

    basis = summary_pb2.LawfulBasis()
    request = workflow_pb2.InformationRequest(purpose="Assess risk.", what="Contacts.", link_tokens=family)
    request.needed_by.CopyFrom(summary_pb2.Date(year=2027, month=1, day=8))
    request.lawful_basis.CopyFrom(basis)
    stray = workflow_pb2.InformationRequest(purpose="Other.", what="Any.", link_tokens=[bytes([9]) * 32])
    challenge = workflow_pb2.Challenge(
        stage="PRACTITIONER", subject="THRESHOLD_DECISION", concern="Too low.", link_tokens=family
    )
    copies = [
        sent(1, envelope_pb2.MESSAGE_KIND_INFORMATION_REQUEST, lambda b: b.information_request.CopyFrom(request)),
        sent(2, envelope_pb2.MESSAGE_KIND_CHALLENGE, lambda b: b.challenge.CopyFrom(challenge)),
        sent(
            3,
            envelope_pb2.MESSAGE_KIND_CLARIFICATION_REQUEST,
            lambda b: b.clarification_request.CopyFrom(
                workflow_pb2.ClarificationRequest(about_message_id="m-about", question="Which school?")
            ),
        ),
        sent(4, envelope_pb2.MESSAGE_KIND_INFORMATION_REQUEST, lambda b: b.information_request.CopyFrom(stray)),
    ]
    declined = workflow_pb2.InformationResponse(
        request_message_id=ID.format(1), answer=workflow_pb2.INFORMATION_ANSWER_DECLINED
    )
    declined.decision.outcome = summary_pb2.DECISION_OUTCOME_NOT_SHARED
    replies = [
        reply(
            10, envelope_pb2.MESSAGE_KIND_INFORMATION_RESPONSE, 1, lambda b: b.information_response.CopyFrom(declined)
        ),
        reply(
            11,
            envelope_pb2.MESSAGE_KIND_CHALLENGE_RESPONSE,
            2,
            lambda b: b.challenge_response.CopyFrom(
                workflow_pb2.ChallengeResponse(
                    challenge_message_id=ID.format(2), answer=workflow_pb2.CHALLENGE_ANSWER_ACCEPTED, response="Agreed."
                )
            ),
        ),
        reply(
            12,
            envelope_pb2.MESSAGE_KIND_READ_NOTIFICATION,
            3,
            lambda b: b.read.CopyFrom(
                workflow_pb2.ReadNotification(
                    read_message_id=ID.format(3), read_at_ms=NOW + 12, reader_role="Duty worker"
                )
            ),
        ),
    ]
    store = await Store.open(tmp_path / "a.sqlite", ManualClock(NOW + 20))
    try:
        async with store.tx() as tx:
            await tx.execute(
                "INSERT INTO cases(case_id, case_ref, opened_at_ms, status) VALUES ('c-1', 'R1', 0, 'open')"
            )
            await tx.executemany(
                "INSERT INTO case_people(case_id, token, role_in_risk, person_type, relationship, protect_identity) "
                "VALUES ('c-1', ?, 'CHILD', 'CHILD', '', 0)",
                [(t,) for t in family],
            )
            await _asked(tx)
            for kind, to, signed in replies:  # sent again by b, before its copies
                body = envelope_pb2.MessageBody.FromString(envelope_pb2.SignedMessage.FromString(signed).body)
                cursor = await tx.execute(
                    "INSERT INTO inbox(sender, message_id, digest, received_at_ms, kind, share_id, in_reply_to) "
                    "VALUES ('b', ?, x'', ?, ?, '', ?)",
                    (body.message_id, NOW + 15, kind, to),
                )
                await tx.execute("INSERT INTO inbox_bodies(seq, signed) VALUES (?, ?)", (cursor.lastrowid, signed))
            returned = workflow_pb2.ReturnedCopies(
                restore_id="r-1", copies=[workflow_pb2.ReturnedCopy.FromString(c) for c in copies]
            )
            answer = envelope_pb2.MessageBody(message_id="m-1", in_reply_to="q-1", returned=returned)
            done = await recover(tx, "a", ring.view, ContentKeys(), "b", answer)
        assert done.recovered == [ID.format(n) for n in (1, 2, 3, 4)] and done.replies == 3
        assert await store.fetchall("SELECT request_id, case_id, needed_by, purpose FROM info_requests") == [
            ("share-1", "c-1", "2027-01-08", "Assess risk.")
        ]
        assert await store.fetchall("SELECT message_id, node_id, answer FROM info_requests_asked") == [
            (ID.format(1), "b", workflow_pb2.INFORMATION_ANSWER_DECLINED)
        ]
        assert await store.fetchall("SELECT message_id, case_id, stage, answer, response FROM challenges") == [
            (ID.format(2), "c-1", "PRACTITIONER", workflow_pb2.CHALLENGE_ANSWER_ACCEPTED, "Agreed.")
        ]
        assert await store.fetchall("SELECT message_id, about_message_id FROM clarifications_asked") == [
            (ID.format(3), "m-about")
        ]
        read = "SELECT read_at_ms, read_by_role FROM outbox WHERE message_id = ?"
        assert await store.fetchone(read, (ID.format(3),)) == (NOW + 12, "Duty worker")
        entries = await audit_events(store)
        rebuilt = [(e["detail"].get("rebuilt"), e["detail"].get("not_rebuilt", "")[:10]) for e in entries[:4]]
        assert rebuilt == [
            ("information_request", ""),
            ("challenge", ""),
            ("clarification_request", ""),
            (None, "no case in"),
        ]
        assert entries[4]["event"] == "redelivery.returned" and entries[4]["detail"]["replies_applied"] == 3
    finally:
        await store.close()
