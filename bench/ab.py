"""One closed loop of Linkage at window 64, from the tree it is run in, to compare two
versions in alternating runs on this shared machine (docs/performance.md):

    git worktree add /tmp/wt_old <commit>
    for i in 1 2 3; do
      (cd /tmp/wt_old && /work/main/.venv/bin/python -m bench.ab old 5000)
      (cd /work/main && .venv/bin/python -m bench.ab new 5000)
    done

Each run must be started in its tree: `python -m` puts the working directory first on
the path, before PYTHONPATH, and the gateway and recipient it starts do the same, so
PYTHONPATH cannot choose the tree. The line it prints names the tree that ran.

A third argument, a rate, also times that many messages a second for PACED_S before the
closed loop and again after it (when its messages have grown the stores): latency under
load, as the full run's paced cells see it after its closed loops.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

import node
from bench.e2e import LinkageRun, make_federation

WARM_UP = 500


PACED_S = 6.0


async def one_loop(label: str, count: int, rate: float = 0, paced_s: float = PACED_S) -> str:
    with tempfile.TemporaryDirectory() as root:
        async with LinkageRun(make_federation(Path(root))) as run:
            await run.closed_loop(WARM_UP, 64)
            before = await run.paced(rate, paced_s) if rate else None
            result = await run.closed_loop(count, 64)
            after = await run.paced(rate, paced_s) if rate else None
    per_process = " ".join(f"{name} {us:.0f}" for name, us in result.cpu_us.items())
    line = f"{label} ({tree()}) {result.per_second:.0f} msg/s, CPU {result.cpu_total_us:.0f} µs/msg ({per_process})"
    for when, paced in (("before", before), ("after", after)):
        if paced is not None:
            line += f"; at {rate:g}/s {when}: p50 {paced.p50_ms:.1f} ms, p99 {paced.p99_ms:.1f} ms"
            line += f", CPU {paced.cpu_total_us:.0f} µs/msg (sender {paced.cpu_us.get('sender', 0):.0f})"
    return line


def tree() -> str:
    """The tree this run's code came from (its gateway and recipient, started in the same
    directory, import the same)."""
    return str(Path(node.__file__).resolve().parent.parent)


if __name__ == "__main__":
    wanted = os.environ.get("PYTHONPATH", "").split(os.pathsep)[0]
    if wanted and Path(wanted).resolve() != Path(tree()):
        sys.exit(f"PYTHONPATH names {wanted}, but {tree()} is first on the path: run it in the tree instead")
    print(asyncio.run(one_loop(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0)))
