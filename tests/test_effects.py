"""What a received message changes takes effect in the order its sender made it, not the
order it arrived: a message sent again after a failure can arrive after a newer one."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from linkage.clock import DAY_MS, ManualClock
from linkage.envelope import Opened
from linkage.v1 import envelope_pb2 as pb
from linkage.v1 import workflow_pb2
from linkage.v1.node_api_pb2 import DeliveryStatus
from node import answers
from node.effects import apply_effects
from node.messaging import Messenger
from node.redelivery import Redelivery
from node.store import Store
from tests.harness import audit_events

TOKEN = bytes(range(32))
# None of these messages is a restore's, so none reaches the messenger a restore's answer needs.
NOT_A_RESTORE = Redelivery(DAY_MS, cast(Messenger, None))


Content = workflow_pb2.ClosureResponse | workflow_pb2.InvolvementNotice | workflow_pb2.InformationResponse


def _received(kind: pb.MessageKind.ValueType, made_at: int, fill: Content, sender: str = "csc") -> Opened:
    # Ids and times ascend together, and the body carries the time its header does (opening checks).
    body = pb.MessageBody(kind=kind, message_id=f"m-{made_at}", created_at_ms=made_at)
    if isinstance(fill, workflow_pb2.ClosureResponse):
        body.closure_response.CopyFrom(fill)
    elif isinstance(fill, workflow_pb2.InformationResponse):
        body.information_response.CopyFrom(fill)
    else:
        body.involvement.CopyFrom(fill)
    routing = pb.RoutingHeader(sender_node=sender, created_at_ms=made_at, message_id=body.message_id)
    return Opened(routing=routing, body=body, signed=pb.SignedMessage(), digest=b"")


@pytest.mark.parametrize("arrival", [(0, 1), (1, 0)])
async def test_the_newest_closure_answer_and_information_answer_hold_whatever_the_arrival_order(
    tmp_path: Path, arrival: tuple[int, int]
) -> None:
    store = await Store.open(tmp_path / "s.sqlite", ManualClock())
    try:
        async with store.tx() as tx:
            await tx.execute("INSERT INTO cases(case_id, case_ref, opened_at_ms, status) VALUES ('c', 'r', 0, 'open')")
            await tx.execute(
                "INSERT INTO closures(closure_id, case_id, proposed_at_ms, respond_by, state, intent) "
                "VALUES ('x', 'c', 0, '2030-01-01', 'proposed', x'')"
            )
            await tx.execute("INSERT INTO closure_invitees(closure_id, node_id) VALUES ('x', 'csc')")
        closure_answers = [
            _received(
                pb.MESSAGE_KIND_CLOSURE_RESPONSE,
                1_000,
                workflow_pb2.ClosureResponse(closure_id="x", answer=workflow_pb2.CLOSURE_ANSWER_AGREE),
            ),
            _received(
                pb.MESSAGE_KIND_CLOSURE_RESPONSE,
                2_000,
                workflow_pb2.ClosureResponse(
                    closure_id="x", answer=workflow_pb2.CLOSURE_ANSWER_OBJECT, reason="Attendance has dropped."
                ),
            ),
        ]
        for n in arrival:
            async with store.tx() as tx:
                await apply_effects(tx, n + 1, closure_answers[n], NOT_A_RESTORE)
        row = await store.fetchone("SELECT answer, reason, at_ms FROM closure_invitees WHERE closure_id = 'x'")
        assert tuple(row) == (workflow_pb2.CLOSURE_ANSWER_OBJECT, "Attendance has dropped.", 2_000)
        uninvited = workflow_pb2.ClosureResponse(closure_id="x", answer=workflow_pb2.CLOSURE_ANSWER_AGREE)
        async with store.tx() as tx:  # from an agency this node never alerted to the closure
            await apply_effects(
                tx, 9, _received(pb.MESSAGE_KIND_CLOSURE_RESPONSE, 3_000, uninvited, "police"), NOT_A_RESTORE
            )
        heard = await audit_events(store, "closure.reply_received")
        # The IG officer reads which answers were from agencies alerted, and which now hold.
        assert [(e["detail"]["invited"], e["detail"]["newest"]) for e in heard] == [
            (True, True),
            (True, arrival == (0, 1)),  # the older answer, arriving second, does not hold
            (False, False),
        ]

        notices = [
            _received(
                pb.MESSAGE_KIND_INVOLVEMENT_NOTICE,
                1_000,
                workflow_pb2.InvolvementNotice(joined=True, link_tokens=[TOKEN]),
            ),
            _received(
                pb.MESSAGE_KIND_INVOLVEMENT_NOTICE,
                2_000,
                workflow_pb2.InvolvementNotice(joined=False, link_tokens=[TOKEN]),
            ),
        ]
        for n in arrival:
            async with store.tx() as tx:
                await apply_effects(tx, n + 3, notices[n], NOT_A_RESTORE)
        recorded = await store.fetchall("SELECT entry FROM audit WHERE event = 'involvement.notice' ORDER BY seq")
        assert len(recorded) == 2  # who is linked now is the gateway's to say; each notice is on the record

        async with store.tx() as tx:  # a request this node sent to csc
            await answers.asked(tx, "r", "c", None, "A purpose", [DeliveryStatus(node_id="csc", message_id="q")])
        replies = [
            _received(
                pb.MESSAGE_KIND_INFORMATION_RESPONSE,
                made_at,
                workflow_pb2.InformationResponse(request_message_id="q", answer=answer),
            )
            for made_at, answer in (
                (5_000, workflow_pb2.INFORMATION_ANSWER_DECLINED),
                (6_000, workflow_pb2.INFORMATION_ANSWER_PROVIDED),  # thought better of it
            )
        ]
        for n in arrival:
            async with store.tx() as tx:
                await apply_effects(tx, n + 5, replies[n], NOT_A_RESTORE)
        row = await store.fetchone("SELECT answer, answered_at_ms, answer_message_id FROM info_requests_asked")
        assert tuple(row) == (workflow_pb2.INFORMATION_ANSWER_PROVIDED, 6_000, "m-6000")
    finally:
        await store.close()
