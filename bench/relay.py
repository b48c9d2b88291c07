"""The bare transport baseline of issue 9: a grpc.aio bidi-stream relay between three
processes (client -> relay -> sink), no crypto and no storage. Linkage's end-to-end
figures are to be printed as ratios against this, measured in the same run.

Messages are raw bytes (identity serialisers), 2 KB by default; the client keeps a
window of messages in flight and the sink acknowledges each back along the relay.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

METHOD_RELAY = "/linkage.bench.Relay/Stream"
METHOD_SINK = "/linkage.bench.Sink/Stream"


def _identity(data: bytes) -> bytes:
    return data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _sink_stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for message in requests:
        yield message[:8]  # the acknowledgement carries the sequence number


async def _serve(port: int, method: str, handler: Any) -> None:
    server = grpc.aio.server()
    service, name = method.strip("/").split("/")
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                service, {name: grpc.stream_stream_rpc_method_handler(handler, _identity, _identity)}
            ),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def run_sink(port: int) -> None:
    asyncio.run(_serve(port, METHOD_SINK, _sink_stream))


def run_relay(port: int, sink_port: int) -> None:
    async def relay(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{sink_port}")
        call = channel.stream_stream(METHOD_SINK, request_serializer=_identity, response_deserializer=_identity)()

        async def forward() -> None:
            async for message in requests:
                await call.write(message)
            await call.done_writing()

        task = asyncio.create_task(forward())
        async for ack in call:
            yield ack
        await task
        await channel.close()

    asyncio.run(_serve(port, METHOD_RELAY, relay))


async def _wait_ready(port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), 20)


async def drive(port: int, count: int, size: int, window: int) -> dict[str, float]:
    """Send `count` messages through the relay with `window` in flight; throughput and latency."""
    payload = os.urandom(size)
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    credit = asyncio.Semaphore(window)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(METHOD_RELAY, request_serializer=_identity, response_deserializer=_identity)()

        async def writer() -> None:
            for seq in range(count):
                await credit.acquire()
                sent_at[seq] = time.perf_counter()
                await call.write(seq.to_bytes(8, "big") + payload[8:])
            await call.done_writing()

        started = time.perf_counter()
        task = asyncio.create_task(writer())
        async for ack in call:
            latencies.append(time.perf_counter() - sent_at.pop(int.from_bytes(ack, "big")))
            credit.release()
        await task
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "messages": len(latencies),
        "per_second": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


def measure(count: int = 20_000, size: int = 2048, window: int = 64) -> dict[str, float]:
    """Start sink and relay as separate processes (spawn, never fork, with gRPC), drive, stop them."""
    context = multiprocessing.get_context("spawn")
    sink_port, relay_port = free_port(), free_port()
    sink = context.Process(target=run_sink, args=(sink_port,), daemon=True)
    relay = context.Process(target=run_relay, args=(relay_port, sink_port), daemon=True)
    sink.start()
    relay.start()
    try:
        asyncio.run(_wait_ready(sink_port))
        asyncio.run(_wait_ready(relay_port))
        return asyncio.run(drive(relay_port, count, size, window))
    finally:
        for process in (relay, sink):
            process.terminate()
            process.join(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--window", type=int, default=64)
    args = parser.parse_args()
    json.dump(measure(args.messages, args.size, args.window), sys.stdout, indent=2)
    print()
