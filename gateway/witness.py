"""The gateway as a witness: it keeps every signed audit checkpoint a node lodges and
refuses one that would make a node's log shorter than it already vouched for."""

from __future__ import annotations

from gateway.db import GatewayDb
from linkage.v1 import audit_pb2

# Checkpoints in one answer: about 150 bytes each, well inside the largest message (256 KiB).
PAGE = 1_000


class Shrunk(Exception):
    """The node already lodged a checkpoint of a longer log."""

    def __init__(self, largest: int) -> None:
        super().__init__(largest)
        self.largest = largest


class Witness:
    def __init__(self, db: GatewayDb) -> None:
        self.db = db
        # Checkpoints held per node: counted once per process, then kept up to date (a count
        # per lodge read the node's every checkpoint: 75 ms at a million).
        self._held: dict[str, int] = {}

    async def lodge(self, checkpoint: audit_pb2.Checkpoint, signed: audit_pb2.SignedCheckpoint) -> int:
        """Keep it, and return how many this node has lodged; raise Shrunk, keeping nothing, if
        it is smaller than one already lodged (checked in the same transaction as the insert)."""
        async with self.db.tx() as db:
            ((largest,),) = await db.execute_fetchall(
                "SELECT COALESCE(MAX(tree_size), 0) FROM checkpoints WHERE node_id = ?", (checkpoint.node_id,)
            )
            if checkpoint.tree_size < largest:
                raise Shrunk(int(largest))
            inserted = await db.execute(
                "INSERT OR IGNORE INTO checkpoints(node_id, tree_size, root, at_ms, signed) VALUES (?, ?, ?, ?, ?)",
                (
                    checkpoint.node_id,
                    checkpoint.tree_size,
                    checkpoint.root,
                    checkpoint.at_ms,
                    signed.SerializeToString(),
                ),
            )
            held = self._held.get(checkpoint.node_id)
            if held is None:
                ((held,),) = await db.execute_fetchall(
                    "SELECT COUNT(*) FROM checkpoints WHERE node_id = ?", (checkpoint.node_id,)
                )
            else:
                held += inserted.rowcount
        self._held[checkpoint.node_id] = int(held)  # only once the transaction has committed
        return int(held)

    async def of(
        self, node_id: str, after: tuple[int, bytes] = (0, b""), limit: int = PAGE
    ) -> tuple[list[audit_pb2.SignedCheckpoint], bool]:
        """A node's checkpoints after `after` (tree size, root), in that order, at most `limit`
        (and never more than a page, so an answer fits in a gRPC message); and whether more follow."""
        limit = min(limit or PAGE, PAGE)
        rows = await self.db.read(
            "SELECT signed FROM checkpoints WHERE node_id = ? AND (tree_size, root) > (?, ?) "
            "ORDER BY tree_size, root LIMIT ?",
            (node_id, *after, limit + 1),
        )
        return [audit_pb2.SignedCheckpoint.FromString(r[0]) for r in rows[:limit]], len(rows) > limit
