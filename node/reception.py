"""The recipient side: verify, store once, receipt.

Every check of design.md §3.4 runs before anything is stored; every refusal is
audited with its reason code and answered with a signed negative receipt.
`(sender, message_id)` is unique: a duplicate is receipted again with no new
effect, and the same id with different content is refused as a conflict.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from linkage import logs
from linkage.batchsign import BatchSigner, signed_all
from linkage.clock import Clock
from linkage.content import carried_summary
from linkage.contentkeys import OpenedKeys
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
from linkage.grounds import lawful_ground, terms_received
from linkage.ids import recordable
from linkage.keys import MessageKeys
from linkage.reasons import CLOCK_REASONS, Reason, Rejected
from linkage.v1 import audit_pb2, envelope_pb2, gateway_pb2, summary_pb2
from linkage.writability import log_failure
from node import dates
from node.effects import apply_effects
from node.link import GatewayLink, NotConnected
from node.messaging import kind_name
from node.metrics import NodeMetrics
from node.redelivery import Redelivery
from node.store import Store, TransactionLost, Tx

log = logs.get("node.reception")


@dataclass(frozen=True)
class _Answer:
    """What a receipt will say about one message."""

    message_id: str
    sender: str
    digest: bytes
    status: envelope_pb2.ReceiptStatus.ValueType
    reason: str


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
        redelivery: Redelivery,
        checkpoint: Callable[[], audit_pb2.SignedCheckpoint] | None = None,
        metrics: NodeMetrics | None = None,
        look_now: Callable[[], None] = lambda: None,  # at the directory and the keys in the bundle, at once
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
        self.redelivery = redelivery
        self.look_now = look_now
        self.signer = BatchSigner(RECEIPT_LABEL)  # receipts to one sender, committed together, share a signature
        self.opened_keys = OpenedKeys()  # the senders' content keys, each opened once

    async def on_envelopes(self, envelopes: Sequence[envelope_pb2.Envelope]) -> None:
        """Messages that came together: each checked alone, the good ones stored in one
        transaction (each a part of it that fails alone), then receipted together."""
        now = self.clock.now_ms()
        directory = self.trust.current(now)
        opened: list[Opened] = []
        refused: list[tuple[envelope_pb2.Envelope, Rejected]] = []
        for envelope in envelopes:
            try:
                opened.append(
                    open_envelope(
                        envelope,
                        me=self.node_id,
                        keys=self.keys,
                        directory=directory,
                        now_ms=now,
                        opened_keys=self.opened_keys,
                    )
                )
            except Rejected as exc:
                refused.append((envelope, exc))
        answers: list[_Answer] = []
        if opened:
            answers += await self._store(opened)
        for envelope, why in refused:
            answer = await self._reject(envelope, why)
            if answer is not None:
                answers.append(answer)
        await self._receipt(answers)

    async def _store(self, opened: list[Opened]) -> list[_Answer]:
        answers: list[_Answer] = []
        received, new = 0, 0  # the last inbox row written, and how many were
        async with self.store.tx() as tx:
            for message in opened:
                try:
                    with tx.part():
                        status, reason, seq = await self._store_one(tx, message)
                except TransactionLost:
                    raise  # nothing of the batch stands: every sender sends again
                except Exception as exc:  # this message alone: no receipt, so its sender sends it again
                    log_failure(
                        log,
                        "message.store_failed",
                        exc,
                        sender=message.routing.sender_node,
                        message_id=message.routing.message_id,
                    )
                    continue
                if seq:
                    received, new = max(received, seq), new + 1
                answers.append(
                    _Answer(message.routing.message_id, message.routing.sender_node, message.digest, status, reason)
                )
        if new:
            self.metrics.received.inc(new)
        if received:
            await self.feed.published(received)
        return answers

    async def _store_one(self, tx: Tx, opened: Opened) -> tuple[envelope_pb2.ReceiptStatus.ValueType, str, int]:
        sender, message_id = opened.routing.sender_node, opened.routing.message_id
        row = await tx.fetchone(
            "SELECT seq, digest, kind, share_id FROM inbox WHERE sender = ? AND message_id = ?", (sender, message_id)
        )
        if row is not None:
            if await _same_message(tx, row, opened):
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
        log.debug("message.received", sender=sender, message_id=message_id, seq=seq)
        return envelope_pb2.RECEIPT_STATUS_ACCEPTED, "", seq

    async def _insert(self, tx: Tx, opened: Opened) -> int:
        routing, body = opened.routing, opened.body
        summary = carried_summary(body)
        summary_id = summary.summary_id if summary is not None else body.withdrawal.summary_id
        cursor = await tx.execute(
            "INSERT INTO inbox(sender, message_id, digest, received_at_ms, kind, share_id, summary_id, in_reply_to, "
            "review_date) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                routing.sender_node,
                routing.message_id,
                opened.digest,
                tx.now_ms,
                body.kind,
                body.share_id,
                summary_id,
                body.in_reply_to,
                dates.review_due(summary) if summary is not None else None,
            ),
        )
        seq = int(cursor.lastrowid or 0)
        await tx.execute(
            "INSERT INTO inbox_bodies(seq, signed, routing) VALUES (?, ?, ?)",
            (seq, opened.signed.SerializeToString(), opened.routing_bytes),
        )
        await tx.executemany(
            "INSERT OR IGNORE INTO inbox_tokens(token, inbox_seq) VALUES (?, ?)",
            [(t, seq) for t in routing.link_tokens],
        )
        # The sender's decision: a summary's, or a declined request's (a notice carries none).
        decision = summary.decision if summary is not None else body.information_response.decision
        await tx.audit(
            "message.received",
            tokens=routing.link_tokens,
            summary_id=summary_id,
            message_id=routing.message_id,
            counterpart=routing.sender_node,
            decision=summary_pb2.DecisionOutcome.Name(decision.outcome) if decision.outcome else "",
            lawful_ground=lawful_ground(decision),  # every ground the sender's decision states
            rationale=decision.rationale,
            detail={
                "share_id": body.share_id,
                "kind": kind_name(body.kind),
                "inbox_seq": seq,
                "in_reply_to": body.in_reply_to,
                **(terms_received(summary, self.node_id) if summary is not None else {}),
            },
        )
        await apply_effects(tx, seq, opened, self.redelivery)
        return seq

    async def _reject(self, envelope: envelope_pb2.Envelope, why: Rejected) -> _Answer | None:
        """Audit a refused message, and why; the negative receipt to send, if it can be addressed:
        one that defers it, where the two clocks decide the refusal, for its sender to send again."""
        reason = why.reason
        try:
            routing: envelope_pb2.RoutingHeader | None = parse_routing(envelope)
        except Rejected:
            routing = None
        deferred = {"deferred": True} if self._defers(reason, routing) else {}
        # Nothing in a refused message is verified: its ids are recorded only in the forms
        # the federation gives them, and it is answered only if both are.
        message_id, sender, flags = recordable(routing.message_id, routing.sender_node) if routing else ("", "", {})
        async with self.store.tx() as tx:
            await tx.audit(
                "message.rejected",
                message_id=message_id,
                counterpart=sender,
                detail={"reason": reason.value, "why": why.detail, **deferred, **flags},
            )
        self.metrics.rejected.labels(reason.value).inc()
        log.warning("message.rejected", sender=sender, message_id=message_id, reason=reason.value, **deferred, **flags)
        if not (message_id and sender) or reason is Reason.WRONG_RECIPIENT:
            return None
        status = envelope_pb2.RECEIPT_STATUS_DEFERRED if deferred else envelope_pb2.RECEIPT_STATUS_REJECTED
        return _Answer(message_id, sender, envelope_digest(envelope), status, reason.value)

    def _defers(self, reason: Reason, routing: envelope_pb2.RoutingHeader | None) -> bool:
        """Whether a refusal waits on something to come, so its sender sends the message again
        rather than give it up: the two clocks agreeing; this node taking the newer directory
        that names the sender, or the key it signs with; or this node taking the new keys of
        its own that its directory names and the message is sealed to (a bundle copied late,
        say). For the last two it looks at once."""
        if reason in CLOCK_REASONS:
            return True
        if routing is None or reason not in (Reason.UNKNOWN_SENDER, Reason.UNKNOWN_KEY):
            return False
        if self.keys.for_id(routing.recipient_key_id) is None:
            entry = self.trust.node_entry(self.node_id)
            if entry is None or all(k.key_id != routing.recipient_key_id for k in entry.keys):
                return False
        self.look_now()
        return True

    async def _receipt(self, answers: list[_Answer]) -> None:
        """Sign each answer as a receipt (those to one sender share a signature) and send them
        in one write. If that fails, each sender re-sends and the duplicate is receipted then."""
        if not answers:
            return
        now = self.clock.now_ms()
        try:
            signer = signing_generation(self.keys, self.trust.current(now), self.node_id, now)
        except Rejected:
            return  # no key of ours the directory names to sign with: senders re-send later
        checkpoint = self.checkpoint() if self.checkpoint is not None else None  # our log's state, for the peer
        log_size = self.store.frontier.size  # committed with each message answered: past each one's entry
        bodies = []
        for answer in answers:
            body = envelope_pb2.ReceiptBody(
                message_id=answer.message_id,
                sender_node=answer.sender,
                recipient_node=self.node_id,
                envelope_sha256=answer.digest,
                received_at_ms=now,
                status=answer.status,
                reason=answer.reason,
                log_size=log_size,
            )
            if checkpoint is not None:
                body.checkpoint.CopyFrom(checkpoint)
            bodies.append(body.SerializeToString())
        waiting = [self.signer.sign(signer, a.sender, data) for a, data in zip(answers, bodies, strict=True)]
        with contextlib.suppress(NotConnected, Rejected):
            signatures = await signed_all(waiting)
            frames = [
                gateway_pb2.NodeFrame(receipt=signed_receipt(data, signature))
                for data, signature in zip(bodies, signatures, strict=True)
            ]
            await self.link.send_all(frames)


async def _same_message(tx: Tx, held: tuple[int, bytes, int, str], opened: Opened) -> bool:
    """Whether the message held under this id is the one that came: the same envelope; or the
    same signed body, sealed again by its sender after its own store was put back (its copy
    given back, node/returned_copies.py); or, erased here, of the same kind and share. The
    body is read only for another envelope: a repeat of the same one, the common case, needs
    the digest alone."""
    seq, digest, kind, share_id = held
    if bytes(digest) == opened.digest:
        return True
    body = await tx.fetchone("SELECT signed FROM inbox_bodies WHERE seq = ?", (seq,))
    if body is None:  # only its row is left, and what comes again is not stored
        return kind == opened.body.kind and share_id == opened.body.share_id
    return envelope_pb2.SignedMessage.FromString(body[0]).body == opened.signed.body
