"""A message that could not be delivered, or not yet, is not the end of it: the agency still
needs to be told, another way (a telephone call, secure email). The practitioner records
what was done, in the audit log and beside the message, and it leaves the duty view (one
still on its way is delivered all the same)."""

from __future__ import annotations

import grpc

from linkage.envelope import parse_routing
from linkage.v1 import node_api_pb2
from linkage.v1.envelope_pb2 import Envelope
from node import repeats
from node.context import NodeContext
from node.errors import ApiError, check_notes, invalid, not_found


async def record_follow_up(ctx: NodeContext, request: node_api_pb2.FollowUpRequest) -> node_api_pb2.DeliveryStatus:
    # A repeat of a call answered before is answered again: it would be refused as followed up already.
    return await repeats.answer_once(
        ctx.store.fetchone, request, node_api_pb2.DeliveryStatus, lambda: _record(ctx, request)
    )


async def _record(ctx: NodeContext, request: node_api_pb2.FollowUpRequest) -> node_api_pb2.DeliveryStatus:
    if not request.note.strip():
        raise invalid("note is empty: say what was done instead, who was told and how")
    check_notes(note=request.note)
    async with ctx.store.tx() as tx:  # checked where writes are serial: two follow-ups at once record one
        row = await tx.fetchone(
            "SELECT o.recipient, o.state, o.reason, o.follow_up, o.summary_id, b.envelope FROM outbox o "
            "LEFT JOIN outbox_bodies b ON b.seq = o.seq WHERE o.message_id = ?",
            (request.message_id,),
        )
        if row is None:
            raise not_found(f"this node sent no message {request.message_id!r}")
        recipient, state, reason, done, summary_id, envelope = row
        if state in ("delivered", "cancelled"):  # else undeliverable, or on its way (the duty view lists those delayed)
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"message {request.message_id!r} was {state}: there is nothing to follow up"
                + (f" ({reason})" if state == "cancelled" else ""),
            )
        if done is not None:
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION, f"message {request.message_id!r} was followed up already: {done}"
            )
        await tx.execute(
            "UPDATE outbox SET follow_up = ?, followed_up_at_ms = ? WHERE message_id = ?",
            (request.note, tx.now_ms, request.message_id),
        )
        # Whom it was about, from the message if it was sealed and is still kept (the entry that
        # recorded it undeliverable names them too, under the same message id).
        tokens = list(parse_routing(Envelope.FromString(envelope)).link_tokens) if envelope else []
        await tx.audit(
            "message.followed_up",
            request.actor,
            tokens=tokens,
            summary_id=summary_id,
            message_id=request.message_id,
            counterpart=recipient,
            rationale=request.note,
        )
        followed = node_api_pb2.DeliveryStatus(
            node_id=recipient,
            message_id=request.message_id,
            state=state,
            reason=reason,
            follow_up=request.note,
            followed_up_at_ms=tx.now_ms,
        )
        await repeats.keep(tx, request, followed)
    await ctx.outbox.changed()  # the follow-up is part of the share's status: its watchers hear of it
    return followed
