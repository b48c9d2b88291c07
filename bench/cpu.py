"""CPU time of whole processes (all threads: gRPC's C core, the SQLite thread), from /proc."""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid`; 0.0 where /proc is not available."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # fields 14 and 15 of proc(5), after the name


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
