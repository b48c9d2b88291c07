"""The benchmark harness keeps working (tiny load; nothing asserted about speed)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bench.audit import measure


def test_audit_bench_runs_and_verifies() -> None:
    result = measure(2_000)
    assert result["entries"] == 2_000
    assert result["listed"] >= 1
    assert result["verify_per_s"] > 0 and result["ratio"] > 0


def test_the_ab_loop_runs_one_closed_loop() -> None:
    from bench.ab import one_loop

    line = asyncio.run(one_loop("this-tree", 20))
    assert line.startswith("this-tree ") and " msg/s, CPU " in line and "(sender " in line
    paced = asyncio.run(one_loop("this-tree", 20, rate=50, paced_s=0.1))
    assert "; at 50/s before: p50 " in paced and "; at 50/s after: p50 " in paced


def test_the_call_count_names_the_senders_work(tmp_path: Path) -> None:
    from bench.calls import main

    said = main(20, tmp_path / "calls.txt")
    assert said.endswith(f"Python calls per message on the sender (20 messages); each function in {tmp_path}/calls.txt")
    listed = (tmp_path / "calls.txt").read_text()
    assert listed.startswith("total calls/msg ") and "node/policy/decide.py:decide" in listed


def test_linkage_bench_runs_every_cell_and_prints_the_ratio_last(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.run import TINY, run

    ratio = run(TINY)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"ratio {ratio:.3f}" and ratio > 0
    for cell in (
        "linkage e2e, window",
        "linkage e2e, paced",
        "bare relay mTLS, window",
        "bare relay plaintext",
        "throughput ratio by round",  # the noise each ratio's median smooths, shown
        "bare relay mTLS, window 4",  # the other windows, each side
        "linkage e2e, window 4",
        "throughput ratio by window",
        "node start-up with 500 stored summaries",
    ):
        assert any(line.startswith(cell) for line in lines), cell
    assert any("retention purging its oldest 250: " in line for line in lines)
    assert lines[1].startswith("machine: sum(range(1000)) takes ") and "(at the start " in lines[-3]
    for alone in (lines[2], lines[-4]):  # the penalty for running alone, at the start and at the end
        assert alone.startswith("machine: a step alone after 4 ms idle") and "policy decision " in alone, alone
    assert any(line.startswith("gateway with 20,000 subscriptions") and "a dict of the same" in line for line in lines)
    for target in (
        "throughput, Linkage / bare relay",
        "audit verify",
        "mTLS cost (throughput lost, or CPU added if more)",
    ):  # what a tiny run measures
        assert any(line.startswith(f"target {target}: ") for line in lines), target


def test_the_lone_step_is_a_whole_decision_to_share_timed_both_ways() -> None:
    from bench import lone

    decided = lone._policy_decision()()  # not a short cut through a rule that refuses it
    assert decided.findings == [] and list(decided.payloads) == ["csc"], decided.findings
    steps = lone.measure(3)
    assert [s.step for s in steps] == ["policy decision", "SHA-256 of 4 KB"]
    assert all(s.warm_us > 0 and s.lone_us > 0 for s in steps)
    assert steps[0].row()["gap_s"] == lone.GAP_S and "x)" in steps[0].show()


def test_the_mtls_target_is_not_met_by_throughput_noise_when_cpu_says_otherwise() -> None:
    from bench.targets import TARGETS

    (mtls,) = [t for t in TARGETS if t.name.startswith("mTLS cost")]
    for figures, cost, met in (
        ({"mtls_ratio": 1.02, "mtls_cpu_ratio": 1.11}, 0.11, False),  # faster with TLS: noise
        ({"mtls_ratio": 0.88, "mtls_cpu_ratio": 1.05}, 0.12, False),
        ({"mtls_ratio": 0.95, "mtls_cpu_ratio": 1.04}, 0.05, True),
        ({"mtls_ratio": 0.95}, 0.05, True),  # a run too short for /proc to count its CPU
    ):
        verdict = mtls.verdict(figures)
        assert verdict is not None and verdict[0] == pytest.approx(cost) and verdict[1] is met, figures
    # A figure not met never reads as the limit.
    assert (mtls.show(0.10414), mtls.show(mtls.limit)) == ("10.4%", "10.0%")


async def test_a_share_that_is_never_delivered_fails_the_run_instead_of_hanging_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench import e2e

    async with e2e.LinkageRun(e2e.make_federation(tmp_path)) as run:
        await run.share_once()  # delivered while the recipient runs
        _, recipient = run.processes
        await recipient.stop()
        monkeypatch.setattr(e2e, "SETTLE_TIMEOUT_S", 0.5)
        with pytest.raises(
            RuntimeError, match=r"was not delivered within 0\.5 s \(its message is \w+ after \d+ attempts?\)"
        ):
            await run.share_once()


@pytest.fixture(params=["kernel timer", "loop timer"])
def alarm_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a paced load keeps time: a timerfd, and the loop's timer where there is none."""
    from bench import timer

    if request.param == "loop timer":
        monkeypatch.setattr(timer, "available", lambda: False)
    else:
        assert timer.available()
    return str(request.param)


async def test_a_paced_load_starts_every_call_and_counts_a_stall_against_the_calls_it_delayed(alarm_kind: str) -> None:
    from bench.load import paced

    started: list[int] = []

    async def one() -> float:
        started.append(len(started))
        if len(started) == 1:
            time.sleep(0.02)  # noqa: ASYNC251 - the first call holds the loop; the next, due each 1 ms, wait
        return 0.001

    latencies = await paced(one, rate=1000, seconds=0.01)
    assert len(started) == len(latencies) == 10
    assert all(latency >= 0.001 for latency in latencies)
    # The calls due while the first held the loop waited for it, and that wait is counted.
    assert sorted(latencies)[-2] > 0.015


async def test_a_cancelled_paced_load_starts_nothing_more_and_leaves_no_call_running(alarm_kind: str) -> None:
    from bench.load import paced

    third = asyncio.Event()
    calls: list[asyncio.Task[object]] = []

    async def one() -> float:
        task = asyncio.current_task()
        assert task is not None
        calls.append(task)
        if len(calls) == 3:
            third.set()
        await asyncio.Event().wait()  # never answered
        return 0.0

    run = asyncio.create_task(paced(one, rate=1000, seconds=60))
    await third.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    started = len(calls)

    async def other() -> float:
        return 0.0

    await paced(other, rate=1000, seconds=0.005)  # five of the cancelled run's intervals pass
    assert len(calls) == started
    assert all(call.done() for call in calls)


async def test_a_paced_load_whose_timer_cannot_be_armed_fails_instead_of_hanging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bench import timer
    from bench.load import paced

    def refuse(self: timer.KernelTimer, when: float) -> None:
        raise OSError(22, "timerfd_settime failed")

    monkeypatch.setattr(timer.KernelTimer, "at", refuse)

    async def one() -> float:
        return 0.0

    with pytest.raises(OSError, match="timerfd_settime failed"):
        await paced(one, rate=1000, seconds=1)
