"""Information requests, professional challenges and closure proposals followed to their
answers (domain.md §6 rule 7: every request ends in a decision), in the transactions that
send and receive them: which agencies each went to, the newest answer each gave, and how
this node answered what it was asked. (Put back after a restore, each comes once for each
agency that returns its copy: node/recovered_workflow.py.)"""

from __future__ import annotations

from collections.abc import Sequence

from linkage.calendar import given
from linkage.v1 import envelope_pb2, node_api_pb2, summary_pb2, workflow_pb2
from node import dates
from node.store import Tx


async def asked(
    tx: Tx,
    request_id: str,
    case_id: str,
    needed_by: summary_pb2.Date | None,
    purpose: str,
    statuses: Sequence[node_api_pb2.DeliveryStatus],
    sent_at_ms: int | None = None,  # now, unless it is put back after a restore
) -> None:
    """A request this node sent, and each agency it went to. (Put back after a restore, it
    comes once for each agency that returns its copy: the request's row is there from the first.)"""
    await tx.execute(
        "INSERT OR IGNORE INTO info_requests(request_id, case_id, sent_at_ms, needed_by, purpose) "
        "VALUES (?, ?, ?, ?, ?)",
        (
            request_id,
            case_id,
            tx.now_ms if sent_at_ms is None else sent_at_ms,
            dates.iso(needed_by) if needed_by else "",
            purpose,
        ),
    )
    await tx.executemany(
        "INSERT INTO info_requests_asked(message_id, request_id, node_id) VALUES (?, ?, ?)",
        [(s.message_id, request_id, s.node_id) for s in statuses],
    )


async def answered(
    tx: Tx,
    request_message_id: str,
    sender: str,
    answer: int,
    by: str,
    kind: int = envelope_pb2.MESSAGE_KIND_INFORMATION_REQUEST,
    note: str | None = None,
    at_ms: int | None = None,  # now, unless it is put back after a restore
) -> bool:
    """This node answered a request, challenge or closure proposal it received, by message
    `by`. It may answer again: the answer it made last holds, by its message id, which
    ascends as this node makes them (copies given back after a restore come in any order).
    Whether the answer now holds (False: the thing answered is not held here, or a later
    answer is)."""
    cursor = await tx.execute(
        "UPDATE inbox SET answer = ?, answered_at_ms = ?, answer_note = ?, answered_by = ? "
        "WHERE sender = ? AND message_id = ? AND kind = ? AND (answered_by = '' OR answered_by < ?)",
        (answer, tx.now_ms if at_ms is None else at_ms, note, by, sender, request_message_id, kind, by),
    )
    return cursor.rowcount > 0


async def answer_not_sent(tx: Tx, message_id: str) -> list[str]:
    """An answer this node made was cancelled before it left (a withdrawal of the summary it
    provided): the request it answered last, if any, is to be answered again, as its sender
    never had the answer. That request's message id, if one was."""
    cursor = await tx.execute(
        "UPDATE inbox SET answer = 0, answered_at_ms = NULL, answer_note = NULL, answered_by = '' "
        "WHERE answered_by = ? AND answered_by != '' RETURNING message_id",
        (message_id,),
    )
    return [str(m) for (m,) in await cursor.fetchall()]


# Of one agency's answers to one thing, the one it made last holds, whichever arrives last:
# made last by its message id, which ascends as that agency makes them (its time may not).
MADE_LAST = "(answer_message_id = '' OR answer_message_id < ?)"


async def answer_arrived(tx: Tx, body: envelope_pb2.MessageBody, sender: str) -> None:
    """An agency answered a request of this node's. It may answer again (declined, then
    provided): the answer it made last holds."""
    reply = body.information_response
    await tx.execute(
        "UPDATE info_requests_asked SET answer = ?, answered_at_ms = ?, answer_message_id = ? "
        f"WHERE message_id = ? AND node_id = ? AND {MADE_LAST}",
        (reply.answer, body.created_at_ms, body.message_id, reply.request_message_id, sender, body.message_id),
    )


async def read_arrived(tx: Tx, read: workflow_pb2.ReadNotification, sender: str) -> None:
    """An agency read a message of this node's."""
    await tx.execute(
        "UPDATE outbox SET read_at_ms = ?, read_by_role = ? WHERE message_id = ? AND recipient = ?",
        (read.read_at_ms, read.reader_role, read.read_message_id, sender),
    )


async def challenged(
    tx: Tx,
    case_id: str,
    raised: workflow_pb2.Challenge,
    message_id: str,
    node_id: str,
    sent_at_ms: int | None = None,  # now, unless it is put back after a restore
) -> None:
    """A challenge this node raised, to list with its answer (its words are sealed in the body)."""
    await tx.execute(
        "INSERT INTO challenges(message_id, case_id, node_id, sent_at_ms, stage, subject, about_message_id, "
        "concern, outcome_sought, respond_by, escalates_message_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            message_id,
            case_id,
            node_id,
            tx.now_ms if sent_at_ms is None else sent_at_ms,
            raised.stage,
            raised.subject,
            raised.about_message_id,
            raised.concern,
            raised.outcome_sought,
            dates.iso(raised.respond_by) if given(raised.respond_by) else "",
            raised.escalates_message_id,
        ),
    )


async def challenge_answered(tx: Tx, body: envelope_pb2.MessageBody, sender: str) -> None:
    """The challenged agency answered a challenge of this node's; the answer it made last holds."""
    reply = body.challenge_response
    await tx.execute(
        "UPDATE challenges SET answer = ?, answered_at_ms = ?, response = ?, answer_message_id = ? "
        f"WHERE message_id = ? AND node_id = ? AND {MADE_LAST}",
        (
            reply.answer,
            body.created_at_ms,
            reply.response,
            body.message_id,
            reply.challenge_message_id,
            sender,
            body.message_id,
        ),
    )


async def closure_proposed(
    tx: Tx,
    closure_id: str,
    case_id: str,
    respond_by: str,
    intent: summary_pb2.ClosureIntent,
    note: str,
    invitees: Sequence[str],
    proposed_at_ms: int | None = None,  # now, unless it is put back after a restore
) -> None:
    """A closure this node proposed, and agencies alerted to it. More may be alerted later,
    each given a day at least as late as the others had: the latest day holds."""
    await tx.execute(
        "INSERT OR IGNORE INTO closures(closure_id, case_id, proposed_at_ms, respond_by, state, intent, note) "
        "VALUES (?, ?, ?, ?, 'proposed', ?, ?)",
        (
            closure_id,
            case_id,
            tx.now_ms if proposed_at_ms is None else proposed_at_ms,
            respond_by,
            intent.SerializeToString(),
            note,
        ),
    )
    await tx.executemany(
        "INSERT OR IGNORE INTO closure_invitees(closure_id, node_id) VALUES (?, ?)", [(closure_id, n) for n in invitees]
    )
    await tx.execute(
        "UPDATE closures SET respond_by = MAX(respond_by, ?) WHERE closure_id = ?", (respond_by, closure_id)
    )


async def closure_answered(tx: Tx, body: envelope_pb2.MessageBody, sender: str) -> tuple[bool, bool]:
    """An agency answered a closure this node proposed: whether it was alerted to it, and
    whether this is its newest answer (it may agree, then object: the one made last holds)."""
    reply = body.closure_response
    alerted = await tx.fetchone(
        "SELECT 1 FROM closure_invitees WHERE closure_id = ? AND node_id = ?", (reply.closure_id, sender)
    )
    updated = await tx.execute(
        "UPDATE closure_invitees SET answer = ?, reason = ?, at_ms = ?, answer_message_id = ? "
        f"WHERE closure_id = ? AND node_id = ? AND {MADE_LAST}",
        (reply.answer, reply.reason, body.created_at_ms, body.message_id, reply.closure_id, sender, body.message_id),
    )
    return alerted is not None, updated.rowcount > 0


async def closure_made(tx: Tx, closure_id: str, closed_at_ms: int | None = None) -> str | None:
    """A proposed closure made: it and its case closed, its people's subscriptions to end.
    Its case, or None if it was not proposed (closed already, by a call racing this one, or
    never recorded here)."""
    rows = await tx.fetchall(  # all of them, so the statement runs to its end
        "UPDATE closures SET state = 'closed', closed_at_ms = ? WHERE closure_id = ? AND state = 'proposed' "
        "RETURNING case_id",
        (tx.now_ms if closed_at_ms is None else closed_at_ms, closure_id),
    )
    if not rows:
        return None
    ((case_id,),) = rows
    await tx.execute("UPDATE cases SET status = 'closed' WHERE case_id = ?", (case_id,))
    # Its people's subscriptions end at the gateway (node/cases.py), but for those another open case names.
    await tx.execute(
        "INSERT OR IGNORE INTO subscriptions_to_end(token) SELECT token FROM case_people WHERE case_id = ?", (case_id,)
    )
    return str(case_id)
