"""The gateway as a witness of each node's audit log (RFC 9162 checkpoints, as in
../shared/reference/security_reliability.md §1.3): it holds the latest checkpoint a node
lodged, and moves on to a newer one when the node proves the newer log extends the held
one. A newer checkpoint without that proof is a break (a log rewritten, or restored from
an old backup): the held checkpoint is kept as evidence and witnessing goes on from the
new one, so one break does not leave the rest of the node's history unwitnessed.

With a witness key (named in the directory), it cosigns each checkpoint it comes to hold,
and the node keeps that: proof, which the node cannot make up, of what the witness accepted.

What it holds is one row per node and a bounded list of breaks, however long it runs."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.db import GatewayDb
from linkage.auditlog import cosign
from linkage.clock import Clock
from linkage.merkle import ProofError, verify_consistency
from linkage.v1 import audit_pb2

BREAKS_KEPT = 100  # per node: evidence enough, and a misbehaving node cannot fill the disk


class Refused(Exception):
    """Nothing was kept: the checkpoint is older than the one held, or the proof starts
    from a size the witness does not hold. The message says which, for the node's operator."""


@dataclass(frozen=True)
class Lodged:
    tree_size: int  # what the witness now holds
    diverged: bool  # no proof joined it to what was held, which is now kept as a break
    cosignature: audit_pb2.Cosignature | None  # None: this witness has no key


@dataclass(frozen=True)
class Held:
    latest: audit_pb2.SignedCheckpoint | None
    cosignature: audit_pb2.Cosignature | None
    breaks: list[audit_pb2.SignedCheckpoint]


class Witness:
    def __init__(
        self, db: GatewayDb, clock: Clock, gateway_id: str, key: ed25519.Ed25519PrivateKey | None = None
    ) -> None:
        self.db = db
        self.clock = clock
        self.gateway_id = gateway_id
        self.key = key

    async def lodge(
        self,
        checkpoint: audit_pb2.Checkpoint,
        signed: audit_pb2.SignedCheckpoint,
        from_size: int,
        proof: list[bytes],
    ) -> Lodged:
        """Hold `checkpoint` if `proof` shows its log extends the held one (or nothing is held);
        hold it too if not, keeping the one it contradicts. Checked and written in one transaction."""
        node_id = checkpoint.node_id
        now = self.clock.now_ms()
        async with self.db.tx() as db:
            rows = list(
                await db.execute_fetchall("SELECT tree_size, root, signed FROM witnessed WHERE node_id = ?", (node_id,))
            )
            held_size = int(rows[0][0]) if rows else 0
            if from_size != held_size:
                holds = f"a checkpoint of {held_size} entries" if rows else "no checkpoint of this node's log"
                raise Refused(
                    f"the gateway holds {holds}, and this proof is from {from_size}: "
                    "ask what it holds (GetCheckpoints) and prove consistency from that size"
                )
            diverged = False
            if rows:
                _, held_root, held_signed = rows[0]
                if checkpoint.tree_size < held_size:
                    raise Refused(
                        f"this checkpoint ({checkpoint.tree_size} entries) is smaller than the one held "
                        f"({held_size}); an audit log only grows"
                    )
                try:
                    verify_consistency(held_size, checkpoint.tree_size, bytes(held_root), checkpoint.root, proof)
                except ProofError:
                    diverged = True
                    await db.execute(
                        "INSERT INTO witness_breaks(node_id, seq, tree_size, root, signed, broken_at_ms) "
                        "SELECT ?, COUNT(*) + 1, ?, ?, ?, ? FROM witness_breaks WHERE node_id = ? "
                        "HAVING COUNT(*) < ?",
                        (node_id, held_size, held_root, held_signed, now, node_id, BREAKS_KEPT),
                    )
            cosignature = cosign(self.key, self.gateway_id, signed, now) if self.key else None
            await db.execute(
                "INSERT INTO witnessed(node_id, tree_size, root, signed, cosignature) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(node_id) DO UPDATE SET tree_size = excluded.tree_size, root = excluded.root, "
                "signed = excluded.signed, cosignature = excluded.cosignature",
                (
                    node_id,
                    checkpoint.tree_size,
                    checkpoint.root,
                    signed.SerializeToString(),
                    cosignature.SerializeToString() if cosignature else None,
                ),
            )
        return Lodged(checkpoint.tree_size, diverged, cosignature)

    async def held(self, node_id: str) -> Held:
        """The node's latest checkpoint, and the breaks kept, oldest first."""
        latest = await self.db.read("SELECT signed, cosignature FROM witnessed WHERE node_id = ?", (node_id,))
        breaks = await self.db.read("SELECT signed FROM witness_breaks WHERE node_id = ? ORDER BY seq", (node_id,))
        cosigned = latest[0][1] if latest else None
        return Held(
            audit_pb2.SignedCheckpoint.FromString(latest[0][0]) if latest else None,
            audit_pb2.Cosignature.FromString(cosigned) if cosigned else None,
            [audit_pb2.SignedCheckpoint.FromString(r[0]) for r in breaks],
        )
