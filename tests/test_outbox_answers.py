"""What the outbox does with each of the gateway's answers to a send: forwarded, the
recipient away, BUSY (which holds back what it names, then reopens a window at a time),
refused, or a status this node does not know; and how many attempts each message took.

The outbox and its store are real; the gateway is the test, answering each frame
the sender writes. Rows are put in the outbox directly: what is in an envelope
does not matter to when it is sent.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import pytest

from linkage import logs
from linkage.clock import ManualClock
from linkage.config import DeliverySettings
from linkage.directory import TrustedDirectory
from linkage.envelope import parse_routing
from linkage.ids import uuid7
from linkage.v1 import envelope_pb2, gateway_pb2
from node.messaging import add_to_outbox
from node.outbox import BATCH, BUSY_BASE_MS, HOLD_MEMORY_MS, Outbox
from node.store import Store
from tests.harness import LogWatch, audit_events, wait_count

FORWARDED, BUSY = gateway_pb2.SEND_STATUS_FORWARDED, gateway_pb2.SEND_STATUS_BUSY
OFFLINE, REJECTED = gateway_pb2.SEND_STATUS_RECIPIENT_OFFLINE, gateway_pb2.SEND_STATUS_REJECTED
UNKNOWN = gateway_pb2.SendStatus.ValueType(99)  # a newer gateway's
RETRY_BASE_MS, RECEIPT_TIMEOUT_MS = DeliverySettings().retry_base_ms, DeliverySettings().receipt_timeout_ms
HOUR_MS = 3_600_000


class Gateway:
    """What the sender wrote, by recipient, in order."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.connected.set()
        self.sent: list[tuple[str, str]] = []  # (message id, recipient)
        self.wrote = asyncio.Event()

    async def send_all(self, frames: list[gateway_pb2.NodeFrame]) -> None:
        self.wrote.set()
        for frame in frames:
            routing = parse_routing(frame.send)
            self.sent.append((routing.message_id, routing.recipient_node))

    def take(self) -> list[tuple[str, str]]:
        sent, self.sent = self.sent, []
        return sent


@asynccontextmanager
async def opened_outbox(tmp_path: Path) -> AsyncIterator[tuple[Outbox, Gateway, ManualClock]]:
    """Node a's outbox on a store of its own, the test its gateway, on a clock it moves."""
    clock = ManualClock()
    store = await Store.open(tmp_path / "a.sqlite", clock)
    gateway = Gateway()
    box = Outbox(
        store,
        gateway,
        cast(TrustedDirectory, None),  # only receipts need it; none come here
        "a",
        clock,
        DeliverySettings(),
        random.Random(0),
    )
    try:
        yield box, gateway, clock
    finally:
        await store.close()


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[tuple[Outbox, Gateway, ManualClock]]:
    async with opened_outbox(tmp_path) as opened:
        yield opened


def envelope(message_id: str, recipient: str) -> envelope_pb2.Envelope:
    routing = envelope_pb2.RoutingHeader(message_id=message_id, sender_node="a", recipient_node=recipient)
    return envelope_pb2.Envelope(routing=routing.SerializeToString(), ciphertext=b"sealed")


async def queue(box: Outbox, clock: ManualClock, recipient: str, n: int) -> list[str]:
    ids = []
    async with box.store.tx() as tx:
        for _ in range(n):
            message_id = uuid7(clock.now_ms())
            sealed = envelope(message_id, recipient).SerializeToString()
            await add_to_outbox(tx, message_id, message_id, recipient, sealed, b"\x00")
            ids.append(message_id)
            clock.advance(1)  # one after another, so "oldest first" is well defined
    return ids


async def answer(
    box: Outbox,
    sent: list[tuple[str, str]],
    status: gateway_pb2.SendStatus.ValueType,
    scope: gateway_pb2.BusyScope.ValueType = gateway_pb2.BUSY_SCOPE_UNSPECIFIED,
    retry_after_ms: int = 0,
) -> None:
    """The same answer to each of these, as they come together on the stream."""
    acks = [
        gateway_pb2.SendAck(
            message_id=message_id,
            recipient_node=recipient,
            status=status,
            busy_scope=scope,
            retry_after_ms=retry_after_ms,
        )
        for message_id, recipient in sent
    ]
    await box.on_answers(acks)


async def stored(box: Outbox, message_id: str) -> tuple[str, int, int]:
    """A message's state, its attempts and when it is next due, as its store has them."""
    row = await box.store.fetchone(
        "SELECT state, attempts, next_attempt_at_ms FROM outbox WHERE message_id = ?", (message_id,)
    )
    return row[0], int(row[1]), int(row[2])


def counted(box: Outbox, what: str) -> float | None:
    """How many messages the node's metrics count as `what` (sent, undeliverable...)."""
    return box.metrics.registry.get_sample_value(f"linkage_node_messages_{what}_total")


def backed_off(delay: int, retry: int, base_ms: int) -> bool:
    """Whether `delay` is a back-off for retry number `retry` (from 0): doubled each time and
    jittered by 0.8 to 1.4, so that one retry's range never overlaps the next one's."""
    raw = base_ms << retry
    return raw * 4 // 5 - 1 <= delay <= raw * 7 // 5


async def test_a_busy_recipient_is_held_back_alone_then_reopened_a_window_at_a_time(
    outbox: tuple[Outbox, Gateway, ManualClock],
) -> None:
    box, gateway, clock = outbox
    full = await queue(box, clock, "b", 6)
    free = await queue(box, clock, "c", 3)
    await box.send_due()
    first = gateway.take()
    assert [m for m, _ in first] == full + free
    await answer(box, [s for s in first if s[1] == "b"], BUSY, gateway_pb2.BUSY_SCOPE_RECIPIENT)
    await answer(box, [s for s in first if s[1] == "c"], FORWARDED)

    busy = box.metrics.registry.get_sample_value("linkage_node_busy_answers_total", {"limit": "recipient"})
    assert busy == len(full)  # counted per answer, though the hold is set once
    away, held, until = box.wait_of("b")  # what the delivery queues tell agency IT
    assert (away, held) == (False, True) and until > clock.now_ms()
    assert box.wait_of("c") == (False, False, 0)

    later = await queue(box, clock, "c", 2)
    await box.send_due()
    assert [m for m, _ in gateway.take()] == later  # c goes on; nothing goes to b while it is held

    clock.advance(int(BUSY_BASE_MS * 1.4))  # the longest our own back-off can be for a first BUSY
    # Oldest first, each once: one probe; forwarded, so two at once; both forwarded, so up
    # to four (the three left).
    for expected in (full[:1], full[1:3], full[3:]):
        await box.send_due()
        sent = gateway.take()
        assert [m for m, _ in sent] == expected
        await answer(box, sent, FORWARDED)


async def test_the_senders_own_limit_holds_everything_until_the_gateway_says(
    outbox: tuple[Outbox, Gateway, ManualClock],
) -> None:
    box, gateway, clock = outbox
    ids = await queue(box, clock, "b", 2) + await queue(box, clock, "c", 2)
    await box.send_due()
    sent = gateway.take()
    await answer(box, sent[:1], FORWARDED)
    await answer(box, sent[1:], BUSY, gateway_pb2.BUSY_SCOPE_SENDER, 5_000)
    clock.advance(4_999)
    assert await box.send_due() == 0  # every recipient waits for the gateway's time, not ours
    clock.advance(1)
    await box.send_due()
    assert gateway.take() == [(ids[1], "b")]  # then one, the oldest
    await answer(box, [(ids[1], "b")], BUSY, gateway_pb2.BUSY_SCOPE_SENDER, 1_000)
    clock.advance(1_000)
    await box.send_due()
    assert gateway.take() == [(ids[1], "b")]  # the window stays at one after another BUSY


async def test_a_new_stream_forgets_every_hold(outbox: tuple[Outbox, Gateway, ManualClock]) -> None:
    box, gateway, clock = outbox
    ids = await queue(box, clock, "b", 3)
    await box.send_due()
    await answer(box, gateway.take(), BUSY, gateway_pb2.BUSY_SCOPE_SENDER, 60_000)
    await box.on_connected()  # perhaps another gateway: what held on the old stream says nothing now
    await box.send_due()
    assert [m for m, _ in gateway.take()] == ids


async def test_a_hold_long_over_is_forgotten_at_the_next_forwarded_answer(
    outbox: tuple[Outbox, Gateway, ManualClock],
) -> None:
    box, gateway, clock = outbox
    ids = await queue(box, clock, "b", 4)
    await box.send_due()
    await answer(box, gateway.take(), BUSY, gateway_pb2.BUSY_SCOPE_SENDER, 1_000)
    clock.advance(1_000 + HOLD_MEMORY_MS)
    await box.send_due()
    probe = gateway.take()
    assert probe == [(ids[0], "b")]  # still one probe first
    await answer(box, probe, FORWARDED)  # the hold ended a minute ago: forgotten, not widened to two
    await box.send_due()
    assert [m for m, _ in gateway.take()] == ids[1:]


async def test_a_hold_waits_as_long_as_the_gateway_said_though_the_clock_is_set_back_meanwhile(
    outbox: tuple[Outbox, Gateway, ManualClock],
) -> None:
    """A hold ends at a time on the wall clock: set back an hour and left there, it would hold
    everything an hour longer than the gateway asked."""
    box, gateway, clock = outbox
    (message_id,) = await queue(box, clock, "b", 1)
    worker = asyncio.create_task(box.run())
    try:
        async with asyncio.timeout(30):
            await gateway.wrote.wait()  # the worker has read the clock, and sent
            await answer(box, gateway.take(), BUSY, gateway_pb2.BUSY_SCOPE_SENDER, 5_000)
            gateway.wrote.clear()
            watch = LogWatch("clock.stepped_back")
            logs.configure("info", stream=watch)
            clock.advance(-3_600_000)
            box.wake.set()
            await watch.seen.wait()
            assert await box.send_due() == 0  # still held: 5 s from when it was said
            clock.advance(5_000)
            box.wake.set()
            await gateway.wrote.wait()  # unmoved, the hold would keep it back for an hour
        assert gateway.take() == [(message_id, "b")]
    finally:
        logs.configure("info")
        await box.drain(0)
        await worker


async def test_a_back_off_waits_as_long_as_it_was_set_though_the_clock_is_set_back_meanwhile(
    outbox: tuple[Outbox, Gateway, ManualClock],
) -> None:
    """The recipient away, its message to go again after a back-off: the clock set back an hour
    moves the stored retry and the back-off back as far, once, so the message goes when it was
    meant to, not an hour later (nor sooner)."""
    box, gateway, clock = outbox
    (message_id,) = await queue(box, clock, "b", 1)
    worker = asyncio.create_task(box.run())
    watch = LogWatch("clock.stepped_back")
    try:
        async with asyncio.timeout(30):
            await gateway.wrote.wait()
            await answer(box, gateway.take(), OFFLINE)
            gateway.wrote.clear()
            _, _, due = await stored(box, message_id)
            waits = due - clock.now_ms()
            logs.configure("info", stream=watch)
            clock.advance(-HOUR_MS)
            box.wake.set()
            await watch.seen.wait()
            assert (await stored(box, message_id))[2] == due - HOUR_MS
            assert box.wait_of("b") == (True, False, due - HOUR_MS)
            clock.advance(waits - 1)
            assert await box.send_due() == 0
            clock.advance(1)
            box.wake.set()
            await gateway.wrote.wait()
        assert gateway.take() == [(message_id, "b")]
        assert [e["ms"] for e in watch.records("clock.stepped_back")] == [HOUR_MS]
    finally:
        logs.configure("info")
        await box.drain(0)
        await worker


async def test_each_answer_is_an_attempt_and_only_the_first_forwarding_is_audited_as_sent(
    outbox: tuple[Outbox, Gateway, ManualClock],
) -> None:
    box, gateway, clock = outbox
    (message_id,) = await queue(box, clock, "b", 1)
    await box.send_due()
    await answer(box, gateway.take(), OFFLINE)
    state, attempts, due = await stored(box, message_id)
    assert (state, attempts) == ("queued", 1)
    clock.advance(due - clock.now_ms())
    await box.send_due()
    await answer(box, gateway.take(), BUSY, gateway_pb2.BUSY_SCOPE_RECIPIENT, 500)
    assert (await stored(box, message_id))[:2] == ("queued", 2)
    clock.advance(500)
    await box.send_due()
    await answer(box, gateway.take(), UNKNOWN)  # not said to be refused: sent again after a back-off
    state, attempts, due = await stored(box, message_id)
    assert (state, attempts) == ("queued", 3) and backed_off(due - clock.now_ms(), 2, RETRY_BASE_MS)

    clock.advance(due - clock.now_ms())
    await box.send_due()
    version = box.version
    await answer(box, gateway.take(), FORWARDED)
    assert box.version > version  # whoever follows delivery states hears it went
    assert await stored(box, message_id) == ("sent", 4, clock.now_ms() + RECEIPT_TIMEOUT_MS)
    clock.advance(RECEIPT_TIMEOUT_MS)  # no receipt: sent again, one attempt more, but sent once
    await box.send_due()
    await answer(box, gateway.take(), FORWARDED)
    assert (await stored(box, message_id))[:2] == ("sent", 5)
    sent = [(e["message_id"], e["counterpart"], e["detail"]) for e in await audit_events(box.store, "message.sent")]
    assert sent == [(message_id, "b", {"share_id": message_id})]  # queue() makes each its own share
    assert counted(box, "sent") == 1


async def test_a_recipient_away_is_probed_by_one_message_after_a_back_off_that_doubles(
    outbox: tuple[Outbox, Gateway, ManualClock],
) -> None:
    box, gateway, clock = outbox
    ids = await queue(box, clock, "b", 3)
    await box.send_due()
    watching = [asyncio.create_task(box.settled(m)) for m in ids]
    await asyncio.sleep(0)  # each is watching
    await answer(box, gateway.take(), OFFLINE)  # an answer for each, the first setting the back-off
    away, held, until = box.wait_of("b")
    assert (away, held) == (True, False) and backed_off(until - clock.now_ms(), 0, RETRY_BASE_MS)
    assert [await stored(box, m) for m in ids] == [("queued", 1, until)] * 3  # the destination waits as one

    clock.advance(until - clock.now_ms())
    await box.send_due()
    assert gateway.take() == [(ids[0], "b")]  # one probe, the oldest
    await answer(box, [(ids[0], "b")], OFFLINE)  # away still as its back-off ended: twice as long
    _, _, again = box.wait_of("b")
    assert backed_off(again - until, 1, RETRY_BASE_MS)
    assert [await stored(box, m) for m in ids] == [("queued", 2, again)] + [("queued", 1, again)] * 2

    clock.advance(again - until)
    await box.send_due()
    assert gateway.take() == [(ids[0], "b")]
    await answer(box, [(ids[0], "b")], FORWARDED)  # back: the rest go at once
    assert box.wait_of("b") == (False, False, 0)
    await box.send_due()
    assert gateway.take() == [(m, "b") for m in ids[1:]]
    assert not any(task.done() for task in watching)  # away and forwarded are not final
    for task in watching:
        task.cancel()


async def test_a_refusal_is_final_at_once_and_an_answer_for_a_settled_or_unknown_message_changes_nothing(
    outbox: tuple[Outbox, Gateway, ManualClock],
) -> None:
    box, _, clock = outbox
    refused, forwarded = await queue(box, clock, "b", 2)
    await box.send_due()
    watching = {m: asyncio.create_task(box.settled(m)) for m in (refused, forwarded)}
    await asyncio.sleep(0)  # each is watching
    refusal = gateway_pb2.SendAck(message_id=refused, recipient_node="b", status=REJECTED, reason="no such node")
    ack = gateway_pb2.SendAck(message_id=forwarded, recipient_node="b", status=FORWARDED)
    await box.on_answers([refusal, ack])
    async with asyncio.timeout(30):
        assert await watching[refused] == "undeliverable"
    assert (await stored(box, refused))[:2] == ("undeliverable", 1)
    (entry,) = await audit_events(box.store, "message.undeliverable")
    assert entry["detail"] == {"share_id": refused, "reason": "refused by the gateway: no such node", "by": "gateway"}

    never_sent = gateway_pb2.SendAck(message_id=uuid7(clock.now_ms()), recipient_node="b", status=REJECTED)
    await box.on_answers([refusal, never_sent])  # the gateway said it twice; and an id not ours
    assert (await stored(box, refused))[:2] == ("undeliverable", 1)
    assert len(await audit_events(box.store, "message.undeliverable")) == 1
    assert counted(box, "undeliverable") == 1
    assert (await stored(box, forwarded))[:2] == ("sent", 1)
    assert not watching[forwarded].done()  # forwarded is not delivered
    watching[forwarded].cancel()


async def test_busy_at_the_moment_a_hold_ends_holds_again(outbox: tuple[Outbox, Gateway, ManualClock]) -> None:
    box, gateway, clock = outbox
    ids = await queue(box, clock, "b", 2)
    await box.send_due()
    await answer(box, gateway.take(), BUSY, gateway_pb2.BUSY_SCOPE_SENDER, 1_000)
    clock.advance(1_000)
    await box.send_due()
    probe = gateway.take()
    assert probe == [(ids[0], "b")]
    await answer(box, probe, BUSY, gateway_pb2.BUSY_SCOPE_SENDER, 2_000)
    assert box.wait_of("b") == (False, True, clock.now_ms() + 2_000)
    assert await box.send_due() == 0


async def test_each_forwarded_answer_widens_the_window_by_one_and_busy_halves_it(
    outbox: tuple[Outbox, Gateway, ManualClock],
) -> None:
    box, gateway, clock = outbox
    await queue(box, clock, "b", 8)
    await box.send_due()
    await answer(box, gateway.take(), BUSY, gateway_pb2.BUSY_SCOPE_RECIPIENT, 1_000)
    clock.advance(1_000)
    windows: list[int] = []
    for status in (FORWARDED, FORWARDED, BUSY):  # the first at the very moment the hold ended
        await box.send_due()
        sent = gateway.take()
        windows.append(len(sent))
        await answer(box, sent, status, gateway_pb2.BUSY_SCOPE_RECIPIENT, 1_000)
    clock.advance(1_000)
    await box.send_due()
    windows.append(len(gateway.take()))
    assert windows == [1, 2, 4, 2]


async def test_our_own_back_off_for_busy_doubles_until_a_message_is_forwarded(
    outbox: tuple[Outbox, Gateway, ManualClock],
) -> None:
    """With no retry-after from the gateway, each BUSY in a row holds twice as long as the last;
    a message forwarded starts the count again."""
    box, gateway, clock = outbox
    await queue(box, clock, "b", 3)
    holds = []
    for status in (BUSY, BUSY, FORWARDED, BUSY):
        await box.send_due()
        await answer(box, gateway.take(), status, gateway_pb2.BUSY_SCOPE_RECIPIENT)
        if status == BUSY:
            holds.append(box.wait_of("b")[2] - clock.now_ms())
            clock.advance(holds[-1])
    assert [backed_off(hold, retry, BUSY_BASE_MS) for hold, retry in zip(holds, (0, 1, 0), strict=True)] == [True] * 3


async def test_a_window_grown_to_a_whole_batch_is_no_hold_at_all(
    outbox: tuple[Outbox, Gateway, ManualClock],
) -> None:
    box, gateway, clock = outbox
    await queue(box, clock, "b", BATCH)
    await box.send_due()
    await answer(box, gateway.take(), BUSY, gateway_pb2.BUSY_SCOPE_RECIPIENT, 1_000)
    clock.advance(1_000)
    windows: list[int] = []
    while box.wait_of("b")[1] and len(windows) < 10:
        await box.send_due()
        sent = gateway.take()
        windows.append(len(sent))
        await answer(box, sent, FORWARDED)
    assert windows == [2**n for n in range(8)]  # 255 forwarded: the window is 256, and gone


async def test_messages_given_up_tell_whoever_follows_them_and_are_counted(
    outbox: tuple[Outbox, Gateway, ManualClock],
) -> None:
    """Two messages not delivered in time, one forwarded and one never taken by the gateway:
    each is given up saying its last state, in the audit log in the order they were made;
    one waiting for the first to settle hears it given up, watchers of delivery states hear
    of a change, and the metric counts both."""
    box, _, clock = outbox
    forwarded, queued = await queue(box, clock, "b", 2)
    await answer(box, [(forwarded, "b")], FORWARDED)
    settling = asyncio.create_task(box.settled(forwarded))
    changing = asyncio.create_task(box.wait_change(box.version))
    clock.advance(box.settings.undeliverable_after_ms)
    await box.expire_overdue()
    async with asyncio.timeout(15):
        assert await settling == "undeliverable"
        await changing
    assert counted(box, "undeliverable") == 2
    given_up = [(e["message_id"], e["detail"]) for e in await audit_events(box.store, "message.undeliverable")]
    assert given_up == [
        (
            message_id,
            {"share_id": message_id, "reason": f"not delivered within 7 days (last state: {last})", "by": "sender"},
        )
        for message_id, last in ((forwarded, "sent"), (queued, "queued"))
    ]


async def test_a_round_the_store_refuses_is_said_by_sqlite_s_name_and_the_worker_goes_on(
    outbox: tuple[Outbox, Gateway, ManualClock],
) -> None:
    """A message overdue while the disk is read-only: the expiry the worker tries each round
    is refused. That was logged with a traceback, as a defect to report, each round; now it
    is said by SQLite's name for why, as every other refusal of a disk that will not take
    writes, and once the disk is mended the message is reported undeliverable."""
    box, gateway, clock = outbox
    (message_id,) = await queue(box, clock, "b", 1)
    worker = asyncio.create_task(box.run())
    watch = LogWatch("outbox.worker_failed")
    try:
        async with asyncio.timeout(30):
            await gateway.wrote.wait()
            box.store.db.execute("PRAGMA query_only = ON")  # as on a disk remounted read-only
            logs.configure("info", stream=watch)
            clock.advance(DeliverySettings().undeliverable_after_ms)
            box.wake.set()
            await watch.seen.wait()
            box.store.db.execute("PRAGMA query_only = OFF")
            box.wake.set()
            undeliverable = "SELECT COUNT(*) FROM outbox WHERE message_id = ? AND state = 'undeliverable'"
            await wait_count(box.store, undeliverable, (message_id,), 1)
        failed = watch.records("outbox.worker_failed")
        assert failed and all(line["error"] == "SQLITE_READONLY" and "exception" not in line for line in failed)
    finally:
        logs.configure("info")
        await box.drain(0)
        await worker
