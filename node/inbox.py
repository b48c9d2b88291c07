"""What a node has received: listing and watching its inbox, and opening an item (with a
read notification to the sender unless a silent read is justified)."""

from __future__ import annotations

from typing import Any

from linkage import logs
from linkage.content import carried_summary
from linkage.v1 import envelope_pb2, node_api_pb2, summary_pb2, workflow_pb2
from node.context import NodeContext
from node.erasure import erased_note
from node.errors import check_notes, not_found, past_the_end
from node.messaging import kind_name
from node.store import FetchAll, FetchOne

log = logs.get("node.inbox")

ITEM_COLUMNS = "i.seq, i.sender, i.message_id, i.received_at_ms, i.kind, i.share_id, b.signed, i.state"
ITEMS = "inbox i JOIN inbox_bodies b ON b.seq = i.seq"  # what ITEM_COLUMNS are read from


class Inbox:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx

    def item(self, row: Any) -> node_api_pb2.ReceivedSummary:
        seq, sender, message_id, received_at, kind, share_id, signed, state = row
        body = envelope_pb2.MessageBody.FromString(envelope_pb2.SignedMessage.FromString(signed).body)
        entry = self.ctx.agency(sender)
        summary = carried_summary(body) or summary_pb2.RiskSummary()
        return node_api_pb2.ReceivedSummary(
            seq=seq,
            message_id=message_id,
            sender_node=sender,
            sender_agency_name=entry.agency_name,
            sender_agency_type=entry.agency_type,
            received_at_ms=received_at,
            kind=kind,
            share_id=share_id,
            summary=summary,
            body=body,
            state=state,
        )

    async def received(
        self, actor: summary_pb2.Practitioner, via: str, after_seq: int, limit: int, token: bytes = b""
    ) -> list[node_api_pb2.ReceivedSummary]:
        """Received items after `after_seq`, for the case system. Handing them over is audited
        before they are returned (who, through which call, which messages, about whom), as a
        read is: it passes everything they say into the agency's own records."""
        if token:
            rows = await self.ctx.store.fetchall(
                f"SELECT {ITEM_COLUMNS} FROM {ITEMS} JOIN inbox_tokens t ON t.inbox_seq = i.seq "
                "WHERE t.token = ? AND i.seq > ? ORDER BY i.seq LIMIT ?",
                (token, after_seq, limit),
            )
        else:
            rows = await self.ctx.store.fetchall(
                f"SELECT {ITEM_COLUMNS} FROM {ITEMS} WHERE i.seq > ? ORDER BY i.seq LIMIT ?", (after_seq, limit)
            )
        if not rows and after_seq:
            (given,) = await self.ctx.store.fetchone(
                "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'inbox'"
            )
            if after_seq > given:
                raise past_the_end(after_seq, given, "received item")
        items = [self.item(r) for r in rows]
        if items:  # an empty poll hands over nothing, and is not recorded
            async with self.ctx.store.tx() as tx:
                # One erased at its sender's request since it was read is not handed over.
                if erased := await _erased(tx.fetchall, [item.seq for item in items]):
                    items = [item for item in items if item.seq not in erased]
                if items:
                    await tx.audit(
                        "received.exported",
                        actor,
                        tokens=await _tokens(tx.fetchall, [item.seq for item in items]),
                        detail={"via": via, "items": len(items), "message_ids": [item.message_id for item in items]},
                    )
        return items

    async def open(self, request: node_api_pb2.OpenReceivedRequest) -> node_api_pb2.ReceivedSummary:
        check_notes(silent_read_reason=request.silent_read_reason)
        row = await self.ctx.store.fetchone(
            f"SELECT {ITEM_COLUMNS} FROM {ITEMS} WHERE i.message_id = ?", (request.message_id,)
        )
        if row is None:
            erased = await erased_note(self.ctx.store.fetchone, request.message_id)
            raise not_found(erased or f"no item {request.message_id!r} in this node's inbox")
        item = self.item(row)
        tokens = await _tokens(self.ctx.store.fetchall, [item.seq])
        silent = request.silent_read_reason.strip()
        notify = (
            not silent and bool(item.summary.summary_id) and not await self._sender_told(self.ctx.store.fetchone, item)
        )
        sealed = []
        if notify:
            read = workflow_pb2.ReadNotification(
                read_message_id=item.message_id, read_at_ms=self.ctx.clock.now_ms(), reader_role=request.actor.role
            )
            sealed = await self.ctx.messenger.seal_each(
                [item.sender_node],
                envelope_pb2.MESSAGE_KIND_READ_NOTIFICATION,
                tokens,
                item.share_id,
                lambda _: lambda body: body.read.CopyFrom(read),
                request.actor,
                in_reply_to=item.message_id,
            )
        async with self.ctx.store.tx() as tx:
            if (erased := await erased_note(tx.fetchone, item.message_id)) is not None:  # since it was read
                raise not_found(erased)
            if sealed and await self._sender_told(tx.fetchone, item):  # by a read racing this one
                sealed, notify = [], False
            await tx.execute("UPDATE inbox SET state = 'read' WHERE seq = ? AND state = 'new'", (item.seq,))
            await tx.audit(
                "message.silent_read" if silent else "message.read",
                request.actor,
                tokens=tokens,
                summary_id=item.summary.summary_id,
                message_id=item.message_id,
                counterpart=item.sender_node,
                rationale=silent,
                detail={"kind": kind_name(item.kind), "sender_told": notify},
            )
            if sealed:
                await self.ctx.messenger.queue(tx, sealed, item.share_id, request.actor)
        if sealed:
            await self.ctx.changed()
        return item if item.state != "new" else self._with_state(item, "read")

    @staticmethod
    async def _sender_told(fetchone: FetchOne, item: node_api_pb2.ReceivedSummary) -> bool:
        """Whether an earlier read of this item told its sender: the first read tells, once."""
        row = await fetchone(
            "SELECT 1 FROM outbox WHERE share_id = ? AND recipient = ? AND kind = ?",
            (item.share_id, item.sender_node, envelope_pb2.MESSAGE_KIND_READ_NOTIFICATION),
        )
        return row is not None

    @staticmethod
    def _with_state(item: node_api_pb2.ReceivedSummary, state: str) -> node_api_pb2.ReceivedSummary:
        copy = node_api_pb2.ReceivedSummary()
        copy.CopyFrom(item)
        copy.state = state
        return copy


async def _tokens(fetchall: FetchAll, seqs: list[int]) -> list[bytes]:
    """The link tokens of these inbox rows, each once."""
    rows = await fetchall(
        f"SELECT DISTINCT token FROM inbox_tokens WHERE inbox_seq IN ({','.join('?' * len(seqs))}) ORDER BY token",
        seqs,
    )
    return [bytes(r[0]) for r in rows]


async def _erased(fetchall: FetchAll, seqs: list[int]) -> set[int]:
    """Of these inbox rows, those erased at their sender's request."""
    rows = await fetchall(
        f"SELECT seq FROM inbox WHERE seq IN ({','.join('?' * len(seqs))}) AND state = 'erased'", seqs
    )
    return {seq for (seq,) in rows}
