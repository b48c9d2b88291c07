"""One measured cell: throughput, latency percentiles and CPU per message per process."""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass

from bench.cpu import CpuMeter


@dataclass
class Result:
    messages: int
    per_second: float
    p50_ms: float
    p99_ms: float
    cpu_us: dict[str, float]  # CPU microseconds per message, per process

    @property
    def cpu_total_us(self) -> float:
        return sum(self.cpu_us.values())

    def row(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "cpu_total_us": self.cpu_total_us}


def summarise(latencies_s: list[float], elapsed_s: float, meter: CpuMeter) -> Result:
    ordered = sorted(latencies_s)
    if not ordered:
        raise RuntimeError("no message completed")
    return Result(
        messages=len(ordered),
        per_second=len(ordered) / elapsed_s,
        p50_ms=statistics.median(ordered) * 1000,
        p99_ms=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        cpu_us=meter.per_message(len(ordered)),
    )
