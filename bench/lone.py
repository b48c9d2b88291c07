"""How much slower this machine runs a step that comes alone than one of many back to back.

A paced message is alone: at 250 msg/s each process wakes from an idle gap of about 4 ms
for it. On this shared virtual machine the same code then runs several times slower
(docs/performance.md, "A lone step on this machine"). The paced cells carry this penalty,
the bare relay's too, and it moves from hour to hour, so each run measures it beside them:
the sender's policy decision for one share (the largest step of its own), and SHA-256 over
a 4 KB envelope (a little C over a little data), each timed back to back and then once
after each idle gap.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from statistics import median

from bench.e2e import ACTOR, AGENCIES, RECIPIENT, SENDER
from linkage import stories
from linkage.config import PolicyFiles
from node.policy import PolicyResult, RecipientInfo, ShareRequest, decide
from node.policy_files import load_policy

GAP_S = 0.004  # between messages at 250 msg/s
WARM_UP = 20


@dataclass(frozen=True)
class Slowdown:
    step: str
    warm_us: float  # median, back to back
    lone_us: float  # median, each after an idle GAP_S

    @property
    def factor(self) -> float:
        return self.lone_us / self.warm_us

    def row(self) -> dict[str, float | str]:
        return {"step": self.step, "warm_us": self.warm_us, "lone_us": self.lone_us, "gap_s": GAP_S}

    def show(self) -> str:
        return f"{self.step} {self.warm_us:.1f} µs back to back, {self.lone_us:.1f} alone ({self.factor:.1f}x)"


def _policy_decision() -> Callable[[], PolicyResult]:
    """One share's decision, as the bench's sender makes it (to one recipient)."""
    context = load_policy(PolicyFiles())
    request = ShareRequest(
        assessment=stories.parent_risk_change(b"p" * 32, b"c" * 32),
        decision=stories.override_decision(),
        actor=ACTOR,
        sender_agency_type=AGENCIES[SENDER][1],
        recipients=[RecipientInfo(RECIPIENT, AGENCIES[RECIPIENT][1])],
        decision_id="bench",
        now_ms=time.time_ns() // 1_000_000,
    )
    return lambda: decide(request, context)


def _envelope_digest() -> Callable[[], object]:
    envelope = bytes(4096)
    return lambda: hashlib.sha256(envelope).digest()


def _median_us(step: Callable[[], object], calls: int, gap_s: float) -> float:
    times = []
    for _ in range(calls):
        if gap_s:
            time.sleep(gap_s)
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return median(times) * 1e6


def measure(calls: int) -> list[Slowdown]:
    """Each step's median time back to back and alone, over `calls` calls each."""
    found = []
    for name, make in (("policy decision", _policy_decision), ("SHA-256 of 4 KB", _envelope_digest)):
        step = make()
        _median_us(step, WARM_UP, 0.0)
        found.append(Slowdown(name, _median_us(step, calls, 0.0), _median_us(step, calls, GAP_S)))
    return found


if __name__ == "__main__":  # python -m bench.lone [calls]
    for slowdown in measure(int(sys.argv[1]) if len(sys.argv) > 1 else 300):
        print(slowdown.show())
