"""A node restored from a backup gets back what other agencies sent it since.

A restored store is as it was when the backup was taken: what arrived after that is gone
from it, though every sender holds the receipt it signed. So `linkage backup restore`
leaves a mark beside the store it puts in place (linkage/store_notes.py), and at its next
start the node records the restore in its audit log and asks every other node, in a
signed message, to send again what it receipted from the restored log's last entry on.
A store put back by other means (a virtual machine's snapshot) leaves no mark, but the
witness holds a checkpoint of a longer log than it has: the node asks the same way then.

Each node sends those messages again as they were, with their ids and envelopes (the
inbox absorbs any the restored node still holds), in the order it first sent them, so a
withdrawal still follows what it withdraws. A message that can no longer go (past its
delivery time, or its copy purged by retention) becomes undeliverable, with the reason,
for its sender's duty view to tell the agency another way. Both ends audit it all.

What the restored node itself sent after the backup is not in its store either; each node
asked returns the copies it holds of that, under the restored node's own signature, and
the restored node records each it verifies (node/returned_copies.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from linkage import logs
from linkage.envelope import MAX_AGE_MS, MAX_CLOCK_SKEW_MS
from linkage.reasons import Rejected
from linkage.store_notes import Restored, clear_mark, in_place, read_mark
from linkage.v1 import audit_pb2, directory_pb2, envelope_pb2, summary_pb2, workflow_pb2
from node.context import NodeContext
from node.event_numbers import PER_MS, EventNumbers
from node.messaging import Fill, Messenger
from node.returned_copies import Returning, copies_for, recover
from node.store import Tx

KIND = envelope_pb2.MESSAGE_KIND_REDELIVERY_REQUEST
NO_LOG = 1 << 62  # a request that gives no log size (an older node's) is judged by time alone
NODE = summary_pb2.Practitioner(id="system", role="system")  # the node asks, not a practitioner
log = logs.get("node.redelivery")


@dataclass(frozen=True)
class Loss:
    """What a store lost, as far as its node can tell: nothing after its log's last entry."""

    restore_id: str
    last_entry_ms: int  # the store's log's last entry, as it was put back
    taken_at_ms: int  # when the copy put back was made, as best known
    newest_id: str  # the newest id the store held of this node's making, as it was put back ("" unknown)
    found: dict[str, Any]  # how the loss was found, for the audit entry


async def ask_again_if_restored(ctx: NodeContext) -> bool:
    """At start: if this store was just restored, record it and ask every other node for
    what it lost. Done once: the mark goes when the request is committed. True while it
    waits for a current directory to seal the requests by (the node asks again as it takes
    one from the gateway: a restored node has often been away past its directory's days)."""
    store = ctx.store.path
    try:
        restored = read_mark(store)
    except ValueError as exc:
        log.error("restore.mark_unreadable", problem=str(exc))
        return False
    if restored is None:
        return False
    if await _recorded(ctx, restored):
        clear_mark(store)  # committed before a crash took the mark's removal
        return False
    if not in_place(store, restored):  # cut short before the swap: the store is the one it had
        log.warning("restore.not_in_place", restore_id=restored.restore_id)
        clear_mark(store)
        return False
    found = {
        "found": "backup_restore",
        "backup_sha256": restored.backup_sha256,
        "restored_at_ms": restored.restored_at_ms,
        "log_entries": restored.log_entries,
    }
    loss = Loss(restored.restore_id, restored.last_entry_ms, restored.backup_taken_at_ms, restored.newest_id, found)
    if not await _ask_again(ctx, loss):
        return True
    clear_mark(store)
    return False


async def ask_again_if_rolled_back(
    ctx: NodeContext,
    witnessed: audit_pb2.Checkpoint,
    entries_at_start: int,
    last_entry_ms_at_start: int,
    newest_id_at_start: str,
) -> None:
    """The witness holds a checkpoint of a longer log than this one: the store was put back
    by other means than `backup restore` (a virtual machine's snapshot, files copied back)
    since that checkpoint was lodged. Ask as for a restore, unless that was done since."""
    asked = await ctx.store.fetchone(
        "SELECT 1 FROM audit WHERE event = 'store.restored' AND ts_ms > ?", (witnessed.at_ms,)
    )
    if asked is not None:
        return
    found = {"found": "behind_witness", "witnessed_entries": witnessed.tree_size, "log_entries": entries_at_start}
    loss = Loss(ctx.new_id(), last_entry_ms_at_start, last_entry_ms_at_start, newest_id_at_start, found)
    await _ask_again(ctx, loss)


async def _ask_again(ctx: NodeContext, loss: Loss) -> bool:
    """Audit the loss and queue a redelivery request to every other active node, in one
    transaction; False if there is no directory to seal them by (asked once there is)."""
    request = workflow_pb2.RedeliveryRequest(
        restore_id=loss.restore_id,
        # Less the skew allowed, for what two clocks a little apart put just before it; from
        # the start of time (1, as 0 is no time at all) for a store that came back empty. A
        # clock set back further is met by the log's size and the newest id, which no clock moves.
        since_ms=max(1, loss.last_entry_ms - MAX_CLOCK_SKEW_MS),
        backup_taken_at_ms=loss.taken_at_ms,
        log_entries=loss.found["log_entries"],
        newest_id=loss.newest_id,
    )
    try:  # a directory current, naming a key of ours to sign with
        directory = ctx.trust.current(ctx.clock.now_ms())
        peers = sorted(
            node_id
            for node_id, entry in directory.nodes.items()
            if node_id != ctx.node_id and entry.status == directory_pb2.NODE_STATUS_ACTIVE
        )
        sealed = await ctx.messenger.seal_each(
            peers, KIND, (), loss.restore_id, lambda _: lambda body: body.redelivery.CopyFrom(request), NODE
        )
    except Rejected as exc:
        log.error("restore.not_announced", restore_id=loss.restore_id, reason=exc.reason.value)
        return False
    async with ctx.store.tx() as tx:
        # Delivery events from here on are numbered past any a copy of this store gave.
        numbers = await EventNumbers.load(tx.fetchall)
        (last,) = await tx.fetchone("SELECT coalesce(max(seq), 0) FROM audit", ())
        await tx.execute(
            "INSERT OR REPLACE INTO restores(log_entries, numbered_from) VALUES (?, ?)",
            (loss.found["log_entries"], numbers.next_from(tx.now_ms, last)),
        )
        await tx.audit(
            "store.restored",
            detail={
                "restore_id": loss.restore_id,
                "backup_taken_at_ms": loss.taken_at_ms,
                "lost_since_ms": loss.last_entry_ms,
                "asked": peers,
                **loss.found,
            },
        )
        # So are received items (ReceivedSummary.seq), which a case system resumes after too:
        # the copy put back numbered those it lost as it numbers those it gets next.
        await tx.execute(
            "INSERT INTO sqlite_sequence(name, seq) SELECT 'inbox', 0 "
            "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'inbox')"
        )
        await tx.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'inbox'", (tx.now_ms * PER_MS,))
        await ctx.messenger.queue(tx, sealed, loss.restore_id, NODE)
    log.warning("store.restored", restore_id=loss.restore_id, found=loss.found["found"], asked=len(peers))
    return True


async def _recorded(ctx: NodeContext, restored: Restored) -> bool:
    row = await ctx.store.fetchone(
        "SELECT 1 FROM audit WHERE seq > ? AND event = 'store.restored' "
        "AND json_extract(entry, '$.detail.restore_id') = ?",
        (restored.log_entries, restored.restore_id),
    )
    return row is not None


@dataclass(frozen=True)
class Redelivery:
    """Both ends of a restore's request: the node asked queues again what the restored node
    lost, and returns what the restored node sent it (node/returned_copies.py); the restored
    node records what it is given back."""

    undeliverable_after_ms: int
    messenger: Messenger  # seals the copies returned, and names this node and its directory
    # Told, once it is committed, that messages were queued again and how many were made
    # undeliverable instead (the outbox sends the first and counts the second).
    on_requeued: Callable[[int], None] = lambda undeliverable: None
    on_recovered: Callable[[], None] = lambda: None  # told, once committed, of messages given back
    # Told, once committed, that cases were closed again from the copies given back: their
    # people's subscriptions, which the restored store made again as it started, are to end.
    on_closed: Callable[[], None] = lambda: None

    async def requested(self, tx: Tx, requester: str, message_id: str, request: workflow_pb2.RedeliveryRequest) -> None:
        # Nothing made before `oldest` can have been delivered since (no node accepts a message
        # that old), and outbox seqs ascend as messages are made (but for those given back after
        # a restore of this node, entered late): read back from the newest only.
        oldest = request.since_ms - MAX_AGE_MS
        row = await (
            await tx.execute(
                "SELECT seq FROM outbox WHERE created_at_ms < ? AND seq NOT IN (SELECT seq FROM outbox_recovered) "
                "ORDER BY seq DESC LIMIT 1",
                (oldest,),
            )
        ).fetchone()
        # Delivered since, by the requester's clock as its receipts gave it; or, whatever that
        # clock did since, past the log it was put back to, as its receipts gave that.
        rows = await (
            await tx.execute(
                "SELECT seq, message_id, share_id, created_at_ms, body_kept, "
                "EXISTS (SELECT 1 FROM outbox_recovered r WHERE r.seq = outbox.seq) FROM outbox "
                "WHERE seq > ? AND recipient = ? AND state = 'delivered' "
                "AND (delivered_at_ms >= ? OR receipt_log_size > ?) ORDER BY seq",
                (row[0] if row else 0, requester, request.since_ms, request.log_entries or NO_LOG),
            )
        ).fetchall()
        expired = tx.now_ms - self.undeliverable_after_ms  # as the outbox expires what it holds
        again: list[Any] = []
        lost: list[Any] = []
        for row in rows:
            _, _, _, created_at_ms, body_kept, _ = row
            (again if body_kept and created_at_ms > expired else lost).append(row)
        await tx.executemany(
            "UPDATE outbox SET state = 'queued', attempts = 0, next_attempt_at_ms = ?, queued_again_at_ms = ?, "
            "reason = '' WHERE seq = ?",
            [(tx.now_ms, tx.now_ms, seq) for seq, *_ in again],
        )
        requeued = f"queued again: {requester} lost it when its store was put back to an earlier copy (a backup)"
        for _, again_id, share_id, *_ in again:  # each delivered message's story goes on: queued, sent, delivered
            await tx.audit(
                "message.queued",
                message_id=again_id,
                counterpart=requester,
                detail={"share_id": share_id, "reason": requeued, "by": "recipient_restored"},
            )
        days = self.undeliverable_after_ms / 86_400_000
        for seq, lost_id, share_id, _, body_kept, recovered in lost:
            if recovered:  # given back after this node's own restore, without what sealing it again takes
                why = (
                    f"this node's own store was put back to a copy since, and {requester} gave back only a copy "
                    "that could not be sealed again (its message.recovered entry says why)"
                )
            elif body_kept:
                why = f"older than {days:g} days"
            else:
                why = "its copy here was purged under the retention rule"
            reason = (
                f"{requester} lost it when its store was put back to an earlier copy (a backup), and it cannot be "
                f"sent again ({why}): tell the agency another way"
            )
            await tx.execute("UPDATE outbox SET state = 'undeliverable', reason = ? WHERE seq = ?", (reason, seq))
            await tx.audit(
                "message.undeliverable",
                message_id=lost_id,
                counterpart=requester,
                detail={"share_id": share_id, "reason": reason, "by": "recipient_restored"},
            )
        returning = await self._return_copies(tx, requester, message_id, request)
        await tx.audit(
            "redelivery.requested",
            message_id=message_id,
            counterpart=requester,
            detail={
                "restore_id": request.restore_id,
                "since_ms": request.since_ms,
                "backup_taken_at_ms": request.backup_taken_at_ms,
                "sent_again": [r[1] for r in again],
                "lost": [r[1] for r in lost],
                "returned": returning.copies,
                **({"too_large_to_return": returning.too_large} if returning.too_large else {}),
            },
        )
        if rows:
            tx.on_commit(lambda: self.on_requeued(len(lost)))
        tx.on_commit(
            lambda: log.warning(
                "redelivery.requested",
                counterpart=requester,
                sent_again=len(again),
                lost=len(lost),
                returned=returning.copies,
            )
        )

    async def _return_copies(
        self, tx: Tx, requester: str, message_id: str, request: workflow_pb2.RedeliveryRequest
    ) -> Returning:
        """Queue to `requester` what it sent this node since, in as many messages as it takes."""
        returning = await copies_for(tx, requester, request.since_ms, request.newest_id)
        for part in returning.parts:
            returned = workflow_pb2.ReturnedCopies(restore_id=request.restore_id, copies=part)
            sealed = await self.messenger.seal_each(
                [requester],
                envelope_pb2.MESSAGE_KIND_RETURNED_COPIES,
                (),
                request.restore_id,
                _carrying(returned),
                NODE,
                in_reply_to=message_id,
            )
            await self.messenger.queue(tx, sealed, request.restore_id, NODE)
        return returning

    async def returned(self, tx: Tx, holder: str, answer: envelope_pb2.MessageBody) -> None:
        """What this node sent `holder` since the copy its store was put back to, given back."""
        directory = self.messenger.trust.current(tx.now_ms)
        messenger = self.messenger
        done = await recover(tx, messenger.node_id, directory, messenger.content_keys, holder, answer)
        for message_id in done.recovered:  # made before the restore: what this node makes now comes after
            messenger.ids.after(message_id)
        if done.recovered:
            tx.on_commit(self.on_recovered)
        if done.closed_cases:
            tx.on_commit(self.on_closed)
        tx.on_commit(
            lambda: log.warning(
                "redelivery.returned",
                counterpart=holder,
                restore_id=answer.returned.restore_id,
                recovered=len(done.recovered),
                not_sendable_again=len(done.unsealable),
                already_held=done.held,
                refused=len(done.refused),
            )
        )


def _carrying(returned: workflow_pb2.ReturnedCopies) -> Callable[[str], Fill]:
    """The content of a message returning copies, to the one node it goes to."""
    return lambda _: lambda body: body.returned.CopyFrom(returned)
