"""Retention: received summaries and the bodies of delivered messages are kept for the
configured time, then purged. A purge is itself audited. The audit log is kept by
its own rule: it is never purged here (its entries hold no summary content)."""

from __future__ import annotations

import asyncio

from linkage import logs
from linkage.clock import Clock
from linkage.envelope import MAX_AGE_MS
from node.store import Store

DAY_MS = 86_400_000
log = logs.get("node.retention")


# The inbox is also the replay defence: a message id must be remembered at least as
# long as a message can be fresh enough to be accepted (linkage.envelope.MAX_AGE_MS).
MIN_KEEP_DAYS = MAX_AGE_MS // DAY_MS + 1


async def purge(store: Store, clock: Clock, keep_days: int) -> dict[str, int]:
    """Delete what is older than `keep_days` (never less than the replay window); 0 keeps everything."""
    if keep_days <= 0:
        return {}
    keep_days = max(keep_days, MIN_KEEP_DAYS)
    cutoff = clock.now_ms() - keep_days * DAY_MS
    async with store.tx() as tx:
        await tx.execute(
            "DELETE FROM inbox_tokens WHERE inbox_seq IN (SELECT seq FROM inbox WHERE received_at_ms < ?)", (cutoff,)
        )
        inbox = (await tx.execute("DELETE FROM inbox WHERE received_at_ms < ?", (cutoff,))).rowcount
        sent = (
            await tx.execute(
                "UPDATE outbox SET envelope = x'' WHERE created_at_ms < ? AND state IN ('delivered', 'undeliverable') "
                "AND length(envelope) > 0",
                (cutoff,),
            )
        ).rowcount
        counts = {"received": inbox, "sent_bodies": sent}
        if inbox or sent:
            await tx.audit("retention.purged", detail={**counts, "keep_days": keep_days, "before_ms": cutoff})
    log.info("retention.purged", **counts)
    return counts


async def run(store: Store, clock: Clock, keep_days: int) -> None:
    while True:
        await purge(store, clock, keep_days)
        await asyncio.sleep(DAY_MS / 1000)
