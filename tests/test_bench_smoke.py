"""The benchmark harness keeps working (tiny load; no timing assertions)."""

from __future__ import annotations

from bench.audit import measure


def test_audit_bench_runs_and_verifies() -> None:
    result = measure(2_000)
    assert result["entries"] == 2_000
    assert result["listed"] >= 1
    assert result["verify_per_s"] > 0 and result["ratio"] > 0


def test_bare_relay_baseline_runs_across_three_processes() -> None:
    from bench.relay import measure as relay

    result = relay(count=200, size=256, window=16)
    assert result["messages"] == 200
    assert result["per_second"] > 0 and result["p99_ms"] >= result["p50_ms"]
