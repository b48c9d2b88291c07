"""One closed loop of Linkage at window 64, from whichever tree is first on PYTHONPATH, to
compare two versions in alternating runs on this shared machine (docs/performance.md):

    git worktree add /tmp/wt_old <commit>
    for i in 1 2 3; do
      PYTHONPATH=/tmp/wt_old .venv/bin/python -m bench.ab old 5000
      PYTHONPATH=. .venv/bin/python -m bench.ab new 5000
    done
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from bench.e2e import LinkageRun, make_federation

WARM_UP = 500


async def one_loop(label: str, count: int) -> str:
    with tempfile.TemporaryDirectory() as root:
        async with LinkageRun(make_federation(Path(root))) as run:
            await run.closed_loop(WARM_UP, 64)
            result = await run.closed_loop(count, 64)
    per_process = " ".join(f"{name} {us:.0f}" for name, us in result.cpu_us.items())
    return f"{label} {result.per_second:.0f} msg/s, CPU {result.cpu_total_us:.0f} µs/msg ({per_process})"


if __name__ == "__main__":
    print(asyncio.run(one_loop(sys.argv[1], int(sys.argv[2]))))
