"""The Gateway gRPC service: subscriptions, recipient resolution, and the
per-node stream that relays envelopes and receipts it cannot read."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator

import grpc
from google.protobuf.message import DecodeError

from gateway.authz import Authoriser, Denied, abort
from gateway.metalog import MetaLog
from gateway.metrics import GatewayMetrics
from gateway.ratelimit import RateLimits
from gateway.sessions import Session, Sessions
from gateway.subscriptions import SubscriptionIndex
from gateway.witness import Refused, Witness
from linkage import logs
from linkage.auditlog import open_checkpoint
from linkage.content import ABOUT_NO_FAMILY
from linkage.directory import DirectoryView
from linkage.envelope import parse_routing
from linkage.frames import BatchError, unbatch
from linkage.ids import is_node_id, is_uuid7, recordable
from linkage.merkle import HASH_SIZE, MAX_CONSISTENCY_PROOF
from linkage.reasons import Reason, Rejected
from linkage.refusals import bounded
from linkage.tokens import MAX_TOKENS_PER_CALL, MAX_TOKENS_PER_MESSAGE, TOKEN_LEN
from linkage.transport import DIRECTORY_VERSION_KEY, Peer
from linkage.v1 import audit_pb2, directory_pb2, envelope_pb2, gateway_pb2, gateway_pb2_grpc
from linkage.writability import Writability, log_failure, unwritable

log = logs.get("gateway")
Context = grpc.aio.ServicerContext[object, object]
# While the gateway's store cannot be written, a sender holds back everything about this long
# (the node's own cap on a BUSY hold is 10 s); the metadata log tries its flush each second.
UNWRITABLE_RETRY_MS = 5_000
UNKNOWN_CALLER = "?"  # a refused call's node, when it could not be told who was calling


@contextlib.contextmanager
def _store_writes() -> Iterator[None]:
    """The gateway's store refused a write for want of a writable disk: nothing of the call
    stands (the transaction rolled back), and the calling node can only try again later,
    so UNAVAILABLE (RESOURCE_EXHAUSTED would say the node asked for too much)."""
    try:
        yield
    except Exception as exc:
        if (error := unwritable(exc)) is None:
            raise  # a defect: the node sees UNKNOWN
        raise Denied(
            grpc.StatusCode.UNAVAILABLE,
            f"the gateway cannot write its store ({error}): nothing of this call was recorded; "
            "its operator must free space or fix its disk; try again later",
        ) from None


def _held_directory(context: Context) -> int | None:
    """The directory version a connecting node says it holds (None: it did not say)."""
    said = [v for k, v in context.invocation_metadata() or () if k == DIRECTORY_VERSION_KEY]
    if not said:
        return None
    value = said[0]
    if len(said) > 1 or not isinstance(value, str) or not (value.isascii() and value.isdigit()) or len(value) > 20:
        raise Denied(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{DIRECTORY_VERSION_KEY} must be given once, as the whole number of the directory version held",
        )
    return int(value)


def _check_tokens(tokens: list[bytes], limit: int) -> None:
    if not tokens:
        raise Denied(grpc.StatusCode.INVALID_ARGUMENT, "link_tokens is empty; give at least one token")
    if len(tokens) > limit:
        raise Denied(grpc.StatusCode.INVALID_ARGUMENT, f"too many link tokens ({len(tokens)} > {limit})")
    if any(len(t) != TOKEN_LEN for t in tokens):
        raise Denied(grpc.StatusCode.INVALID_ARGUMENT, f"every link token must be {TOKEN_LEN} bytes")


class GatewayService(gateway_pb2_grpc.GatewayServicer):
    def __init__(
        self,
        authz: Authoriser,
        index: SubscriptionIndex,
        sessions: Sessions,
        limits: RateLimits,
        witness: Witness,
        metalog: MetaLog,
        control: RateLimits,
        resolves: RateLimits,
        metrics: GatewayMetrics,
        writability: Writability,
    ) -> None:
        self.authz = authz
        self.index = index
        self.sessions = sessions
        self.limits = limits
        self.witness = witness
        self.metalog = metalog
        self.control = control
        self.resolves = resolves
        self.metrics = metrics
        self.writability = writability

    def _control_call(self, context: Context, claimed_node: str, what: str) -> str:
        """Authorise a control-plane call and charge it to the node's rate limit."""
        node_id = self.authz.claimed(context, claimed_node)
        self._charge(node_id, what)
        return node_id

    def _charge(self, node_id: str, what: str) -> None:
        if not (self.resolves if what == "resolve" else self.control).allow(node_id):
            self.metalog.record("rate_limited", node_id, outcome=what)
            raise Denied(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many {what} calls from this node; slow down and retry",
            )

    def _note(
        self,
        event: str,
        node: str,
        *,
        warning: bool = False,
        routine: bool = False,
        counterpart: str = "",
        message_id: str = "",
        outcome: str = "",
        **detail: object,
    ) -> None:
        """One gateway event: an operational log line and a metadata-log entry (no personal data in either).

        `routine` events happen per message; they are always in the metadata log and the
        metrics, and in the operational log only at debug level. An id a node sent that is
        not of the form the federation gives (a UUIDv7 message id, a node id) is left out and
        flagged: no member writes what it likes, or as much as it likes, into either log.
        That includes `node`, which a refused call gives as it claimed it, unchecked."""
        message_id, counterpart, flags = recordable(message_id, counterpart)
        if node and node != UNKNOWN_CALLER and not is_node_id(node):
            node, flags = "", {**flags, "node_malformed": True}
        detail = {**detail, **flags} if flags else detail
        (log.warning if warning else log.debug if routine else log.info)(
            event, node=node, counterpart=counterpart, message_id=message_id, outcome=outcome, **detail
        )
        self.metalog.record(event, node, counterpart, message_id, outcome, **detail)
        self.metrics.observe(event, outcome)

    def _own_tokens(self, node_id: str, requested: Iterable[bytes], refusal: str) -> list[bytes]:
        """Valid tokens the node is itself subscribed to, or Denied: only an agency involved with
        a family may learn who else is (no enumeration of others)."""
        tokens = list(requested)
        _check_tokens(tokens, MAX_TOKENS_PER_MESSAGE)
        if not all(self.index.is_subscribed(node_id, t) for t in tokens):
            raise Denied(grpc.StatusCode.PERMISSION_DENIED, refusal)
        return tokens

    def _involvement(
        self, tokens: list[bytes], caller: str, directory: DirectoryView
    ) -> list[gateway_pb2.TokenInvolvement]:
        """For each token, the active nodes other than the caller subscribed to it."""
        return [
            gateway_pb2.TokenInvolvement(
                link_token=token,
                node_ids=sorted(
                    n
                    for n in self.index.subscribers([token]) - {caller}
                    if (e := directory.nodes.get(n)) and e.status == directory_pb2.NODE_STATUS_ACTIVE
                ),
            )
            for token in tokens
        ]

    async def Subscribe(self, request: gateway_pb2.SubscribeRequest, context: Context) -> gateway_pb2.SubscribeResponse:
        node_id, added = await self._change_links(request, context, "subscribe", self.index.add)
        self._note("subscribe", node=node_id, added=len(added), total=self.index.count(node_id))
        return gateway_pb2.SubscribeResponse(added=len(added), total=self.index.count(node_id))

    async def Unsubscribe(
        self, request: gateway_pb2.UnsubscribeRequest, context: Context
    ) -> gateway_pb2.UnsubscribeResponse:
        node_id, removed = await self._change_links(request, context, "unsubscribe", self.index.remove)
        self._note("unsubscribe", node=node_id, removed=len(removed), total=self.index.count(node_id))
        return gateway_pb2.UnsubscribeResponse(removed=len(removed), total=self.index.count(node_id))

    async def _change_links(
        self,
        request: gateway_pb2.SubscribeRequest | gateway_pb2.UnsubscribeRequest,
        context: Context,
        what: str,
        change: Callable[[str, list[bytes]], Awaitable[list[bytes]]],
    ) -> tuple[str, list[bytes]]:
        """Subscribe or unsubscribe the calling node; the tokens whose subscription changed."""
        try:
            node_id = self._control_call(context, request.node_id, what)
            tokens = list(request.link_tokens)
            _check_tokens(tokens, MAX_TOKENS_PER_CALL)
            with _store_writes():
                changed = await change(node_id, tokens)
        except Denied as denied:
            self._note(f"{what}.refused", node=request.node_id, outcome=denied.code.name, warning=True)
            await abort(context, denied)
        self._links_changed(node_id, changed)
        return node_id, changed

    async def ListSubscriptions(
        self, request: gateway_pb2.ListSubscriptionsRequest, context: Context
    ) -> gateway_pb2.ListSubscriptionsResponse:
        try:
            node_id = self.authz.claimed(context, request.node_id)
            if request.limit:  # a page is charged to the node's rate limit; the total alone costs nothing
                self._charge(node_id, "list")
            if request.limit > MAX_TOKENS_PER_CALL:
                raise Denied(grpc.StatusCode.INVALID_ARGUMENT, f"limit is at most {MAX_TOKENS_PER_CALL}")
            if request.after_token and len(request.after_token) != TOKEN_LEN:
                raise Denied(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"after_token must be empty or a {TOKEN_LEN}-byte link token (the last of the previous page)",
                )
        except Denied as denied:
            self._note("subscriptions.list_refused", node=request.node_id, outcome=denied.code.name, warning=True)
            await abort(context, denied)
        total = self.index.count(node_id)
        listing = total and request.limit  # limit 0 asks the total only, and no page is read for none
        tokens = await self.index.held_by(node_id, request.after_token, request.limit) if listing else []
        self._note("subscriptions.listed", node=node_id, tokens=len(tokens), total=total)
        return gateway_pb2.ListSubscriptionsResponse(link_tokens=tokens, total=total)

    def _links_changed(self, changer: str, tokens: list[bytes]) -> None:
        """Tell every connected node that may hold an answer about `tokens` (their
        subscribers, and the node that changed them) that it no longer holds."""
        told: dict[str, list[bytes]] = {}
        for token in tokens:
            for node_id in self.index.subscribers([token]) | {changer}:
                told.setdefault(node_id, []).append(token)
        for node_id, mine in told.items():
            session = self.sessions.get(node_id)
            if session is not None:
                self.sessions.notify(session, gateway_pb2.LinksChanged(link_tokens=mine))
        if told:
            self._note("links_changed", node=changer, routine=True, tokens=len(tokens), told=len(told))

    async def ResolveRecipients(
        self, request: gateway_pb2.ResolveRecipientsRequest, context: Context
    ) -> gateway_pb2.ResolveRecipientsResponse:
        try:
            return self._resolve(self.authz.claimed(context, request.node_id), request)
        except Denied as denied:
            self._note("resolve.refused", node=request.node_id, outcome=denied.code.name, warning=True)
            await abort(context, denied)

    def _resolve(
        self, node_id: str, request: gateway_pb2.ResolveRecipientsRequest
    ) -> gateway_pb2.ResolveRecipientsResponse:
        """Which active nodes other than `node_id` (authenticated) are linked to the tokens, or Denied."""
        self._charge(node_id, "resolve")
        tokens = self._own_tokens(
            node_id, request.link_tokens, "subscribe to every link token before resolving its recipients"
        )
        by_token = self._involvement(tokens, node_id, self.authz.directory())
        active = sorted({n for t in by_token for n in t.node_ids})
        self._note("resolve", node=node_id, routine=True, tokens=len(tokens), recipients=len(active))
        return gateway_pb2.ResolveRecipientsResponse(node_ids=active, by_token=by_token)

    def _resolve_on_stream(self, session: Session, request: gateway_pb2.ResolveRecipientsRequest) -> None:
        """A look-up sent on the stream: answered on it, refusals included (the stream goes on)."""
        try:
            if request.node_id != session.node_id:
                raise Denied(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"authenticated as {session.node_id!r} but the request names {request.node_id!r}",
                )
            answer = self._resolve(session.node_id, request)
        except Denied as denied:
            self._note("resolve.refused", node=session.node_id, outcome=denied.code.name, warning=True)
            answer = gateway_pb2.ResolveRecipientsResponse(code=denied.code.value[0], message=denied.message)
        answer.request_id = request.request_id
        answer.changes_pushed = not answer.code  # see _links_changed
        if not session.push(gateway_pb2.GatewayFrame(resolved=answer), answer=True):
            self._note("resolve.busy", node=session.node_id, outcome="queue_full", warning=True)

    async def DiscoverInvolvement(
        self, request: gateway_pb2.DiscoverInvolvementRequest, context: Context
    ) -> gateway_pb2.DiscoverInvolvementResponse:
        try:
            node_id = self._control_call(context, request.node_id, "discovery")
            tokens = self._own_tokens(
                node_id, request.link_tokens, "discovery is answered only about people this node is itself linked to"
            )
            directory = self.authz.directory()
        except Denied as denied:
            self._note("discover.refused", node=request.node_id, outcome=denied.code.name, warning=True)
            await abort(context, denied)
        involvement = self._involvement(tokens, node_id, directory)
        self._note(
            "discover", node=node_id, tokens=len(tokens), agencies=len({n for i in involvement for n in i.node_ids})
        )
        return gateway_pb2.DiscoverInvolvementResponse(involvement=involvement)

    async def LodgeCheckpoint(
        self, request: gateway_pb2.LodgeCheckpointRequest, context: Context
    ) -> gateway_pb2.LodgeCheckpointResponse:
        node = UNKNOWN_CALLER
        try:
            node = self.authz.node_of(context)
            checkpoint = self._checkpoint_of(node, request)
            try:
                with _store_writes():
                    lodged = await self.witness.lodge(
                        checkpoint, request.checkpoint, request.from_tree_size, list(request.consistency_proof)
                    )
            except Refused as refused:
                raise Denied(grpc.StatusCode.FAILED_PRECONDITION, str(refused)) from None
        except Denied as denied:
            self._note("checkpoint.refused", node, outcome=denied.code.name, warning=True)
            await abort(context, denied)
        self._note(
            "checkpoint.lodged",
            node,
            warning=lodged.diverged,
            outcome="diverged" if lodged.diverged else "ok",
            size=lodged.tree_size,
            held=request.from_tree_size,
        )
        return gateway_pb2.LodgeCheckpointResponse(
            tree_size=lodged.tree_size, diverged=lodged.diverged, cosignature=lodged.cosignature
        )

    def _checkpoint_of(self, node_id: str, request: gateway_pb2.LodgeCheckpointRequest) -> audit_pb2.Checkpoint:
        """The checkpoint, signed by the calling node's key, with a proof of the right shape; or Denied."""
        try:
            checkpoint = open_checkpoint(request.checkpoint, self.authz.directory())
        except Rejected as exc:
            raise Denied(grpc.StatusCode.INVALID_ARGUMENT, f"checkpoint refused: {exc}") from None
        if checkpoint.node_id != node_id:
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"authenticated as {node_id!r}, checkpoint is for {checkpoint.node_id!r}",
            )
        if checkpoint.tree_size == 0:
            raise Denied(grpc.StatusCode.INVALID_ARGUMENT, "a checkpoint of an empty log has nothing to witness")
        proof = request.consistency_proof
        if len(proof) > MAX_CONSISTENCY_PROOF or any(len(h) != HASH_SIZE for h in proof):
            raise Denied(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"a consistency proof is at most {MAX_CONSISTENCY_PROOF} hashes of {HASH_SIZE} bytes each",
            )
        if proof and request.from_tree_size == 0:
            raise Denied(grpc.StatusCode.INVALID_ARGUMENT, "a first checkpoint (from_tree_size 0) takes no proof")
        return checkpoint

    async def GetCheckpoints(
        self, request: gateway_pb2.GetCheckpointsRequest, context: Context
    ) -> gateway_pb2.WitnessedCheckpoints:
        try:
            node_id = self.authz.claimed(context, request.node_id)
        except Denied as denied:
            await abort(context, denied)
        held = await self.witness.held(node_id)
        return gateway_pb2.WitnessedCheckpoints(
            latest=held.latest, breaks=held.breaks, latest_cosignature=held.cosignature
        )

    async def FetchDirectory(
        self, request: gateway_pb2.FetchDirectoryRequest, context: Context
    ) -> directory_pb2.SignedDirectory:
        try:
            self.authz.node_of(context)
            directory = self.authz.directory()
        except Denied as denied:
            await abort(context, denied)
        if request.have_version == directory.version:  # checked every few minutes by every node: mostly this
            return directory_pb2.SignedDirectory()
        return directory.signed

    async def Connect(
        self, request_iterator: AsyncIterator[gateway_pb2.NodeFrame], context: Context
    ) -> AsyncIterator[gateway_pb2.GatewayFrame]:
        try:
            node_id, peer = self.authz.peer_of(context)
        except Denied as denied:
            self._note("connect.refused", UNKNOWN_CALLER, outcome=denied.code.name, warning=True)
            await abort(context, denied)
        try:
            held = _held_directory(context)
        except Denied as denied:
            self._note("connect.refused", node_id, outcome=denied.code.name, warning=True)
            await abort(context, denied)
        session = self.sessions.open(node_id, peer.fingerprint)
        if held is not None and held < (version := self.authz.trust.version):
            # One taken since the node fetched it before dialling was told only to streams open then.
            self.sessions.notify(session, gateway_pb2.LinksChanged(directory_version=version))
        self._note("connect", node=node_id, tls=peer.tls_version, connected=len(self.sessions))
        if self.authz.replaced(node_id, peer.fingerprint):
            # Accepted until it lapses, but the federation renewed it: the renewed file is not
            # in place at that node, and a CA retirement would cut it off.
            self._note("tls.peer_on_replaced_certificate", node=node_id, warning=True)
        reader = asyncio.create_task(self._read(session, peer, request_iterator, context))
        try:
            async for frame in session.frames():
                yield frame
            if session.error is not None:
                code, message = session.error
                await context.abort(code, bounded(message))
        finally:
            reader.cancel()
            self.sessions.end(session)
            self._note("disconnect", node=node_id, connected=len(self.sessions))

    async def _read(
        self, session: Session, peer: Peer, frames: AsyncIterator[gateway_pb2.NodeFrame], context: Context
    ) -> None:
        try:
            async for frame in frames:
                # The stream's certificate was parsed once at connect; the directory is
                # consulted per frame, so a revoked node stops here.
                self.authz.recheck(session.node_id, peer)
                try:
                    members = unbatch(frame)
                except BatchError as exc:
                    raise Denied(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
                for one in members:
                    which = one.WhichOneof("frame")
                    if which == "send":
                        self._relay_envelope(session, one.send)
                    elif which == "receipt":
                        self._relay_receipt(session, one.receipt)
                    elif which == "resolve":
                        self._resolve_on_stream(session, one.resolve)
        except Denied as denied:
            self._note("stream.refused", node=session.node_id, outcome=denied.code.name, warning=True)
            session.close((denied.code, denied.message))
            return
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError:
            pass  # the client went away; the writer ends at the sentinel
        except grpc.aio.AbortError:
            pass  # the writer ended the call with a status (replaced, revoked, too far behind): as meant
        except Exception as exc:  # a defect: left open, the stream would go unread while its node sends into it
            log_failure(log, "stream.failed", exc, node=session.node_id)
            session.close((grpc.StatusCode.INTERNAL, "the gateway failed handling this stream; reconnect"))
            return
        session.close()

    def _ack(
        self,
        session: Session,
        message_id: str,
        recipient: str,
        status: gateway_pb2.SendStatus.ValueType,
        reason: str = "",
        busy_scope: gateway_pb2.BusyScope.ValueType = gateway_pb2.BUSY_SCOPE_UNSPECIFIED,
        retry_after_ms: int = 0,
    ) -> None:
        ack = gateway_pb2.SendAck(
            message_id=message_id,
            recipient_node=recipient,
            status=status,
            reason=reason,
            busy_scope=busy_scope,
            retry_after_ms=retry_after_ms,
        )
        self.sessions.push_or_end(session, gateway_pb2.GatewayFrame(send_ack=ack))  # the sender waits for it

    def _busy(
        self,
        session: Session,
        message_id: str,
        recipient: str,
        reason: str,
        scope: gateway_pb2.BusyScope.ValueType,
        retry_after_ms: int = 0,
        counterpart: str = "",
    ) -> None:
        """BUSY: the sender holds back what `scope` covers, and sends it again later."""
        self._note(
            "envelope.busy",
            node=session.node_id,
            message_id=message_id,
            counterpart=counterpart,
            outcome=reason,
            warning=True,
        )
        self._ack(session, message_id, recipient, gateway_pb2.SEND_STATUS_BUSY, reason, scope, retry_after_ms)

    def _relay_envelope(self, session: Session, envelope: envelope_pb2.Envelope) -> None:
        sender = session.node_id
        try:
            routing = parse_routing(envelope)
        except Rejected as exc:
            self._note("envelope.rejected", node=sender, outcome=exc.reason.value, warning=True)
            self._ack(session, "", "", gateway_pb2.SEND_STATUS_REJECTED, exc.reason.value)
            return
        message_id, recipient = routing.message_id, routing.recipient_node
        if not routing.sender_node:
            self._note("envelope.rejected", sender, message_id=message_id, outcome=Reason.MALFORMED.value, warning=True)
            self._ack(session, message_id, recipient, gateway_pb2.SEND_STATUS_REJECTED, Reason.MALFORMED.value)
            return
        if routing.sender_node != sender:
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"authenticated as {sender!r} but the envelope names sender {routing.sender_node!r}",
            )
        if self.writability.error is not None:  # it could not record the relay: fail closed, lose nothing
            busy = gateway_pb2.BUSY_SCOPE_GATEWAY
            self._busy(session, message_id, recipient, "gateway_unwritable", busy, UNWRITABLE_RETRY_MS, recipient)
            return
        if not self.limits.allow(sender):
            busy, retry_after_ms = gateway_pb2.BUSY_SCOPE_SENDER, self.limits.retry_after_ms(sender)
            self._busy(session, message_id, recipient, "sender_rate_limited", busy, retry_after_ms)
            return
        reason = self._refusal(routing, sender)
        if reason is not None:
            self._note("envelope.rejected", node=sender, message_id=message_id, outcome=reason.value, warning=True)
            self._ack(session, message_id, recipient, gateway_pb2.SEND_STATUS_REJECTED, reason.value)
            return
        target = self.sessions.get(recipient)
        if target is None or target.ending:  # one ending would never write it
            self.sessions.wait_for(recipient, sender)
            self._note("envelope.recipient_offline", node=sender, message_id=message_id, counterpart=recipient)
            self._ack(session, message_id, recipient, gateway_pb2.SEND_STATUS_RECIPIENT_OFFLINE)
            return
        if not target.push(gateway_pb2.GatewayFrame(deliver=envelope)):
            busy = gateway_pb2.BUSY_SCOPE_RECIPIENT
            self._busy(session, message_id, recipient, "recipient_busy", busy, counterpart=recipient)
            return
        target.senders.add(sender)
        self._note(
            "envelope.forwarded",
            node=sender,
            routine=True,
            message_id=message_id,
            counterpart=recipient,
            size=len(envelope.routing) + len(envelope.sealed_key) + len(envelope.ciphertext),
        )
        self._ack(session, message_id, recipient, gateway_pb2.SEND_STATUS_FORWARDED)

    def _refusal(self, routing: envelope_pb2.RoutingHeader, sender: str) -> Reason | None:
        """Why an authenticated sender's envelope will never be routed, if it won't."""
        if not is_uuid7(routing.message_id):
            return Reason.MALFORMED
        tokens = list(routing.link_tokens)
        if routing.kind in ABOUT_NO_FAMILY:
            if tokens:
                return Reason.MALFORMED
        elif not tokens or len(tokens) > MAX_TOKENS_PER_MESSAGE or any(len(t) != TOKEN_LEN for t in tokens):
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
            self._note("receipt.malformed", node=session.node_id, warning=True)
            return
        if body.recipient_node != session.node_id:
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"authenticated as {session.node_id!r} but the receipt is signed for {body.recipient_node!r}",
            )
        target = self.sessions.get(body.sender_node)
        # A receipt answers the sender's own send. One for an offline sender (or one far
        # behind, or whose stream is ending) is dropped: the sender sends again as it
        # reconnects, and the recipient receipts it again.
        relayed = (
            target is not None
            and not target.ending
            and target.push(gateway_pb2.GatewayFrame(receipt=receipt), answer=True)
        )
        self._note(
            "receipt.relayed" if relayed else "receipt.dropped",
            node=session.node_id,
            routine=relayed,
            message_id=body.message_id,
            counterpart=body.sender_node,
        )
