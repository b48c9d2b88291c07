"""The node's connection to the gateway: one long-lived mTLS stream for
envelopes and receipts, unary calls for subscriptions and look-ups, and
reconnection with backoff when the gateway goes away."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

import grpc

from linkage import logs
from linkage.tokens import MAX_TOKENS_PER_CALL
from linkage.transport import TlsFiles, secure_channel
from linkage.v1 import audit_pb2, directory_pb2, gateway_pb2, gateway_pb2_grpc
from node.backoff import backoff_ms

UNARY_TIMEOUT_S = 10.0
RECONNECT_BASE_MS = 200
RECONNECT_CAP_MS = 30_000
# Frames handled at once. Each handler starts in arrival order and reaches the store's
# FIFO lock before it first yields, so effects keep the stream's order while their
# transactions share group commits.
FRAME_WINDOW = 256

log = logs.get("node.link")


def _chunks(tokens: list[bytes]) -> list[list[bytes]]:
    return [tokens[i : i + MAX_TOKENS_PER_CALL] for i in range(0, len(tokens), MAX_TOKENS_PER_CALL)]


class NotConnected(Exception):
    """The stream to the gateway is down; the caller keeps the work for later."""


class GatewayLink:
    def __init__(
        self,
        node_id: str,
        address: str,
        server_name: str,
        tls: TlsFiles,
        on_connect: Callable[[], Awaitable[None]],
        on_frame: Callable[[gateway_pb2.GatewayFrame], Awaitable[None]],
        on_state: Callable[[bool], Awaitable[None]],
    ) -> None:
        self.node_id = node_id
        self._channel = secure_channel(address, tls, server_name)
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)
        self._on_connect = on_connect
        self._on_frame = on_frame
        self._on_state = on_state
        self._call: grpc.aio.StreamStreamCall[gateway_pb2.NodeFrame, gateway_pb2.GatewayFrame] | None = None
        self._write_lock = asyncio.Lock()
        self._handlers: set[asyncio.Task[None]] = set()
        self._window = asyncio.Semaphore(FRAME_WINDOW)
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Keep a stream open until cancelled."""
        try:
            await self._run()
        finally:
            for task in self._handlers:
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, frame: gateway_pb2.GatewayFrame) -> None:
        try:
            await self._on_frame(frame)
        except Exception:
            log.exception("gateway.frame_failed", kind=frame.WhichOneof("frame"))
        finally:
            self._window.release()

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                await self._on_connect()
                call = self._stub.Connect()
                self._call = call
                self.connected.set()
                await self._on_state(True)
                log.info("gateway.connected", attempt=attempt)
                attempt = 0
                while isinstance(frame := await call.read(), gateway_pb2.GatewayFrame):
                    await self._window.acquire()  # back-pressure: stop reading while the window is full
                    task = asyncio.create_task(self._handle(frame))
                    self._handlers.add(task)
                    task.add_done_callback(self._handlers.discard)
                log.info("gateway.stream_ended")
            except grpc.aio.AioRpcError as exc:
                log.warning("gateway.unavailable", code=exc.code().name, attempt=attempt)
            finally:
                self.connected.clear()
                self._call = None
                await self._on_state(False)
            await asyncio.sleep(backoff_ms(attempt, RECONNECT_BASE_MS, RECONNECT_CAP_MS) / 1000)
            attempt += 1

    async def send(self, frame: gateway_pb2.NodeFrame) -> None:
        call = self._call
        if call is None:
            raise NotConnected()
        async with self._write_lock:
            try:
                await call.write(frame)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
                raise NotConnected() from exc

    async def subscribe(self, tokens: Iterable[bytes]) -> int:
        added = 0
        for chunk in _chunks(list(tokens)):
            request = gateway_pb2.SubscribeRequest(node_id=self.node_id, link_tokens=chunk)
            added += (await self._stub.Subscribe(request, timeout=UNARY_TIMEOUT_S)).added
        return added

    async def unsubscribe(self, tokens: Iterable[bytes]) -> int:
        removed = 0
        for chunk in _chunks(list(tokens)):
            request = gateway_pb2.UnsubscribeRequest(node_id=self.node_id, link_tokens=chunk)
            removed += (await self._stub.Unsubscribe(request, timeout=UNARY_TIMEOUT_S)).removed
        return removed

    async def resolve(self, tokens: list[bytes]) -> dict[bytes, list[str]]:
        """For each token, the other agencies linked to it."""
        request = gateway_pb2.ResolveRecipientsRequest(node_id=self.node_id, link_tokens=tokens)
        response = await self._stub.ResolveRecipients(request, timeout=UNARY_TIMEOUT_S)
        return {t.link_token: list(t.node_ids) for t in response.by_token}

    async def discover(self, tokens: Iterable[bytes]) -> dict[bytes, list[str]]:
        """For each token, the other nodes linked to it."""
        request = gateway_pb2.DiscoverInvolvementRequest(node_id=self.node_id, link_tokens=list(tokens))
        response = await self._stub.DiscoverInvolvement(request, timeout=UNARY_TIMEOUT_S)
        return {t.link_token: list(t.node_ids) for t in response.involvement}

    async def lodge_checkpoint(self, signed: audit_pb2.SignedCheckpoint) -> int:
        return (await self._stub.LodgeCheckpoint(signed, timeout=UNARY_TIMEOUT_S)).lodged

    async def checkpoints(self) -> list[audit_pb2.SignedCheckpoint]:
        request = gateway_pb2.GetCheckpointsRequest(node_id=self.node_id)
        return list((await self._stub.GetCheckpoints(request, timeout=UNARY_TIMEOUT_S)).checkpoints)

    async def fetch_directory(self, have_version: int) -> directory_pb2.SignedDirectory:
        request = gateway_pb2.FetchDirectoryRequest(have_version=have_version)
        return await self._stub.FetchDirectory(request, timeout=UNARY_TIMEOUT_S)

    async def close(self) -> None:
        await self._channel.close()
