"""Load shapes shared by every cell: a closed loop with a window, and an open loop at a rate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from bench.timer import Alarm

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
    start, so a stall is not hidden by the sends it delayed (no coordinated omission).
    Calls are started by a kernel timer (bench/timer.py), so that what is counted is the
    system's delay, not the loop timer's own lateness; a call that finds the loop busy
    still waits, and that counts."""
    loop = asyncio.get_running_loop()
    count = int(rate * seconds)
    latencies: list[float] = []
    calls: list[asyncio.Task[None]] = []
    all_started: asyncio.Future[None] = loop.create_future()

    async def started_at(scheduled: float) -> None:
        lag = time.perf_counter() - scheduled
        latencies.append(lag + await one())

    def start_what_is_due() -> None:
        now = time.perf_counter()
        while len(calls) < count and (scheduled := begin + len(calls) / rate) <= now:
            calls.append(loop.create_task(started_at(scheduled)))
        if len(calls) == count:
            all_started.set_result(None)  # and the alarm is not armed again
            return
        try:
            alarm.at(begin + len(calls) / rate)
        except OSError as exc:  # the timer could not be armed: fail the run rather than hang it
            all_started.set_exception(exc)

    alarm = Alarm(loop, start_what_is_due)
    begin = time.perf_counter()
    try:
        start_what_is_due()
        await all_started
        await asyncio.gather(*calls)
    finally:
        alarm.close()  # if cancelled, or a call failed: nothing more starts,
        for call in calls:
            call.cancel()  # and no call outlives the run
    return latencies
