"""The sender side of delivery: the outbox worker, gateway acks and receipts.

A row is written with its share in one transaction (see sharing.py). It
becomes "sent" only when the gateway has forwarded it and "delivered" only on
the recipient's signed receipt. A sent row without a receipt is sent again
after RECEIPT_TIMEOUT_MS with the same message id; the recipient's inbox
absorbs the duplicate and receipts it again.
"""

from __future__ import annotations

import asyncio
import contextlib

from linkage import logs
from linkage.clock import Clock
from linkage.directory import TrustedDirectory
from linkage.envelope import verify_receipt
from linkage.reasons import Rejected
from linkage.v1 import envelope_pb2, gateway_pb2
from node.backoff import backoff_ms
from node.link import GatewayLink, NotConnected
from node.store import Store

RETRY_BASE_MS = 1_000
RETRY_CAP_MS = 15 * 60_000
RECEIPT_TIMEOUT_MS = 60_000
BATCH = 256

log = logs.get("node.outbox")


class Outbox:
    def __init__(self, store: Store, link: GatewayLink, trust: TrustedDirectory, node_id: str, clock: Clock) -> None:
        self.store = store
        self.link = link
        self.trust = trust
        self.node_id = node_id
        self.clock = clock
        self.wake = asyncio.Event()
        self._in_flight: set[str] = set()
        self._changes = asyncio.Condition()
        self.version = 0  # bumped on every delivery state change

    async def _changed(self) -> None:
        async with self._changes:
            self.version += 1
            self._changes.notify_all()

    async def wait_change(self, since: int) -> int:
        """Wait until some delivery state changed after `since` (a previous `version`)."""
        async with self._changes:
            await self._changes.wait_for(lambda: self.version > since)
            return self.version

    def disconnected(self) -> None:
        self._in_flight.clear()  # acks for these will never come

    async def run(self) -> None:
        while True:
            await self.link.connected.wait()
            self.wake.clear()
            now = self.clock.now_ms()
            due = await self.store.fetchall(
                "SELECT message_id, envelope FROM outbox WHERE state IN ('queued', 'sent') "
                "AND next_attempt_at_ms <= ? ORDER BY created_at_ms LIMIT ?",
                (now, BATCH),
            )
            for message_id, envelope in due:
                if message_id in self._in_flight:
                    continue
                self._in_flight.add(message_id)
                try:
                    await self.link.send(gateway_pb2.NodeFrame(send=envelope_pb2.Envelope.FromString(envelope)))
                except NotConnected:
                    self._in_flight.discard(message_id)
                    break
            row = await self.store.fetchone(
                "SELECT MIN(next_attempt_at_ms) FROM outbox WHERE state IN ('queued', 'sent')"
            )
            timeout = None if row[0] is None else max(0.05, (row[0] - self.clock.now_ms()) / 1000)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)

    async def on_ack(self, ack: gateway_pb2.SendAck) -> None:
        try:
            await self._record_ack(ack)
        finally:
            # Only now may the worker pick the row again: its new state is committed.
            self._in_flight.discard(ack.message_id)
        log.info("ack", message_id=ack.message_id, status=gateway_pb2.SendStatus.Name(ack.status))
        self.wake.set()
        await self._changed()

    async def _record_ack(self, ack: gateway_pb2.SendAck) -> None:
        async with self.store.tx() as tx:
            row = await (
                await tx.execute(
                    "SELECT attempts, state FROM outbox WHERE message_id = ? AND recipient = ?",
                    (ack.message_id, ack.recipient_node),
                )
            ).fetchone()
            if row is None or row[1] not in ("queued", "sent"):
                return
            attempts = int(row[0]) + 1
            if ack.status == gateway_pb2.SEND_STATUS_FORWARDED:
                await tx.execute(
                    "UPDATE outbox SET state = 'sent', attempts = ?, sent_at_ms = COALESCE(sent_at_ms, ?), "
                    "next_attempt_at_ms = ? WHERE message_id = ?",
                    (attempts, tx.now_ms, tx.now_ms + RECEIPT_TIMEOUT_MS, ack.message_id),
                )
                if row[1] == "queued":
                    await tx.audit("message.sent", message_id=ack.message_id, counterpart=ack.recipient_node)
            elif ack.status == gateway_pb2.SEND_STATUS_RECIPIENT_OFFLINE:
                delay = backoff_ms(attempts - 1, RETRY_BASE_MS, RETRY_CAP_MS)
                await tx.execute(
                    "UPDATE outbox SET attempts = ?, next_attempt_at_ms = ? WHERE message_id = ?",
                    (attempts, tx.now_ms + delay, ack.message_id),
                )
            else:
                await tx.execute(
                    "UPDATE outbox SET state = 'undeliverable', attempts = ?, reason = ? WHERE message_id = ?",
                    (attempts, f"gateway: {ack.reason}", ack.message_id),
                )
                await tx.audit(
                    "message.undeliverable",
                    message_id=ack.message_id,
                    counterpart=ack.recipient_node,
                    detail={"reason": ack.reason, "by": "gateway"},
                )

    async def on_peer_online(self, node_id: str) -> None:
        async with self.store.tx() as tx:
            await tx.execute(
                "UPDATE outbox SET next_attempt_at_ms = ? WHERE recipient = ? AND state = 'queued'",
                (tx.now_ms, node_id),
            )
        self.wake.set()

    async def on_receipt(self, receipt: envelope_pb2.Receipt) -> None:
        now = self.clock.now_ms()
        try:
            body = verify_receipt(receipt, me=self.node_id, directory=self.trust.current(now))
        except Rejected as exc:
            log.warning("receipt.rejected", reason=exc.reason.value)
            return
        accepted = body.status == envelope_pb2.RECEIPT_STATUS_ACCEPTED
        async with self.store.tx() as tx:
            updated = await tx.execute(
                "UPDATE outbox SET state = ?, delivered_at_ms = ?, receipt = ?, reason = ? "
                "WHERE message_id = ? AND recipient = ? AND digest = ? AND state IN ('queued', 'sent')",
                (
                    "delivered" if accepted else "undeliverable",
                    body.received_at_ms if accepted else None,
                    receipt.SerializeToString(),
                    "" if accepted else f"recipient: {body.reason}",
                    body.message_id,
                    body.recipient_node,
                    body.envelope_sha256,
                ),
            )
            if updated.rowcount == 0:
                return  # a repeated receipt, or one for a message we never sent
            await tx.audit(
                "message.delivered" if accepted else "message.undeliverable",
                message_id=body.message_id,
                counterpart=body.recipient_node,
                detail={"received_at_ms": body.received_at_ms, "reason": body.reason, "by": "recipient"},
            )
        self._in_flight.discard(body.message_id)
        log.info("receipt", message_id=body.message_id, accepted=accepted)
        await self._changed()
