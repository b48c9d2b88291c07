"""Per-node token buckets: a node that sends faster than its share is told BUSY."""

from __future__ import annotations

import math

from linkage.clock import Clock


class TokenBucket:
    def __init__(self, rate_per_s: float, burst: int, clock: Clock) -> None:
        self.rate_per_ms = rate_per_s / 1000
        self.burst = float(burst)
        self.clock = clock
        self.tokens = float(burst)
        self.at_ms = clock.now_ms()

    def _refill(self) -> None:
        now = self.clock.now_ms()
        # A wall clock stepped back is no time spent: never a debt a node waits out.
        self.tokens = min(self.burst, self.tokens + max(0, now - self.at_ms) * self.rate_per_ms)
        self.at_ms = now

    def take(self) -> bool:
        self._refill()
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def wait_ms(self) -> int:
        """How long until the next token: 0 if one is there now, or if none ever comes
        (a zero rate), when the node can only be told to use its own back-off."""
        self._refill()
        if self.tokens >= 1 or self.rate_per_ms <= 0:
            return 0
        return max(1, math.ceil((1 - self.tokens) / self.rate_per_ms))


class RateLimits:
    def __init__(self, rate_per_s: float, burst: int, clock: Clock) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def _bucket(self, node_id: str) -> TokenBucket:
        bucket = self._buckets.get(node_id)
        if bucket is None:
            bucket = self._buckets[node_id] = TokenBucket(self.rate_per_s, self.burst, self.clock)
        return bucket

    def allow(self, node_id: str) -> bool:
        return self._bucket(node_id).take()

    def retry_after_ms(self, node_id: str) -> int:
        """When a node just refused may next be allowed: what a BUSY answer tells it."""
        return self._bucket(node_id).wait_ms()
