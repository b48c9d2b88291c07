"""The benchmark harness keeps working (tiny load; no timing assertions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.audit import measure


def test_audit_bench_runs_and_verifies() -> None:
    result = measure(2_000)
    assert result["entries"] == 2_000
    assert result["listed"] >= 1
    assert result["verify_per_s"] > 0 and result["ratio"] > 0


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
        "node start-up with 500 stored summaries",
    ):
        assert any(line.startswith(cell) for line in lines), cell
    assert any("retention purging its oldest 250: " in line for line in lines)
    assert any(line.startswith("gateway with 20,000 subscriptions") and "a dict of the same" in line for line in lines)
    for target in (
        "throughput, Linkage / bare relay",
        "audit verify",
        "mTLS cost (throughput lost, or CPU added if more)",
    ):  # what a tiny run measures
        assert any(line.startswith(f"target {target}: ") for line in lines), target


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
