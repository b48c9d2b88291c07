"""Sending any kind of message to other agencies: seal one envelope per recipient
and queue it in the outbox, inside the caller's transaction, with its audit entry.
Summaries, notices, requests and replies all travel this one way.

A recipient this node cannot seal to (revoked, gone from its directory, or with no
key valid now) does not stop the others: its message is recorded as undeliverable,
with the reason, in the same transaction, and the caller is told so."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from linkage import logs
from linkage.batchsign import BatchSigner, signed_all
from linkage.clock import Clock
from linkage.config import DeliverySettings
from linkage.contentkeys import ContentKeys
from linkage.directory import TrustedDirectory
from linkage.envelope import (
    MAX_BODY_BYTES,
    MESSAGE_LABEL,
    Draft,
    Outgoing,
    draft,
    parse_routing,
    seal_signed,
    signing_generation,
)
from linkage.ids import Ids
from linkage.keys import MessageKeys
from linkage.reasons import Rejected
from linkage.tokens import split_tokens
from linkage.v1 import envelope_pb2, node_api_pb2, summary_pb2
from node.errors import invalid
from node.store import FetchOne, Tx

log = logs.get("node.messaging")
Fill = Callable[[envelope_pb2.MessageBody], None]
Queued = tuple[str, str, envelope_pb2.Envelope]  # message id, recipient, envelope


# The kinds whose messages are versions of a summary.
SUMMARY_KINDS = (
    envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE,
    envelope_pb2.MESSAGE_KIND_RISK_CHANGE_NOTICE,
    envelope_pb2.MESSAGE_KIND_HISTORICAL_UPDATE,
    envelope_pb2.MESSAGE_KIND_CORRECTION,
)
# ...and with them, an information response that provides one.
CARRIES_SUMMARY = (*SUMMARY_KINDS, envelope_pb2.MESSAGE_KIND_INFORMATION_RESPONSE)


async def tokens_sent(fetchone: FetchOne, where: str, params: tuple[object, ...]) -> list[bytes] | None:
    """The link tokens the oldest of this node's messages that `where` picks (in the outbox,
    `o`) went with: from its body, if retention kept it, or else as a copy given back after a
    restore recorded them (node/returned_copies.py); None if neither is left."""
    row = await fetchone(
        f"SELECT b.envelope FROM outbox o JOIN outbox_bodies b ON b.seq = o.seq WHERE {where} "
        "ORDER BY o.message_id LIMIT 1",
        params,
    )
    if row is not None:
        return list(parse_routing(envelope_pb2.Envelope.FromString(row[0])).link_tokens)
    row = await fetchone(
        f"SELECT r.tokens FROM outbox o JOIN outbox_recovered r ON r.seq = o.seq WHERE {where} "
        "ORDER BY o.message_id LIMIT 1",
        params,
    )
    return None if row is None else split_tokens(row[0])


def kind_name(kind: int) -> str:
    return envelope_pb2.MessageKind.Name(kind).removeprefix("MESSAGE_KIND_").lower()  # type: ignore[arg-type]


async def add_to_outbox(
    tx: Tx,
    message_id: str,
    share_id: str,
    recipient: str,
    envelope: bytes | None,
    digest: bytes,
    kind: int = envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE,
    summary_id: str = "",
    unsent_reason: str = "",
) -> None:
    """An outbox row and its envelope, kept apart so that its changes of state rewrite a
    small row, not the envelope's pages (schema migration 11). A message never sealed
    (`envelope` None) is undeliverable from the start, for `unsent_reason`, with no body."""
    row = await tx.execute(
        "INSERT INTO outbox(message_id, share_id, recipient, digest, state, next_attempt_at_ms, created_at_ms, "
        "kind, summary_id, reason, body_kept) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            message_id,
            share_id,
            recipient,
            digest,
            "queued" if envelope is not None else "undeliverable",
            tx.now_ms,
            tx.now_ms,
            kind,
            summary_id,
            unsent_reason,
            envelope is not None,
        ),
    )
    if envelope is not None:
        await tx.execute("INSERT INTO outbox_bodies(seq, envelope) VALUES (?, ?)", (row.lastrowid, envelope))


@dataclass(frozen=True)
class Sealed:
    recipient: str
    outgoing: Outgoing

    @property
    def message_id(self) -> str:
        return self.outgoing.routing.message_id


@dataclass(frozen=True)
class Unreachable:
    """A recipient that could not be sealed to, and why, in words for the practitioner."""

    recipient: str
    message_id: str
    kind: envelope_pb2.MessageKind.ValueType
    link_tokens: tuple[bytes, ...]
    reason: str


class Messenger:
    def __init__(
        self,
        node_id: str,
        keys: MessageKeys,
        trust: TrustedDirectory,
        clock: Clock,
        delivery: DeliverySettings,
        on_queued: Callable[[list[Queued]], None] | None = None,
        on_unsent: Callable[[int], None] | None = None,
    ) -> None:
        self.node_id = node_id
        self.keys = keys
        self.trust = trust
        self.clock = clock
        self.delivery = delivery
        self.on_queued = on_queued  # told of queued messages once they are committed (the outbox)
        self.on_unsent = on_unsent  # told how many it recorded undeliverable, never sent
        self.signer = BatchSigner(MESSAGE_LABEL)  # concurrent messages to one recipient share a signature
        self.content_keys = ContentKeys()  # and messages to one recipient key share a sealed content key
        self.ids = Ids()  # every id the node makes, in the order it makes them (seeded from its store)

    async def seal_each(
        self,
        recipients: Iterable[str],
        kind: envelope_pb2.MessageKind.ValueType,
        tokens: Sequence[bytes],
        share_id: str,
        fill: Callable[[str], Fill],
        actor: summary_pb2.Practitioner,
        in_reply_to: str = "",
    ) -> list[Sealed | Unreachable]:
        """One sealed envelope per recipient, in order; `fill(recipient)` writes that
        recipient's content. A recipient without a key to seal to is Unreachable."""
        now = self.clock.now_ms()
        directory = self.trust.current(now)
        signer = signing_generation(self.keys, directory, self.node_id, now)
        outcomes: list[Draft | Unreachable] = []
        for recipient in recipients:
            message_id = self.ids.make(now)
            try:
                recipient_key = directory.sealing_key(recipient, now)
            except Rejected as exc:
                log.warning("recipient.unreachable", counterpart=recipient, reason=exc.reason.value)
                reason = f"not sent: {exc.detail}; if this agency must still know, tell it another way"
                outcomes.append(Unreachable(recipient, message_id, kind, tuple(tokens), reason))
                continue
            body_fill = fill(recipient)

            def content(body: envelope_pb2.MessageBody, body_fill: Fill = body_fill) -> None:
                body.in_reply_to = in_reply_to
                body.sent_by.CopyFrom(actor)
                body_fill(body)

            message = draft(
                sender_node=self.node_id,
                recipient_node=recipient,
                recipient_key=recipient_key,
                suite=directory.directory.suite,
                message_id=message_id,
                link_tokens=tokens,
                kind=kind,
                created_at_ms=now,
                share_id=share_id,
                content=content,
                ttl_ms=self.delivery.undeliverable_after_ms,
            )
            if len(message.body) > MAX_BODY_BYTES:
                raise invalid(
                    f"this {kind_name(kind).replace('_', ' ')} would be {len(message.body):,} bytes, more than one "
                    f"message may carry ({MAX_BODY_BYTES:,}): shorten its text or send less in one message; "
                    "nothing was sent"
                )
            outcomes.append(message)
        drafts = [d for d in outcomes if isinstance(d, Draft)]
        signatures = iter(
            await signed_all([self.signer.sign(signer, d.routing.recipient_node, d.body, d.hybrid) for d in drafts])
        )
        return [
            Sealed(d.routing.recipient_node, seal_signed(d, next(signatures), self.content_keys))
            if isinstance(d, Draft)
            else d
            for d in outcomes
        ]

    async def queue(
        self,
        tx: Tx,
        sealed: Sequence[Sealed | Unreachable],
        share_id: str,
        actor: summary_pb2.Practitioner,
        summary_id: str = "",
    ) -> list[node_api_pb2.DeliveryStatus]:
        """Outbox rows and their audit entries, in the caller's transaction: queued, or
        undeliverable at once for a recipient that could not be sealed to."""
        statuses = []
        for item in sealed:
            tokens: Sequence[bytes]
            if isinstance(item, Sealed):
                routing = item.outgoing.routing
                message_id, kind, tokens, reason = routing.message_id, routing.kind, routing.link_tokens, ""
                envelope, digest = item.outgoing.envelope.SerializeToString(), item.outgoing.digest
                detail = {"share_id": share_id, "kind": kind_name(kind)}
            else:
                message_id, kind, tokens, reason = item.message_id, item.kind, item.link_tokens, item.reason
                envelope, digest = None, b""
                detail = {"share_id": share_id, "kind": kind_name(kind), "reason": reason, "by": "sender"}
            await add_to_outbox(tx, message_id, share_id, item.recipient, envelope, digest, kind, summary_id, reason)
            await tx.audit(
                "message.undeliverable" if reason else "message.queued",
                actor,
                tokens=tokens,
                summary_id=summary_id,
                message_id=message_id,
                counterpart=item.recipient,
                detail=detail,
            )
            state = "undeliverable" if reason else "queued"
            statuses.append(
                node_api_pb2.DeliveryStatus(node_id=item.recipient, message_id=message_id, state=state, reason=reason)
            )
        handed = [
            (s.outgoing.routing.message_id, s.recipient, s.outgoing.envelope) for s in sealed if isinstance(s, Sealed)
        ]
        if handed and self.on_queued is not None:
            on_queued = self.on_queued
            tx.on_commit(lambda: on_queued(handed))
        unsent = len(sealed) - len(handed)
        if unsent and self.on_unsent is not None:
            on_unsent = self.on_unsent
            tx.on_commit(lambda: on_unsent(unsent))
        return statuses
