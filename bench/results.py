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
    latencies_s: list[float] = dataclasses.field(default_factory=list, repr=False)  # sorted

    @property
    def cpu_total_us(self) -> float:
        return sum(self.cpu_us.values())

    def row(self) -> dict[str, object]:
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "latencies_s"}
        return {**row, "cpu_total_us": self.cpu_total_us}


def _result(ordered: list[float], elapsed_s: float, cpu_us: dict[str, float]) -> Result:
    if not ordered:
        raise RuntimeError("no message completed")
    return Result(
        messages=len(ordered),
        per_second=len(ordered) / elapsed_s,
        p50_ms=statistics.median(ordered) * 1000,
        p99_ms=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        cpu_us=cpu_us,
        latencies_s=ordered,
    )


def summarise(latencies_s: list[float], elapsed_s: float, meter: CpuMeter) -> Result:
    return _result(sorted(latencies_s), elapsed_s, meter.per_message(len(latencies_s)))


def combine(parts: list[Result]) -> Result:
    """Slices of one cell run at different moments, as if run at once: messages over
    the time they took together, percentiles over every latency, CPU per message."""
    messages = sum(p.messages for p in parts)
    elapsed = sum(p.messages / p.per_second for p in parts)
    cpu = {name: sum(p.cpu_us[name] * p.messages for p in parts) / messages for name in parts[0].cpu_us}
    return _result(sorted(t for p in parts for t in p.latencies_s), elapsed, cpu)
