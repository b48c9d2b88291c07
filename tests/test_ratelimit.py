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


def test_a_wall_clock_set_back_costs_a_node_no_tokens() -> None:
    """The clock is the wall's, and a host may step it back: that is no time spent, and
    must not leave a node refused for as long as the step."""
    clock = ManualClock()
    limits = RateLimits(rate_per_s=10, burst=2, clock=clock)
    assert limits.allow("a")
    clock.advance(-30_000)
    assert limits.allow("a")  # the token it had is still there
    assert limits.retry_after_ms("a") == 100  # and the next comes at the usual rate
    clock.advance(100)
    assert limits.allow("a")


def test_a_zero_rate_names_no_time_to_wait_and_a_full_token_is_no_wait() -> None:
    """A node whose rate is zero gets its burst and no more: a BUSY answer then names no time
    (none would come), and the node backs off on its own. One whole token left is no wait."""
    clock = ManualClock()
    limits = RateLimits(rate_per_s=0, burst=1, clock=clock)
    assert limits.retry_after_ms("a") == 0  # exactly one token
    assert limits.allow("a") and not limits.allow("a")
    assert limits.retry_after_ms("a") == 0
    clock.advance(3_600_000)
    assert not limits.allow("a")
    paced = RateLimits(rate_per_s=10, burst=2, clock=clock)
    assert paced.allow("b") and paced.retry_after_ms("b") == 0  # one token left, whole


def test_tokens_come_at_the_rate_to_the_millisecond() -> None:
    clock = ManualClock()
    limits = RateLimits(rate_per_s=1000, burst=1000, clock=clock)
    assert all(limits.allow("a") for _ in range(1000))
    assert limits.retry_after_ms("a") == 1  # one each millisecond: the shortest wait a BUSY names
    clock.advance(999)
    assert all(limits.allow("a") for _ in range(999))
    assert not limits.allow("a")
