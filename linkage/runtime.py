"""What a long-running node or gateway process does once started: its heap settled, and
its life from the banner to a signal to stop."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Awaitable, Callable

from linkage import logs
from linkage.writability import log_failure

log = logs.get("runtime")


def settle_heap() -> None:
    """After start-up: move everything allocated so far (modules, keys, the directory, the
    subscription index) out of the collector's sight. A full collection then walks only
    what serving allocates, instead of pausing the loop for milliseconds over objects
    that live as long as the process."""
    gc.collect()
    gc.freeze()


async def serve_until_signalled(
    banner: str, stop: Callable[[], Awaitable[None]], on_hangup: Callable[[], Awaitable[None]] | None = None
) -> None:
    """What a started server does until SIGTERM or SIGINT (then `stop`, which drains it):
    settle the heap, say where it serves, and run `on_hangup` on each SIGHUP (one that fails
    is logged as `reload.failed`; the next look, or the next SIGHUP, tries again)."""
    settle_heap()
    signalled = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signalled.set)
    hangups: set[asyncio.Task[None]] = set()  # held, or a running task may be collected
    if on_hangup is not None:
        hangup = on_hangup

        async def reload() -> None:
            try:
                await hangup()
            except Exception as exc:  # else held in a task nobody awaits, and said only when it is collected
                log_failure(log, "reload.failed", exc)

        def hung_up() -> None:
            task = asyncio.ensure_future(reload())
            hangups.add(task)
            task.add_done_callback(hangups.discard)

        loop.add_signal_handler(signal.SIGHUP, hung_up)
    print(banner, flush=True)
    await signalled.wait()
    await stop()
