"""What a received message changes at the recipient, in the same transaction as
its inbox row: newer versions supersede older ones, withdrawals withdraw (and erase
where their ground asks it), involvement notices are recorded, closure replies, answers
to information requests and challenges, read notifications update what this node sent; a
restored node's request queues again what it lost and returns what it sent, and what is
given back to a restored node is recorded (and its replies to what comes again after them
applied)."""

from __future__ import annotations

from linkage.content import carried_summary
from linkage.envelope import Opened
from linkage.v1 import envelope_pb2 as pb
from node import answers
from node.erasure import answers_erased_item, erase_answers, erase_rows, erase_versions, erasing_withdrawal
from node.recovered_workflow import REPLIED_TO, replies_waiting
from node.redelivery import Redelivery
from node.store import Tx


async def apply_effects(tx: Tx, seq: int, opened: Opened, redelivery: Redelivery) -> None:
    body, sender = opened.body, opened.routing.sender_node
    kind = body.kind
    if (summary := carried_summary(body)) is not None:
        await _take_its_place(tx, seq, opened.routing, summary.summary_id)
    elif kind == pb.MESSAGE_KIND_WITHDRAWAL:
        withdrawal = body.withdrawal
        await tx.execute(
            "UPDATE inbox INDEXED BY inbox_live_by_summary SET state = 'withdrawn' "
            "WHERE sender = ? AND summary_id = ? AND message_id < ? AND state != 'erased'",
            (sender, withdrawal.summary_id, body.message_id),
        )
        erased = await erase_versions(tx, sender, withdrawal.summary_id, body.message_id) if withdrawal.erase else []
        answers_erased = await erase_answers(tx, sender, erased)
        await tx.audit(
            "summary.withdrawn_by_sender",
            tokens=opened.routing.link_tokens,  # whom it was about: a subject access report lists it
            summary_id=withdrawal.summary_id,
            counterpart=sender,
            rationale=withdrawal.reason,
            message_id=body.message_id,
            detail={
                "ground": withdrawal.ground,
                "erase": withdrawal.erase,
                "erased": erased,
                "answers_erased": answers_erased,
            },
        )
    elif kind == pb.MESSAGE_KIND_INVOLVEMENT_NOTICE:
        notice = body.involvement  # who is linked now is the gateway's to say (discovery); this is the record
        await tx.audit(
            "involvement.notice",
            tokens=notice.link_tokens,
            counterpart=sender,
            decision="joined" if notice.joined else "left",
            message_id=body.message_id,
        )
    elif kind == pb.MESSAGE_KIND_CLOSURE_RESPONSE:
        reply = body.closure_response
        invited, newest = await answers.closure_answered(tx, body, sender)
        await tx.audit(
            "closure.reply_received",
            counterpart=sender,
            rationale=reply.reason,
            decision="agree" if reply.answer == 1 else "object",
            message_id=body.message_id,
            detail={"closure_id": reply.closure_id, "invited": invited, "newest": newest},
        )
    elif kind == pb.MESSAGE_KIND_CLARIFICATION_RESPONSE and await answers_erased_item(tx.fetchone, body.in_reply_to):
        await erase_rows(tx, [seq])  # it answers a question about an item its sender has had erased
        await tx.audit("clarification.erased", counterpart=sender, message_id=body.message_id)
    elif kind == pb.MESSAGE_KIND_READ_NOTIFICATION:
        read = body.read
        await answers.read_arrived(tx, read, sender)
        await tx.audit(
            "message.read_by_recipient",
            counterpart=sender,
            message_id=read.read_message_id,
            detail={"read_at_ms": read.read_at_ms, "reader_role": read.reader_role},
        )
    elif kind == pb.MESSAGE_KIND_REDELIVERY_REQUEST:
        await redelivery.requested(tx, sender, body.message_id, body.redelivery)
    elif kind == pb.MESSAGE_KIND_RETURNED_COPIES:
        await redelivery.returned(tx, sender, body)
    if kind == pb.MESSAGE_KIND_INFORMATION_RESPONSE:  # provided (carrying a summary) or declined
        await answers.answer_arrived(tx, body, sender)
    elif kind == pb.MESSAGE_KIND_CHALLENGE_RESPONSE:
        await answers.challenge_answered(tx, body, sender)
    if kind in REPLIED_TO:  # what this node replied to it before its store was put back, given back first
        await replies_waiting(tx, sender, body.message_id)


async def _take_its_place(tx: Tx, seq: int, routing: pb.RoutingHeader, summary_id: str) -> None:
    """A version of a summary supersedes the live versions its sender made before it. Made
    is not arrived: message ids ascend as their sender makes them, and a message sent
    again (after a failure to store it, or a lost receipt) can arrive after a newer one.
    So a version that arrives after a newer one, or after its withdrawal, is stored
    superseded, or withdrawn, as every recipient stores it whatever the order. (INDEXED BY:
    left to itself SQLite walks the sender's unique index through every older message.)"""
    sender, message_id = routing.sender_node, routing.message_id
    withdrawal_id, ground = await erasing_withdrawal(tx.fetchone, sender, summary_id, message_id)
    if withdrawal_id:  # made before a withdrawal that erased its versions, and held up on the way
        await erase_rows(tx, [seq])
        await tx.audit(
            "summary.erased",
            tokens=routing.link_tokens,
            summary_id=summary_id,
            counterpart=sender,
            message_id=message_id,
            detail={"ground": ground, "withdrawal": withdrawal_id},
        )
        return
    older = await tx.execute(
        "UPDATE inbox INDEXED BY inbox_live_by_summary SET state = 'superseded' "
        "WHERE sender = ? AND summary_id = ? AND state IN ('new', 'read') AND message_id < ?",
        (sender, summary_id, message_id),
    )
    if older.rowcount:
        # Each arrival leaves what is older than it superseded or withdrawn, so live rows are
        # never on both sides of a version: with an older one live, nothing newer is.
        return
    cursor = await tx.execute(
        "SELECT kind FROM inbox INDEXED BY inbox_live_by_summary "
        "WHERE sender = ? AND summary_id = ? AND state IN ('new', 'read') AND message_id > ?",
        (sender, summary_id, message_id),
    )
    if later := {kind for (kind,) in await cursor.fetchall()}:
        state = "withdrawn" if pb.MESSAGE_KIND_WITHDRAWAL in later else "superseded"
        await tx.execute("UPDATE inbox SET state = ? WHERE seq = ?", (state, seq))
