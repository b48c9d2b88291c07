"""How a started gateway or node process runs: until SIGTERM or SIGINT, taking each SIGHUP."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from linkage import runtime
from tests.harness import CapturedLogs


@pytest.mark.parametrize("ending", [signal.SIGTERM, signal.SIGINT])
async def test_a_server_runs_until_told_to_stop_taking_each_hangup_as_it_comes(
    ending: signal.Signals, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(runtime, "settle_heap", lambda: None)  # not this test process's heap
    hangups: list[asyncio.Event] = [asyncio.Event(), asyncio.Event()]
    stopped = asyncio.Event()

    async def on_hangup() -> None:
        next(h for h in hangups if not h.is_set()).set()

    async def stop() -> None:
        stopped.set()

    serving = asyncio.create_task(runtime.serve_until_signalled("serving on test", stop, on_hangup))
    await asyncio.sleep(0)  # one turn: it runs up to its wait, its handlers in place
    assert signal.getsignal(signal.SIGHUP) is not signal.SIG_DFL  # else the kill below ends pytest
    for hangup in hangups:
        os.kill(os.getpid(), signal.SIGHUP)
        await hangup.wait()
    assert not serving.done() and not stopped.is_set()
    os.kill(os.getpid(), ending)
    await serving
    assert stopped.is_set()
    assert capsys.readouterr().out == "serving on test\n"


async def test_a_hangup_whose_reload_fails_is_logged_and_the_next_one_runs(
    monkeypatch: pytest.MonkeyPatch, captured_logs: CapturedLogs
) -> None:
    """A reload that raised was held in a task nobody awaited: said, if at all, only when the
    task was collected, as asyncio's own complaint."""
    monkeypatch.setattr(runtime, "settle_heap", lambda: None)
    failing, reloaded = asyncio.Event(), asyncio.Event()

    async def on_hangup() -> None:
        if not failing.is_set():
            failing.set()
            raise OSError("the bundle's folder is not there")
        reloaded.set()

    async def stop() -> None:
        pass

    serving = asyncio.create_task(runtime.serve_until_signalled("serving on test", stop, on_hangup))
    await asyncio.sleep(0)
    assert signal.getsignal(signal.SIGHUP) is not signal.SIG_DFL
    os.kill(os.getpid(), signal.SIGHUP)
    await failing.wait()
    os.kill(os.getpid(), signal.SIGHUP)
    await reloaded.wait()
    os.kill(os.getpid(), signal.SIGTERM)
    await serving
    said = captured_logs.records()
    failed = [line for line in said if line["event"] == "reload.failed"]
    assert len(failed) == 1 and "OSError: the bundle's folder is not there" in str(failed[0]["exception"])
