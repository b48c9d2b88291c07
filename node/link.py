"""The node's connection to the gateway: one long-lived mTLS stream for
envelopes and receipts, unary calls for subscriptions and look-ups, and
reconnection with backoff when the gateway goes away."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

import grpc

from linkage import logs
from linkage.backoff import backoff_ms
from linkage.frames import BatchError, fits, unbatch
from linkage.ids import is_peer
from linkage.refusals import bounded
from linkage.tokens import MAX_TOKENS_PER_CALL, TOKEN_LEN
from linkage.transport import DIRECTORY_MAX_BYTES, DIRECTORY_VERSION_KEY, TlsMaterial, secure_channel
from linkage.v1 import audit_pb2, directory_pb2, gateway_pb2, gateway_pb2_grpc
from linkage.writability import log_failure
from node.resolver import Answers

UNARY_TIMEOUT_S = 10.0
# A page of the gateway's subscriptions may read past every other node's (10 M: seconds).
LIST_TIMEOUT_S = 120.0
RECONNECT_BASE_MS = 200
# How long a stream ended for a renewed certificate may take to close; then it is cancelled.
STREAM_END_GRACE_S = 10.0
RECONNECT_CAP_MS = 30_000
# A stream that stayed open this long was taken by the gateway: the next failure waits the
# base again. One ended sooner counts as a failed dial, so a gateway that ends every stream at
# once (a protocol error, this node's identity connected elsewhere) is not dialled five times
# a second for ever, but ever more slowly, up to the cap. So does a stream cut short by the
# gateway going away (UNAVAILABLE: a restart, a crash, the network), unless the gateway had
# sent something on it: it served this node, and is dialled again from the base.
STREAM_PROVEN_S = 10.0
# Frames being handled at once. Each handler starts in arrival order and reaches the
# store's FIFO lock before it first yields, so effects keep the stream's order while
# their transactions share group commits. A run of frames takes its places all at once,
# so the window must hold the largest batch (one larger is refused as a protocol error).
FRAME_WINDOW = 256
# Frames handed over together when they arrive together, to be stored in one transaction,
# not one each: answers to this node's own sends (for the outbox), and deliveries.
ANSWERS = frozenset({"send_ack", "receipt"})
DELIVERIES = frozenset({"deliver"})

log = logs.get("node.link")
Call = grpc.aio.StreamStreamCall[gateway_pb2.NodeFrame, gateway_pb2.GatewayFrame]


class Subscribed(NamedTuple):
    added: int  # tokens the gateway did not hold before
    total: int  # tokens it holds this node subscribed to now


def _chunks(tokens: list[bytes]) -> list[list[bytes]]:
    return [tokens[i : i + MAX_TOKENS_PER_CALL] for i in range(0, len(tokens), MAX_TOKENS_PER_CALL)]


def runs(frames: Iterable[gateway_pb2.GatewayFrame]) -> Iterator[list[gateway_pb2.GatewayFrame]]:
    """Frames in stream order, to be handled so: each run of answers to our sends together,
    each run of deliveries together, every other frame alone."""
    run: list[gateway_pb2.GatewayFrame] = []
    together: frozenset[str] = frozenset()  # the kinds the current run may take
    for frame in frames:
        which = frame.WhichOneof("frame")
        if which in together:
            run.append(frame)
            continue
        if run:
            yield run
        run, together = [frame], next((kinds for kinds in (ANSWERS, DELIVERIES) if which in kinds), frozenset())
    if run:
        yield run


class NotConnected(Exception):
    """The stream to the gateway is down; the caller keeps the work for later."""


class GatewayRefused(Exception):
    """The gateway answered a request on the stream with a refusal (or did not answer)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _status(number: int) -> grpc.StatusCode:
    return next((c for c in grpc.StatusCode if c.value[0] == number), grpc.StatusCode.UNKNOWN)


class GatewayLink:
    def __init__(
        self,
        node_id: str,
        address: str,
        server_name: str,
        tls: TlsMaterial,
        on_connect: Callable[[], Awaitable[None]],
        on_frames: Callable[[list[gateway_pb2.GatewayFrame]], Awaitable[None]],
        on_state: Callable[[bool], Awaitable[None]],
    ) -> None:
        self.node_id = node_id
        self._address, self._server_name = address, server_name
        self._dial = functools.partial(secure_channel, address, tls, server_name)
        self._channel = self._dial()
        self._retired: list[grpc.aio.Channel] = []  # dialled with a certificate since renewed
        self._closing: set[asyncio.Task[None]] = set()
        self._end_when_written: Call | None = None  # a stream to end once what is queued is written
        self._redial_now = False
        self._served = False  # the gateway sent something on the stream open now
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)
        self._on_connect = on_connect
        self._on_frames = on_frames
        self._on_state = on_state
        self._call: Call | None = None
        self._outgoing: deque[tuple[gateway_pb2.NodeFrame, asyncio.Future[None]]] = deque()
        self._writing = False
        self._asked: dict[int, asyncio.Future[gateway_pb2.ResolveRecipientsResponse]] = {}
        self._request_ids = itertools.count(1)
        self._handlers: set[asyncio.Task[None]] = set()
        self._window = asyncio.Semaphore(FRAME_WINDOW)
        self.connected = asyncio.Event()
        # Told, in stream order, when look-up answers stop holding (None: all of them).
        self.on_links_changed: Callable[[Sequence[bytes] | None], None] = lambda tokens: None
        # Told the version of a directory the gateway took, as it takes it, or as the stream
        # opens if newer than `held_directory()`, the version this node said it holds.
        self.on_directory: Callable[[int], None] = lambda version: None
        self.held_directory: Callable[[], int] = lambda: 0

    async def run(self) -> None:
        """Keep a stream open until cancelled."""
        try:
            await self._run()
        finally:
            for task in self._handlers:
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, frames: list[gateway_pb2.GatewayFrame]) -> None:
        try:
            await self._on_frames(frames)
        except Exception as exc:
            log_failure(log, "gateway.frame_failed", exc, kind=frames[0].WhichOneof("frame"), frames=len(frames))
        finally:
            for _ in frames:
                self._window.release()

    async def _dispatch(self, frames: list[gateway_pb2.GatewayFrame]) -> None:
        for _ in frames:
            await self._window.acquire()  # back-pressure: stop reading while the window is full
        task = asyncio.create_task(self._handle(frames))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _run(self) -> None:
        attempt = 0  # failures in a row: dials refused, and streams ended before they proved themselves
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._on_connect()
                call = self._stub.Connect(metadata=((DIRECTORY_VERSION_KEY, str(self.held_directory())),))
                self._call = call
                self.connected.set()
                await self._on_state(True)
                log.info("gateway.connected", attempt=attempt)
                opened, self._served = loop.time(), False
                try:
                    await self._read(call)
                except grpc.aio.AioRpcError as exc:
                    if self._served and exc.code() == grpc.StatusCode.UNAVAILABLE:
                        attempt = 0  # see STREAM_PROVEN_S
                    raise
                finally:
                    if loop.time() - opened >= STREAM_PROVEN_S:
                        attempt = 0
                log.info("gateway.stream_ended", renewed=self._redial_now)
            except grpc.aio.AioRpcError as exc:
                # What gRPC says of it names the cause an operator acts on (a refused certificate, say).
                problem = bounded(exc.details() or "", 300)
                log.warning("gateway.unavailable", code=exc.code().name, attempt=attempt, problem=problem)
            except BatchError as exc:  # the stream is ended from this side, and opened again
                log.error("gateway.protocol_error", problem=str(exc))
                call.cancel()
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]  # the link is stopping
                    raise
                log.warning("gateway.stream_cancelled", after_s=STREAM_END_GRACE_S)  # see use_tls
            finally:
                self.connected.clear()
                self._call = None
                self.on_links_changed(None)  # notices on the next stream will not cover these
                for future in self._asked.values():  # their answers went with the stream
                    if not future.done():
                        future.set_exception(NotConnected())
                await self._on_state(False)
                self._close_retired()
            if self._redial_now:  # ended for a renewed certificate: at once, on the new channel
                self._redial_now = False
                continue
            await asyncio.sleep(backoff_ms(attempt, RECONNECT_BASE_MS, RECONNECT_CAP_MS) / 1000)
            attempt += 1

    async def _read(self, call: Call) -> None:
        """Hand what the gateway sends on to be handled, in stream order, until the stream ends."""
        while isinstance(received := await call.read(), gateway_pb2.GatewayFrame):
            self._served = True
            for run in runs(unbatch(received)):
                # Look-up answers and notices are taken as they arrive, so a notice
                # always finds the look-up answers given before it.
                which = run[0].WhichOneof("frame")
                if which == "resolved":
                    self._answered(run[0].resolved)
                elif which == "links_changed":
                    change = run[0].links_changed
                    self.on_links_changed(list(change.link_tokens) or None)
                    if change.directory_version:
                        self.on_directory(change.directory_version)
                else:
                    await self._dispatch(run)

    async def use_tls(self, tls: TlsMaterial) -> None:
        """Dial with a renewed certificate from now on. Calls go on a new channel at once; the
        stream is ended from this side once what is queued on it is written, so the gateway
        sends what it holds for this node and closes it, and it is opened again at once on
        the new channel (what was sent and not yet answered goes again, as after any
        reconnection). The old channel is closed when its stream has ended, its unary calls
        given time to finish."""
        self._dial = functools.partial(secure_channel, self._address, tls, self._server_name)
        self._retired.append(self._channel)
        self._channel = self._dial()
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)
        call, self._call = self._call, None  # sends from now: NotConnected, kept for the new stream
        if call is None:
            self._close_retired()
            return
        self._redial_now = True
        self.connected.clear()  # the stream is going: the outbox keeps what it has for the next
        # A gateway that did not close its side in time: cancelled (read() then raises
        # CancelledError, though nobody cancelled the link).
        asyncio.get_running_loop().call_later(STREAM_END_GRACE_S, call.cancel)
        if self._writing:
            self._end_when_written = call
        else:
            await _end_writing(call)

    def _close_retired(self) -> None:
        for channel in self._retired:
            task = asyncio.create_task(channel.close(grace=UNARY_TIMEOUT_S))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        self._retired.clear()

    async def send(self, frame: gateway_pb2.NodeFrame) -> None:
        """Write a frame; returns once it is written."""
        await self.send_all([frame])

    async def send_all(self, frames: list[gateway_pb2.NodeFrame]) -> None:
        """Write frames in order; returns once all are written, or raises NotConnected. Frames
        sent while a write is in progress are written together, in batches, by the link's
        writer task: a sender cancelled while it waits (say, in a call its case system gave
        up on) cancels no write, and so not the stream (gRPC cancels a whole stream whose
        write is cancelled)."""
        call = self._call
        if call is None:
            raise NotConnected()
        loop = asyncio.get_running_loop()
        mine = [(frame, loop.create_future()) for frame in frames]
        self._outgoing += mine
        if not self._writing:
            self._writing = True
            writer = loop.create_task(self._write_queued(call))
            self._handlers.add(writer)  # cancelled, as they are, only as the link stops
            writer.add_done_callback(self._handlers.discard)
        written = [future for _, future in mine]
        if pending := [future for future in written if not future.done()]:  # else no turn of the loop
            await asyncio.wait(pending)
        if any(future.exception() is not None for future in written):
            raise NotConnected()

    async def _write_queued(self, call: Call) -> None:
        try:
            while self._outgoing:
                await self._write_batch(call)
        finally:
            self._writing = False
            if (ending := self._end_when_written) is not None:
                self._end_when_written = None
                await _end_writing(ending)

    async def _write_batch(self, call: Call) -> None:
        batch = [self._outgoing.popleft()]
        size = batch[0][0].ByteSize()
        while self._outgoing and fits(size, len(batch), self._outgoing[0][0]):
            batch.append(self._outgoing.popleft())
            size += batch[-1][0].ByteSize()
        frames = [f for f, _ in batch]
        message = frames[0] if len(frames) == 1 else gateway_pb2.NodeFrame(batch=gateway_pb2.NodeFrames(frames=frames))
        try:
            await call.write(message)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError, asyncio.CancelledError) as exc:
            for _, written in (*batch, *self._outgoing):  # the stream is gone for all of them
                if not written.done():
                    written.set_exception(NotConnected())
                    written.exception()  # retrieved here too: a sender that gave up need not warn
            self._outgoing.clear()
            if isinstance(exc, asyncio.CancelledError):  # the node is stopping
                raise
            return
        for _, written in batch:
            if not written.done():
                written.set_result(None)

    async def subscribe(self, tokens: Iterable[bytes]) -> Subscribed:
        added, total = 0, None
        for chunk in _chunks(list(tokens)):
            request = gateway_pb2.SubscribeRequest(node_id=self.node_id, link_tokens=chunk)
            answer = await self._stub.Subscribe(request, timeout=UNARY_TIMEOUT_S)
            added, total = added + answer.added, answer.total
        if total is None:  # nothing to subscribe: ask the total alone
            total = (await self._list_subscriptions(b"", 0)).total
        return Subscribed(added, total)

    async def subscriptions(self) -> list[bytes]:
        """Every token the gateway holds this node subscribed to (see ListSubscriptions), in
        token order. What could be no token is left out, and a page that does not go on from
        the one before ends the listing, each said: a gateway in error, or not what it should
        be, must not keep the node listing the same page for ever."""
        held: list[bytes] = []
        left_out = 0
        while True:
            after = held[-1] if held else b""
            page = list((await self._list_subscriptions(after, MAX_TOKENS_PER_CALL)).link_tokens)
            tokens = [t for t in page if len(t) == TOKEN_LEN]
            left_out += len(page) - len(tokens)
            stuck = not tokens and len(page) >= MAX_TOKENS_PER_CALL  # a full page, and no step on
            if stuck or any(this <= before for before, this in zip([after, *tokens], tokens, strict=False)):
                log.warning("gateway.answer_malformed", left_out=left_out + len(tokens), problem="pages out of order")
                return held
            held += tokens
            if len(page) < MAX_TOKENS_PER_CALL:
                break
        if left_out:
            log.warning("gateway.answer_malformed", left_out=left_out, problem="not a token")
        return held

    async def _list_subscriptions(self, after: bytes, limit: int) -> gateway_pb2.ListSubscriptionsResponse:
        request = gateway_pb2.ListSubscriptionsRequest(node_id=self.node_id, after_token=after, limit=limit)
        return await self._stub.ListSubscriptions(request, timeout=LIST_TIMEOUT_S)

    async def unsubscribe(self, tokens: Iterable[bytes]) -> int:
        removed = 0
        tokens = list(tokens)
        self.on_links_changed(tokens)  # the gateway refuses look-ups about them from now on
        for chunk in _chunks(tokens):
            request = gateway_pb2.UnsubscribeRequest(node_id=self.node_id, link_tokens=chunk)
            removed += (await self._stub.Unsubscribe(request, timeout=UNARY_TIMEOUT_S)).removed
        return removed

    async def resolve(self, tokens: list[bytes]) -> Answers:
        """For each token, the other agencies linked to it: asked on the stream (a frame costs
        less than a call, travels batched, and its answer is kept until a notice says otherwise),
        or by a unary call while the stream is down."""
        request = gateway_pb2.ResolveRecipientsRequest(node_id=self.node_id, link_tokens=tokens)
        if self._call is None:
            response = await self._stub.ResolveRecipients(request, timeout=UNARY_TIMEOUT_S)
            pushed = False
        else:
            response = await self._ask(request)
            pushed = response.changes_pushed
        return Answers(self._linked(tokens, response.by_token), pushed)

    async def _ask(self, request: gateway_pb2.ResolveRecipientsRequest) -> gateway_pb2.ResolveRecipientsResponse:
        request.request_id = next(self._request_ids)
        answer: asyncio.Future[gateway_pb2.ResolveRecipientsResponse] = asyncio.get_running_loop().create_future()
        self._asked[request.request_id] = answer
        try:
            await self.send(gateway_pb2.NodeFrame(resolve=request))
            async with asyncio.timeout(UNARY_TIMEOUT_S):
                response = await answer
        except (NotConnected, TimeoutError):
            raise GatewayRefused(grpc.StatusCode.UNAVAILABLE, "no answer from the gateway") from None
        finally:
            del self._asked[request.request_id]
        if response.code:
            raise GatewayRefused(_status(response.code), response.message)
        return response

    def _answered(self, response: gateway_pb2.ResolveRecipientsResponse) -> None:
        answer = self._asked.get(response.request_id)
        if answer is not None and not answer.done():
            answer.set_result(response)

    async def discover(self, tokens: Iterable[bytes]) -> dict[bytes, list[str]]:
        """For each token, the other nodes linked to it (none for no tokens: nobody to ask about)."""
        if not (tokens := list(tokens)):
            return {}
        request = gateway_pb2.DiscoverInvolvementRequest(node_id=self.node_id, link_tokens=tokens)
        response = await self._stub.DiscoverInvolvement(request, timeout=UNARY_TIMEOUT_S)
        return self._linked(tokens, response.involvement)

    def _linked(
        self, asked: Iterable[bytes], answered: Iterable[gateway_pb2.TokenInvolvement]
    ) -> dict[bytes, list[str]]:
        """For each token asked about, the other agencies the gateway names, as far as they
        could be agencies: a node id in the form the federation gives, other than this node.
        Anything else is left out and said, so that a gateway that is not what it should be
        cannot have this node write what it likes into its outbox and audit log as a recipient."""
        wanted = set(asked)
        linked: dict[bytes, list[str]] = {}
        left_out = 0
        for entry in answered:
            nodes = [n for n in entry.node_ids if is_peer(n, self.node_id)]
            left_out += len(entry.node_ids) - len(nodes)
            if entry.link_token in wanted:
                linked.setdefault(entry.link_token, []).extend(nodes)
            else:
                left_out += len(nodes) or 1
        if left_out:
            log.warning("gateway.answer_malformed", left_out=left_out, problem="not an agency", tokens=len(wanted))
        return linked

    async def lodge_checkpoint(
        self, signed: audit_pb2.SignedCheckpoint, from_size: int, proof: list[bytes]
    ) -> gateway_pb2.LodgeCheckpointResponse:
        request = gateway_pb2.LodgeCheckpointRequest(
            checkpoint=signed, from_tree_size=from_size, consistency_proof=proof
        )
        return await self._stub.LodgeCheckpoint(request, timeout=UNARY_TIMEOUT_S)

    async def witnessed(self) -> gateway_pb2.WitnessedCheckpoints:
        """What the gateway holds of this node's audit log."""
        request = gateway_pb2.GetCheckpointsRequest(node_id=self.node_id)
        return await self._stub.GetCheckpoints(request, timeout=UNARY_TIMEOUT_S)

    async def fetch_directory(self, have_version: int) -> directory_pb2.SignedDirectory | None:
        """The gateway's directory, or None if it is the version held; on a channel of its own,
        since it may be larger than any frame the stream's channel accepts. (Asked for at each
        connection and every few minutes.)"""
        request = gateway_pb2.FetchDirectoryRequest(have_version=have_version)
        async with self._dial(max_receive=DIRECTORY_MAX_BYTES) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            signed = await stub.FetchDirectory(request, timeout=UNARY_TIMEOUT_S)
        return signed if signed.directory or not have_version else None

    async def close(self) -> None:
        self._close_retired()
        await asyncio.gather(*self._closing, return_exceptions=True)
        await self._channel.close()


async def _end_writing(call: Call) -> None:
    """Tell the gateway this side of a stream is done; nothing to do if it is gone already."""
    with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
        await call.done_writing()
