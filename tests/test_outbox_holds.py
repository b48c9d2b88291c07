"""BUSY from the gateway holds back what it names, then reopens a window at a time.

The outbox and its store are real; the gateway is the test, answering each frame
the sender writes. Rows are put in the outbox directly: what is in an envelope
does not matter to when it is sent.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
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
from node.outbox import BUSY_BASE_MS, HOLD_MEMORY_MS, Outbox
from node.store import Store
from tests.harness import LogWatch

FORWARDED, BUSY = gateway_pb2.SEND_STATUS_FORWARDED, gateway_pb2.SEND_STATUS_BUSY


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


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[tuple[Outbox, Gateway, ManualClock]]:
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


async def queue(box: Outbox, clock: ManualClock, recipient: str, n: int) -> list[str]:
    ids = []
    async with box.store.tx() as tx:
        for _ in range(n):
            message_id = uuid7(clock.now_ms())
            routing = envelope_pb2.RoutingHeader(message_id=message_id, sender_node="a", recipient_node=recipient)
            envelope = envelope_pb2.Envelope(routing=routing.SerializeToString(), ciphertext=b"sealed")
            await add_to_outbox(tx, message_id, message_id, recipient, envelope.SerializeToString(), b"\x00")
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
    for message_id, recipient in sent:
        ack = gateway_pb2.SendAck(
            message_id=message_id,
            recipient_node=recipient,
            status=status,
            busy_scope=scope,
            retry_after_ms=retry_after_ms,
        )
        await box.on_answers([ack])


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
