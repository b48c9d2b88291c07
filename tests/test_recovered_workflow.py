"""What a copy given back after a restore cannot put back in this node's workflow, and says
so in its audit entry (node/recovered_workflow.py): a real store, messages built as the
node sends them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from linkage.clock import ManualClock
from linkage.v1 import envelope_pb2 as pb
from linkage.v1 import summary_pb2, workflow_pb2
from node import answers
from node.recovered_workflow import NO_CASE, rebuild, replies_waiting
from node.store import Store, Tx
from tests.crypto_fixtures import NOW
from tests.harness import audit_events

FAMILY = [bytes([7]) * 32, bytes([8]) * 32]
STRANGERS = [bytes([9]) * 32]
# Closure ids are UUIDv7, so one proposed later sorts after one proposed earlier.
EARLIER, LATER = "01a20105-405a-7c0b-bc94-000000000001", "01a20105-405a-7c0b-bc94-000000000002"
MAINTAINED, ACCEPTED = workflow_pb2.CHALLENGE_ANSWER_MAINTAINED, workflow_pb2.CHALLENGE_ANSWER_ACCEPTED


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """A restored store holding one open case that names FAMILY."""
    opened = await Store.open(tmp_path / "a.sqlite", ManualClock(NOW))
    async with opened.tx() as tx:
        await _case(tx, "c-1", 0, "open")
    yield opened
    await opened.close()


async def _case(tx: Tx, case_id: str, opened_at_ms: int, status: str) -> None:
    """A case naming FAMILY."""
    await tx.execute(
        "INSERT INTO cases(case_id, case_ref, opened_at_ms, status) VALUES (?, ?, ?, ?)",
        (case_id, case_id.upper(), opened_at_ms, status),
    )
    await tx.executemany(
        "INSERT INTO case_people(case_id, token, role_in_risk, person_type, relationship, protect_identity) "
        "VALUES (?, ?, 'CHILD', 'CHILD', '', 0)",
        [(case_id, t) for t in FAMILY],
    )


def _intent(closure_id: str, tokens: list[bytes]) -> pb.MessageBody:
    notice = workflow_pb2.ClosureIntentNotice(
        closure_id=closure_id,
        intent=summary_pb2.ClosureIntent(intent="PLANNED_CLOSURE"),
        respond_by=summary_pb2.Date(year=2027, month=1, day=8),
        link_tokens=tokens,
    )
    return pb.MessageBody(message_id="m-1", kind=pb.MESSAGE_KIND_CLOSURE_INTENT, closure_intent=notice, created_at_ms=1)


def _challenge(tokens: list[bytes]) -> pb.MessageBody:
    raised = workflow_pb2.Challenge(stage="PRACTITIONER", subject="THRESHOLD_DECISION", concern="Too low.")
    raised.link_tokens.extend(tokens)
    return pb.MessageBody(message_id="m-2", kind=pb.MESSAGE_KIND_CHALLENGE, challenge=raised)


async def _closures(store: Store) -> list[tuple[str, str]]:
    return [(str(c), str(s)) for c, s in await store.fetchall("SELECT closure_id, state FROM closures ORDER BY 1")]


@pytest.mark.parametrize("tokens", [STRANGERS, []], ids=["people-no-case-names", "no-people"])
async def test_a_challenge_about_people_no_case_here_names_is_not_filed(store: Store, tokens: list[bytes]) -> None:
    async with store.tx() as tx:
        assert await rebuild(tx, "b", _challenge(tokens)) == NO_CASE
    assert await store.fetchall("SELECT message_id FROM challenges") == []


async def test_a_challenge_is_filed_under_the_open_case_before_a_closed_one(store: Store) -> None:
    async with store.tx() as tx:
        await _case(tx, "c-0", 9, "closed")  # opened later, but closed
        assert await rebuild(tx, "b", _challenge(FAMILY)) == {"rebuilt": "challenge", "case_id": "c-1"}


async def test_a_closure_proposal_about_people_no_case_here_names_is_not_put_back(store: Store) -> None:
    async with store.tx() as tx:
        assert await rebuild(tx, "b", _intent(LATER, STRANGERS)) == NO_CASE
    assert await _closures(store) == []


async def test_a_closure_proposal_is_not_put_back_over_one_made_since_the_restore(store: Store) -> None:
    """The practitioner proposed closing the case again after the restore: the copy of the
    older proposal must not stand beside it (a case has one proposal at a time)."""
    async with store.tx() as tx:
        await answers.closure_proposed(tx, LATER, "c-1", "2027-01-09", summary_pb2.ClosureIntent(), "", ["b"])
        done = await rebuild(tx, "b", _intent(EARLIER, FAMILY))
    assert done == {"not_rebuilt": "another closure has been proposed for the case since the restore"}
    assert await _closures(store) == [(LATER, "proposed")]


async def test_a_closure_proposal_put_back_by_another_agencys_copy_adds_this_one_as_alerted(store: Store) -> None:
    async with store.tx() as tx:
        assert await rebuild(tx, "b", _intent(EARLIER, FAMILY)) == {"rebuilt": "closure_proposal", "case_id": "c-1"}
        assert await rebuild(tx, "c", _intent(EARLIER, FAMILY)) == {"rebuilt": "closure_proposal", "case_id": "c-1"}
    invitees = await store.fetchall("SELECT node_id FROM closure_invitees WHERE closure_id = ? ORDER BY 1", (EARLIER,))
    assert invitees == [("b",), ("c",)] and await _closures(store) == [(EARLIER, "proposed")]


async def test_a_closure_notice_closes_the_case_once_whichever_copy_comes_first(store: Store) -> None:
    notice = pb.MessageBody(
        message_id="m-3",
        kind=pb.MESSAGE_KIND_CLOSURE_NOTICE,
        closure_notice=workflow_pb2.ClosureNotice(closure_id=EARLIER),
        created_at_ms=NOW - 5,
    )
    async with store.tx() as tx:
        assert await rebuild(tx, "b", notice) == {"not_rebuilt": "the closure proposal it ends was not put back here"}
        await rebuild(tx, "b", _intent(EARLIER, FAMILY))
        assert await rebuild(tx, "b", notice) == {"rebuilt": "case_closed", "case_id": "c-1"}
        assert await rebuild(tx, "c", notice) == {"case_closed_already": "c-1"}
    assert await _closures(store) == [(EARLIER, "closed")]
    assert await store.fetchone("SELECT status FROM cases WHERE case_id = 'c-1'") == ("closed",)
    assert await store.fetchall("SELECT token FROM subscriptions_to_end ORDER BY 1") == [(t,) for t in FAMILY]


async def test_a_kind_that_starts_nothing_here_rebuilds_nothing(store: Store) -> None:
    async with store.tx() as tx:
        assert await rebuild(tx, "b", pb.MessageBody(message_id="m-4", kind=pb.MESSAGE_KIND_SUMMARY_SHARE)) == {}


async def test_an_answer_given_back_shows_what_it_answers_answered_unless_a_later_one_is_held(store: Store) -> None:
    """This node answered b's challenge twice since its backup (maintained, then accepted):
    the copies come back in either order, and the later answer holds. An answer to a
    challenge b has not sent again yet waits for it, and holds once it comes."""

    def answer(message_id: str, to: str, said: workflow_pb2.ChallengeAnswer.ValueType) -> pb.MessageBody:
        reply = workflow_pb2.ChallengeResponse(challenge_message_id=to, answer=said, response=f"Answer {message_id}.")
        return pb.MessageBody(
            message_id=message_id, kind=pb.MESSAGE_KIND_CHALLENGE_RESPONSE, challenge_response=reply, created_at_ms=5
        )

    first, later = answer("a-1", "q-1", MAINTAINED), answer("a-2", "q-1", ACCEPTED)
    async with store.tx() as tx:
        await _received(tx, "q-1", pb.MESSAGE_KIND_CHALLENGE)
        assert await rebuild(tx, "b", later) == {"rebuilt": "challenge_answer"}
        assert (await rebuild(tx, "b", first))["not_rebuilt"].startswith("a later answer is held")
        assert "waiting" in await rebuild(tx, "b", answer("a-3", "q-9", ACCEPTED))
    answered = "SELECT answer, answered_at_ms, answer_note, answered_by FROM inbox WHERE message_id = ?"
    assert await store.fetchone(answered, ("q-1",)) == (ACCEPTED, 5, "Answer a-2.", "a-2")
    async with store.tx() as tx:  # b sends q-9 again, after the copies
        await _received(tx, "q-9", pb.MESSAGE_KIND_CHALLENGE)
        await replies_waiting(tx, "b", "q-9")
    assert await store.fetchone(answered, ("q-9",)) == (ACCEPTED, 5, "Answer a-3.", "a-3")
    assert await store.fetchall("SELECT * FROM replies_given_back") == []
    (applied,) = await audit_events(store, "message.reply_applied")
    assert (applied["message_id"], applied["detail"]) == ("a-3", {"rebuilt": "challenge_answer"})


async def test_a_read_notification_given_back_shows_the_item_it_read_as_read(store: Store) -> None:
    """An item read since the backup, its sender told: sent again as new, it is read again
    once the notification comes back, before or after it."""

    def told(read_message_id: str) -> pb.MessageBody:
        read = workflow_pb2.ReadNotification(read_message_id=read_message_id, read_at_ms=3, reader_role="Duty worker")
        return pb.MessageBody(message_id=f"r-{read_message_id}", kind=pb.MESSAGE_KIND_READ_NOTIFICATION, read=read)

    async with store.tx() as tx:
        await _received(tx, "s-1", pb.MESSAGE_KIND_SUMMARY_SHARE)
        assert await rebuild(tx, "b", told("s-1")) == {"rebuilt": "read"}
        assert "waiting" in await rebuild(tx, "b", told("s-2"))
        await _received(tx, "s-2", pb.MESSAGE_KIND_SUMMARY_SHARE)
        await replies_waiting(tx, "b", "s-2")
    assert await store.fetchall("SELECT state FROM inbox WHERE message_id IN ('s-1', 's-2')") == [("read",), ("read",)]


async def _received(tx: Tx, message_id: str, kind: int) -> None:
    """b's message `message_id`, in this node's inbox."""
    await tx.execute(
        "INSERT INTO inbox(sender, message_id, digest, received_at_ms, kind, share_id) VALUES ('b', ?, ?, 1, ?, '')",
        (message_id, message_id.encode() * 8, kind),
    )
