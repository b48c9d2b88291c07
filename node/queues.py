"""What this node still has to deliver, per agency: for agency IT, who need to know which
agency is not being reached and why (its node away, the gateway busy) before anyone asks."""

from __future__ import annotations

from linkage.v1 import node_api_pb2
from node.context import NodeContext


async def delivery_queues(ctx: NodeContext) -> node_api_pb2.DeliveryQueues:
    # The live rows only (outbox_due holds them), which the outbox's high-water mark bounds.
    rows = await ctx.store.fetchall(
        "SELECT recipient, SUM(state = 'queued'), SUM(state = 'sent'), MIN(created_at_ms), "
        "MIN(COALESCE(queued_again_at_ms, created_at_ms)) AS since, MAX(attempts), MIN(next_attempt_at_ms) "
        "FROM outbox WHERE state IN ('queued', 'sent') GROUP BY recipient ORDER BY since"
    )
    now = ctx.clock.now_ms()
    queues = []
    for node, to_send, awaiting, oldest, since, attempts, due_ms in rows:
        away, held, until = ctx.outbox.wait_of(node)
        queues.append(
            node_api_pb2.DeliveryQueue(
                node_id=node,
                agency_name=ctx.agency(node).agency_name,
                to_send=to_send,
                awaiting_receipt=awaiting,
                oldest_created_at_ms=oldest,
                oldest_waiting_since_ms=since,
                most_attempts=attempts,
                away=away,
                held=held,
                next_attempt_at_ms=max(until, due_ms if due_ms > now else 0),
            )
        )
    return node_api_pb2.DeliveryQueues(connected=ctx.link.connected.is_set(), queues=queues)
