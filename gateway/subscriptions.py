"""The subscription index: link token -> subscribed node ids.

Kept in SQLite so a restarted gateway routes at once, and mirrored in memory
for the per-message look-up. Nodes also re-assert their subscriptions when
they connect, so a lost gateway database heals itself.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from gateway.db import GatewayDb


class SubscriptionIndex:
    def __init__(self, db: GatewayDb) -> None:
        self._db = db
        self._by_token: dict[bytes, set[str]] = defaultdict(set)
        self._count_by_node: dict[str, int] = defaultdict(int)

    @classmethod
    async def load(cls, db: GatewayDb) -> SubscriptionIndex:
        index = cls(db)
        async with db.db.execute("SELECT token, node_id FROM subscriptions") as cursor:
            async for token, node_id in cursor:
                index._by_token[bytes(token)].add(node_id)
                index._count_by_node[node_id] += 1
        return index

    def __len__(self) -> int:
        return sum(self._count_by_node.values())

    def count(self, node_id: str) -> int:
        return self._count_by_node.get(node_id, 0)

    def is_subscribed(self, node_id: str, token: bytes) -> bool:
        return node_id in self._by_token.get(token, ())

    def subscribers(self, tokens: Iterable[bytes]) -> set[str]:
        found: set[str] = set()
        for token in tokens:
            found |= self._by_token.get(token, set())
        return found

    async def add(self, node_id: str, tokens: Iterable[bytes]) -> int:
        new = [t for t in set(tokens) if not self.is_subscribed(node_id, t)]
        if new:
            async with self._db.tx() as db:
                await db.executemany(
                    "INSERT OR IGNORE INTO subscriptions(token, node_id) VALUES (?, ?)",
                    [(t, node_id) for t in new],
                )
        for t in new:  # memory follows only a durable commit
            self._by_token[t].add(node_id)
        self._count_by_node[node_id] += len(new)
        return len(new)

    async def remove(self, node_id: str, tokens: Iterable[bytes]) -> int:
        gone = [t for t in set(tokens) if self.is_subscribed(node_id, t)]
        if gone:
            async with self._db.tx() as db:
                await db.executemany(
                    "DELETE FROM subscriptions WHERE token = ? AND node_id = ?", [(t, node_id) for t in gone]
                )
        for t in gone:
            nodes = self._by_token[t]
            nodes.discard(node_id)
            if not nodes:
                del self._by_token[t]
        self._count_by_node[node_id] -= len(gone)
        return len(gone)
