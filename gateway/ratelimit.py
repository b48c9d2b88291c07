"""Per-node token buckets: a node that sends faster than its share is told BUSY."""

from __future__ import annotations

from linkage.clock import Clock


class TokenBucket:
    def __init__(self, rate_per_s: float, burst: int, clock: Clock) -> None:
        self.rate_per_ms = rate_per_s / 1000
        self.burst = float(burst)
        self.clock = clock
        self.tokens = float(burst)
        self.at_ms = clock.now_ms()

    def take(self) -> bool:
        now = self.clock.now_ms()
        self.tokens = min(self.burst, self.tokens + (now - self.at_ms) * self.rate_per_ms)
        self.at_ms = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class RateLimits:
    def __init__(self, rate_per_s: float, burst: int, clock: Clock) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def allow(self, node_id: str) -> bool:
        bucket = self._buckets.get(node_id)
        if bucket is None:
            bucket = self._buckets[node_id] = TokenBucket(self.rate_per_s, self.burst, self.clock)
        return bucket.take()
