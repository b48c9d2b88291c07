"""No personal data in operational logs: canary personal data planted in identifiers,
summaries and every free-text field, every workflow run at debug level, and none of
it in any log line or in any file of the gateway."""

from __future__ import annotations

import io
import json
from pathlib import Path

from linkage import logs, stories
from linkage.clock import DAY_MS, ManualClock, SystemClock
from linkage.envelope import MAX_AGE_MS, MAX_CLOCK_SKEW_MS
from linkage.ids import Ids
from linkage.v1 import envelope_pb2 as env
from linkage.v1 import node_api_pb2, summary_pb2, workflow_pb2
from linkage.v1.node_api_pb2 import AskClarificationRequest, DeliveryStatus, MessageSent
from node import answers, recovered_workflow, repeats, retention
from node.messaging import add_to_outbox
from node.store import Store, Tx
from tests.harness import LocalFederation, audit_events, next_item, running, wait_delivered
from tests.test_workflows import decline

CANARY = "CANARY-7d41e2"


async def test_no_canary_in_any_log_or_gateway_file(federation: LocalFederation) -> None:
    captured = io.StringIO()
    logs.configure("debug", stream=captured)
    person = node_api_pb2.PersonIdentifier(
        scheme="la-csc", value=f"{CANARY}-ID", role_in_risk="AT_RISK", person_type="CHILD", relationship="child"
    )
    actor = summary_pb2.Practitioner(id="p-9", name=f"{CANARY} Practitioner", role="Social worker")
    try:
        async with running(federation) as cluster:
            family = [*stories.think_family_people(), person]
            opened = {}
            for node in ("amh", "csc", "school"):
                opened[node] = await cluster.api(node).OpenCase(
                    node_api_pb2.OpenCaseRequest(actor=actor, case_ref=f"{CANARY}-{node}", people=family)
                )
            parent, child, other = (p.link_token for p in opened["amh"].people)
            assessment = stories.parent_risk_change(parent, child)
            assessment.headline = f"{CANARY} headline"
            assessment.risk_items[0].narrative = f"{CANARY} narrative"
            recorded = await cluster.api("amh").RecordAssessment(
                node_api_pb2.RecordAssessmentRequest(actor=actor, case_id=opened["amh"].case_id, assessment=assessment)
            )
            decision = stories.override_decision()
            decision.rationale = f"{CANARY} rationale"
            shared = await cluster.api("amh").ShareSummary(
                node_api_pb2.ShareSummaryRequest(actor=actor, assessment_id=recorded.assessment_id, decision=decision)
            )
            await wait_delivered(cluster.nodes["amh"], len(shared.recipients))
            item = await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)
            await cluster.api("csc").OpenReceived(
                node_api_pb2.OpenReceivedRequest(actor=actor, message_id=item.message_id)
            )
            await cluster.api("csc").AskClarification(
                node_api_pb2.AskClarificationRequest(
                    actor=actor, about_message_id=item.message_id, question=f"{CANARY} question"
                )
            )
            await cluster.api("csc").RequestInformation(
                node_api_pb2.RequestInformationRequest(
                    actor=actor,
                    case_id=opened["csc"].case_id,
                    purpose=f"{CANARY} purpose",
                    what=f"{CANARY} what",
                    lawful_basis=summary_pb2.LawfulBasis(art6=["A6_1_E"]),
                )
            )
            request = await next_item(cluster, "amh", env.MESSAGE_KIND_INFORMATION_REQUEST)
            await decline(cluster, request.message_id, f"{CANARY} decline", actor)
            await cluster.api("csc").DiscoverInvolvement(
                node_api_pb2.CaseRequest(actor=actor, case_id=opened["csc"].case_id)
            )
            await cluster.api("amh").ProposeClosure(
                node_api_pb2.ProposeClosureRequest(
                    actor=actor,
                    case_id=opened["amh"].case_id,
                    note=f"{CANARY} closure",
                    intent=summary_pb2.ClosureIntent(intent="PLANNED_CLOSURE"),
                    respond_by=stories.days_from_today(7),
                )
            )
            intent = await next_item(cluster, "school", env.MESSAGE_KIND_CLOSURE_INTENT)
            await cluster.api("school").RespondToClosure(
                node_api_pb2.RespondToClosureRequest(
                    actor=actor,
                    intent_message_id=intent.message_id,
                    answer=workflow_pb2.CLOSURE_ANSWER_OBJECT,
                    reason=f"{CANARY} objection",
                )
            )
            await cluster.api("amh").WithdrawSummary(
                node_api_pb2.WithdrawSummaryRequest(
                    actor=actor,
                    summary_id=item.summary.summary_id,
                    reason=f"{CANARY} withdrawal",
                    ground="NOT_TO_BE_RELIED_ON",
                )
            )
            await cluster.api("school").RemovePerson(
                node_api_pb2.RemovePersonRequest(actor=actor, case_id=opened["school"].case_id, link_token=other)
            )
            await next_item(cluster, "school", env.MESSAGE_KIND_WITHDRAWAL)
            assert await cluster.nodes["amh"].checkpoints.lodge()
    finally:
        logs.configure("info")
    text = captured.getvalue()
    assert {json.loads(line)["level"] for line in text.splitlines()} >= {"debug", "info"}
    assert "envelope.forwarded" in text and "share" in text
    secrets = [CANARY, stories.PARENT_NHS, stories.CHILD_NHS]
    for secret in secrets:
        assert secret not in text, f"{secret} in an operational log"
    for path in federation.gateway_config.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in data, f"{secret} in {path}"


NOTHING = {"received": 0, "sent_bodies": 0, "requests": 0, "challenges": 0, "call_answers": 0, "replies_waiting": 0}


async def _received_now(store: Store) -> None:
    """A message received now, as the inbox keeps it, and its audit entry."""
    async with store.tx() as tx:
        await tx.execute(
            "INSERT INTO inbox(sender, message_id, digest, received_at_ms, kind, share_id) "
            "VALUES ('amh', 'm1', x'00', ?, 1, 's')",
            (tx.now_ms,),
        )
        await tx.audit("message.received")


async def test_retention_purges_old_summaries_and_audits_it(tmp_path: Path) -> None:
    clock = ManualClock()
    store = await Store.open(tmp_path / "s.sqlite", clock)
    try:
        await _received_now(store)
        assert await retention.purge(store, clock, keep_days=40) == NOTHING
        clock.advance(35 * DAY_MS)  # past the replay window, inside 40 days: kept
        assert await retention.purge(store, clock, keep_days=40) == NOTHING
        assert await retention.purge(store, clock, keep_days=1) == {**NOTHING, "received": 1}
        assert (await store.fetchone("SELECT COUNT(*) FROM inbox"))[0] == 0
        events = [r[0] for r in await store.fetchall("SELECT event FROM audit ORDER BY seq")]
        assert events == ["message.received", "retention.purged"]  # the audit log itself is kept
        assert await retention.purge(store, clock, keep_days=0) == {}
    finally:
        await store.close()


async def test_retention_never_forgets_a_message_id_a_replay_could_still_bring(tmp_path: Path) -> None:
    """The inbox is the replay defence: however short the configured time, a received message is
    kept until no copy of it could be fresh enough to accept (MAX_AGE_MS and the clock skew
    allowed, in whole days), to the millisecond."""
    clock = ManualClock()
    store = await Store.open(tmp_path / "s.sqlite", clock)
    try:
        await _received_now(store)
        window_days = -(-(MAX_AGE_MS + MAX_CLOCK_SKEW_MS) // DAY_MS)  # 31
        clock.advance(window_days * DAY_MS)
        assert await retention.purge(store, clock, keep_days=1) == NOTHING  # received exactly 31 days ago
        clock.advance(1)
        assert await retention.purge(store, clock, keep_days=1) == {**NOTHING, "received": 1}
    finally:
        await store.close()


async def _read_given_back(tx: Tx, reply_id: str) -> None:
    """This node's read notification, given back after a restore, of an item not held again."""
    read = env.MessageBody(kind=env.MESSAGE_KIND_READ_NOTIFICATION, message_id=reply_id)
    read.read.read_message_id = f"item-of-{reply_id}"
    assert "waiting" in await recovered_workflow.rebuild(tx, "amh", read)


async def test_retention_on_a_clock_set_back_to_1970_purges_nothing(tmp_path: Path) -> None:
    """A host that resumes with its clock at the epoch puts the cutoff before it: nothing is
    older than that, a reply given back (aged by its id, not by a time column) included."""
    clock = ManualClock(start_ms=DAY_MS)
    store = await Store.open(tmp_path / "s.sqlite", clock)
    try:
        async with store.tx() as tx:
            await _read_given_back(tx, Ids().make(SystemClock().now_ms()))
        assert await retention.purge(store, clock, keep_days=40) == NOTHING
        assert (await store.fetchone("SELECT COUNT(*) FROM replies_given_back"))[0] == 1
    finally:
        await store.close()


async def test_retention_purges_in_chunks_with_what_hangs_off_each_row(tmp_path: Path) -> None:
    """Received rows go with their tokens and chronology entries; delivered bodies are
    deleted, live ones kept; each chunk is its own transaction, audited with its counts."""
    clock = ManualClock()
    ids = Ids()
    store = await Store.open(tmp_path / "s.sqlite", clock)
    try:
        async with store.tx() as tx:
            for n in range(7):
                seq = (
                    await tx.execute(
                        "INSERT INTO inbox(sender, message_id, digest, received_at_ms, kind, share_id) "
                        "VALUES ('amh', ?, x'00', ?, 1, 's')",
                        (f"in-{n}", tx.now_ms + n),
                    )
                ).lastrowid
                await tx.execute("INSERT INTO inbox_bodies(seq, signed) VALUES (?, x'00')", (seq,))
                await tx.execute("INSERT INTO inbox_tokens(token, inbox_seq) VALUES (?, ?)", (bytes([n]) * 32, seq))
                await tx.execute(
                    "INSERT INTO chronology(inbox_seq, item, at_ms, source_node, summary_id, state, framed) "
                    "VALUES (?, 0, 0, 'amh', 's', 'new', x'00')",
                    (seq,),
                )
            for n in range(4):  # requests sent, each to one agency
                await answers.asked(
                    tx, f"r-{n}", "c", None, "A purpose", [DeliveryStatus(node_id="csc", message_id=f"q-{n}")]
                )
            for n in range(2):  # challenges raised
                raised = workflow_pb2.Challenge(stage="PRACTITIONER", subject="OTHER", concern="c", outcome_sought="o")
                await answers.challenged(tx, "c", raised, f"ch-{n}", "csc")
            for n in range(5):  # answers kept for repeated calls
                await repeats.keep(tx, AskClarificationRequest(request_id=f"call-{n}"), MessageSent())
            for n, state in enumerate(["delivered"] * 4 + ["undeliverable", "sent"]):
                await add_to_outbox(tx, f"out-{n}", "s", "csc", b"\x01\x02", b"\x00")
                await tx.execute("UPDATE outbox SET state = ? WHERE message_id = ?", (state, f"out-{n}"))
            for _ in range(4):  # read notifications given back after a restore, for items never sent again
                await _read_given_back(tx, ids.make(tx.now_ms))
        clock.advance(60 * DAY_MS)
        async with store.tx() as tx:  # received since: kept
            await tx.execute(
                "INSERT INTO inbox(sender, message_id, digest, received_at_ms, kind, share_id) "
                "VALUES ('amh', 'recent', x'00', ?, 1, 's')",
                (tx.now_ms,),
            )
            await _read_given_back(tx, recent_reply := ids.make(tx.now_ms - 31 * DAY_MS + 1))

        purged_counts = {
            "received": 7,
            "sent_bodies": 5,
            "requests": 4,
            "challenges": 2,
            "call_answers": 5,
            "replies_waiting": 4,
        }
        assert await retention.purge(store, clock, keep_days=31, chunk=3) == purged_counts

        assert [r[0] for r in await store.fetchall("SELECT message_id FROM inbox")] == ["recent"]
        assert (await store.fetchone("SELECT COUNT(*) FROM inbox_tokens"))[0] == 0
        assert (await store.fetchone("SELECT COUNT(*) FROM inbox_bodies"))[0] == 0
        assert (await store.fetchone("SELECT COUNT(*) FROM chronology"))[0] == 0
        for table in ("info_requests", "info_requests_asked", "challenges", "call_answers"):
            assert (await store.fetchone(f"SELECT COUNT(*) FROM {table}"))[0] == 0
        kept = await store.fetchall(
            "SELECT message_id FROM outbox o JOIN outbox_bodies b ON b.seq = o.seq WHERE o.body_kept"
        )
        assert [r[0] for r in kept] == ["out-5"]  # still in flight: its body is needed to send it again
        waiting = await store.fetchall("SELECT reply_id FROM replies_given_back")
        assert [r[0] for r in waiting] == [recent_reply]  # made inside the 31 days kept
        purged = [e["detail"] for e in await audit_events(store, "retention.purged")]
        assert [(d["received"], d["sent_bodies"]) for d in purged] == [(3, 3), (3, 2), (1, 0)]
        assert await retention.purge(store, clock, keep_days=31, chunk=3) == NOTHING
    finally:
        await store.close()
