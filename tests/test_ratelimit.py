"""The gateway's per-node token buckets, and the retry-after a BUSY answer carries."""

from __future__ import annotations

from gateway.ratelimit import RateLimits
from linkage.clock import ManualClock


def test_a_refused_node_is_told_when_its_next_token_is_due() -> None:
    clock = ManualClock()
    limits = RateLimits(rate_per_s=10, burst=2, clock=clock)
    assert limits.allow("a") and limits.allow("a")
    assert limits.retry_after_ms("a") == 100  # one token each 100 ms
    assert not limits.allow("a")
    clock.advance(40)
    assert limits.retry_after_ms("a") == 60
    assert limits.retry_after_ms("b") == 0  # another node's bucket is full
    clock.advance(60)
    assert limits.allow("a") and not limits.allow("a")
