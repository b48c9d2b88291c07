"""What a restored node itself sent since its backup, given back by the agencies it went to.

A store put back to an earlier copy lacks what its node sent after the copy was made: its
outbox and withdrawals no longer say what went to whom, so share status knows nothing of
those messages, and a later correction or withdrawal of a summary would miss an agency
that holds it (UK GDPR Art 19). Each agency it sent to still holds them, under the restored
node's own signature. So a node answering a redelivery request (node/redelivery.py) also
returns to the node that asked each message it received from it since, as it arrived.

The restored node believes only a copy it can verify it signed itself, addressed to the
agency returning it, in answer to its own request there: an agency cannot make it believe
it sent what it did not (and so send later versions of a summary where they never went).
Each copy it has no record of goes back into its outbox as delivered, and into its audit
log as `message.recovered`; a withdrawal is recorded as made. The agency returning it keeps
the routing header each message came with, which the signed body binds by its SHA-256, so
the copy is sealed again as it first went (the same header, link tokens and recipient key,
under a new content key): should the recipient's store also be put back to before it, it is
sent again like any other message, and the recipient knows it by its signed body
(node/reception.py). A request, challenge, clarification or closure proposal is followed
again, with the answers that came before it (node/recovered_workflow.py). What a copy
cannot restore: the policy decision's own audit entry and record (the copy carries the
decision as it was sent). A copy that comes without its header (stored before nodes kept
one) or sealed to a key the directory no longer lists is recorded all the same, without an
envelope, saying why: it cannot be sent again."""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from linkage.content import ABOUT_NO_FAMILY, carried_summary
from linkage.contentkeys import ContentKeys
from linkage.directory import DirectoryView
from linkage.envelope import MAX_BODY_BYTES, Outgoing, seal_again, verify_own_copy
from linkage.grounds import lawful_ground
from linkage.reasons import Reason, Rejected
from linkage.v1 import envelope_pb2, summary_pb2, workflow_pb2
from node.messaging import kind_name
from node.policy.minimise import routing_tokens
from node.recovered_workflow import rebuild, replies_already_here
from node.store import Tx
from node.withdrawals import summary_tokens

# Copies to one message, by size: room is left for the body's own fields and the copies' framing.
COPIES_BYTES = MAX_BODY_BYTES - 16 * 1024


@dataclass
class Returning:
    """What a node returns to a restored one, in parts that each fit one message."""

    parts: list[list[workflow_pb2.ReturnedCopy]] = field(default_factory=list)
    too_large: list[str] = field(default_factory=list)  # message ids of copies no message could carry

    @property
    def copies(self) -> int:
        return sum(len(part) for part in self.parts)


async def copies_for(tx: Tx, requester: str, since_ms: int, after_id: str = "") -> Returning:
    """What this node received from `requester` at or after `since_ms` (its own clock), or
    made by `requester` after its id `after_id` (however either clock was set since), and
    still holds, in the order its sender made it (so a withdrawal follows what it withdraws):
    not the restore's own messages, nor any whose body was erased or purged. Each copy goes
    without its padding, which is not signed."""
    columns = "SELECT i.message_id, i.received_at_ms, b.signed, b.routing FROM inbox i"
    joined = "JOIN inbox_bodies b ON b.seq = i.seq"
    kinds = f"i.sender = ? AND i.kind NOT IN ({','.join('?' * len(ABOUT_NO_FAMILY))})"
    skipped = sorted(ABOUT_NO_FAMILY)
    sql = f"{columns} INDEXED BY inbox_by_age {joined} WHERE i.received_at_ms >= ? AND {kinds}"
    params: list[object] = [since_ms, requester, *skipped]
    if after_id:
        sql += f" UNION {columns} {joined} WHERE i.message_id > ? AND {kinds}"
        params += [after_id, requester, *skipped]
    rows = await tx.fetchall(f"{sql} ORDER BY 1", params)
    returning = Returning()
    size = COPIES_BYTES  # as if a part were full: the first copy starts one
    for message_id, received_at_ms, stored, routing in rows:
        signed = envelope_pb2.SignedMessage.FromString(stored)
        signed.ClearField("padding")
        copy = workflow_pb2.ReturnedCopy(
            signed=signed.SerializeToString(), received_at_ms=received_at_ms, routing=routing
        )
        framed = copy.ByteSize() + 8  # with the field's tag and length
        if framed > COPIES_BYTES:  # a body near the largest a node signs, and its signature
            returning.too_large.append(message_id)
            continue
        if size + framed > COPIES_BYTES:
            returning.parts.append([])
            size = 0
        returning.parts[-1].append(copy)
        size += framed
    return returning


@dataclass
class Recovered:
    """What a part of returned copies did to this node's records."""

    recovered: list[str] = field(default_factory=list)  # message ids put back
    held: int = 0  # copies of messages this node still had
    unsealable: list[dict[str, str]] = field(default_factory=list)  # put back, but not to be sent again, and why
    replies: int = 0  # answers and read notifications that came before the copies, applied now
    closed_cases: list[str] = field(default_factory=list)  # closed again by the closure notices put back
    refused: list[dict[str, object]] = field(default_factory=list)  # copies it could not verify, and why


async def recover(
    tx: Tx,
    me: str,
    directory: DirectoryView,
    content_keys: ContentKeys,
    holder: str,
    answer: envelope_pb2.MessageBody,
) -> Recovered:
    """Record, in the caller's transaction, each copy `holder` returned in `answer` of a
    message this node sent it, that this node verifies it signed and has no record of; none
    unless `answer` answers a redelivery request this node sent that node. Each is sealed
    again as it first went, where its routing header came with it, to be sent again should
    `holder` lose it too."""
    done = Recovered()
    returned = answer.returned
    asked = await tx.fetchone(
        "SELECT 1 FROM outbox WHERE message_id = ? AND recipient = ? AND kind = ?",
        (answer.in_reply_to, holder, envelope_pb2.MESSAGE_KIND_REDELIVERY_REQUEST),
    )
    copies = returned.copies if asked is not None else []
    if asked is None:
        done.refused.append({"reason": "unasked", "detail": "it answers no redelivery request this node sent there"})
    for index, copy in enumerate(copies):
        try:
            signed = envelope_pb2.SignedMessage.FromString(copy.signed)
            body = verify_own_copy(signed, me=me, holder=holder, directory=directory)
        except DecodeError:
            done.refused.append({"copy": index, "reason": Reason.MALFORMED.value, "detail": "the copy does not parse"})
            continue
        except Rejected as exc:
            done.refused.append({"copy": index, "reason": exc.reason.value, "detail": exc.detail})
            continue
        if await tx.fetchone("SELECT 1 FROM outbox WHERE message_id = ?", (body.message_id,)) is not None:
            done.held += 1
            continue
        sealed, why_not = _seal_again(signed, copy.routing, directory, content_keys)
        rebuilt = await _put_back(tx, holder, body, copy.received_at_ms, returned.restore_id, sealed, why_not)
        if rebuilt.get("rebuilt") == "case_closed":
            done.closed_cases.append(rebuilt["case_id"])
        done.recovered.append(body.message_id)
        if why_not:
            done.unsealable.append({"message_id": body.message_id, "reason": why_not})
    if asked is not None:  # what came back before these, once they are in
        done.replies = await replies_already_here(tx, holder, done.recovered)
    await tx.audit(
        "redelivery.returned",
        message_id=answer.message_id,
        counterpart=holder,
        detail={
            "restore_id": returned.restore_id,
            "recovered": done.recovered,
            "already_held": done.held,
            "refused": done.refused,
            **({"not_sendable_again": done.unsealable} if done.unsealable else {}),
            **({"replies_applied": done.replies} if done.replies else {}),
            **({"cases_closed": done.closed_cases} if done.closed_cases else {}),
        },
    )
    return done


def _seal_again(
    signed: envelope_pb2.SignedMessage, routing: bytes, directory: DirectoryView, content_keys: ContentKeys
) -> tuple[Outgoing | None, str]:
    """The copy in a new envelope, as it first went; or why it cannot be."""
    if not routing:
        return None, "the agency that gave it back stored it before nodes kept its routing header"
    try:
        return seal_again(signed, routing, directory, content_keys), ""
    except Rejected as exc:
        return None, exc.detail


async def _put_back(
    tx: Tx,
    holder: str,
    body: envelope_pb2.MessageBody,
    received_at_ms: int,
    restore_id: str,
    sealed: Outgoing | None,
    why_not: str,
) -> dict[str, str]:
    """Record one copy; what it rebuilt of this node's workflow, or why not."""
    summary = carried_summary(body)
    summary_id = summary.summary_id if summary is not None else body.withdrawal.summary_id
    # The header the copy went with names its tokens exactly; without it, what it carries tells.
    tokens = list(sealed.routing.link_tokens) if sealed else await _tokens(tx, body, summary, summary_id)
    cursor = await tx.execute(
        "INSERT INTO outbox(message_id, share_id, recipient, digest, state, next_attempt_at_ms, created_at_ms, "
        "delivered_at_ms, kind, summary_id, body_kept) VALUES (?, ?, ?, ?, 'delivered', 0, ?, ?, ?, ?, ?)",
        (
            body.message_id,
            body.share_id,
            holder,
            sealed.digest if sealed else b"",
            body.created_at_ms,
            received_at_ms,
            body.kind,
            summary_id,
            sealed is not None,
        ),
    )
    if sealed is not None:
        await tx.execute(
            "INSERT INTO outbox_bodies(seq, envelope) VALUES (?, ?)",
            (cursor.lastrowid, sealed.envelope.SerializeToString()),
        )
    await tx.execute(
        "INSERT INTO outbox_recovered(seq, restore_id, tokens) VALUES (?, ?, ?)",
        (cursor.lastrowid, restore_id, b"".join(tokens)),
    )
    rebuilt = await rebuild(tx, holder, body)
    decision = summary.decision if summary is not None else body.information_response.decision
    rationale = decision.rationale or body.withdrawal.reason
    if summary is not None:  # the decision it went on, for a withdrawal on a consent ground to check
        await tx.execute(
            "INSERT OR IGNORE INTO shares(share_id, assessment_id, created_at_ms, outcome, decision, kind) "
            "VALUES (?, '', ?, ?, ?, ?)",
            (
                body.share_id,
                body.created_at_ms,
                summary_pb2.DecisionOutcome.Name(summary.decision.outcome),
                summary.decision.SerializeToString(),
                body.kind,
            ),
        )
    elif body.kind == envelope_pb2.MESSAGE_KIND_WITHDRAWAL:
        withdrawal = body.withdrawal
        await tx.execute(
            "INSERT OR IGNORE INTO withdrawals(share_id, summary_id, ground, erase, at_ms) VALUES (?, ?, ?, ?, ?)",
            (body.share_id, summary_id, withdrawal.ground, withdrawal.erase, body.created_at_ms),
        )
    await tx.audit(
        "message.recovered",
        tokens=tokens,  # whom it was about: a subject access report lists it
        summary_id=summary_id,
        message_id=body.message_id,
        counterpart=holder,
        decision=summary_pb2.DecisionOutcome.Name(decision.outcome) if decision.outcome else "",
        lawful_ground=lawful_ground(decision),  # as the sender's own `share.decision` states it
        rationale=rationale,
        detail={
            "share_id": body.share_id,
            "kind": kind_name(body.kind),
            "restore_id": restore_id,
            "created_at_ms": body.created_at_ms,
            "received_at_ms": received_at_ms,
            "sendable_again": sealed is not None,
            **({"not_sendable_again": why_not} if why_not else {}),
            **rebuilt,
            "in_reply_to": body.in_reply_to,
            **(_as_shared(summary, holder) if summary is not None else {}),
            **(
                {"ground": body.withdrawal.ground, "erase": body.withdrawal.erase}
                if body.HasField("withdrawal")
                else {}
            ),
        },
    )
    return rebuilt


async def _tokens(
    tx: Tx, body: envelope_pb2.MessageBody, summary: summary_pb2.RiskSummary | None, summary_id: str
) -> list[bytes]:
    """The link tokens a message went with, as far as what it carries tells: a summary's
    people; a withdrawal's summary's; an involvement notice's own. Another kind's are not
    known here, and none is better than a guess that would list it under someone else."""
    if summary is not None:
        return routing_tokens(summary)
    if body.HasField("involvement"):
        return list(body.involvement.link_tokens)
    if summary_id:
        return await summary_tokens(tx.fetchone, summary_id) or []
    return []


def _as_shared(summary: summary_pb2.RiskSummary, holder: str) -> dict[str, object]:
    """What the register of sharing states of a share (linkage/cli/share_register.py), as the
    copy carries it: its own record of the decision went with the store."""
    decision = summary.decision
    to = next((r for r in decision.recipients if r.node_id == holder), None)
    return {
        "jurisdiction": summary.jurisdiction,
        "consent_status": decision.consent_status,
        "approved_by": decision.approved_by.id,
        "decided_by": decision.decided_by.name or decision.decided_by.id,
        "data_categories": list(to.data_categories) if to is not None else [],
        **({"handling": list(decision.handling_conditions)} if decision.handling_conditions else {}),
    }
