"""The Gateway gRPC service: subscriptions, recipient resolution, and the
per-node stream that relays envelopes and receipts it cannot read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import DecodeError

from gateway.authz import Authoriser, Denied, abort
from gateway.ratelimit import RateLimits
from gateway.sessions import Session, Sessions
from gateway.subscriptions import SubscriptionIndex
from linkage import logs
from linkage.envelope import parse_routing
from linkage.ids import is_uuid7
from linkage.reasons import Reason, Rejected
from linkage.tokens import MAX_TOKENS_PER_CALL, TOKEN_LEN
from linkage.v1 import directory_pb2, envelope_pb2, gateway_pb2, gateway_pb2_grpc

MAX_TOKENS_PER_MESSAGE = 64

log = logs.get("gateway")
Context = grpc.aio.ServicerContext[object, object]


def _check_tokens(tokens: list[bytes], limit: int) -> None:
    if not tokens:
        raise Denied(grpc.StatusCode.INVALID_ARGUMENT, "link_tokens is empty; give at least one token")
    if len(tokens) > limit:
        raise Denied(grpc.StatusCode.INVALID_ARGUMENT, f"too many link tokens ({len(tokens)} > {limit})")
    if any(len(t) != TOKEN_LEN for t in tokens):
        raise Denied(grpc.StatusCode.INVALID_ARGUMENT, f"every link token must be {TOKEN_LEN} bytes")


class GatewayService(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, authz: Authoriser, index: SubscriptionIndex, sessions: Sessions, limits: RateLimits) -> None:
        self.authz = authz
        self.index = index
        self.sessions = sessions
        self.limits = limits

    async def Subscribe(self, request: gateway_pb2.SubscribeRequest, context: Context) -> gateway_pb2.SubscribeResponse:
        try:
            node_id = self.authz.claimed(context, request.node_id)
            tokens = list(request.link_tokens)
            _check_tokens(tokens, MAX_TOKENS_PER_CALL)
        except Denied as denied:
            log.warning("subscribe.refused", node=request.node_id, code=denied.code.name)
            await abort(context, denied)
        added = await self.index.add(node_id, tokens)
        log.info("subscribe", node=node_id, added=added, total=self.index.count(node_id))
        return gateway_pb2.SubscribeResponse(added=added, total=self.index.count(node_id))

    async def Unsubscribe(
        self, request: gateway_pb2.UnsubscribeRequest, context: Context
    ) -> gateway_pb2.UnsubscribeResponse:
        try:
            node_id = self.authz.claimed(context, request.node_id)
            tokens = list(request.link_tokens)
            _check_tokens(tokens, MAX_TOKENS_PER_CALL)
        except Denied as denied:
            log.warning("unsubscribe.refused", node=request.node_id, code=denied.code.name)
            await abort(context, denied)
        removed = await self.index.remove(node_id, tokens)
        log.info("unsubscribe", node=node_id, removed=removed, total=self.index.count(node_id))
        return gateway_pb2.UnsubscribeResponse(removed=removed, total=self.index.count(node_id))

    async def ResolveRecipients(
        self, request: gateway_pb2.ResolveRecipientsRequest, context: Context
    ) -> gateway_pb2.ResolveRecipientsResponse:
        try:
            node_id = self.authz.claimed(context, request.node_id)
            tokens = list(request.link_tokens)
            _check_tokens(tokens, MAX_TOKENS_PER_MESSAGE)
            # Only a node involved with the family may learn who else is.
            if not all(self.index.is_subscribed(node_id, t) for t in tokens):
                raise Denied(
                    grpc.StatusCode.PERMISSION_DENIED,
                    "subscribe to every link token before resolving its recipients",
                )
            directory = self.authz.directory()
        except Denied as denied:
            log.warning("resolve.refused", node=request.node_id, code=denied.code.name)
            await abort(context, denied)
        found = self.index.subscribers(tokens) - {node_id}
        active = sorted(
            n for n in found if (e := directory.nodes.get(n)) and e.status == directory_pb2.NODE_STATUS_ACTIVE
        )
        log.info("resolve", node=node_id, tokens=len(tokens), recipients=len(active))
        return gateway_pb2.ResolveRecipientsResponse(node_ids=active)

    async def DiscoverInvolvement(
        self, request: gateway_pb2.DiscoverInvolvementRequest, context: Context
    ) -> gateway_pb2.DiscoverInvolvementResponse:
        try:
            node_id = self.authz.claimed(context, request.node_id)
            tokens = list(request.link_tokens)
            _check_tokens(tokens, MAX_TOKENS_PER_MESSAGE)
            # Only an agency involved with the family may learn who else is: a node
            # must be linked to every person it asks about (no enumeration of others).
            if not all(self.index.is_subscribed(node_id, t) for t in tokens):
                raise Denied(
                    grpc.StatusCode.PERMISSION_DENIED,
                    "discovery is answered only about people this node is itself linked to",
                )
            directory = self.authz.directory()
        except Denied as denied:
            log.warning("discover.refused", node=request.node_id, code=denied.code.name)
            await abort(context, denied)
        involvement = []
        for token in tokens:
            others = sorted(
                n
                for n in self.index.subscribers([token]) - {node_id}
                if (e := directory.nodes.get(n)) and e.status == directory_pb2.NODE_STATUS_ACTIVE
            )
            involvement.append(gateway_pb2.TokenInvolvement(link_token=token, node_ids=others))
        log.info(
            "discover", node=node_id, tokens=len(tokens), agencies=len({n for i in involvement for n in i.node_ids})
        )
        return gateway_pb2.DiscoverInvolvementResponse(involvement=involvement)

    async def FetchDirectory(
        self, request: gateway_pb2.FetchDirectoryRequest, context: Context
    ) -> directory_pb2.SignedDirectory:
        try:
            self.authz.node_of(context)
            directory = self.authz.directory()
        except Denied as denied:
            await abort(context, denied)
        return directory.signed

    async def Connect(
        self, request_iterator: AsyncIterator[gateway_pb2.NodeFrame], context: Context
    ) -> AsyncIterator[gateway_pb2.GatewayFrame]:
        try:
            node_id, peer = self.authz.peer_of(context)
        except Denied as denied:
            log.warning("connect.refused", code=denied.code.name)
            await abort(context, denied)
        session = self.sessions.open(node_id)
        log.info("connect", node=node_id, tls=peer.tls_version, connected=len(self.sessions))
        reader = asyncio.create_task(self._read(session, request_iterator, context))
        try:
            while (frame := await session.queue.get()) is not None:
                yield frame
            if session.error is not None:
                await context.abort(*session.error)
        finally:
            reader.cancel()
            self.sessions.end(session)
            log.info("disconnect", node=node_id, connected=len(self.sessions))

    async def _read(self, session: Session, frames: AsyncIterator[gateway_pb2.NodeFrame], context: Context) -> None:
        try:
            async for frame in frames:
                self.authz.node_of(context)  # per call: a revoked node stops here
                which = frame.WhichOneof("frame")
                if which == "send":
                    self._relay_envelope(session, frame.send)
                elif which == "receipt":
                    self._relay_receipt(session, frame.receipt)
        except Denied as denied:
            log.warning("stream.refused", node=session.node_id, code=denied.code.name)
            session.close((denied.code, denied.message))
            return
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError:
            pass  # the client went away; the writer ends at the sentinel
        session.close()

    def _ack(
        self,
        session: Session,
        message_id: str,
        recipient: str,
        status: gateway_pb2.SendStatus.ValueType,
        reason: str = "",
    ) -> None:
        ack = gateway_pb2.SendAck(
            message_id=message_id,
            recipient_node=recipient,
            status=status,
            reason=reason,
        )
        session.push(gateway_pb2.GatewayFrame(send_ack=ack))

    def _relay_envelope(self, session: Session, envelope: envelope_pb2.Envelope) -> None:
        sender = session.node_id
        try:
            routing = parse_routing(envelope)
        except Rejected as exc:
            log.warning("envelope.rejected", node=sender, reason=exc.reason.value)
            self._ack(session, "", "", gateway_pb2.SEND_STATUS_REJECTED, exc.reason.value)
            return
        message_id, recipient = routing.message_id, routing.recipient_node
        if routing.sender_node != sender:
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"authenticated as {sender!r} but the envelope names sender {routing.sender_node!r}",
            )
        if not self.limits.allow(sender):
            log.warning("envelope.busy", node=sender, message_id=message_id, reason="sender_rate_limited")
            self._ack(session, message_id, recipient, gateway_pb2.SEND_STATUS_BUSY, "sender_rate_limited")
            return
        reason = self._refusal(routing, sender)
        if reason is not None:
            log.warning("envelope.rejected", node=sender, message_id=message_id, reason=reason.value)
            self._ack(session, message_id, recipient, gateway_pb2.SEND_STATUS_REJECTED, reason.value)
            return
        target = self.sessions.get(recipient)
        if target is None:
            self.sessions.wait_for(recipient, sender)
            log.info("envelope.recipient_offline", node=sender, message_id=message_id, recipient=recipient)
            self._ack(session, message_id, recipient, gateway_pb2.SEND_STATUS_RECIPIENT_OFFLINE)
            return
        if not target.push(gateway_pb2.GatewayFrame(deliver=envelope)):
            log.warning("envelope.busy", node=sender, message_id=message_id, reason="recipient_busy")
            self._ack(session, message_id, recipient, gateway_pb2.SEND_STATUS_BUSY, "recipient_busy")
            return
        log.info(
            "envelope.forwarded",
            node=sender,
            message_id=message_id,
            recipient=recipient,
            size=len(envelope.routing) + len(envelope.ciphertext),
        )
        self._ack(session, message_id, recipient, gateway_pb2.SEND_STATUS_FORWARDED)

    def _refusal(self, routing: envelope_pb2.RoutingHeader, sender: str) -> Reason | None:
        """Why an authenticated sender's envelope will never be routed, if it won't."""
        if not is_uuid7(routing.message_id):
            return Reason.MALFORMED
        tokens = list(routing.link_tokens)
        if not tokens or len(tokens) > MAX_TOKENS_PER_MESSAGE or any(len(t) != TOKEN_LEN for t in tokens):
            return Reason.NO_TOKENS
        entry = self.authz.directory().nodes.get(routing.recipient_node)
        if entry is None or routing.recipient_node == sender:
            return Reason.UNKNOWN_RECIPIENT
        if entry.status != directory_pb2.NODE_STATUS_ACTIVE:
            return Reason.RECIPIENT_REVOKED
        return None

    def _relay_receipt(self, session: Session, receipt: envelope_pb2.Receipt) -> None:
        try:
            body = envelope_pb2.ReceiptBody.FromString(receipt.body)
        except DecodeError:
            log.warning("receipt.malformed", node=session.node_id)
            return
        if body.recipient_node != session.node_id:
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"authenticated as {session.node_id!r} but the receipt is signed for {body.recipient_node!r}",
            )
        target = self.sessions.get(body.sender_node)
        # A receipt for an offline sender is dropped: the sender re-sends the
        # unreceipted message later and the recipient's inbox receipts it again.
        relayed = target is not None and target.push(gateway_pb2.GatewayFrame(receipt=receipt))
        log.info(
            "receipt.relayed" if relayed else "receipt.dropped",
            node=session.node_id,
            message_id=body.message_id,
            sender=body.sender_node,
        )
