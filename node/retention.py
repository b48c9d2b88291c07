"""Retention: received summaries, the bodies of delivered messages, the record of
information requests and challenges sent, the answers kept for repeated calls, and replies
given back after a restore that wait for a message never sent again are kept for the
configured time, then purged. A purge is itself audited. The audit log is kept by
its own rule: it is never purged here (its entries hold no summary content)."""

from __future__ import annotations

import asyncio

from linkage import logs
from linkage.clock import DAY_MS, Clock
from linkage.envelope import MAX_AGE_MS
from node.store import Store, Tx

PURGE_CHUNK = 200  # rows of each kind per transaction: about 35 ms of deletes (secure_delete overwrites them)
log = logs.get("node.retention")


# The inbox is also the replay defence: a message id must be remembered at least as
# long as a message can be fresh enough to be accepted (linkage.envelope.MAX_AGE_MS).
MIN_KEEP_DAYS = MAX_AGE_MS // DAY_MS + 1


async def purge(store: Store, clock: Clock, keep_days: int, chunk: int = PURGE_CHUNK) -> dict[str, int]:
    """Delete what is older than `keep_days` (never less than the replay window); 0 keeps everything.

    A chunk at a time, each its own transaction with its own audit entry: however much
    is due, the writer (and the event loop its statements run on) is never held for long,
    and a crash part-way leaves every purged chunk purged and recorded."""
    if keep_days <= 0:
        return {}
    keep_days = max(keep_days, MIN_KEEP_DAYS)
    cutoff = clock.now_ms() - keep_days * DAY_MS
    totals = dict.fromkeys(PURGES, 0)
    while True:
        async with store.tx() as tx:
            counts = await _purge_chunk(tx, cutoff, chunk)
            if any(counts.values()):
                await tx.audit("retention.purged", detail={**counts, "keep_days": keep_days, "before_ms": cutoff})
        for name, count in counts.items():
            totals[name] += count
        if max(counts.values()) < chunk:
            break
    log.info("retention.purged", **totals)
    return totals


# What each purge takes, oldest first and found by index: the rows older than the cutoff
# (a LIMIT each), and the statements that remove them and what hangs off them ({} are the keys).
PURGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "received": (
        "SELECT seq FROM inbox WHERE received_at_ms < ? ORDER BY received_at_ms LIMIT ?",
        (
            "DELETE FROM inbox_tokens WHERE inbox_seq IN ({})",
            "DELETE FROM inbox WHERE seq IN ({})",  # chronology rows and bodies cascade
        ),
    ),
    "sent_bodies": (  # delivered, given up or cancelled: a message still in flight keeps its body to send again
        "SELECT seq FROM outbox INDEXED BY outbox_bodies_kept WHERE created_at_ms < ? "
        "AND state IN ('delivered', 'undeliverable', 'cancelled') AND body_kept ORDER BY created_at_ms LIMIT ?",
        ("DELETE FROM outbox_bodies WHERE seq IN ({})", "UPDATE outbox SET body_kept = 0 WHERE seq IN ({})"),
    ),
    "requests": (  # information requests sent, with the agencies asked
        "SELECT request_id FROM info_requests WHERE sent_at_ms < ? ORDER BY sent_at_ms LIMIT ?",
        (
            "DELETE FROM info_requests_asked WHERE request_id IN ({})",
            "DELETE FROM info_requests WHERE request_id IN ({})",
        ),
    ),
    "challenges": (  # professional challenges raised, with their answers
        "SELECT message_id FROM challenges WHERE sent_at_ms < ? ORDER BY sent_at_ms LIMIT ?",
        ("DELETE FROM challenges WHERE message_id IN ({})",),
    ),
    "call_answers": (  # kept to answer a repeated call (node/repeats.py)
        "SELECT request_id FROM call_answers WHERE answered_at_ms < ? ORDER BY answered_at_ms LIMIT ?",
        ("DELETE FROM call_answers WHERE request_id IN ({})",),
    ),
    # This node's replies given back after a restore, whose message never came again
    # (node/recovered_workflow.py). Aged by the reply's own id: a UUIDv7 of this node's,
    # whose first 48 bits are the millisecond it was made, so ids below the cutoff's are older.
    "replies_waiting": (
        "SELECT reply_id FROM replies_given_back "
        "WHERE reply_id < printf('%08x-%04x', MAX(?1, 0) >> 16, MAX(?1, 0) & 65535) ORDER BY reply_id LIMIT ?2",
        ("DELETE FROM replies_given_back WHERE reply_id IN ({})",),
    ),
}


async def _purge_chunk(tx: Tx, cutoff: int, chunk: int) -> dict[str, int]:
    """Up to `chunk` rows of each kind in PURGES; how many of each went."""
    counts = {}
    for name, (oldest, removals) in PURGES.items():
        keys = [key for (key,) in await (await tx.execute(oldest, (cutoff, chunk))).fetchall()]
        if keys:
            marks = ",".join("?" * len(keys))
            for statement in removals:
                await tx.execute(statement.format(marks), keys)
        counts[name] = len(keys)
    return counts


async def run(store: Store, clock: Clock, keep_days: int) -> None:
    while True:
        await purge(store, clock, keep_days)
        await asyncio.sleep(DAY_MS / 1000)
