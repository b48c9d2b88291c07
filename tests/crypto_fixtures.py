"""In-memory federation material for the envelope and directory unit tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from linkage.batchsign import sign_batch
from linkage.contentkeys import ContentKeys
from linkage.directory import DirectoryView, sign_directory, verify_directory
from linkage.envelope import MESSAGE_LABEL, RECEIPT_LABEL, Outgoing, draft, seal_signed, signed_receipt
from linkage.keys import MessageKeys, raw_public
from linkage.v1 import directory_pb2, envelope_pb2, summary_pb2

NOW = 1_767_225_600_000
FED = "unit.linkage.example"
TOKENS = [bytes([7]) * 32, bytes([9]) * 32]
AGENCY_TYPE = "SCHOOL"  # every node's in the directory these tests hold


def synthetic_summary(
    headline: str = "synthetic", summary_id: str = "s-1", origin: str = "a", agency_type: str = AGENCY_TYPE
) -> summary_pb2.RiskSummary:
    """A summary with what its recipient needs to act on it (linkage.content), as node
    `origin`, of `agency_type`, sends it."""
    return summary_pb2.RiskSummary(
        summary_id=summary_id,
        originating_node=origin,
        agency_type=agency_type,
        headline=headline,
        decision=summary_pb2.ShareDecision(outcome=summary_pb2.DECISION_OUTCOME_SHARED),
    )


def seal(*, keys: MessageKeys, agency_type: str = AGENCY_TYPE, **fields: Any) -> Outgoing:
    """Draft, sign and seal one message on its own, as a node does a lone message
    (`linkage.envelope.draft` names the fields); a summary share carries a synthetic summary
    of the sender, an agency of `agency_type`, unless given one."""
    if fields.get("kind") == envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE and "content" not in fields:
        fields.setdefault("summary", synthetic_summary(origin=fields["sender_node"], agency_type=agency_type))
    message = draft(**fields)
    (signature,) = sign_batch(keys, MESSAGE_LABEL, [message.body], message.hybrid)
    return seal_signed(message, signature, ContentKeys())


def sign_receipt(keys: MessageKeys, body: envelope_pb2.ReceiptBody) -> envelope_pb2.Receipt:
    """A receipt signed on its own."""
    data = body.SerializeToString()
    (signature,) = sign_batch(keys, RECEIPT_LABEL, [data])
    return signed_receipt(data, signature)


@dataclass
class Keyring:
    directory_key: ed25519.Ed25519PrivateKey
    keys: dict[str, MessageKeys]
    view: DirectoryView

    def seal(
        self,
        sender: str,
        recipient: str,
        summary: summary_pb2.RiskSummary | None = None,
        created_at_ms: int = NOW,
        message_id: str = "01a20105-405a-7c0b-bc94-8ec599dbf70a",
        kind: envelope_pb2.MessageKind.ValueType = envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE,
        content: Callable[[envelope_pb2.MessageBody], None] | None = None,
        share_id: str = "share-1",
    ) -> Outgoing:
        """A message from `sender` to `recipient`: a summary share, or whatever `content` writes."""
        carried: dict[str, Any] = (
            {"content": content} if content else {"summary": summary or synthetic_summary(origin=sender)}
        )
        return seal(
            keys=self.keys[sender],
            sender_node=sender,
            recipient_node=recipient,
            recipient_key=self.view.sealing_key(recipient, created_at_ms),
            suite=directory_pb2.HPKE_SUITE_X25519_SHA256_AES128GCM,
            message_id=message_id,
            link_tokens=TOKENS,
            kind=kind,
            created_at_ms=created_at_ms,
            share_id=share_id,
            **carried,
        )


def node_entry(
    node_id: str, keys: MessageKeys, status: int = directory_pb2.NODE_STATUS_ACTIVE
) -> directory_pb2.NodeEntry:
    return directory_pb2.NodeEntry(
        node_id=node_id,
        agency_name=node_id.upper(),
        agency_type=AGENCY_TYPE,
        status=status,  # type: ignore[arg-type]
        tls_cert_sha256=bytes(32),
        keys=[
            directory_pb2.NodeKey(
                key_id=keys.key_id,
                signing_public_key=raw_public(keys.signing),
                hpke_public_key=raw_public(keys.hpke),
                not_before_ms=NOW - 86_400_000,
                not_after_ms=NOW + 86_400_000,
            )
        ],
    )


def make_keyring(nodes: tuple[str, ...] = ("a", "b", "c"), version: int = 1) -> Keyring:
    directory_key = ed25519.Ed25519PrivateKey.generate()
    keys = {n: MessageKeys.generate(f"{n}-k1") for n in nodes}
    directory = directory_pb2.Directory(
        federation_id=FED,
        version=version,
        issued_at_ms=NOW,
        expires_at_ms=NOW + 7 * 86_400_000,
        suite=directory_pb2.HPKE_SUITE_X25519_SHA256_AES128GCM,
        nodes=[node_entry(n, k) for n, k in keys.items()],
    )
    view = verify_directory(sign_directory(directory, directory_key), directory_key.public_key(), FED, NOW)
    return Keyring(directory_key=directory_key, keys=keys, view=view)
