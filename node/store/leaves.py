"""The Merkle leaf hashes of the latest audit entries, kept as they are appended, so
that a checkpoint's consistency proof need not read back and rehash what was just
written (under load that was 2 to 3% of a busy node's CPU, in a thread contending
for the GIL with the loop)."""

from __future__ import annotations

LIMIT = 1 << 16  # leaves kept at most (about 5 MB): past it the oldest half go


class RecentLeaves:
    """Leaves by audit position, committed or not. A position rolled back is simply
    written again by the entry that next takes it, which drops any after it too:
    positions up to the committed head are therefore always the committed entries'."""

    def __init__(self, after: int = 0, limit: int = LIMIT) -> None:
        self._after = after  # the position just before the first leaf held
        self._leaves: list[bytes] = []
        self._limit = limit

    def put(self, seq: int, leaf: bytes) -> None:
        index = seq - self._after - 1
        if not 0 <= index <= len(self._leaves):  # not next to what is held: start afresh from it
            self._after, self._leaves = seq - 1, []
            index = 0
        del self._leaves[index:]
        self._leaves.append(leaf)
        if len(self._leaves) > self._limit:
            self.forget(self._after + len(self._leaves) // 2)

    def between(self, after: int, upto: int) -> list[bytes] | None:
        """The leaves of positions after..upto, or None unless every one is held."""
        if after < self._after or upto > self._after + len(self._leaves) or upto < after:
            return None
        return self._leaves[after - self._after : upto - self._after]

    def forget(self, upto: int) -> None:
        """Positions up to `upto` are no longer needed."""
        drop = min(upto - self._after, len(self._leaves))
        if drop > 0:
            del self._leaves[:drop]
            self._after += drop
