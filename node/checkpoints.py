"""Signed checkpoints of this node's audit log, lodged outside it: with the gateway
(a witness) every so often, and inside every receipt this node signs for a peer.
A log rewritten as a whole, hashes and all, then no longer matches what others hold.

The witness holds one checkpoint per node and moves on only with an RFC 9162
consistency proof from it. The node builds that proof from the compact range it
kept at the size the witness holds and the entries appended since. It keeps the witness's
cosignature of what it lodged, once checked against the witness key the directory names."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable

import grpc
from google.protobuf.message import DecodeError

from linkage import logs
from linkage.auditlog import check_cosignature, open_checkpoint, sign_checkpoint
from linkage.clock import Clock
from linkage.directory import TrustedDirectory
from linkage.envelope import signing_generation
from linkage.ids import recordable
from linkage.keys import MessageKeys
from linkage.merkle import CompactRange, consistency_proof_from
from linkage.reasons import Rejected
from linkage.v1 import audit_pb2, gateway_pb2
from linkage.writability import log_failure
from node.link import GatewayLink
from node.metrics import NodeMetrics
from node.store import Store

# Lodged with the gateway every this many entries, or this long after the last try once any
# wait (the N = 1,000 of ../shared/reference/security_reliability.md §1.3; its T is 15 min).
# Peers hold fresher ones: every receipt carries one. Under load, 256 meant a lodge, a witness
# row and a gateway fsync per 60 or so messages.
LODGE_EVERY_ENTRIES = 1_000
LODGE_EVERY_S = 30.0
NEVER = 2**63  # a log size no store reaches: the store wakes nobody at a commit
# A receipt carries a checkpoint at most this old rather than a signature per receipt.
RECEIPT_CHECKPOINT_MAX_AGE_MS = 100
log = logs.get("node.checkpoints")


class WitnessAnswerRefused(Exception):
    """What the witness says it holds is no checkpoint of this node's (it is tried again later)."""


class Checkpointer:
    def __init__(
        self,
        store: Store,
        link: GatewayLink,
        keys: MessageKeys,
        node_id: str,
        clock: Clock,
        trust: TrustedDirectory,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.metrics = metrics or NodeMetrics()
        self.trust = trust
        self.store = store
        self.link = link
        self.keys = keys
        self.node_id = node_id
        self.clock = clock
        self.lodged_size = 0
        self._latest: audit_pb2.SignedCheckpoint | None = None
        self._latest_range = CompactRange()  # the log as `_latest` signed it
        self._signed_at_ms = 0
        # The compact range at the size the witness holds: None until asked (at start, and
        # after any failed lodge, when what it holds may not be what this node thinks).
        self._witnessed: CompactRange | None = None
        self._lodging = asyncio.Lock()  # one lodge at a time: each proves from what the last left
        # When the witness last took this log, by a monotonic clock (the wall's may be set back);
        # the start counts, as what the log held then was lodged before or is lodged soon.
        self._witnessed_at = time.monotonic()
        self.metrics.unwitnessed.set_function(self._unwitnessed_s)
        # Told, once a process, of a witness holding a longer log than this store's (put back
        # from a copy since): node/redelivery.py asks the other nodes for what it lost.
        self.on_behind: Callable[[audit_pb2.Checkpoint], Awaitable[None]] | None = None
        self._behind_told = False

    def latest(self) -> audit_pb2.SignedCheckpoint:
        """A checkpoint of the log as it stands (re-signed only when the log has grown)."""
        return self._checkpoint(max_age_ms=0)

    def for_receipt(self) -> audit_pb2.SignedCheckpoint:
        """A recent checkpoint for a receipt: under load, one signature serves many receipts."""
        return self._checkpoint(max_age_ms=RECEIPT_CHECKPOINT_MAX_AGE_MS)

    def _checkpoint(self, max_age_ms: int) -> audit_pb2.SignedCheckpoint:
        frontier, now = self.store.frontier, self.clock.now_ms()
        # Signed "later" than now means the wall clock was set back since: too old to trust as recent.
        age_ms = now - self._signed_at_ms
        stale = self._latest_range.size != frontier.size and not 0 <= age_ms < max_age_ms
        if self._latest is None or stale:
            signer = self._signer(now)
            self._latest = sign_checkpoint(
                signer.signing, signer.key_id, self.node_id, frontier.size, frontier.root(), now
            )
            self._latest_range, self._signed_at_ms = CompactRange(frontier.size, frontier.hashes), now
        return self._latest

    def _signer(self, now_ms: int) -> MessageKeys:
        """The generation others know this node by now, as for its messages: during a rotation
        the old one, until the directory activates the new (whose key it may not name yet)."""
        try:
            return signing_generation(self.keys, self.trust.current(now_ms), self.node_id, now_ms)
        except Rejected:  # no current directory: nothing it signs is checked before one comes
            return self.keys

    def _unwitnessed_s(self) -> float:
        """How long entries have waited for the witness (read at each scrape, in its thread)."""
        return time.monotonic() - self._witnessed_at if self.store.frontier.size > self.lodged_size else 0.0

    async def lodge(self) -> bool:
        """Lodge the latest checkpoint with the witness, with a proof from the one it holds.
        False if it could not be lodged now (it is tried again later)."""
        async with self._lodging:
            signed = self.latest()
            grown = self._latest_range
            size = grown.size
            if size <= self.lodged_size:
                self._witnessed_at = time.monotonic()
                return True
            try:
                lodged = await self._lodged(signed, size)
                if lodged is None:
                    self.metrics.checkpoints.labels("behind").inc()
                    return False
                held, answer = lodged
            except grpc.aio.AioRpcError as exc:
                log.warning("checkpoint.not_lodged", code=exc.code().name, size=size)
                self.metrics.checkpoints.labels("failed").inc()
                self._witnessed = None
                return False
            except WitnessAnswerRefused as exc:
                log.warning("checkpoint.witness_answer_refused", problem=str(exc), size=size)
                self.metrics.checkpoints.labels("failed").inc()
                return False
            except LookupError as exc:  # entries missing from this store's own log: nothing to prove from
                log.error("checkpoint.not_lodged", code="LOG_INCOMPLETE", size=size, detail=str(exc))
                self.metrics.checkpoints.labels("failed").inc()
                return False
            except sqlite3.Error as exc:  # the store refused a read of what to prove from: tried again later
                log_failure(log, "checkpoint.not_lodged", exc, size=size)
                self.metrics.checkpoints.labels("failed").inc()
                return False
            cosignature = self._checked(answer, signed)
            cosigned = (signed.SerializeToString(), cosignature.SerializeToString()) if cosignature else (None, None)
            try:
                async with self.store.tx() as tx:
                    # A lodge without a good cosignature keeps the last one that was.
                    await tx.execute(
                        "INSERT INTO witnessed(id, frontier, checkpoint, cosignature) VALUES (1, ?, ?, ?) "
                        "ON CONFLICT(id) DO UPDATE SET frontier = excluded.frontier, "
                        "checkpoint = COALESCE(excluded.checkpoint, checkpoint), "
                        "cosignature = COALESCE(excluded.cosignature, cosignature)",
                        (grown.to_bytes(), *cosigned),
                    )
            except sqlite3.Error as exc:  # lodged all the same; after a restart the range is read from the log
                log.warning("checkpoint.range_not_kept", size=size, error=type(exc).__name__)
            self._witnessed, self.lodged_size, self._witnessed_at = grown, size, time.monotonic()
            self.store.recent_leaves.forget(size)  # the next proof starts from here
            self.metrics.checkpoints.labels("diverged" if answer.diverged else "ok").inc()
            if answer.diverged:
                # The witness held a checkpoint this log does not extend; it keeps that as evidence.
                log.error("checkpoint.diverged", size=size, held=held.size)
            else:
                log.info("checkpoint.lodged", size=size)
            return True

    async def _lodged(
        self, signed: audit_pb2.SignedCheckpoint, size: int
    ) -> tuple[CompactRange, gateway_pb2.LodgeCheckpointResponse] | None:
        """Lodge `signed` with a proof from the checkpoint the witness holds: the one this node
        lodged last, or, if the gateway holds another (it was put back from a backup, say),
        the one it says it holds, asked at once rather than at the next lodge. What it held,
        and its answer; None if this log is shorter than what it holds."""
        remembered = self._witnessed
        held = remembered if remembered is not None else await self._ask_witness()
        if held is None:
            return None
        try:
            return held, await self._proved(signed, held, size)
        except grpc.aio.AioRpcError as exc:
            if remembered is None or exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            log.warning("checkpoint.not_lodged", code=exc.code().name, size=size, held=remembered.size)
        self._witnessed = None
        held = await self._ask_witness()
        return None if held is None else (held, await self._proved(signed, held, size))

    async def _proved(
        self, signed: audit_pb2.SignedCheckpoint, held: CompactRange, size: int
    ) -> gateway_pb2.LodgeCheckpointResponse:
        """`signed` lodged with the proof that this log, at `size` entries, grew from `held`."""
        leaves = await self.store.audit_leaves(held.size, size) if held.size else []
        proof = consistency_proof_from(held, leaves) if leaves else []
        return await self.link.lodge_checkpoint(signed, held.size, proof)

    def _checked(
        self, answer: gateway_pb2.LodgeCheckpointResponse, signed: audit_pb2.SignedCheckpoint
    ) -> audit_pb2.Cosignature | None:
        """The witness's cosignature of `signed`, if it gave one that the directory's key verifies."""
        if not answer.HasField("cosignature"):
            return None
        try:
            check_cosignature(answer.cosignature, signed, self.trust.current(self.clock.now_ms()))
        except Rejected as exc:
            _, gateway, flags = recordable("", answer.cosignature.gateway_id)  # whatever the gateway sent
            log.error("checkpoint.cosignature_refused", reason=exc.reason.value, gateway=gateway, **flags)
            return None
        return answer.cosignature

    async def _ask_witness(self) -> CompactRange | None:
        """The compact range at the size the witness holds (empty if it holds nothing), or None
        if this log is shorter than that (restored from a backup older than the checkpoint)."""
        answer = await self.link.witnessed()
        if not answer.HasField("latest"):
            return CompactRange()
        try:
            held = audit_pb2.Checkpoint.FromString(answer.latest.checkpoint)
        except DecodeError:
            raise WitnessAnswerRefused("not a checkpoint") from None
        size = held.tree_size
        if size > self.store.frontier.size:
            # Only this node's own signature may say its log was once longer (a store put back):
            # a gateway that is not what it should be must not set off the asking back.
            try:
                held = open_checkpoint(answer.latest, self.trust.current(self.clock.now_ms()))
            except Rejected as exc:
                raise WitnessAnswerRefused(f"a longer log than this one, {exc.reason.value}") from None
            if held.node_id != self.node_id:
                raise WitnessAnswerRefused("a longer log than this one, another node's")
            log.error("checkpoint.behind_witness", size=self.store.frontier.size, held=size)
            if self.on_behind is not None and not self._behind_told:
                self._behind_told = True
                try:
                    await self.on_behind(held)
                except Exception:  # its store refused, say: tried again at the next lodge
                    self._behind_told = False
                    log.exception("restore.ask_failed")
            return None
        kept = await self.store.fetchone("SELECT frontier FROM witnessed WHERE id = 1")
        if kept is not None and (frontier := CompactRange.from_bytes(bytes(kept[0]))).size == size:
            return frontier
        return await self.store.audit_range(size)  # kept at another size (a lodge interrupted): read it

    async def run(self) -> None:
        """Lodge once LODGE_EVERY_ENTRIES entries wait, or LODGE_EVERY_S after the last try once any
        wait. The store wakes this task at those sizes only, not at every commit in between."""
        # The period is time passed, so the loop's clock: the wall's may be set back meanwhile.
        loop = asyncio.get_running_loop()
        last = loop.time()
        missed = False  # the last try failed, or had no stream: the next waits for the period's end
        while True:
            waiting = self.store.frontier.size - self.lodged_size
            # While nothing waits, the first entry wakes it (due at once if the last try is a
            # period old); once entries wait, only the count or the period's end does, and after
            # a missed try only the period's end: not a call to the gateway at every commit.
            self.store.wake_at = NEVER if missed else self.lodged_size + (LODGE_EVERY_ENTRIES if waiting else 1)
            period_left_s = LODGE_EVERY_S - (loop.time() - last) if waiting else LODGE_EVERY_S
            with contextlib.suppress(TimeoutError):  # not wait_for: see Outbox.run
                async with asyncio.timeout(max(period_left_s, 0)):
                    await self.store.appended.wait()
            self.store.appended.clear()
            waiting = self.store.frontier.size - self.lodged_size
            period_ended = loop.time() - last >= LODGE_EVERY_S
            if waiting and (period_ended or (waiting >= LODGE_EVERY_ENTRIES and not missed)):
                missed = not (self.link.connected.is_set() and await self.lodge())
                last = loop.time()  # the next try is a period on, or sooner once the count is reached again
