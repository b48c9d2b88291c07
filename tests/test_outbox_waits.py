"""The outbox worker sleeps until it has something to do: a message due, a back-off or hold
ending, a message to expire, or an event that wakes it (a share, the gateway's answer, the
gateway back). Three waits were once planned as "look again in 10 ms": while the gateway was
away, for a message shared while its recipient was backing off, and once a message had
expired between two tries. Each time nothing had changed, so the worker read the store about
100 times a second, for up to an hour or as long as the gateway was away.

The clock stands still unless a test moves it. Each wait the worker plans is recorded as the
plan is made, and a test awaits the first plan made after the worker is woken."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from linkage.clock import ManualClock
from linkage.config import DeliverySettings
from linkage.v1 import gateway_pb2
from node.link import NotConnected
from node.outbox import BATCH, Outbox
from node.server import NodeServer
from tests.harness import Cluster, make_federation, running, settle, wait_count
from tests.test_delivery import HOUR, csc_away, family_assessment, share
from tests.test_outbox_answers import (
    BUSY,
    FORWARDED,
    OFFLINE,
    Gateway,
    answer,
    counted,
    envelope,
    opened_outbox,
    queue,
)

MINUTE = 60_000
DAY_S = 86_400
LONG_S = 600  # a wait no retry in these tests comes close to, unless it is planned for what is due now
# Back-offs of an hour from the first try, as a recipient long away has reached (the cap).
PATIENT = DeliverySettings(retry_base_ms=HOUR, retry_cap_ms=HOUR)


class Plans:
    """Each wait the worker plans (seconds; None for until woken), as it plans it."""

    def __init__(self, outbox: Outbox, monkeypatch: pytest.MonkeyPatch) -> None:
        self.waits: list[float | None] = []
        self._made = asyncio.Event()
        self._outbox = outbox
        planned = outbox._wait_s

        def recorded() -> float | None:
            wait = planned()
            self.waits.append(wait)
            self._made.set()
            return wait

        monkeypatch.setattr(outbox, "_wait_s", recorded)

    async def until(self, wanted: Callable[[float | None], bool], start: int = 0) -> float | None:
        """The first wait planned from the `start`th on that is as wanted."""
        async with asyncio.timeout(15):
            while True:
                found = [w for w in self.waits[start:] if wanted(w)]
                if found:
                    return found[0]
                self._made.clear()
                await self._made.wait()

    async def made(self, start: int) -> float | None:
        """The `start`th wait planned, once it is."""
        return await self.until(lambda _: True, start)

    async def after_waking(self) -> float | None:
        """The first wait planned after the worker is woken now."""
        start = len(self.waits)
        self._outbox.wake.set()
        return await self.made(start)


def long(wait: float | None) -> bool:
    return wait is None or wait > LONG_S


def timed_long(wait: float | None) -> bool:
    """A long wait for something due, not one until woken (as with nothing live)."""
    return wait is not None and wait > LONG_S


def short(wait: float | None) -> bool:
    return wait is not None and wait <= LONG_S


async def patient_amh(cluster: Cluster, delivery: DeliverySettings = PATIENT) -> NodeServer:
    await cluster.stop_node("amh")
    return await cluster.start_node("amh", delivery=delivery)


async def test_while_the_gateway_is_away_the_worker_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing can go until the gateway is back, and its return wakes the worker; then what
    goes is awaited as the gateway's answer, not looked for again meanwhile."""
    async with csc_away(tmp_path) as (cluster, assessment_id):
        amh = cluster.nodes["amh"]
        plans = Plans(amh.outbox, monkeypatch)
        await share(cluster, assessment_id)  # csc is away: the message waits in the outbox
        port = cluster.gateway.port
        await cluster.gateway.stop(grace=0)
        async with asyncio.timeout(15):
            while amh.link is not None and amh.link.connected.is_set():
                await amh.outbox.wait_change(amh.outbox.version)  # the link's end is a change
        assert isinstance(cluster.gateway.clock, ManualClock)
        cluster.gateway.clock.advance(HOUR)  # the message is due again, with nowhere to go
        assert long(await plans.after_waking())
        start = len(plans.waits)
        await cluster.start_gateway(port)
        # Sent again at once, and its answer awaited: the first short wait is the back-off
        # that answer brings (csc is still away: from 0.8 s).
        assert (await plans.until(short, start) or 0) >= 0.5


async def test_a_message_shared_while_its_recipient_backs_off_waits_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """csc is away, and amh tries it again only in an hour. A second message shared meanwhile
    is not sent (one message probes an absent recipient); once it had been in the store long
    enough to be looked at, the worker found it due and unsendable every 10 ms for the rest of
    the hour. Now it waits for the back-off to end."""
    async with csc_away(tmp_path) as (cluster, assessment_id):
        amh = await patient_amh(cluster)
        plans = Plans(amh.outbox, monkeypatch)
        await share(cluster, assessment_id)
        # csc's answer: away, for 48 to 84 minutes. (A scan made while the message was in flight,
        # before the answer came, plans for its expiry, a week away: seen under load.)
        away_for = await plans.until(lambda w: timed_long(w) and w is not None and w < DAY_S)
        assert away_for is not None
        start = len(plans.waits)
        await share(cluster, assessment_id)
        await settle(amh)  # taken in hand: kept back, in the store
        rest = plans.waits[-1]
        if rest == 60:  # handed over, and looked at again when its receipt would be due
            assert isinstance(amh.clock, ManualClock)
            amh.clock.advance(MINUTE + 1)
            rest = await plans.after_waking()
            assert rest is not None and LONG_S < rest < away_for
        else:  # found by a scan (one under way took it in): it waits for the back-off at once
            assert rest is not None and LONG_S < rest <= away_for
        assert all(w is None or w >= 60 for w in plans.waits[start:])  # never looked for in between
        assert amh.outbox.wait_of("csc")[0]


async def test_once_a_message_expires_between_two_tries_the_worker_waits_for_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages given 30 minutes to be delivered, their recipient away and tried again only in
    an hour: the first expires in between. The worker had planned to wake for that expiry, and
    once it had passed planned to wake for it again, every 10 ms until the next try was due.
    Now it wakes for the next message's expiry, ten minutes on."""
    async with csc_away(tmp_path) as (cluster, assessment_id):
        amh = await patient_amh(cluster, DeliverySettings(retry_base_ms=HOUR, undeliverable_after_ms=30 * MINUTE))
        assert isinstance(amh.clock, ManualClock)
        plans = Plans(amh.outbox, monkeypatch)
        first = await share(cluster, assessment_id)
        # Told csc is away (its answer is an attempt): the next waits for the back-off. While the
        # first was in flight the worker planned the same wait, for its expiry.
        await wait_count(amh, "SELECT COUNT(*) FROM outbox WHERE attempts > 0", (), 1)
        assert await plans.until(timed_long) == 30 * MINUTE / 1000  # csc away for longer than the message lasts
        amh.clock.advance(10 * MINUTE)
        start = len(plans.waits)
        second = await share(cluster, assessment_id)  # kept back with csc's back-off
        await plans.until(lambda w: w == 60, start)  # and looked at in a minute
        amh.clock.advance(20 * MINUTE)
        assert await plans.after_waking() == 10 * MINUTE / 1000
        assert await amh.outbox.settled(first.recipients[0].message_id) == "undeliverable"
        amh.clock.advance(10 * MINUTE)
        assert await plans.after_waking() is None  # nothing left to do until a share or an answer
        assert await amh.outbox.settled(second.recipients[0].message_id) == "undeliverable"
        assert len(plans.waits) < 12  # each for a cause (a share, an answer, a wake), not a turn of a loop


async def test_a_recipient_answering_again_is_sent_what_waited_for_it(tmp_path: Path) -> None:
    """The waits above end as they should: csc back, both messages kept for it go."""
    clock = ManualClock()
    async with running(make_federation(tmp_path, clock, nodes=("amh", "csc")), clock=clock) as cluster:
        assessment_id = await family_assessment(cluster)
        await cluster.stop_node("csc")
        amh = await patient_amh(cluster)
        first = await share(cluster, assessment_id)
        second = await share(cluster, assessment_id)
        await cluster.start_node("csc")
        async with asyncio.timeout(15):
            settled = [await amh.outbox.settled(s.recipients[0].message_id) for s in (first, second)]
        assert settled == ["delivered", "delivered"]


# -- the worker alone: its store real, the gateway the test (as in test_outbox_answers) -----


@pytest.fixture
async def worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Outbox, Gateway, ManualClock, Plans]]:
    """An outbox whose worker runs, each wait it plans recorded, at rest until the test
    connects it: nothing it queues goes sooner."""
    async with opened_outbox(tmp_path) as (box, gateway, clock):
        gateway.connected.clear()
        plans = Plans(box, monkeypatch)
        working = asyncio.create_task(box.run())
        try:
            assert await plans.made(0) is None  # nothing can go: it waits to be woken
            yield box, gateway, clock, plans
        finally:
            await box.drain(0)
            await working


async def connect(box: Outbox, gateway: Gateway) -> None:
    """The stream opens: the link says so, and tells the outbox."""
    gateway.connected.set()
    await box.on_connected()


async def sent(gateway: Gateway, count: int) -> list[tuple[str, str]]:
    """The next `count` messages the worker sends, once it has sent them."""
    async with asyncio.timeout(15):
        while len(gateway.sent) < count:
            gateway.wrote.clear()
            await gateway.wrote.wait()
    return gateway.take()


async def test_more_due_than_one_batch_go_as_the_first_are_answered(
    worker: tuple[Outbox, Gateway, ManualClock, Plans],
) -> None:
    """The worker sends a batch and waits for its answers, not looking at the store meanwhile;
    those answers bring the rest."""
    box, gateway, clock, _ = worker
    ids = await queue(box, clock, "b", BATCH + 1)
    await connect(box, gateway)  # everything in the store due now, as at each connection
    first = await sent(gateway, BATCH)
    assert [m for m, _ in first] == ids[:BATCH]
    await answer(box, first, FORWARDED)
    assert await sent(gateway, 1) == [(ids[BATCH], "b")]


async def test_a_message_kept_back_from_what_is_handed_over_keeps_back_only_itself(
    worker: tuple[Outbox, Gateway, ManualClock, Plans],
) -> None:
    """Handed over together: one for b, away (one message probes it at a time), between two
    for c. Both of c's go."""
    box, gateway, clock, plans = worker
    await queue(box, clock, "b", 1)
    await connect(box, gateway)
    start = len(plans.waits)
    await answer(box, await sent(gateway, 1), OFFLINE)
    await plans.until(lambda w: w is not None and w < LONG_S, start)  # the worker has heard: b is away
    handed = [(m, r) for r in ("c", "b", "c") for m in await queue(box, clock, r, 1)]
    box.fresh([(m, r, envelope(m, r)) for m, r in handed])
    assert await sent(gateway, 2) == [handed[0], handed[2]]


async def test_the_worker_wakes_for_the_first_thing_due(worker: tuple[Outbox, Gateway, ManualClock, Plans]) -> None:
    """c's message forwarded, its receipt due in a minute, and b away for about a second, the
    two answers coming together: the worker plans to wake as b's back-off ends."""
    box, gateway, clock, plans = worker
    await queue(box, clock, "b", 1)
    await queue(box, clock, "c", 1)
    start = len(plans.waits)
    await connect(box, gateway)
    (b, _), (c, _) = await sent(gateway, 2)
    await plans.until(timed_long, start)  # both in flight: the scan waits for their answers
    start = len(plans.waits)
    await box.on_answers(
        [
            gateway_pb2.SendAck(message_id=c, recipient_node="c", status=FORWARDED),
            gateway_pb2.SendAck(message_id=b, recipient_node="b", status=OFFLINE),
        ]
    )
    waits = await plans.until(lambda w: w is not None and w < LONG_S, start)
    assert waits == (box.wait_of("b")[2] - clock.now_ms()) / 1000 and 0.8 <= waits <= 1.4


async def test_a_send_that_failed_while_the_link_still_said_it_was_up_is_tried_again_at_once(
    worker: tuple[Outbox, Gateway, ManualClock, Plans], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is in flight to bring an answer, so the worker looks again at once."""
    box, gateway, clock, _ = worker
    write, failed = gateway.send_all, list[int]()

    async def fails_once(frames: list[gateway_pb2.NodeFrame]) -> None:
        if not failed:
            failed.append(len(frames))
            raise NotConnected
        await write(frames)

    monkeypatch.setattr(gateway, "send_all", fails_once)
    (message_id,) = await queue(box, clock, "b", 1)
    await connect(box, gateway)
    assert await sent(gateway, 1) == [(message_id, "b")]
    assert failed == [1]


async def test_what_a_cancelling_kept_back_goes_as_it_ends(worker: tuple[Outbox, Gateway, ManualClock, Plans]) -> None:
    """A batch's worth kept back for a cancelling under way, and one more due behind them:
    the worker waits for the cancelling, and its end brings that one. One kept back whose
    cancelling failed goes too."""
    box, gateway, clock, plans = worker
    ids = await queue(box, clock, "b", BATCH + 2)
    kept, failed = set(ids[:BATCH]), ids[BATCH]
    assert box.withhold([*kept, failed]) == {*kept, failed}
    start = len(plans.waits)
    await connect(box, gateway)
    await plans.made(start)  # a scan: all it read was kept back
    assert gateway.sent == []
    async with box.store.tx() as tx:
        await tx.executemany("UPDATE outbox SET state = 'cancelled' WHERE message_id = ?", [(m,) for m in kept])
    box.cancelled(kept)
    assert await sent(gateway, 1) == [(ids[BATCH + 1], "b")]
    box.release({failed})
    assert await sent(gateway, 1) == [(failed, "b")]


async def test_a_new_stream_sends_again_at_once_what_the_old_one_left_unanswered(
    worker: tuple[Outbox, Gateway, ManualClock, Plans],
) -> None:
    """b's message forwarded, its receipt looked for in a minute; c away, tried again in about
    a second. The stream ends and another opens: whatever the old one would have brought is
    lost with it, so both go again at once, not as each was due."""
    box, gateway, clock, _ = worker
    await queue(box, clock, "b", 1)
    await queue(box, clock, "c", 1)
    await connect(box, gateway)
    to_b, to_c = await sent(gateway, 2)
    await answer(box, [to_b], FORWARDED)
    await answer(box, [to_c], OFFLINE)
    gateway.connected.clear()
    await box.disconnected()
    await connect(box, gateway)
    assert sorted(await sent(gateway, 2)) == sorted([to_b, to_c])


async def test_a_node_stopping_as_its_stream_ends_stops_at_once(
    worker: tuple[Outbox, Gateway, ManualClock, Plans],
) -> None:
    """A node stopping waits up to its grace for the gateway's answers to what it sent; once
    the stream has ended, none will come, and it waits no longer."""
    box, gateway, clock, _ = worker
    await queue(box, clock, "b", 1)
    await connect(box, gateway)
    await sent(gateway, 1)
    stopping = asyncio.create_task(box.drain(3600))
    await asyncio.sleep(0)  # the drain is waiting
    gateway.connected.clear()
    await box.disconnected()
    async with asyncio.timeout(15):
        await stopping


async def test_a_window_widened_by_a_forwarding_sends_what_it_held_back(
    worker: tuple[Outbox, Gateway, ManualClock, Plans],
) -> None:
    """Three messages to b answered BUSY for a second: the worker plans to wake as the hold
    ends, and then one goes; its forwarding opens the window to two, and the two held back
    in the store go."""
    box, gateway, clock, plans = worker
    ids = await queue(box, clock, "b", 3)
    await connect(box, gateway)
    handed = await sent(gateway, 3)
    start = len(plans.waits)
    await answer(box, handed, BUSY, gateway_pb2.BUSY_SCOPE_RECIPIENT, 1_000)
    assert await plans.until(short, start) == 1  # to wake as the hold ends
    clock.advance(1_000)
    box.wake.set()
    probe = await sent(gateway, 1)
    assert probe == [(ids[0], "b")]
    await answer(box, probe, FORWARDED)
    assert await sent(gateway, 2) == [(m, "b") for m in ids[1:]]


async def test_messages_queued_again_for_a_restored_recipient_go_at_once_and_those_lost_are_counted(
    worker: tuple[Outbox, Gateway, ManualClock, Plans],
) -> None:
    """A message b took, queued again as b's store was put back to a backup (as
    node/redelivery.py leaves it, committed), goes without waiting for anything else to wake
    the worker; the two the requeue made undeliverable are counted."""
    box, gateway, clock, plans = worker
    (message_id,) = await queue(box, clock, "b", 1)
    await connect(box, gateway)
    await answer(box, await sent(gateway, 1), FORWARDED)
    async with box.store.tx() as tx:
        await tx.execute("UPDATE outbox SET state = 'delivered' WHERE message_id = ?", (message_id,))
    assert await plans.after_waking() == 60  # at rest, to look for the receipt in a minute
    async with box.store.tx() as tx:
        await tx.execute(
            "UPDATE outbox SET state = 'queued', next_attempt_at_ms = ?, queued_again_at_ms = ? WHERE message_id = ?",
            (tx.now_ms, tx.now_ms, message_id),
        )
    box.requeued(2)
    assert await sent(gateway, 1) == [(message_id, "b")]
    assert counted(box, "undeliverable") == 2


async def test_messages_recovered_from_a_recipient_s_copies_are_announced_to_watchers(
    worker: tuple[Outbox, Gateway, ManualClock, Plans],
) -> None:
    """Entered as delivered elsewhere (node/returned_copies.py), they change what watchers of
    delivery states see: the worker tells them."""
    box, _, _, _ = worker
    changing = asyncio.create_task(box.wait_change(box.version))
    box.recovered()
    async with asyncio.timeout(15):
        await changing
