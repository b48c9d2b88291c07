"""A message being cancelled (its summary withdrawn before it was sent) is kept back from the
moment the withdrawal's transaction asks, and sent after all if that transaction fails; one
already on its way to the gateway cannot be kept back. The outbox and its store are real;
the gateway is the test, as in test_outbox_answers.py."""

from __future__ import annotations

import asyncio

from linkage.clock import ManualClock
from linkage.v1 import gateway_pb2
from node.outbox import Outbox
from tests.harness import CapturedLogs
from tests.test_outbox_answers import Gateway, answer, outbox, queue

__all__ = ["outbox"]  # the fixture


async def test_only_what_is_not_on_its_way_is_kept_back_until_cancelled_or_released(
    outbox: tuple[Outbox, Gateway, ManualClock],
) -> None:
    box, gateway, clock = outbox
    away, on_its_way = await queue(box, clock, "b", 1), await queue(box, clock, "c", 1)
    await box.send_due()
    sent = gateway.take()
    await answer(box, sent[:1], gateway_pb2.SEND_STATUS_RECIPIENT_OFFLINE)  # b is away: its message waits

    assert box.withhold(away + on_its_way) == set(away)  # c's awaits the gateway's answer: beyond recall
    await box.on_peer_online("b")
    await box.send_due()
    assert gateway.take() == []  # b is back, but what is being cancelled stays

    box.release(set(away))  # the withdrawal failed: it is queued still, and goes as any other
    await box.send_due()
    assert [m for m, _ in gateway.take()] == away

    later = await queue(box, clock, "b", 1)
    box.fresh([(later[0], "b", gateway_pb2.NodeFrame().send)])  # handed over, as a share's commit does
    watching = asyncio.create_task(box.settled(later[0]))
    await asyncio.sleep(0)  # it is watching
    async with box.store.tx() as tx:  # as the withdrawal's transaction does
        assert box.withhold(later) == set(later)
        await tx.execute("UPDATE outbox SET state = 'cancelled' WHERE message_id = ?", (later[0],))
        tx.on_commit(lambda: box.cancelled(set(later)))
    assert await watching == "cancelled"
    assert box._fresh == [] and not box._withheld  # nothing of it left to send
    await box.send_due()
    assert gateway.take() == []


async def test_a_peer_no_agency_could_be_coming_online_costs_no_transaction(
    outbox: tuple[Outbox, Gateway, ManualClock], captured_logs: CapturedLogs
) -> None:
    """A gateway that is not what it should be says nodes are back online that no agency could
    be, or this node itself: each is said and left, with no transaction for it."""
    box, _, clock = outbox
    await queue(box, clock, "b", 1)
    committed = box.store.next_commit()
    for name in ("../x", "", "B", "x" * 5_000, "a"):
        await box.on_peer_online(name)
    assert not committed.is_set()
    assert [e["problem"] for e in captured_logs.records("gateway.answer_malformed")] == ["not an agency"] * 5

    await box.on_peer_online("b")
    assert committed.is_set()
