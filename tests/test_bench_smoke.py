"""The benchmark harness keeps working (tiny load; no timing assertions)."""

from __future__ import annotations

from bench.audit import measure


def test_audit_bench_runs_and_verifies() -> None:
    result = measure(2_000)
    assert result["entries"] == 2_000
    assert result["listed"] >= 1
    assert result["verify_per_s"] > 0 and result["ratio"] > 0
