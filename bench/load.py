"""Load shapes shared by every cell: a closed loop with a window, and an open loop at a rate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

OneMessage = Callable[[], Awaitable[float]]  # sends one message; returns its round-trip time in seconds


async def closed_loop(one: Callable[[], Awaitable[float]], count: int, window: int) -> list[float]:
    """`count` calls of `one` with `window` of them in flight at any time."""
    latencies: list[float] = []
    remaining = iter(range(count))

    async def worker() -> None:
        for _ in remaining:
            latencies.append(await one())

    await asyncio.gather(*(worker() for _ in range(window)))
    return latencies


async def paced(one: Callable[[], Awaitable[float]], rate: float, seconds: float) -> list[float]:
    """An open loop at `rate` calls per second; each latency counts from its *scheduled*
    start, so a stall is not hidden by the sends it delayed (no coordinated omission)."""
    latencies: list[float] = []

    async def started_at(scheduled: float) -> None:
        lag = time.perf_counter() - scheduled
        latencies.append(lag + await one())

    # Each call is started when it is due, not all created up front: thousands of tasks made
    # at once would stall the loop for the first calls and count against whatever is measured.
    calls = []
    begin = time.perf_counter()
    for i in range(int(rate * seconds)):
        scheduled = begin + i / rate
        if (wait := scheduled - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        calls.append(asyncio.create_task(started_at(scheduled)))
    await asyncio.gather(*calls)
    return latencies
