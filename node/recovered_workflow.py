"""What a copy given back after a restore (node/returned_copies.py) tells of this node's own
workflow since its backup: an information request or a professional challenge it sent, to
be listed and followed again (`linkage due` waits on its answer), and a clarification it
asked about a received item (whose answer goes with that item when its sender has it
erased). The answers to them, and the read notifications for what this node sent, lost
with the store, came back before the copies (the agency asked sends again what it sent,
then returns what it was sent): each is applied once its message is put back.

What this node answered since of what it was asked (an information request, a challenge,
a closure proposal) is shown answered again as it was, and leaves its duty view: the agency
that asked holds the answer. An item it read since, telling its sender, is read again, not
new. The thing answered or read was received before the backup, or is sent again by that
agency, before its copies or after them: a reply to what is not here yet waits for it
(`replies_given_back`) and is applied as it comes.

A closure proposal is put back too, with the agencies alerted to it and their answers, and
the case closed again if its closure notice comes back: its people's subscriptions then
end at the gateway again (the restored store made them again as it started).

A request, challenge or closure proposal is filed under the case whose people it names, as
the store holds them; one about a case opened after the backup, which the store no longer
holds, is put back in the outbox only, and its audit entry says so, as it does for a
closure proposal when another has been proposed for the case since the restore."""

from __future__ import annotations

from collections.abc import Sequence

from linkage.calendar import given
from linkage.v1 import envelope_pb2 as pb
from linkage.v1 import node_api_pb2
from node import answers, dates
from node.messaging import CARRIES_SUMMARY
from node.store import Tx

NO_CASE = {"not_rebuilt": "no case in this store names its people (opened after the backup?)"}
# This node's answers to what it was asked: what each is put back as, and the kind it answers.
ANSWERS = {
    pb.MESSAGE_KIND_INFORMATION_RESPONSE: ("information_answer", pb.MESSAGE_KIND_INFORMATION_REQUEST),
    pb.MESSAGE_KIND_CHALLENGE_RESPONSE: ("challenge_answer", pb.MESSAGE_KIND_CHALLENGE),
    pb.MESSAGE_KIND_CLOSURE_RESPONSE: ("closure_answer", pb.MESSAGE_KIND_CLOSURE_INTENT),
}
# What this node may have replied to, as the reply given back after a restore shows it: what
# it answered, and an item carrying a summary, read.
REPLIED_TO = frozenset({*(kind for _, kind in ANSWERS.values()), *CARRIES_SUMMARY})
# Kinds whose effect at this node names a message it sent, by `in_reply_to`.
REPLIES = (
    pb.MESSAGE_KIND_READ_NOTIFICATION,
    pb.MESSAGE_KIND_INFORMATION_RESPONSE,
    pb.MESSAGE_KIND_CHALLENGE_RESPONSE,
    pb.MESSAGE_KIND_CLOSURE_RESPONSE,
)


async def rebuild(tx: Tx, holder: str, body: pb.MessageBody) -> dict[str, str]:
    """Record what the message `body`, sent to `holder` and just put back, started here; what
    was rebuilt, or why not, for its audit entry."""
    if body.kind == pb.MESSAGE_KIND_INFORMATION_REQUEST:
        ask = body.information_request
        if (case_id := await _case_naming(tx, ask.link_tokens)) is None:
            return NO_CASE
        needed_by = ask.needed_by if given(ask.needed_by) else None
        went = [node_api_pb2.DeliveryStatus(node_id=holder, message_id=body.message_id)]
        await answers.asked(tx, body.share_id, case_id, needed_by, ask.purpose, went, body.created_at_ms)
        return {"rebuilt": "information_request", "case_id": case_id}
    if body.kind == pb.MESSAGE_KIND_CHALLENGE:
        raised = body.challenge
        if (case_id := await _case_naming(tx, raised.link_tokens)) is None:
            return NO_CASE
        await answers.challenged(tx, case_id, raised, body.message_id, holder, body.created_at_ms)
        return {"rebuilt": "challenge", "case_id": case_id}
    if body.kind == pb.MESSAGE_KIND_CLARIFICATION_REQUEST:
        await tx.execute(
            "INSERT OR IGNORE INTO clarifications_asked(message_id, about_message_id) VALUES (?, ?)",
            (body.message_id, body.clarification_request.about_message_id),
        )
        return {"rebuilt": "clarification_request"}
    if body.kind == pb.MESSAGE_KIND_CLOSURE_INTENT:
        return await _closure_proposed(tx, holder, body)
    if body.kind in ANSWERS:
        return await _answer_given(tx, holder, body)
    if body.kind == pb.MESSAGE_KIND_READ_NOTIFICATION:  # read here: not listed as new again
        replied_to = body.read.read_message_id
        if not await _held(tx, holder, replied_to):
            return await _wait_for(tx, holder, replied_to, body)
        await tx.execute(
            "UPDATE inbox SET state = 'read' WHERE sender = ? AND message_id = ? AND state = 'new'",
            (holder, replied_to),
        )
        return {"rebuilt": "read"}
    if body.kind == pb.MESSAGE_KIND_CLOSURE_NOTICE:
        closure_id = body.closure_notice.closure_id
        if (case_id := await answers.closure_made(tx, closure_id, body.created_at_ms)) is not None:
            return {"rebuilt": "case_closed", "case_id": case_id}
        row = await tx.fetchone("SELECT case_id FROM closures WHERE closure_id = ? AND state = 'closed'", (closure_id,))
        if row is not None:
            return {"case_closed_already": str(row[0])}  # by another agency's copy of the notice
        return {"not_rebuilt": "the closure proposal it ends was not put back here"}
    return {}


async def _answer_given(tx: Tx, holder: str, body: pb.MessageBody) -> dict[str, str]:
    """This node's answer to a request, challenge or closure proposal `holder` sent it: the
    thing answered is shown answered again, and leaves the duty view (`holder` has the
    answer). It is here if it came before the backup, or was sent again before the copies."""
    name, kind = ANSWERS[body.kind]
    answer: int
    note = None  # as the node records it when it answers: a challenge's response alone
    if body.kind == pb.MESSAGE_KIND_INFORMATION_RESPONSE:
        asked, answer = body.information_response.request_message_id, body.information_response.answer
    elif body.kind == pb.MESSAGE_KIND_CHALLENGE_RESPONSE:
        asked, answer = body.challenge_response.challenge_message_id, body.challenge_response.answer
        note = body.challenge_response.response
    else:
        asked, answer = body.in_reply_to, body.closure_response.answer
    if not await _held(tx, holder, asked):
        return await _wait_for(tx, holder, asked, body)
    if await answers.answered(tx, asked, holder, answer, body.message_id, kind, note, body.created_at_ms):
        return {"rebuilt": name}
    return {"not_rebuilt": "a later answer is held, or what it answers is of another kind"}


async def _held(tx: Tx, sender: str, message_id: str) -> bool:
    return (
        await tx.fetchone("SELECT 1 FROM inbox WHERE sender = ? AND message_id = ?", (sender, message_id)) is not None
    )


async def _wait_for(tx: Tx, holder: str, replied_to: str, body: pb.MessageBody) -> dict[str, str]:
    """This node's reply to a message of `holder`'s it does not hold yet, kept until it comes."""
    await tx.execute(
        "INSERT OR IGNORE INTO replies_given_back(reply_id, sender, replied_to, body) VALUES (?, ?, ?, ?)",
        (body.message_id, holder, replied_to, body.SerializeToString()),
    )
    return {"waiting": "what it replies to is not held here yet: applied when it comes again"}


async def replies_waiting(tx: Tx, sender: str, message_id: str) -> None:
    """`sender`'s message `message_id` has just come: apply what this node replied to it, given
    back after a restore before the message was sent again, in the order it made them."""
    rows = await tx.fetchall(
        "SELECT reply_id, body FROM replies_given_back WHERE sender = ? AND replied_to = ? ORDER BY reply_id",
        (sender, message_id),
    )
    for reply_id, body in rows:
        done = await rebuild(tx, sender, pb.MessageBody.FromString(body))
        await tx.execute("DELETE FROM replies_given_back WHERE reply_id = ?", (reply_id,))
        await tx.audit("message.reply_applied", message_id=str(reply_id), counterpart=sender, detail=done)


async def _closure_proposed(tx: Tx, holder: str, body: pb.MessageBody) -> dict[str, str]:
    notice = body.closure_intent
    respond_by = dates.iso(notice.respond_by)
    row = await tx.fetchone("SELECT case_id FROM closures WHERE closure_id = ?", (notice.closure_id,))
    # Put back already from another agency's copy (this one was alerted too), or put back now.
    case_id = str(row[0]) if row is not None else await _case_naming(tx, notice.link_tokens)
    if case_id is None:
        return NO_CASE
    later = "SELECT 1 FROM closures WHERE case_id = ? AND (state = 'proposed' OR closure_id > ?)"
    if row is None and await tx.fetchone(later, (case_id, notice.closure_id)):
        return {"not_rebuilt": "another closure has been proposed for the case since the restore"}
    await answers.closure_proposed(
        tx, notice.closure_id, case_id, respond_by, notice.intent, notice.note, [holder], body.created_at_ms
    )
    return {"rebuilt": "closure_proposal", "case_id": case_id}


async def replies_already_here(tx: Tx, holder: str, put_back: Sequence[str]) -> int:
    """Apply, in the order they came, the answers and read notifications from `holder` about
    the messages just `put_back`, which found nothing to update when they came: this node
    held no record of those messages until now. Found by what they reply to, not by when
    they came, as the clock may have been set back since the restore. How many."""
    if not put_back:
        return 0
    rows = await tx.fetchall(
        "SELECT b.signed FROM inbox i INDEXED BY inbox_replies JOIN inbox_bodies b ON b.seq = i.seq "
        f"WHERE i.kind IN ({', '.join(str(int(k)) for k in sorted(REPLIES))}) AND i.sender = ? "
        f"AND i.in_reply_to IN ({','.join('?' * len(put_back))}) ORDER BY i.seq",
        (holder, *put_back),
    )
    for (signed,) in rows:
        body = pb.MessageBody.FromString(pb.SignedMessage.FromString(signed).body)
        if body.kind == pb.MESSAGE_KIND_READ_NOTIFICATION:
            await answers.read_arrived(tx, body.read, holder)
        elif body.kind == pb.MESSAGE_KIND_INFORMATION_RESPONSE:
            await answers.answer_arrived(tx, body, holder)
        elif body.kind == pb.MESSAGE_KIND_CHALLENGE_RESPONSE:
            await answers.challenge_answered(tx, body, holder)
        else:
            await answers.closure_answered(tx, body, holder)
    return len(rows)


async def _case_naming(tx: Tx, tokens: Sequence[bytes]) -> str | None:
    """The case whose people a message named: an open one before a closed one, then the one
    naming most of them, then the newest."""
    if not tokens:
        return None
    row = await tx.fetchone(
        "SELECT p.case_id FROM case_people p JOIN cases c ON c.case_id = p.case_id "
        f"WHERE p.token IN ({','.join('?' * len(tokens))}) GROUP BY p.case_id "
        "ORDER BY c.status = 'open' DESC, count(*) DESC, c.opened_at_ms DESC LIMIT 1",
        tuple(tokens),
    )
    return None if row is None else str(row[0])
