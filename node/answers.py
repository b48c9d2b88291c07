"""Information requests followed to their answers (domain.md §6 rule 7: every request ends
in a decision), in the transactions that send and receive them: which agencies a request
went to, the newest answer each gave, and how this node answered what it was asked."""

from __future__ import annotations

from collections.abc import Sequence

from linkage.v1 import envelope_pb2, node_api_pb2, summary_pb2
from node import dates
from node.store import Tx


async def asked(
    tx: Tx,
    request_id: str,
    case_id: str,
    needed_by: summary_pb2.Date | None,
    purpose: str,
    statuses: Sequence[node_api_pb2.DeliveryStatus],
) -> None:
    """A request this node sent, and each agency it went to."""
    await tx.execute(
        "INSERT INTO info_requests(request_id, case_id, sent_at_ms, needed_by, purpose) VALUES (?, ?, ?, ?, ?)",
        (request_id, case_id, tx.now_ms, dates.iso(needed_by) if needed_by else "", purpose),
    )
    await tx.executemany(
        "INSERT INTO info_requests_asked(message_id, request_id, node_id) VALUES (?, ?, ?)",
        [(s.message_id, request_id, s.node_id) for s in statuses],
    )


async def answered(tx: Tx, request_message_id: str, sender: str, answer: int) -> None:
    """This node answered a request it received (again: the newest answer holds)."""
    await tx.execute(
        "UPDATE inbox SET answer = ?, answered_at_ms = ? WHERE sender = ? AND message_id = ? AND kind = ?",
        (answer, tx.now_ms, sender, request_message_id, envelope_pb2.MESSAGE_KIND_INFORMATION_REQUEST),
    )


async def answer_arrived(tx: Tx, body: envelope_pb2.MessageBody, sender: str, made_at_ms: int) -> None:
    """An agency answered a request of this node's. It may answer again (declined, then
    provided): the answer it made last holds, whichever arrives last."""
    reply = body.information_response
    await tx.execute(
        "UPDATE info_requests_asked SET answer = ?, answered_at_ms = ?, answer_message_id = ? "
        "WHERE message_id = ? AND node_id = ? AND (answered_at_ms IS NULL OR answered_at_ms <= ?)",
        (reply.answer, made_at_ms, body.message_id, reply.request_message_id, sender, made_at_ms),
    )
