"""A process's long-lived duties (its link to the gateway, its outbox, retention, the
checkpoints it lodges, the files it watches) run for the life of the process. A failure
one of them did not expect (a store that refuses writes, a file half written, a defect
met once) must not end it silently until a restart: it is logged, and the duty is begun
again after a back-off, as a supervisor would."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

from structlog.typing import FilteringBoundLogger

from linkage.backoff import backoff_ms
from linkage.writability import log_failure

RESTART_BASE_MS = 1_000
RESTART_CAP_MS = 60_000


Duty = Callable[[], Coroutine[Any, Any, None]]


def begin(log: FilteringBoundLogger, duty: Duty) -> asyncio.Task[None]:
    """Start `duty` under supervision, as a task named for it."""
    return asyncio.create_task(supervised(log, duty), name=name_of(duty))


def name_of(duty: Duty) -> str:
    inner = duty.func if isinstance(duty, functools.partial) else duty
    return getattr(inner, "__qualname__", repr(inner))


async def supervised(log: FilteringBoundLogger, duty: Duty) -> None:
    """Run `duty` until it returns or the task is cancelled, beginning it again after each
    exception (logged as `duty.failed`, with its name). One that ran a full back-off cap
    since it was last begun starts its back-off afresh."""
    name = name_of(duty)
    loop = asyncio.get_running_loop()
    attempt = 0
    while True:
        begun = loop.time()
        try:
            await duty()
            return
        except Exception as exc:
            log_failure(log, "duty.failed", exc, duty=name, attempt=attempt)
        if loop.time() - begun >= RESTART_CAP_MS / 1000:
            attempt = 0
        await asyncio.sleep(backoff_ms(attempt, RESTART_BASE_MS, RESTART_CAP_MS) / 1000)
        attempt += 1
