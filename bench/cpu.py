"""CPU time of whole processes (all threads: gRPC's C core, the SQLite thread), from /proc;
and how fast this machine runs plain Python just now."""

from __future__ import annotations

import os
import timeit
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid`; 0.0 where /proc is not available."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # fields 14 and 15 of proc(5), after the name


def python_speed_us() -> float:
    """Microseconds for `sum(range(1000))`, the best of five: the same code runs at very
    different speeds on a shared virtual machine from one hour to the next, and runs are
    read side by side only with this beside them (6 µs when the goals were set)."""
    return min(timeit.repeat("sum(range(1000))", number=5_000, repeat=5)) / 5_000 * 1e6


class CpuMeter:
    """CPU used by named processes between `start()` and `per_message()`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}

    def start(self) -> None:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def per_message(self, messages: int) -> dict[str, float]:
        """Microseconds of CPU per message, per process."""
        return {
            name: (cpu_seconds(pid) - self._start[name]) * 1e6 / max(1, messages) for name, pid in self.pids.items()
        }
