"""The gateway as a witness: it keeps every signed audit checkpoint a node lodges and
refuses one that would make a node's log shorter than it already vouched for."""

from __future__ import annotations

from gateway.db import GatewayDb
from linkage.v1 import audit_pb2


class Witness:
    def __init__(self, db: GatewayDb) -> None:
        self.db = db

    async def largest(self, node_id: str) -> int:
        async with self.db.db.execute("SELECT MAX(tree_size) FROM checkpoints WHERE node_id = ?", (node_id,)) as cur:
            row = await cur.fetchone()
        return int(row[0] or 0) if row else 0

    async def lodge(self, checkpoint: audit_pb2.Checkpoint, signed: audit_pb2.SignedCheckpoint) -> int:
        async with self.db.tx() as db:
            await db.execute(
                "INSERT OR IGNORE INTO checkpoints(node_id, tree_size, root, at_ms, signed) VALUES (?, ?, ?, ?, ?)",
                (
                    checkpoint.node_id,
                    checkpoint.tree_size,
                    checkpoint.root,
                    checkpoint.at_ms,
                    signed.SerializeToString(),
                ),
            )
            async with db.execute("SELECT COUNT(*) FROM checkpoints WHERE node_id = ?", (checkpoint.node_id,)) as cur:
                row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def of(self, node_id: str) -> list[audit_pb2.SignedCheckpoint]:
        async with self.db.db.execute(
            "SELECT signed FROM checkpoints WHERE node_id = ? ORDER BY tree_size, at_ms", (node_id,)
        ) as cur:
            rows = await cur.fetchall()
        return [audit_pb2.SignedCheckpoint.FromString(r[0]) for r in rows]
