"""The recipient side: verify, store once, receipt.

Every check of design.md §3.4 runs before anything is stored; every refusal is
audited with its reason code and answered with a signed negative receipt.
`(sender, message_id)` is unique: a duplicate is receipted again with no new
effect, and the same id with different content is refused as a conflict.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from linkage import logs
from linkage.batchsign import BatchSigner
from linkage.clock import Clock
from linkage.directory import TrustedDirectory
from linkage.envelope import (
    RECEIPT_LABEL,
    Opened,
    envelope_digest,
    open_envelope,
    parse_routing,
    signed_receipt,
    signing_generation,
)
from linkage.keys import MessageKeys
from linkage.reasons import Reason, Rejected
from linkage.v1 import audit_pb2, envelope_pb2, gateway_pb2, summary_pb2
from node.effects import apply_effects
from node.link import GatewayLink, NotConnected
from node.messaging import kind_name
from node.metrics import NodeMetrics
from node.store import Store, Tx

log = logs.get("node.reception")


class InboxFeed:
    """Wakes the case systems watching this node's inbox."""

    def __init__(self) -> None:
        self._changed = asyncio.Condition()
        self.last_seq = 0

    async def published(self, seq: int) -> None:
        async with self._changed:
            self.last_seq = max(self.last_seq, seq)
            self._changed.notify_all()

    async def wait_beyond(self, seq: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.last_seq > seq)


class Reception:
    def __init__(
        self,
        store: Store,
        link: GatewayLink,
        trust: TrustedDirectory,
        keys: MessageKeys,
        node_id: str,
        clock: Clock,
        feed: InboxFeed,
        checkpoint: Callable[[], audit_pb2.SignedCheckpoint] | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.store = store
        self.link = link
        self.trust = trust
        self.keys = keys
        self.node_id = node_id
        self.clock = clock
        self.feed = feed
        self.checkpoint = checkpoint
        self.metrics = metrics or NodeMetrics()
        self.signer = BatchSigner(RECEIPT_LABEL)  # receipts to one sender, committed together, share a signature

    async def on_envelope(self, envelope: envelope_pb2.Envelope) -> None:
        now = self.clock.now_ms()
        digest = envelope_digest(envelope)
        try:
            opened = open_envelope(
                envelope, me=self.node_id, keys=self.keys, directory=self.trust.current(now), now_ms=now
            )
        except Rejected as exc:
            await self._reject(envelope, digest, exc.reason)
            return
        status, reason, seq = await self._store(opened)
        if seq:
            await self.feed.published(seq)
        await self._receipt(opened.routing.message_id, opened.routing.sender_node, digest, status, reason)

    async def _store(self, opened: Opened) -> tuple[envelope_pb2.ReceiptStatus.ValueType, str, int]:
        sender, message_id = opened.routing.sender_node, opened.routing.message_id
        async with self.store.tx() as tx:
            row = await (
                await tx.execute("SELECT digest FROM inbox WHERE sender = ? AND message_id = ?", (sender, message_id))
            ).fetchone()
            if row is not None:
                if bytes(row[0]) == opened.digest:
                    log.debug("message.duplicate", sender=sender, message_id=message_id)
                    return envelope_pb2.RECEIPT_STATUS_ACCEPTED, "", 0
                await tx.audit(
                    "message.rejected",
                    message_id=message_id,
                    counterpart=sender,
                    detail={"reason": Reason.CONFLICT.value},
                )
                log.warning("message.rejected", sender=sender, message_id=message_id, reason=Reason.CONFLICT.value)
                return envelope_pb2.RECEIPT_STATUS_REJECTED, Reason.CONFLICT.value, 0
            seq = await self._insert(tx, opened)
        self.metrics.received.inc()
        log.debug("message.received", sender=sender, message_id=message_id, seq=seq)
        return envelope_pb2.RECEIPT_STATUS_ACCEPTED, "", seq

    async def _insert(self, tx: Tx, opened: Opened) -> int:
        routing, body = opened.routing, opened.body
        summary_id = body.summary.summary_id or body.withdrawal.summary_id
        cursor = await tx.execute(
            "INSERT INTO inbox(sender, message_id, digest, received_at_ms, kind, share_id, signed, summary_id, "
            "in_reply_to) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                routing.sender_node,
                routing.message_id,
                opened.digest,
                tx.now_ms,
                body.kind,
                body.share_id,
                opened.signed.SerializeToString(),
                summary_id,
                body.in_reply_to,
            ),
        )
        seq = int(cursor.lastrowid or 0)
        await tx.executemany(
            "INSERT OR IGNORE INTO inbox_tokens(token, inbox_seq) VALUES (?, ?)",
            [(t, seq) for t in routing.link_tokens],
        )
        decision = body.summary.decision
        await tx.audit(
            "message.received",
            tokens=routing.link_tokens,
            summary_id=body.summary.summary_id,
            message_id=routing.message_id,
            counterpart=routing.sender_node,
            decision=summary_pb2.DecisionOutcome.Name(decision.outcome),
            lawful_ground=",".join([*decision.lawful_basis.art6, decision.lawful_basis.dpa_condition]).strip(","),
            rationale=decision.rationale,
            detail={
                "share_id": body.share_id,
                "kind": kind_name(body.kind),
                "inbox_seq": seq,
                "in_reply_to": body.in_reply_to,
            },
        )
        await apply_effects(tx, seq, opened)
        return seq

    async def _reject(self, envelope: envelope_pb2.Envelope, digest: bytes, reason: Reason) -> None:
        try:
            routing: envelope_pb2.RoutingHeader | None = parse_routing(envelope)
        except Rejected:
            routing = None
        sender = routing.sender_node if routing else ""
        message_id = routing.message_id if routing else ""
        async with self.store.tx() as tx:
            await tx.audit(
                "message.rejected", message_id=message_id, counterpart=sender, detail={"reason": reason.value}
            )
        self.metrics.rejected.labels(reason.value).inc()
        log.warning("message.rejected", sender=sender, message_id=message_id, reason=reason.value)
        if routing is not None and reason is not Reason.WRONG_RECIPIENT:
            await self._receipt(message_id, sender, digest, envelope_pb2.RECEIPT_STATUS_REJECTED, reason.value)

    async def _receipt(
        self, message_id: str, sender: str, digest: bytes, status: envelope_pb2.ReceiptStatus.ValueType, reason: str
    ) -> None:
        body = envelope_pb2.ReceiptBody(
            message_id=message_id,
            sender_node=sender,
            recipient_node=self.node_id,
            envelope_sha256=digest,
            received_at_ms=self.clock.now_ms(),
            status=status,
            reason=reason,
        )
        if self.checkpoint is not None:  # our audit log's state, lodged with the peer
            body.checkpoint.CopyFrom(self.checkpoint())
        with contextlib.suppress(NotConnected, Rejected):  # the sender re-sends; the duplicate is receipted then
            now = self.clock.now_ms()
            signer = signing_generation(self.keys, self.trust.current(now), self.node_id, now)
            data = body.SerializeToString()
            signature = await self.signer.sign(signer, sender, data)
            await self.link.send(gateway_pb2.NodeFrame(receipt=signed_receipt(data, signature)))
