"""The bare transport baseline: a grpc.aio bidi-stream relay between three processes,
no crypto and no storage, shaped like Linkage's own path so the ratio compares work,
not topology.

As with the gateway, both ends dial the relay: the client opens a `Send` stream
(messages up, acknowledgements down) and the sink a `Receive` stream (messages
down, acknowledgements up). The relay hands frames between per-stream queues as
the gateway does. Messages are raw bytes (identity serialisers) of the size of
a Linkage envelope; the sink acknowledges each with its 8-byte sequence number.
With `tls`, both hops use mTLS 1.3 with the federation's own certificates.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from bench.cpu import CpuMeter
from bench.load import OneMessage, closed_loop, paced
from bench.results import Result, summarise
from linkage.transport import TlsFiles

SERVICE = "linkage.bench.Relay"
SEND = f"/{SERVICE}/Send"
RECEIVE = f"/{SERVICE}/Receive"
READY_TIMEOUT_S = 30


def _identity(data: bytes) -> bytes:
    return data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Endpoint:
    """Where the relay listens and, for mTLS, whose certificates each party uses."""

    port: int
    relay_tls: TlsFiles | None = None
    client_tls: TlsFiles | None = None
    sink_tls: TlsFiles | None = None


def _channel(endpoint: Endpoint, tls: TlsFiles | None) -> grpc.aio.Channel:
    address = f"127.0.0.1:{endpoint.port}"
    if tls is None:
        return grpc.aio.insecure_channel(address)
    options = [("grpc.ssl_target_name_override", "gateway")]
    return grpc.aio.secure_channel(address, tls.channel_credentials(), options=options)


class _Relay:
    """Two queues, one per direction, as the gateway keeps one per connected node."""

    def __init__(self) -> None:
        self.to_sink: asyncio.Queue[bytes] = asyncio.Queue()
        self.to_client: asyncio.Queue[bytes] = asyncio.Queue()

    @staticmethod
    def _pump(requests: AsyncIterator[bytes], into: asyncio.Queue[bytes]) -> asyncio.Task[None]:
        async def pump() -> None:
            async for frame in requests:
                into.put_nowait(frame)

        return asyncio.create_task(pump())

    async def send(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        reader = self._pump(requests, self.to_sink)
        try:
            while True:
                yield await self.to_client.get()
        finally:
            reader.cancel()

    async def receive(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        reader = self._pump(requests, self.to_client)
        try:
            while True:
                yield await self.to_sink.get()
        finally:
            reader.cancel()


async def _serve_relay(endpoint: Endpoint, ready: Any) -> None:
    relay = _Relay()
    server = grpc.aio.server()
    handlers = {
        "Send": grpc.stream_stream_rpc_method_handler(relay.send, _identity, _identity),
        "Receive": grpc.stream_stream_rpc_method_handler(relay.receive, _identity, _identity),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    address = f"127.0.0.1:{endpoint.port}"
    if endpoint.relay_tls is None:
        server.add_insecure_port(address)
    else:
        server.add_secure_port(address, endpoint.relay_tls.server_credentials())
    await server.start()
    ready.set()
    await server.wait_for_termination()


def run_relay(endpoint: Endpoint, ready: Any) -> None:
    asyncio.run(_serve_relay(endpoint, ready))


async def _sink(endpoint: Endpoint, ready: Any) -> None:
    async with _channel(endpoint, endpoint.sink_tls) as channel:
        await asyncio.wait_for(channel.channel_ready(), READY_TIMEOUT_S)
        call = channel.stream_stream(RECEIVE, request_serializer=_identity, response_deserializer=_identity)()
        await call.wait_for_connection()
        ready.set()
        async for message in call:
            if message:
                await call.write(message[:8])  # the acknowledgement carries the sequence number


def run_sink(endpoint: Endpoint, ready: Any) -> None:
    asyncio.run(_sink(endpoint, ready))


class BareRelay:
    """The relay and the sink as processes (spawned, never forked, with gRPC); the client here."""

    def __init__(self, endpoint: Endpoint, size: int) -> None:
        self.endpoint = endpoint
        self.size = size
        self._processes: list[Any] = []

    def __enter__(self) -> BareRelay:
        context = multiprocessing.get_context("spawn")
        for target in (run_relay, run_sink):
            ready = context.Event()
            process = context.Process(target=target, args=(self.endpoint, ready), daemon=True)
            process.start()
            self._processes.append(process)
            if not ready.wait(READY_TIMEOUT_S):
                raise RuntimeError(f"bare relay: {target.__name__} did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        for process in reversed(self._processes):
            process.terminate()
            process.join(10)

    def pids(self) -> dict[str, int]:
        relay, sink = self._processes
        return {"client": os.getpid(), "relay": relay.pid, "sink": sink.pid}

    async def _run(self, schedule: Callable[[OneMessage], Awaitable[list[float]]]) -> Result:
        payload = os.urandom(self.size)
        waiting: dict[int, asyncio.Future[None]] = {}
        async with _channel(self.endpoint, self.endpoint.client_tls) as channel:
            call = channel.stream_stream(SEND, request_serializer=_identity, response_deserializer=_identity)()
            sequence = iter(range(1 << 62))
            writing = asyncio.Lock()

            async def acks() -> None:
                async for ack in call:
                    waiting.pop(int.from_bytes(ack, "big")).set_result(None)

            async def one() -> float:
                seq = next(sequence)
                done = waiting[seq] = asyncio.get_running_loop().create_future()
                started = time.perf_counter()
                async with writing:  # one write at a time on a call, as the node's link does
                    await call.write(seq.to_bytes(8, "big") + payload[8:])
                await done
                return time.perf_counter() - started

            reader = asyncio.create_task(acks())
            await one()  # the first message opens both streams end to end
            meter = CpuMeter(self.pids())
            meter.start()
            started = time.perf_counter()
            latencies = await schedule(one)
            elapsed = time.perf_counter() - started
            result = summarise(latencies, elapsed, meter)
            reader.cancel()
            call.cancel()
        return result

    async def closed_loop(self, count: int, window: int) -> Result:
        return await self._run(lambda one: closed_loop(one, count, window))

    async def paced(self, rate: float, seconds: float) -> Result:
        return await self._run(lambda one: paced(one, rate, seconds))
