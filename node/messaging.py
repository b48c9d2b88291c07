"""Sending any kind of message to other agencies: seal one envelope per recipient
and queue it in the outbox, inside the caller's transaction, with its audit entry.
Summaries, notices, requests and replies all travel this one way."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from linkage.batchsign import BatchSigner
from linkage.clock import Clock
from linkage.config import DeliverySettings
from linkage.contentkeys import ContentKeys
from linkage.directory import TrustedDirectory
from linkage.envelope import MESSAGE_LABEL, Outgoing, draft, seal_signed, signing_generation
from linkage.ids import uuid7
from linkage.keys import MessageKeys
from linkage.v1 import envelope_pb2, node_api_pb2, summary_pb2
from node.store import Tx

Fill = Callable[[envelope_pb2.MessageBody], None]
Queued = tuple[str, str, envelope_pb2.Envelope]  # message id, recipient, envelope


def kind_name(kind: int) -> str:
    return envelope_pb2.MessageKind.Name(kind).removeprefix("MESSAGE_KIND_").lower()  # type: ignore[arg-type]


async def add_to_outbox(
    tx: Tx,
    message_id: str,
    share_id: str,
    recipient: str,
    envelope: bytes,
    digest: bytes,
    kind: int = envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE,
    summary_id: str = "",
) -> None:
    """A queued outbox row and its envelope, kept apart so that its changes of state rewrite
    a small row, not the envelope's pages (schema migration 11)."""
    row = await tx.execute(
        "INSERT INTO outbox(message_id, share_id, recipient, digest, state, next_attempt_at_ms, created_at_ms, "
        "kind, summary_id) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?)",
        (message_id, share_id, recipient, digest, tx.now_ms, tx.now_ms, kind, summary_id),
    )
    await tx.execute("INSERT INTO outbox_bodies(seq, envelope) VALUES (?, ?)", (row.lastrowid, envelope))


@dataclass(frozen=True)
class Sealed:
    recipient: str
    outgoing: Outgoing


class Messenger:
    def __init__(
        self,
        node_id: str,
        keys: MessageKeys,
        trust: TrustedDirectory,
        clock: Clock,
        delivery: DeliverySettings,
        on_queued: Callable[[list[Queued]], None] | None = None,
    ) -> None:
        self.node_id = node_id
        self.keys = keys
        self.trust = trust
        self.clock = clock
        self.delivery = delivery
        self.on_queued = on_queued  # told of queued messages once they are committed (the outbox)
        self.signer = BatchSigner(MESSAGE_LABEL)  # concurrent messages to one recipient share a signature
        self.content_keys = ContentKeys()  # and messages to one recipient key share a sealed content key

    async def seal_each(
        self,
        recipients: Iterable[str],
        kind: envelope_pb2.MessageKind.ValueType,
        tokens: Sequence[bytes],
        share_id: str,
        fill: Callable[[str], Fill],
        actor: summary_pb2.Practitioner,
        in_reply_to: str = "",
    ) -> list[Sealed]:
        """One sealed envelope per recipient; `fill(recipient)` writes that recipient's content."""
        now = self.clock.now_ms()
        directory = self.trust.current(now)
        signer = signing_generation(self.keys, directory, self.node_id, now)
        drafts = []
        for recipient in recipients:
            message_id = uuid7(now)
            body_fill = fill(recipient)

            def content(body: envelope_pb2.MessageBody, body_fill: Fill = body_fill) -> None:
                body.in_reply_to = in_reply_to
                body.sent_by.CopyFrom(actor)
                body_fill(body)

            drafts.append(
                draft(
                    sender_node=self.node_id,
                    recipient_node=recipient,
                    recipient_key=directory.sealing_key(recipient, now),
                    suite=directory.directory.suite,
                    message_id=message_id,
                    link_tokens=tokens,
                    kind=kind,
                    created_at_ms=now,
                    share_id=share_id,
                    content=content,
                    ttl_ms=self.delivery.undeliverable_after_ms,
                )
            )
        waiting = [self.signer.sign(signer, d.routing.recipient_node, d.body, d.hybrid) for d in drafts]
        signatures = [await signature for signature in waiting]  # a signature already made costs no yield
        return [
            Sealed(d.routing.recipient_node, seal_signed(d, s, self.content_keys))
            for d, s in zip(drafts, signatures, strict=True)
        ]

    async def queue(
        self,
        tx: Tx,
        sealed: Sequence[Sealed],
        share_id: str,
        actor: summary_pb2.Practitioner,
        summary_id: str = "",
    ) -> list[node_api_pb2.DeliveryStatus]:
        """Outbox rows and their audit entries, in the caller's transaction."""
        statuses = []
        for item in sealed:
            routing = item.outgoing.routing
            await add_to_outbox(
                tx,
                routing.message_id,
                share_id,
                item.recipient,
                item.outgoing.envelope.SerializeToString(),
                item.outgoing.digest,
                kind=routing.kind,
                summary_id=summary_id,
            )
            await tx.audit(
                "message.queued",
                actor,
                tokens=routing.link_tokens,
                summary_id=summary_id,
                message_id=routing.message_id,
                counterpart=item.recipient,
                detail={"share_id": share_id, "kind": kind_name(routing.kind)},
            )
            statuses.append(
                node_api_pb2.DeliveryStatus(node_id=item.recipient, message_id=routing.message_id, state="queued")
            )
        if self.on_queued is not None:
            handed = [(s.outgoing.routing.message_id, s.recipient, s.outgoing.envelope) for s in sealed]
            on_queued = self.on_queued
            tx.on_commit(lambda: on_queued(handed))
        return statuses
