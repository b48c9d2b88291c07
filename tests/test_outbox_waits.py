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
from collections.abc import Callable
from pathlib import Path

import pytest

from linkage.clock import ManualClock
from linkage.config import DeliverySettings
from node.outbox import Outbox
from node.server import NodeServer
from tests.harness import Cluster, make_federation, running
from tests.test_delivery import HOUR, csc_away, family_assessment, share

MINUTE = 60_000
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

    async def after_waking(self) -> float | None:
        """The first wait planned after the worker is woken now."""
        start = len(self.waits)
        self._outbox.wake.set()
        return await self.until(lambda _: True, start)


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
        away_for = await plans.until(timed_long)  # csc's answer: away, for at least 48 minutes
        start = len(plans.waits)
        await share(cluster, assessment_id)
        await plans.until(lambda w: w == 60, start)  # kept back, and looked at in a minute
        assert isinstance(amh.clock, ManualClock)
        amh.clock.advance(MINUTE + 1)
        waits = await plans.after_waking()
        assert away_for is not None and waits is not None and LONG_S < waits < away_for
        assert amh.outbox.wait_of("csc")[0]


async def test_once_a_message_expires_between_two_tries_the_worker_waits_for_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message given 30 minutes to be delivered, its recipient away and tried again only in
    an hour: it expires in between. The worker had planned to wake for that expiry, and once it
    had passed planned to wake for it again, every 10 ms until the next try was due."""
    async with csc_away(tmp_path) as (cluster, assessment_id):
        amh = await patient_amh(cluster, DeliverySettings(retry_base_ms=HOUR, undeliverable_after_ms=30 * MINUTE))
        plans = Plans(amh.outbox, monkeypatch)
        shared = await share(cluster, assessment_id)
        (message,) = shared.recipients
        assert await plans.until(timed_long) == 30 * MINUTE / 1000  # csc away for longer than the message lasts
        assert isinstance(amh.clock, ManualClock)
        amh.clock.advance(30 * MINUTE)
        assert await plans.after_waking() is None  # nothing left to do until a share or an answer
        assert await amh.outbox.settled(message.message_id) == "undeliverable"


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
