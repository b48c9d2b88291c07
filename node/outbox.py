"""The sender side of delivery: the outbox worker, gateway acks and receipts.

A row is written with its share in one transaction (sharing.py). It becomes
"sent" only when the gateway has forwarded it, and "delivered" only on the
recipient's signed receipt. Delivery is at least once on the wire and exactly
once in effect: a sent row without a receipt is sent again after the receipt
timeout with the same message id, and the recipient's inbox absorbs the
duplicate and receipts it again.

While a recipient is away, the whole destination backs off (capped, jittered,
exponential) and only one message probes it at a time; the gateway tells us
when it is back, and everything for it is sent at once. Nothing spins.

When the gateway says BUSY, what it names (this node's sending rate, or one
recipient's stream) is held: nothing more goes there until the gateway's
retry-after (or our own back-off) ends, then the oldest messages first, a
window at a time that grows by one with each message forwarded and halves with
each BUSY, as TCP does. An overloaded gateway so gets less traffic, not more,
and a backlog drains in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from linkage import logs
from linkage.backoff import backoff_ms
from linkage.clock import Clock
from linkage.config import DeliverySettings
from linkage.directory import TrustedDirectory
from linkage.envelope import verify_receipt
from linkage.ids import is_peer
from linkage.reasons import DEFERRING_REASONS, Reason, Rejected
from linkage.v1 import envelope_pb2, gateway_pb2
from linkage.writability import log_failure
from node.link import NotConnected
from node.messaging import Queued
from node.metrics import NodeMetrics
from node.store import Store, Tx

BATCH = 256  # also the window: at most this many unacknowledged sends
BUSY_BASE_MS = 100
BUSY_CAP_MS = 10_000
# Whose limit a BUSY answer names, as the metric's label; an unknown scope holds only its recipient.
_BUSY_LIMITS = {gateway_pb2.BUSY_SCOPE_SENDER: "sender", gateway_pb2.BUSY_SCOPE_GATEWAY: "gateway"}
SENDER_SCOPE = "*"  # the hold on all this node sends: its rate, or the gateway's store (no node id is "*")
HOLD_MEMORY_MS = 60_000  # a hold this long past its end, with no BUSY since, is forgotten
LIVE = ("queued", "sent")
LATE_RECEIPT = "its recipient's receipt came after it was given up as undeliverable: it was delivered"
GAUGE_INTERVAL_S = 1.0  # outbox depth and age gauges are refreshed at most this often
# What the gateway did with a message is committed with the next write that may not wait
# (usually the receipt, a few ms later), or after this: one fsync fewer per message.
# A crash before it only means the message is sent again, and the recipient absorbs that.
ACK_LINGER_S = 0.02
# A wall clock that goes back further than this was stepped (NTP, a host resumed, a hand
# correction), not slewed: what waits is moved back with it, so each wait keeps its length.
STEP_BACK_MS = 1_000
NEVER = 1 << 62  # the worker's next due time when nothing live waits (a share or an answer wakes it)

log = logs.get("node.outbox")
# Why a recipient defers a message, and what to do, as its sender's status says it.
_WHY_DEFERRED = {
    Reason.UNKNOWN_SENDER: "its directory does not name this node yet (it is older than the one this node joined "
    "in); it is sent again until it is taken or expires here",
    Reason.UNKNOWN_KEY: "it does not hold yet a key this message needs: the new keys its directory names for it, "
    "which the message is sealed to, are not in place there, or its directory does not name yet the key this node "
    "signs with; it is sent again until it is taken or expires here: if it goes on, ask the recipient's agency IT "
    "to put its rotated keys in place",
    "clock": "by its clock the message was made in the future or is too old, so one of the two clocks is likely "
    "wrong; it is sent again until it is taken or expires here: ask agency IT at both ends to check their clocks",
}


def _status_name(status: gateway_pb2.SendStatus.ValueType) -> str:
    """A send status as the logs say it: one this node's contract does not know, by its number."""
    try:
        return gateway_pb2.SendStatus.Name(status)
    except ValueError:
        return str(status)


@dataclass(frozen=True)
class _Checked:
    """A receipt whose signature verified, with its body."""

    receipt: envelope_pb2.Receipt
    body: envelope_pb2.ReceiptBody


@dataclass
class Hold:
    """Where the gateway said BUSY: nothing goes there before `resume_ms`, then at most
    `window` unanswered at a time."""

    busy_answers: int  # BUSY rounds in a row, for our own back-off when the gateway gives none
    resume_ms: int
    window: int

    def shut(self, now: int, unanswered: int) -> bool:
        return now < self.resume_ms or unanswered >= self.window


class FrameSender(Protocol):
    connected: asyncio.Event

    async def send_all(self, frames: list[gateway_pb2.NodeFrame]) -> None: ...


class Outbox:
    def __init__(
        self,
        store: Store,
        link: FrameSender,
        trust: TrustedDirectory,
        node_id: str,
        clock: Clock,
        settings: DeliverySettings,
        rng: random.Random | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.store = store
        self.link = link
        self.trust = trust
        self.node_id = node_id
        self.clock = clock
        self.settings = settings
        self.rng = rng or random.Random()
        self.metrics = metrics or NodeMetrics()
        self.wake = asyncio.Event()
        self._in_flight: dict[str, str] = {}  # message id -> recipient, awaiting the gateway's ack
        # recipient -> (consecutive "offline" answers, when to probe it again)
        self._away: dict[str, tuple[int, int]] = {}
        self._holds: dict[str, Hold] = {}  # recipient or SENDER_SCOPE -> its hold after BUSY
        self._changes = asyncio.Condition()
        self.version = 0  # bumped on every delivery state change
        self._stopping = False
        self._gauges_at = -GAUGE_INTERVAL_S
        self._gauges_later: asyncio.TimerHandle | None = None
        self._gauge_task: asyncio.Future[None] | None = None
        self._expiry_due_ms = 0  # when the oldest live message becomes undeliverable (0: check now)
        # The hot path reads nothing back: messages just committed are handed over in memory,
        # and the store is scanned only when something is due there (a retry, a back-off ending,
        # a receipt overdue), after a reconnect, or when a recipient comes back.
        self._fresh: list[Queued] = []
        # At least how many rows are 'queued': the last count plus every message queued since
        # (rows enter that state only by being queued). It starts at the mark, to count first.
        self._queued_at_most = settings.outbox_high_water
        self._scan = True
        self._next_due_ms = 0
        self._settled: dict[str, list[asyncio.Future[str]]] = {}  # message id -> its watchers' futures
        self._withheld: set[str] = set()  # being cancelled in a transaction under way: not to be sent
        self._announce = False  # a change made elsewhere (recovered messages) for the worker to announce
        self._latest_ms = 0  # the latest the clock has read, to notice it set back

    # -- observing ---------------------------------------------------------

    async def changed(self) -> None:
        async with self._changes:
            self.version += 1
            self._changes.notify_all()
        # The depth and age gauges cost a query: refresh them at once if they are older than
        # the interval, else once when it ends; never once per message.
        if time.monotonic() - self._gauges_at >= GAUGE_INTERVAL_S:
            await self.refresh_gauges()
        elif self._gauges_later is None and not self._stopping:
            self._gauges_later = asyncio.get_running_loop().call_later(GAUGE_INTERVAL_S, self._refresh_later)

    def _refresh_later(self) -> None:
        self._gauges_later = None
        self._gauge_task = asyncio.ensure_future(self.refresh_gauges())
        self._gauge_task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _stop_gauges(self) -> None:
        """At shutdown: no refresh left to start after the store closes (a task made just
        before the loop closes would never run)."""
        if self._gauges_later is not None:
            self._gauges_later.cancel()
            self._gauges_later = None
        if self._gauge_task is not None:
            with contextlib.suppress(Exception):
                await self._gauge_task

    async def refresh_gauges(self) -> None:
        """Read the depth and age gauges. They follow a committed change, so a failed read is
        logged and not raised: the change stands, and the gauges are read a second on."""
        self._gauges_at = time.monotonic()
        try:
            rows = await self.store.fetchall(
                "SELECT recipient, COUNT(*), MIN(COALESCE(queued_again_at_ms, created_at_ms)) FROM outbox "
                "WHERE state IN ('queued', 'sent') GROUP BY recipient"
            )
        except Exception as exc:
            log_failure(log, "outbox.gauges_failed", exc)
            return
        self.metrics.outbox(self.clock.now_ms(), {recipient: (n, oldest) for recipient, n, oldest in rows})

    async def wait_change(self, since: int) -> int:
        """Wait until some delivery state changed after `since` (a previous `version`)."""
        async with self._changes:
            await self._changes.wait_for(lambda: self.version > since)
            return self.version

    async def settled(self, message_id: str) -> str:
        """Wait for a message's final state ("delivered", "undeliverable" or "cancelled") once it is
        committed, without polling: for callers that follow one message."""
        # Each watcher has its own future, so one giving up leaves the others waiting.
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        watchers = self._settled.setdefault(message_id, [])
        watchers.append(future)
        row = self.store.lookup("SELECT state FROM outbox WHERE message_id = ?", (message_id,))
        if row is not None and row[0] not in LIVE:
            self._settle(message_id, row[0])  # it settled before we started watching
        try:
            return await future
        finally:  # answered or given up: forget this watcher, and the message once nobody waits
            watchers.remove(future)
            if not watchers and self._settled.get(message_id) is watchers:
                del self._settled[message_id]

    def _settle(self, message_id: str, state: str) -> None:
        for future in self._settled.pop(message_id, []):
            if not future.done():
                future.set_result(state)

    def unsent(self, count: int) -> None:
        """Messages recorded undeliverable as they were made (no key to seal them to)."""
        self.metrics.undeliverable.inc(count)

    def idle(self) -> bool:
        """Nothing handed over waits to be sent, and nothing sent waits for the gateway's answer."""
        return not self._in_flight and not self._fresh

    def has_room(self) -> bool:
        """Whether a new share may queue: fewer messages wait to be sent than the high-water
        mark. The rows are counted only when those queued since the last count could have
        reached it, not on every share."""
        high_water = self.settings.outbox_high_water
        if self._queued_at_most >= high_water:
            # The IN term is what lets SQLite count in outbox_due, which holds the live rows only.
            (queued,) = self.store.lookup(
                "SELECT COUNT(*) FROM outbox WHERE state IN ('queued', 'sent') AND state = 'queued'"
            )
            self._queued_at_most = int(queued)
        return self._queued_at_most < high_water

    # -- the worker --------------------------------------------------------

    def fresh(self, queued: list[Queued]) -> None:
        """Messages just committed to the outbox: sent without reading them back."""
        self._fresh += queued
        self._queued_at_most += len(queued)
        now = self.clock.now_ms()
        self._expiry_due_ms = min(self._expiry_due_ms, now + self.settings.undeliverable_after_ms)
        self.wake.set()

    async def run(self) -> None:
        while not self._stopping:
            self.wake.clear()
            timeout: float | None = 1.0
            handed_over = bool(self._fresh)
            try:
                if self._announce:
                    self._announce = False
                    await self.changed()
                now = await self.follow_clock()
                if now >= self._expiry_due_ms:
                    await self.expire_overdue()  # non-delivery reports do not wait for the gateway
                    self._scan = True  # which message expires next is the store's to say
                if self._scan or now >= self._next_due_ms or not self.link.connected.is_set():
                    self._scan = False
                    if self.link.connected.is_set():
                        sent = await self._send_due()
                        # What the scan sent is on its way; what waits for its destination's back-off
                        # is the store's to bring back. The rest (beyond the batch, or handed over
                        # during the scan) stays for the fast path.
                        self._fresh = [q for q in self._fresh if q[0] not in sent and q[1] not in self._away]
                    await self._plan()
                else:
                    await self._send(self._take_fresh())
                timeout = self._wait_s()
                if handed_over and self.idle():
                    # What was handed over was left in the store unsent (its destination is backing
                    # off): nothing else will announce that, and those waiting for idle() must hear it.
                    await self.changed()
            except Exception as exc:  # the worker must outlive a bad moment; the rows wait in the store
                log_failure(log, "outbox.worker_failed", exc)
            # asyncio.timeout, not wait_for: on 3.11 wait_for can lose a cancellation
            # that races with the event, and then stop() would wait for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.wake.wait()

    async def follow_clock(self) -> int:
        """The wall clock, as the worker reads it each round: if it was set back since the
        last reading, what waits is moved back with it (`_clock_set_back`)."""
        now = self.clock.now_ms()
        if self._latest_ms - now > STEP_BACK_MS:
            await self._clock_set_back(now)
        self._latest_ms = max(self._latest_ms, now)
        return now

    async def _clock_set_back(self, now: int) -> None:
        """Retries, back-offs and holds are set in wall time: when the clock is set back, each
        is moved back as far, so it waits as long as it was meant to and not the step besides.
        (Expiry is not: when a message was made is a fact.)"""
        stepped = self._latest_ms - now
        self._latest_ms = now  # tried once: should the store refuse it, retries wait out the step
        self._away = {r: (failures, resume - stepped) for r, (failures, resume) in self._away.items()}
        for hold in self._holds.values():
            hold.resume_ms -= stepped
        self._scan = True
        async with self.store.tx() as tx:
            moved = await tx.execute(
                "UPDATE outbox SET next_attempt_at_ms = next_attempt_at_ms - ? "
                "WHERE state IN ('queued', 'sent') AND next_attempt_at_ms > ?",
                (stepped, now),
            )
        log.warning("clock.stepped_back", ms=stepped, retries_moved=moved.rowcount)

    def wait_of(self, recipient: str) -> tuple[bool, bool, int]:
        """Why, and until when, this node holds back what it has for `recipient`, as only it
        knows: the gateway said its node is away, or BUSY (for it, for this node's own rate, or
        for the gateway's store)."""
        away = self._away.get(recipient)
        holds = [h for h in (self._holds.get(recipient), self._holds.get(SENDER_SCOPE)) if h is not None]
        until = max(([away[1]] if away else []) + [h.resume_ms for h in holds], default=0)
        return away is not None, bool(holds), until if until > self.clock.now_ms() else 0

    # -- cancelling ----------------------------------------------------------

    def withhold(self, message_ids: Iterable[str]) -> set[str]:
        """Of these queued messages, those not on their way to the gateway now, kept back from
        this moment (for a transaction under way to cancel); the others are beyond recall."""
        withheld = {m for m in message_ids if m not in self._in_flight}
        self._withheld |= withheld
        return withheld

    def cancelled(self, message_ids: set[str]) -> None:
        """Their cancellation is committed: forget them, and tell whoever follows them."""
        self._withheld -= message_ids
        self._fresh = [q for q in self._fresh if q[0] not in message_ids]
        for message_id in message_ids:
            self._settle(message_id, "cancelled")
        if self._scan:
            self.wake.set()  # a scan they filled left what lies behind them in the store

    def release(self, message_ids: set[str]) -> None:
        """Their cancellation failed: they are queued still, and go as any other."""
        self._withheld -= message_ids
        self._scan = True  # the fast path may have dropped them: the store has them
        self.wake.set()

    async def drain(self, timeout_s: float) -> int:
        """Send nothing new; wait up to `timeout_s` for the acks of what is in flight.

        Returns how many were still unacknowledged (they stay due and go again
        after restart, with the same ids).
        """
        self._stopping = True
        self.wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s), self._changes:
                await self._changes.wait_for(lambda: not self._in_flight)
        await self._stop_gauges()
        return len(self._in_flight)

    async def _plan(self) -> None:
        """Read from the store when the worker next has something to do: a message due, a hold
        or back-off ending, or the oldest live message's expiry."""
        now = self.clock.now_ms()
        _, sendable, blocked = self._blocked(now)
        later, earliest, expires = await self.store.fetchone(
            f"SELECT MIN(CASE WHEN {sendable} AND next_attempt_at_ms > ? THEN next_attempt_at_ms END), "
            f"MIN(CASE WHEN {sendable} THEN next_attempt_at_ms END), MIN(created_at_ms) + ? "
            "FROM outbox WHERE state IN ('queued', 'sent')",
            (*blocked, now, *blocked, self.settings.undeliverable_after_ms),
        )
        if expires is None:
            self._expiry_due_ms = self._next_due_ms = NEVER  # nothing live: fresh() brings them forward
            return
        # Messages queued later expire later, so until then there is nothing to expire.
        self._expiry_due_ms = int(expires)
        if not self.link.connected.is_set():
            self._next_due_ms = NEVER  # nothing can go: the connection, when it comes, wakes the worker
            return
        due = [int(later)] if later is not None else []
        # What is due now and was not sent waits for an answer to what is in flight (a
        # probe, a full window, a batch beyond which it lies) or for a cancellation to end,
        # each of which wakes the worker: it is not looked for again meanwhile. Only with
        # none of those is it looked for again at once.
        if earliest is not None and earliest <= now and not (self._in_flight or self._withheld):
            due.append(now)
        # What a hold or a back-off keeps back is due when it ends.
        ends = [h.resume_ms for h in self._holds.values() if h.resume_ms > now]
        ends += [resume for _, resume in self._away.values() if resume > now]
        self._next_due_ms = min(due + ends, default=NEVER)

    def _wait_s(self) -> float | None:
        """How long the worker may sleep: until the next thing due or to expire, or (None)
        until woken, with nothing live."""
        until = min(self._next_due_ms, self._expiry_due_ms)
        return None if until >= NEVER else max(0.01, (until - self.clock.now_ms()) / 1000)

    async def send_due(self) -> int:
        """Send what is due now according to the store; return how many envelopes went out."""
        return len(await self._send_due())

    async def _send_due(self) -> set[str]:
        if self._stopping:
            return set()
        now = self.clock.now_ms()
        everything, sendable, held = self._blocked(now)
        if everything:
            return set()
        # Under a hold on our own rate, read no more than its window lets go.
        hold = self._holds.get(SENDER_SCOPE)
        limit = BATCH if hold is None else min(BATCH, hold.window - len(self._in_flight))
        # The oldest due are chosen in the index, and only their envelopes read: sorting
        # every due row with its envelope made each batch of a large backlog cost 15x more.
        rows = await self.store.fetchall(
            "SELECT o.message_id, o.recipient, b.envelope FROM outbox o JOIN outbox_bodies b ON b.seq = o.seq "
            "WHERE o.seq IN (SELECT seq FROM outbox "
            f"WHERE state IN ('queued', 'sent') AND next_attempt_at_ms <= ? AND {sendable} "
            "ORDER BY created_at_ms, message_id LIMIT ?) ORDER BY o.created_at_ms, o.message_id",
            (now, *held, limit),
        )
        if len(rows) == limit:
            self._scan = True  # more are due than one batch: look again once these are answered
        return await self._send((m, r, envelope_pb2.Envelope.FromString(e)) for m, r, e in rows)

    def _take_fresh(self) -> list[Queued]:
        fresh, self._fresh = self._fresh[:BATCH], self._fresh[BATCH:]
        if self._fresh:
            self.wake.set()
        # Each will be due again (receipt overdue) at the latest this long from now.
        self._next_due_ms = min(self._next_due_ms, self.clock.now_ms() + self.settings.receipt_timeout_ms)
        return fresh

    async def _send(self, messages: Iterable[Queued]) -> set[str]:
        """Send these (unless in flight, or their destination is backing off); the ids sent."""
        if self._stopping:
            return set()
        now = self.clock.now_ms()
        probing = set(self._in_flight.values()) & self._away.keys()
        unanswered = self._unanswered() if self._holds else None
        going: list[str] = []
        frames = []
        for message_id, recipient, envelope in messages:
            if message_id in self._in_flight or message_id in self._withheld:
                continue
            if recipient in self._away:
                if recipient in probing or now < self._away[recipient][1]:
                    continue  # one probe at a time, and only when the destination's back-off is over
                probing.add(recipient)
            if unanswered is not None:
                if self._held_back(recipient, unanswered, now):
                    continue  # the store has it; an answer or the hold's end brings it back
                unanswered[recipient] += 1
                unanswered[SENDER_SCOPE] += 1
            self._in_flight[message_id] = recipient
            going.append(message_id)
            frames.append(gateway_pb2.NodeFrame(send=envelope))
        if not frames:
            return set()
        try:
            await self.link.send_all(frames)
        except NotConnected:
            for message_id in going:
                self._in_flight.pop(message_id, None)  # disconnected() may have cleared them already
            self._scan = True
            return set()
        return set(going)

    def _unanswered(self) -> Counter[str]:
        """Messages awaiting the gateway's answer, per recipient and in all (SENDER_SCOPE)."""
        unanswered = Counter(self._in_flight.values())
        unanswered[SENDER_SCOPE] = len(self._in_flight)
        return unanswered

    def _blocked(self, now: int) -> tuple[bool, str, list[str]]:
        """What nothing may be sent to now: everything, or the recipients named by the SQL
        condition returned (with its parameters), which a scan adds so that it neither reads
        nor wakes for what it could not send: held after a BUSY, with its window full, or away
        (its back-off not over, or a message already probing it)."""
        if not self._holds and not self._away:
            return False, "1", []
        unanswered = self._unanswered()
        shut = {scope for scope, hold in self._holds.items() if hold.shut(now, unanswered[scope])}
        if SENDER_SCOPE in shut:
            return True, "0", []
        blocked = sorted(shut | {r for r, (_, resume) in self._away.items() if now < resume or unanswered[r]})
        if not blocked:
            return False, "1", []
        return False, f"recipient NOT IN ({', '.join('?' * len(blocked))})", blocked

    def _held_back(self, recipient: str, unanswered: Counter[str], now: int) -> bool:
        for scope in (recipient, SENDER_SCOPE):
            hold = self._holds.get(scope)
            if hold is not None and hold.shut(now, unanswered[scope]):
                return True
        return False

    async def expire_overdue(self) -> None:
        """Non-delivery reports: what was not delivered in time becomes undeliverable."""
        cutoff = self.clock.now_ms() - self.settings.undeliverable_after_ms
        overdue = "state IN ('queued', 'sent') AND created_at_ms <= ?"
        if await self.store.fetchone(f"SELECT 1 FROM outbox WHERE {overdue} LIMIT 1", (cutoff,)) is None:
            return  # the usual answer, found without a write transaction
        days = self.settings.undeliverable_after_ms / 86_400_000
        async with self.store.tx() as tx:
            # Read again where it is written: a receipt committed since the look above stands.
            rows = await tx.fetchall(
                f"UPDATE outbox SET state = 'undeliverable', reason = ? || state || ')' WHERE {overdue} "
                "RETURNING message_id, share_id, recipient, reason",
                (f"not delivered within {days:g} days (last state: ", cutoff),
            )
            for message_id, share_id, recipient, reason in sorted(rows):  # by id: in the order they were made
                await tx.audit(
                    "message.undeliverable",
                    message_id=message_id,
                    counterpart=recipient,
                    detail={"share_id": share_id, "reason": reason, "by": "sender"},
                )
        expired = [message_id for message_id, *_ in rows]
        if not expired:
            return
        self.metrics.undeliverable.inc(len(expired))
        for message_id in expired:
            self._settle(message_id, "undeliverable")
        log.warning("message.undeliverable", count=len(expired), reason="timeout")
        await self.changed()

    # -- what the gateway and the recipients tell us ------------------------

    async def on_connected(self) -> None:
        """A new stream: acks and receipts of the old one are lost, so everything live is due now."""
        self._in_flight.clear()
        self._away.clear()
        self._holds.clear()
        async with self.store.tx() as tx:
            await tx.execute("UPDATE outbox SET next_attempt_at_ms = ? WHERE state IN ('queued', 'sent')", (tx.now_ms,))
        self._scan = True
        self.wake.set()

    async def disconnected(self) -> None:
        self._in_flight.clear()  # acks for these will never come
        await self.changed()

    async def on_answers(self, answers: Sequence[gateway_pb2.SendAck | envelope_pb2.Receipt]) -> None:
        """What the gateway did with our sends, and their recipients' signed receipts, as
        they came on the stream: recorded in order, in one transaction for the lot."""
        now = self.clock.now_ms()
        items: list[gateway_pb2.SendAck | _Checked] = []
        for answer in answers:
            if isinstance(answer, gateway_pb2.SendAck):
                items.append(answer)
                continue
            try:
                items.append(
                    _Checked(answer, verify_receipt(answer, me=self.node_id, directory=self.trust.current(now)))
                )
            except Rejected as exc:
                log.warning("receipt.rejected", reason=exc.reason.value)
        if not items:
            return
        acks = [i for i in items if isinstance(i, gateway_pb2.SendAck)]
        receipted: list[tuple[envelope_pb2.ReceiptBody, int]] = []  # with when each message was queued
        refused: list[str] = []
        deferred = False
        try:
            # Acks alone may wait to share a later COMMIT; a receipt settles a message now.
            async with self.store.tx(linger_s=ACK_LINGER_S if len(acks) == len(items) else 0.0) as tx:
                for item in items:
                    if isinstance(item, gateway_pb2.SendAck):
                        if await self._record_ack(tx, item):
                            refused.append(item.message_id)
                    elif item.body.status == envelope_pb2.RECEIPT_STATUS_DEFERRED:
                        deferred |= await self._record_deferral(tx, item.body)
                    elif (queued_at_ms := await self._record_receipt(tx, item)) is not None:
                        receipted.append((item.body, queued_at_ms))
        finally:
            # Only now may the worker pick these rows again: their new state is committed.
            for ack in acks:
                self._in_flight.pop(ack.message_id, None)
        for message_id in refused:
            self._settle(message_id, "undeliverable")
        for body, queued_at_ms in receipted:
            self._receipted(body, queued_at_ms)
        if acks or deferred:
            if deferred or any(ack.status != gateway_pb2.SEND_STATUS_FORWARDED for ack in acks):
                self._scan = True  # a retry or a back-off was written to the store
            self.wake.set()
        if acks or receipted or deferred:  # a deferral changes why a message waits: its watchers hear it
            await self.changed()

    async def _record_ack(self, tx: Tx, ack: gateway_pb2.SendAck) -> bool:
        """Record what the gateway did with a message; True if that made it final (refused)."""
        row = await (
            await tx.execute(
                "SELECT attempts, state, share_id FROM outbox WHERE message_id = ? AND recipient = ?",
                (ack.message_id, ack.recipient_node),
            )
        ).fetchone()
        if row is None or row[1] not in LIVE:
            return False
        log.debug("ack", message_id=ack.message_id, status=_status_name(ack.status))  # one of ours: a known id
        attempts, state, share_id = int(row[0]) + 1, row[1], row[2]
        recipient = ack.recipient_node
        if ack.status == gateway_pb2.SEND_STATUS_FORWARDED:
            self._away.pop(recipient, None)
            self._widen(recipient, tx.now_ms)
            await tx.execute(
                "UPDATE outbox SET state = 'sent', attempts = ?, sent_at_ms = COALESCE(sent_at_ms, ?), "
                "next_attempt_at_ms = ? WHERE message_id = ?",
                (attempts, tx.now_ms, tx.now_ms + self.settings.receipt_timeout_ms, ack.message_id),
            )
            if state == "queued":
                self.metrics.sent.inc()
                await tx.audit(
                    "message.sent", message_id=ack.message_id, counterpart=recipient, detail={"share_id": share_id}
                )
        elif ack.status == gateway_pb2.SEND_STATUS_RECIPIENT_OFFLINE:
            await tx.execute("UPDATE outbox SET attempts = ? WHERE message_id = ?", (attempts, ack.message_id))
            failures, resume = self._away.get(recipient, (0, 0))
            if tx.now_ms < resume:
                return False  # more answers from the same window: the destination already waits
            resume = tx.now_ms + self._retry_ms(failures)
            self._away[recipient] = (failures + 1, resume)
            await tx.execute(
                "UPDATE outbox SET next_attempt_at_ms = ? WHERE recipient = ? AND state IN ('queued', 'sent')",
                (resume, recipient),
            )
        elif ack.status == gateway_pb2.SEND_STATUS_BUSY:
            await tx.execute("UPDATE outbox SET attempts = ? WHERE message_id = ?", (attempts, ack.message_id))
            self._hold(ack, tx.now_ms)
        elif ack.status != gateway_pb2.SEND_STATUS_REJECTED:
            # Unspecified, or a status this node's contract does not know (a newer gateway's):
            # not said to be forwarded, nor refused for good, so it is sent again later.
            log.warning("ack.status_unknown", message_id=ack.message_id, status=_status_name(ack.status))
            await tx.execute(
                "UPDATE outbox SET attempts = ?, next_attempt_at_ms = ? WHERE message_id = ?",
                (attempts, tx.now_ms + self._retry_ms(attempts - 1), ack.message_id),
            )
        else:
            self.metrics.undeliverable.inc()
            reason = f"refused by the gateway: {ack.reason or 'no reason given'}"
            await tx.execute(
                "UPDATE outbox SET state = 'undeliverable', attempts = ?, reason = ? WHERE message_id = ?",
                (attempts, reason, ack.message_id),
            )
            await tx.audit(
                "message.undeliverable",
                message_id=ack.message_id,
                counterpart=recipient,
                detail={"share_id": share_id, "reason": reason, "by": "gateway"},
            )
            return True
        return False

    def _retry_ms(self, failures: int) -> int:
        """How long a message waits to go again after `failures` answers that were not final."""
        return backoff_ms(failures, self.settings.retry_base_ms, self.settings.retry_cap_ms, self.rng)

    def _hold(self, ack: gateway_pb2.SendAck, now: int) -> None:
        """BUSY: hold back what the gateway named, and halve what may go there at once."""
        limit = _BUSY_LIMITS.get(ack.busy_scope, "recipient")
        scope = ack.recipient_node if limit == "recipient" else SENDER_SCOPE  # else everything this node sends waits
        self.metrics.busy.labels(limit).inc()
        hold = self._holds.get(scope)
        if hold is not None and now < hold.resume_ms:
            return  # more answers to what went with the first: the scope already waits
        answers = hold.busy_answers if hold else 0
        delay = min(ack.retry_after_ms or backoff_ms(answers, BUSY_BASE_MS, BUSY_CAP_MS, self.rng), BUSY_CAP_MS)
        window = max(1, hold.window // 2) if hold else 1
        self._holds[scope] = Hold(answers + 1, now + delay, window)
        log.warning(
            "gateway.busy",
            limit=limit,
            counterpart=ack.recipient_node,
            hold_ms=delay,
            window=window,
        )

    def _widen(self, recipient: str, now: int) -> None:
        """FORWARDED: a held scope may have one more unanswered; once wide enough, no hold."""
        for scope in (recipient, SENDER_SCOPE):
            hold = self._holds.get(scope)
            if hold is None or now < hold.resume_ms:
                continue
            hold.busy_answers, hold.window = 0, hold.window + 1
            if hold.window >= BATCH or now - hold.resume_ms >= HOLD_MEMORY_MS:
                del self._holds[scope]  # wide open again, or long past: an old BUSY says nothing now
            self._scan = True  # what the window held back waits in the store

    def requeued(self, undeliverable: int) -> None:
        """Delivered messages were queued again, or made undeliverable, as their recipient's
        store was put back to an earlier copy (node/redelivery.py): committed, and the store's
        to bring back."""
        self.metrics.undeliverable.inc(undeliverable)
        self._scan = True
        self._expiry_due_ms = 0  # the oldest of them may now be the next to expire
        self.wake.set()

    def recovered(self) -> None:
        """Messages this node sent were entered as delivered, given back by their recipients
        after this store was put back to an earlier copy (node/returned_copies.py): committed,
        and those watching delivery states are to hear of it."""
        self._announce = True
        self.wake.set()

    async def on_peer_online(self, node_id: str) -> None:
        """The recipient is back: send it everything now, including what it may have lost
        when it went away (forwarded but never receipted); its inbox absorbs repeats. A name
        no agency could have, or this node's own, is said and left: a gateway that is not what
        it should be would otherwise cost a transaction for each one it sends."""
        if not is_peer(node_id, self.node_id):
            log.warning("gateway.answer_malformed", left_out=1, problem="not an agency")
            return
        self._away.pop(node_id, None)
        async with self.store.tx() as tx:
            await tx.execute(
                "UPDATE outbox SET next_attempt_at_ms = ? WHERE recipient = ? AND state IN ('queued', 'sent')",
                (tx.now_ms, node_id),
            )
        self._scan = True
        self.wake.set()

    async def _record_receipt(self, tx: Tx, checked: _Checked) -> int | None:
        """Record a verified receipt; when the message was queued (made, or queued again for a
        recipient whose store was put back), or None if it was not ours to settle (a repeated
        receipt, or one for a message we never sent)."""
        body = checked.body
        accepted = body.status == envelope_pb2.RECEIPT_STATUS_ACCEPTED
        reason = "" if accepted else f"refused by the recipient: {body.reason}"
        row = await (
            await tx.execute(
                "UPDATE outbox SET state = ?, delivered_at_ms = ?, receipt = ?, receipt_log_size = ?, "
                "reason = CASE WHEN state = 'undeliverable' AND ? THEN ? ELSE ? END "
                # A cancelled one too: an attempt before the cancelling may have reached the recipient.
                # And one given up for want of a receipt that comes after all: it proves delivery.
                "WHERE message_id = ? AND recipient = ? AND digest = ? "
                "AND (state IN ('queued', 'sent', 'cancelled') OR (state = 'undeliverable' AND receipt IS NULL)) "
                "RETURNING share_id, COALESCE(queued_again_at_ms, created_at_ms), reason",
                (
                    "delivered" if accepted else "undeliverable",
                    body.received_at_ms if accepted else None,
                    checked.receipt.SerializeToString(),
                    body.log_size if accepted and body.log_size else None,  # 0: a recipient that does not say
                    accepted,
                    LATE_RECEIPT,
                    reason,
                    body.message_id,
                    body.recipient_node,
                    body.envelope_sha256,
                ),
            )
        ).fetchone()
        if row is None:
            return None
        await tx.audit(
            "message.delivered" if accepted else "message.undeliverable",
            message_id=body.message_id,
            counterpart=body.recipient_node,
            detail={"share_id": row[0], "received_at_ms": body.received_at_ms, "reason": row[2], "by": "recipient"},
        )
        return int(row[1])

    async def _record_deferral(self, tx: Tx, body: envelope_pb2.ReceiptBody) -> bool:
        """The recipient will not take the message yet, as the two clocks stand or until its new
        keys are in place: it goes again after a back-off, until its own expiry, and its status
        says why meanwhile. False if it was not ours to send again (settled, or a message we
        never sent)."""
        row = await tx.fetchone(
            "SELECT attempts, share_id, reason FROM outbox WHERE message_id = ? AND recipient = ? AND digest = ? "
            "AND state IN ('queued', 'sent')",
            (body.message_id, body.recipient_node, body.envelope_sha256),
        )
        if row is None:
            return False
        # Only a code this node knows goes into its log and status: the text is the recipient's.
        code = body.reason if body.reason in DEFERRING_REASONS else "reason unknown"
        reason = f"not taken yet by the recipient ({code}): {_WHY_DEFERRED.get(code, _WHY_DEFERRED['clock'])}"
        await tx.execute(
            "UPDATE outbox SET reason = ?, next_attempt_at_ms = ? WHERE message_id = ? AND recipient = ?",
            (reason, tx.now_ms + self._retry_ms(max(0, int(row[0]) - 1)), body.message_id, body.recipient_node),
        )
        if row[2] != reason:  # the recipient's first word of it, or a new why: each try after says the same
            await tx.audit(
                "message.deferred",
                message_id=body.message_id,
                counterpart=body.recipient_node,
                detail={"share_id": row[1], "reason": reason, "code": code, "by": "recipient"},
            )
        log.warning("message.deferred", message_id=body.message_id, counterpart=body.recipient_node, reason=code)
        return True

    def _receipted(self, body: envelope_pb2.ReceiptBody, queued_at_ms: int) -> None:
        """A receipt is committed: tell whoever follows the message, and count it."""
        accepted = body.status == envelope_pb2.RECEIPT_STATUS_ACCEPTED
        self._away.pop(body.recipient_node, None)
        self._settle(body.message_id, "delivered" if accepted else "undeliverable")
        if accepted:
            self.metrics.delivered.inc()
            self.metrics.latency.observe(max(0, body.received_at_ms - queued_at_ms) / 1000)
        else:
            self.metrics.undeliverable.inc()
        log.debug("receipt", message_id=body.message_id, accepted=accepted)
