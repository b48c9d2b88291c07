"""Capped, jittered exponential backoff (Synapse style: x2 per attempt, x U(0.8, 1.4))."""

from __future__ import annotations

import random


def backoff_ms(attempt: int, base_ms: int, cap_ms: int, rng: random.Random | None = None) -> int:
    """Delay before retry number `attempt` (0-based)."""
    raw = min(cap_ms, base_ms * (2 ** min(attempt, 32)))
    return int(raw * (rng or random).uniform(0.8, 1.4))
