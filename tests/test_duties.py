"""A process's long-lived duties outlive what they did not expect (linkage/duties.py)."""

from __future__ import annotations

import asyncio
import functools
import sqlite3

import pytest

from linkage import duties, logs
from node import retention
from tests.harness import CapturedLogs

log = logs.get("test.duties")


def _readonly() -> sqlite3.OperationalError:
    error = sqlite3.OperationalError("attempt to write a readonly database")
    error.sqlite_errorcode = 8  # SQLITE_READONLY, as SQLite sets it
    return error


async def test_a_duty_that_fails_is_said_and_begun_again_until_it_ends_of_itself(
    captured_logs: CapturedLogs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store refusing writes is said without a traceback (the store says why itself); any
    other failure, a defect, with one; the duty is begun again after each (its back-off
    counting the attempts), and ends when it returns."""
    monkeypatch.setattr(duties, "RESTART_BASE_MS", 1)
    begun = 0

    async def duty() -> None:
        nonlocal begun
        begun += 1
        if begun == 1:
            raise _readonly()
        if begun == 2:
            raise ValueError("a defect met once")

    await duties.supervised(log, duty)
    assert begun == 3
    failed = captured_logs.records("duty.failed")
    assert [(f["attempt"], f.get("error"), "exception" in f) for f in failed] == [
        (0, "SQLITE_READONLY", False),
        (1, None, True),
    ]
    assert all(f["duty"].endswith("duty") for f in failed)


async def test_a_supervised_duty_stops_when_its_task_is_cancelled() -> None:
    """Cancelling is how a process stops its duties: it is not a failure to begin again from."""
    started = asyncio.Event()

    async def duty() -> None:
        started.set()
        await asyncio.Event().wait()

    task = duties.begin(log, duty)
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


def test_a_duty_task_is_named_for_what_it_runs() -> None:
    """Named, so a duty that does not stop in time is said by name."""
    partial = functools.partial(retention.run, None, None, 0)  # type: ignore[arg-type]
    assert duties.name_of(partial) == "run"
    assert duties.name_of(test_a_supervised_duty_stops_when_its_task_is_cancelled) == (
        "test_a_supervised_duty_stops_when_its_task_is_cancelled"
    )
