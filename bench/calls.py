"""Python-level calls per message on the sender, counted by cProfile over a closed loop:
within a few calls of the same every run (how messages batch on the event loop varies a
little), whatever this shared machine's speed, so two versions can be compared by what
they do rather than by how long it took (docs/performance.md). Start it in the tree to
count, as bench/ab.py is:

    cd /tmp/wt_old && /work/main/.venv/bin/python -m bench.calls 2000 /tmp/calls_old.txt

It writes the total and then each function's calls and own time per message, most calls
first; the times carry the profiler's overhead and are for ranking only.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import sys
import tempfile
from pathlib import Path

from bench.e2e import LinkageRun, make_federation

WARM_UP = 300


async def count(messages: int) -> list[tuple[float, float, str]]:
    """(calls, own µs, function) per message, for every function the sender's process ran."""
    with tempfile.TemporaryDirectory() as root:
        async with LinkageRun(make_federation(Path(root))) as run:
            await run.closed_loop(WARM_UP, 64)
            profile = cProfile.Profile()
            profile.enable()
            await run.closed_loop(messages, 64)
            profile.disable()
    here = f"{Path.cwd()}/"
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]  # not in typeshed
    return sorted(
        (
            (calls / messages, own_s / messages * 1e6, f"{file.removeprefix(here)}:{name}")
            for (file, _, name), (_, calls, own_s, _, _) in stats.items()
        ),
        reverse=True,
    )


def main(messages: int, out: Path) -> str:
    rows = asyncio.run(count(messages))
    total = sum(calls for calls, _, _ in rows)
    out.write_text(f"total calls/msg {total:.1f}\n" + "".join(f"{c:9.2f} {us:8.2f} {n}\n" for c, us, n in rows))
    return f"{total:.1f} Python calls per message on the sender ({messages} messages); each function in {out}"


if __name__ == "__main__":
    print(main(int(sys.argv[1]), Path(sys.argv[2])))
