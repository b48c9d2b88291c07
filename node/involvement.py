"""Involvement notices: when this agency joins or leaves a family link, the agencies already
linked to the same people are told (README, "Cases and family links"). A notice is written
with the change that makes it, in the same transaction, and sent once the gateway has said
who is linked: a gateway that cannot be reached, or a node that stops first, delays a notice
but never loses it. A subscription a waiting notice needs (to ask who is linked) is kept
until the notice has gone."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc

from linkage import logs
from linkage.backoff import backoff_ms
from linkage.reasons import Rejected
from linkage.tokens import split_tokens
from linkage.v1 import envelope_pb2, summary_pb2, workflow_pb2
from linkage.writability import log_failure
from node.context import NodeContext
from node.messaging import Fill
from node.store import Tx

log = logs.get("node.involvement")


def by_agency(linked: dict[bytes, list[str]]) -> dict[str, list[bytes]]:
    """The gateway's answer (each token, the agencies linked to it) turned round: each
    agency, the tokens it is linked by."""
    tokens_of: dict[str, list[bytes]] = {}
    for token, nodes in linked.items():
        for node in nodes:
            tokens_of.setdefault(node, []).append(token)
    return tokens_of


async def record(tx: Tx, tokens: list[bytes], joined: bool, actor: summary_pb2.Practitioner) -> None:
    """A notice to send, in the transaction of the change it tells of (none for no tokens)."""
    if tokens:
        await tx.execute(
            "INSERT INTO notices_to_send(joined, tokens, actor) VALUES (?, ?, ?)",
            (int(joined), b"".join(tokens), actor.SerializeToString()),
        )


def _deferred(exc: Exception, **fields: object) -> None:
    """Why notices wait: the gateway could not say who is linked (its status), no current
    directory to seal them by (its reason), or a failure not expected (the store refused)."""
    if isinstance(exc, grpc.aio.AioRpcError):
        log.warning("involvement.notice_deferred", code=exc.code().name, **fields)
    elif isinstance(exc, Rejected):
        log.warning("involvement.notice_deferred", reason=exc.reason.value, **fields)
    else:
        log_failure(log, "involvement.notice_deferred", exc, **fields)


class InvolvementNotices:
    def __init__(self, ctx: NodeContext, ready: asyncio.Event, after_waiting: Callable[[], Awaitable[None]]) -> None:
        """`ready`: the gateway holds this node's subscriptions (it answers only about those);
        `after_waiting`: what to do once notices subscriptions were kept for (`keep`) have
        gone: end those subscriptions."""
        self.ctx = ctx
        self.due = asyncio.Event()
        self.due.set()  # any a node stopped before sending
        self._kept = False  # a subscription is kept for a notice waiting (`keep`)
        self.waiting = 0  # notices not yet sent, as last counted (a gauge reads it)
        self._ready = ready
        self._after_waiting = after_waiting
        self._sending = asyncio.Lock()

    async def keep(self, ending: list[bytes]) -> set[bytes]:
        """Of these subscriptions about to end, those a notice waiting to go needs (to ask who
        is linked): they are kept, and ended (`after_waiting`) once it has gone, by whichever
        send takes it."""
        if not ending:
            return set()
        rows = await self.ctx.store.fetchall("SELECT tokens FROM notices_to_send")
        kept = {t for (tokens,) in rows for t in split_tokens(tokens)}.intersection(ending)
        if kept:
            self._kept = True
            self.due.set()  # gone meanwhile, it is the duty's to end them
        return kept

    async def send(self) -> None:
        """Send every notice waiting, oldest first; if they cannot go now, they wait for `run`.
        Called after the change that made them is committed, so what stops them is not the
        caller's: its change was made."""
        try:
            await self._send_waiting()
            await self._end_kept()
        except Exception as exc:
            _deferred(exc)
            await self.later()

    async def later(self) -> None:
        """What waits goes once the gateway holds this node's subscriptions again. Due first,
        and counted as it can be: called after the change that made them is committed, a
        count the store refuses must not fail the call that made it (the gauge keeps its last
        value, and is counted again as they go)."""
        self.due.set()
        try:
            await self.count()
        except Exception as exc:
            log_failure(log, "involvement.count_failed", exc)

    async def run(self) -> None:
        """Send what waits once the gateway holds this node's subscriptions, backing off while
        it cannot go (the gateway cannot answer, or the store or the directory refuses)."""
        attempt = 0
        while True:
            await self.due.wait()
            await self.ctx.link.connected.wait()
            await self._ready.wait()
            self.due.clear()
            try:
                await self._send_waiting()  # those a node stopped before sending, or that waited
                await self._end_kept()
                attempt = 0
            except Exception as exc:  # they wait, and are tried again: nothing else would ask for them
                _deferred(exc, attempt=attempt)
                await self.later()
                await asyncio.sleep(backoff_ms(attempt, 200, 30_000) / 1000)
                attempt += 1

    async def _send_waiting(self) -> None:
        async with self._sending:
            rows = await self.ctx.store.fetchall("SELECT seq, joined, tokens, actor FROM notices_to_send ORDER BY seq")
            for seq, joined, tokens, actor in rows:
                await self._send(seq, bool(joined), split_tokens(tokens), summary_pb2.Practitioner.FromString(actor))
            if rows:
                await self.count()

    async def count(self) -> None:
        """`waiting`, as the store holds them."""
        (self.waiting,) = await self.ctx.store.fetchone("SELECT COUNT(*) FROM notices_to_send")

    async def _end_kept(self) -> None:
        """Notices that subscriptions were kept for have gone: those may end now (any a notice
        still waiting needs are kept again)."""
        if self._kept:
            self._kept = False
            await self._after_waiting()

    async def _send(self, seq: int, joined: bool, tokens: list[bytes], actor: summary_pb2.Practitioner) -> None:
        try:
            per_node = by_agency(await self.ctx.link.discover(tokens))
            await self.ctx.knowing(per_node)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.PERMISSION_DENIED:
                raise
            # The gateway holds no subscription of ours to them (put back from a backup, say):
            # nobody can be named to tell, now or later.
            log.warning("involvement.notice_unsendable", code=exc.code().name, tokens=len(tokens))
            per_node = {}
        sealed = []
        share_id = self.ctx.new_id()
        if per_node:
            sealed = await self.ctx.messenger.seal_each(
                sorted(per_node),
                envelope_pb2.MESSAGE_KIND_INVOLVEMENT_NOTICE,
                tokens,
                share_id,
                self._fill(per_node, joined, actor),
                actor,
            )
        async with self.ctx.store.tx() as tx:
            await tx.execute("DELETE FROM notices_to_send WHERE seq = ?", (seq,))
            if sealed:
                await self.ctx.messenger.queue(tx, sealed, share_id, actor)
        if sealed:
            await self.ctx.changed()

    def _fill(
        self, per_node: dict[str, list[bytes]], joined: bool, actor: summary_pb2.Practitioner
    ) -> Callable[[str], Fill]:
        me = self.ctx.me()

        def fill(recipient: str) -> Fill:
            def write(body: envelope_pb2.MessageBody) -> None:
                body.involvement.CopyFrom(
                    workflow_pb2.InvolvementNotice(
                        joined=joined,
                        link_tokens=per_node[recipient],
                        agency_name=me.agency_name,
                        agency_type=me.agency_type,
                        contact_role=me.contact_role,
                        contact=summary_pb2.Practitioner(role=actor.role),
                    )
                )

            return write

        return fill
