"""Clocks that are wrong, or put right. A node's clock set back (NTP stepping it, a host
resumed, an operator's correction) must not reorder what it made: recipients order one
agency's versions, withdrawals and answers by their message ids, and its own reading of what
it sent follows them too (THREATS.md T33). A clock that runs fast, or slow, must not lose a
message: a recipient that finds it from the future, or too old, defers it, and its sender
sends it again until the clocks agree or it expires (R14). Real nodes, gateway and stores,
on clocks the tests move."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway import sessions as gateway_sessions
from linkage import backup
from linkage.clock import ManualClock, SystemClock
from linkage.v1 import envelope_pb2 as env
from linkage.v1 import node_api_pb2, workflow_pb2
from node import outbox as outbox_module
from tests.harness import (
    PRACTITIONER,
    Cluster,
    LocalFederation,
    audit_events,
    make_federation,
    next_item,
    running,
    wait_count,
    wait_delivered,
)
from tests.test_delivery import family_assessment, share
from tests.test_erasure import held, withdraw
from tests.test_federation import _case_id
from tests.test_outbox_answers import backed_off
from tests.test_workflows import (
    CSC_WORKER,
    SCHOOL_DSL,
    chronology_states,
    decline,
    planned_closure,
    provide,
    s47_request,
    shared_with_both,
    think_family,
)

STEP_BACK_MS = 30_000
AHEAD_MS = 10 * 60_000  # how far amh's clock runs ahead of csc's, past the five minutes allowed


@asynccontextmanager
async def amh_ahead(tmp_path: Path) -> AsyncIterator[tuple[Cluster, ManualClock, ManualClock]]:
    """amh and csc running, amh's clock ten minutes ahead of csc's and the gateway's, so that
    csc defers what amh makes: the cluster, csc's clock and amh's."""
    clock = ManualClock()
    ahead = ManualClock(clock.now_ms() + AHEAD_MS)
    federation = make_federation(tmp_path / "fed", clock, nodes=("amh", "csc"))
    async with running(federation, nodes=(), clock=clock) as cluster:
        await cluster.start_node("amh", clock=ahead)
        await cluster.start_node("csc")
        yield cluster, clock, ahead


@pytest.mark.parametrize("restarted", [False, True], ids=["running", "restarted"])
async def test_a_withdrawal_made_after_the_senders_clock_was_set_back_still_erases(
    federation: LocalFederation, restarted: bool
) -> None:
    """A recipient orders a sender's messages about a summary by their ids, which carry the
    time they were made: a clock corrected backwards (NTP stepping it, a host resumed) must
    not make a withdrawal look older than the version it withdraws, which would stay live,
    whether the node ran on through the step or was started again after it."""
    clock = ManualClock()
    async with running(federation, clock=clock) as cluster:
        _, _, summary_id = await shared_with_both(cluster)
        clock.advance(-STEP_BACK_MS)
        if restarted:
            await cluster.stop_node("amh")
            await cluster.start_node("amh")
        await withdraw(cluster, summary_id, "WRONG_PERSON")
        assert [row[1:] for row in held(cluster, "csc", summary_id)] == [("erased", 0, 0, 0)]
        assert await chronology_states(cluster) == []


async def test_a_withdrawal_repeated_after_the_senders_clock_was_set_back_is_refused(
    federation: LocalFederation,
) -> None:
    """The sender reads where a summary stands in the order it made its messages: after a step
    back, its withdrawal is still after the version it withdrew, so a second is a repeat."""
    clock = ManualClock()
    async with running(federation, clock=clock) as cluster:
        _, _, summary_id = await shared_with_both(cluster)
        clock.advance(-STEP_BACK_MS)
        await withdraw(cluster, summary_id, "NOT_TO_BE_RELIED_ON")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await withdraw(cluster, summary_id, "NOT_TO_BE_RELIED_ON")
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "is already withdrawn" in (raised.value.details() or "")


async def test_an_objection_made_after_the_clock_was_set_back_holds_over_the_agreement_before_it(
    federation: LocalFederation,
) -> None:
    """An agency that agreed to a closure, then objected, has objected: the case cannot close
    unheard, though its clock made the objection 'earlier' than the agreement."""
    clock = ManualClock()
    async with running(federation, clock=clock) as cluster:
        await think_family(cluster)
        amh, case_id = cluster.api("amh"), await _case_id(cluster, "amh")
        await amh.ProposeClosure(planned_closure(PRACTITIONER, case_id))
        at_school = await next_item(cluster, "school", env.MESSAGE_KIND_CLOSURE_INTENT)
        await cluster.api("school").RespondToClosure(
            node_api_pb2.RespondToClosureRequest(
                actor=SCHOOL_DSL, intent_message_id=at_school.message_id, answer=workflow_pb2.CLOSURE_ANSWER_AGREE
            )
        )
        answered = await next_item(cluster, "amh", env.MESSAGE_KIND_CLOSURE_RESPONSE)
        intent = await next_item(cluster, "csc", env.MESSAGE_KIND_CLOSURE_INTENT)
        for answer, reason in (
            (workflow_pb2.CLOSURE_ANSWER_AGREE, ""),
            (workflow_pb2.CLOSURE_ANSWER_OBJECT, "The child disclosed new concerns today."),
        ):
            await cluster.api("csc").RespondToClosure(
                node_api_pb2.RespondToClosureRequest(
                    actor=CSC_WORKER, intent_message_id=intent.message_id, answer=answer, reason=reason
                )
            )
            answered = await next_item(cluster, "amh", env.MESSAGE_KIND_CLOSURE_RESPONSE, after_seq=answered.seq)
            clock.advance(-STEP_BACK_MS)
        status = await amh.GetClosure(node_api_pb2.CaseRequest(actor=PRACTITIONER, case_id=case_id))
        assert status.objection_outstanding
        assert {(r.node_id, r.answer) for r in status.replies} == {
            ("csc", workflow_pb2.CLOSURE_ANSWER_OBJECT),
            ("school", workflow_pb2.CLOSURE_ANSWER_AGREE),
        }
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await amh.CloseCase(node_api_pb2.CloseCaseRequest(actor=PRACTITIONER, case_id=case_id))
        assert "objects: The child disclosed new concerns today." in (raised.value.details() or "")


async def test_a_request_provided_for_after_the_clock_was_set_back_shows_provided(
    federation: LocalFederation,
) -> None:
    """Declined, then provided on second thoughts: the requester sees it provided."""
    clock = ManualClock()
    async with running(federation, clock=clock) as cluster:
        _, _, assessment_id = await think_family(cluster)
        csc_case = await _case_id(cluster, "csc")
        await cluster.api("csc").RequestInformation(s47_request(csc_case, "amh"))
        request = await next_item(cluster, "amh", env.MESSAGE_KIND_INFORMATION_REQUEST)
        await decline(cluster, request.message_id, "Nothing more is held.")
        declined = await next_item(cluster, "csc", env.MESSAGE_KIND_INFORMATION_RESPONSE)
        clock.advance(-STEP_BACK_MS)
        await provide(cluster, request.message_id, assessment_id)
        provided = await next_item(cluster, "csc", env.MESSAGE_KIND_INFORMATION_RESPONSE, after_seq=declined.seq)
        listed = await cluster.api("csc").ListInformationRequests(
            node_api_pb2.CaseRequest(actor=CSC_WORKER, case_id=csc_case)
        )
        (asked,) = listed.sent[0].asked
        assert (asked.answer, asked.answer_message_id) == (
            workflow_pb2.INFORMATION_ANSWER_PROVIDED,
            provided.message_id,
        )


async def test_a_node_restored_and_set_back_makes_its_ids_after_those_given_back_to_it(tmp_path: Path) -> None:
    """A share made after amh's backup is lost with its store and given back by csc. With amh's
    clock now behind that share, its withdrawal still comes after it, so csc erases it."""
    clock = ManualClock()
    federation = make_federation(tmp_path / "fed", SystemClock(), nodes=("amh", "csc"))
    member = backup.Member.of(federation.node_configs["amh"])
    key, sealed = tmp_path / "backup.key", tmp_path / "amh.age"
    async with running(federation, clock=clock) as cluster:
        assessment_id = await family_assessment(cluster)
        backup.take(member, sealed, backup.recipients([backup.generate_key(key, "")]), SystemClock().now_ms())
        clock.advance(1_000)  # the share is made after all the backup holds
        (sent,) = (await share(cluster, assessment_id)).recipients
        delivered = "SELECT count(*) FROM outbox WHERE message_id = ? AND state = 'delivered'"
        await wait_count(cluster.nodes["amh"], delivered, (sent.message_id,), 1)
        csc = cluster.nodes["csc"]
        assert csc.store is not None
        (summary_id,) = await csc.store.fetchone(
            "SELECT summary_id FROM inbox WHERE message_id = ?", (sent.message_id,)
        )

        await cluster.stop_node("amh")
        backup.restore_store(member, sealed, backup.identities(key), SystemClock().now_ms())
        clock.advance(-STEP_BACK_MS)
        amh = await cluster.start_node("amh")
        await wait_count(amh, delivered, (sent.message_id,), 1)  # given back by csc
        withdrawn = await cluster.api("amh").WithdrawSummary(
            node_api_pb2.WithdrawSummaryRequest(
                actor=PRACTITIONER, summary_id=summary_id, reason="Wrong family.", ground="SHARED_IN_ERROR"
            )
        )
        (withdrawal,) = withdrawn.recipients
        assert withdrawal.message_id > sent.message_id
        await wait_count(amh, delivered, (withdrawal.message_id,), 1)
        row = await csc.store.fetchone("SELECT state FROM inbox WHERE message_id = ?", (sent.message_id,))
        assert row[0] == "erased"


async def test_a_message_the_recipient_finds_from_the_future_is_deferred_and_taken_once_the_clocks_agree(
    tmp_path: Path,
) -> None:
    """amh's clock runs ten minutes ahead of csc's (R14): csc refuses its message for now, as
    made in the future, with a signed receipt that defers it, not one that ends it. amh keeps
    it, says why in its status, and sends it again, backing off. Once amh's clock is put
    right, what it makes next is taken at once; the message made ahead keeps the time it was
    made, and is taken once csc's time comes within five minutes of it: its next attempt, set
    while amh's clock ran ahead, was moved back with the clock, to wait only its back-off."""
    async with amh_ahead(tmp_path) as (cluster, clock, ahead):
        amh = cluster.nodes["amh"]
        assessment_id = await family_assessment(cluster)
        made_at = ahead.now_ms()
        shared = await share(cluster, assessment_id)
        (sent,) = shared.recipients
        deferred = "SELECT count(*) FROM outbox WHERE message_id = ? AND state = 'sent' AND reason LIKE ?"
        await wait_count(amh, deferred, (sent.message_id, "not taken yet by the recipient (future)%"), 1)
        attempts, due = await amh.outbox.store.fetchone(
            "SELECT attempts, next_attempt_at_ms FROM outbox WHERE message_id = ?", (sent.message_id,)
        )
        # amh's clock stands still, so there was one attempt; the next waits the first back-off.
        assert attempts == 1 and backed_off(due - ahead.now_ms(), 0, amh.outbox.settings.retry_base_ms)
        (status,) = (
            await cluster.api("amh").GetShareStatus(
                node_api_pb2.ShareStatusRequest(actor=PRACTITIONER, share_id=shared.share_id)
            )
        ).recipients
        assert status.state == "sent" and "ask agency IT at both ends to check their clocks" in status.reason
        assert (status.sent_at_ms, status.delivered_at_ms) == (made_at, 0)
        (refused,) = await audit_events(cluster.nodes["csc"], "message.rejected")
        assert refused["message_id"] == sent.message_id
        assert refused["detail"]["reason"] == "future" and refused["detail"]["deferred"] is True

        ahead.advance(-AHEAD_MS)  # amh's clock put right
        (again,) = (await share(cluster, assessment_id)).recipients
        await wait_count(
            amh, "SELECT count(*) FROM outbox WHERE message_id = ? AND state = 'delivered'", (again.message_id,), 1
        )
        again_taken_at = clock.now_ms()
        for moving in (clock, ahead):  # time passes at both: the first goes again, its wait moved back
            moving.advance(6 * 60_000)  # with amh's clock, and is no longer ahead of csc's
        await amh.outbox.send_due()
        await wait_delivered(amh, 2)
        (status,) = (
            await cluster.api("amh").GetShareStatus(
                node_api_pb2.ShareStatusRequest(actor=PRACTITIONER, share_id=shared.share_id)
            )
        ).recipients
        assert (status.state, status.reason) == ("delivered", "")
        # Sent when first forwarded, by amh's clock however it moved since; taken by csc's.
        assert (status.sent_at_ms, status.delivered_at_ms) == (made_at, clock.now_ms())
        assert not await audit_events(amh, "message.undeliverable")
        # The case system following deliveries hears each taken when csc's clock says, and no
        # other step (queued, sent, deferred) as a delivery.
        heard = []
        async for event in cluster.api("amh").WatchDeliveries(
            node_api_pb2.WatchDeliveriesRequest(actor=PRACTITIONER), timeout=15
        ):
            heard.append(event.status)
            if (event.status.message_id, event.status.state) == (sent.message_id, "delivered"):
                break
        taken = {s.message_id: s.delivered_at_ms for s in heard if s.state == "delivered"}
        assert taken == {again.message_id: again_taken_at, sent.message_id: clock.now_ms()}
        assert "deferred" in {s.state for s in heard}
        assert {s.delivered_at_ms for s in heard if s.state != "delivered"} == {0}


async def test_a_deferral_is_in_the_senders_audit_log_once_and_its_watchers_hear_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recipient's signed word that it will not take a message yet is part of the
    message's story for the IG officer and the case system following deliveries: amh audits
    it, with why, as the recipient first says it; each try after, deferred for the same
    reason, adds nothing to the log."""
    async with amh_ahead(tmp_path) as (cluster, clock, ahead):
        amh = cluster.nodes["amh"]
        recorded: asyncio.Queue[bool] = asyncio.Queue()
        record = amh.outbox._record_deferral

        async def counted(tx: Any, body: env.ReceiptBody) -> bool:
            said = await record(tx, body)
            recorded.put_nowait(said)
            return said

        monkeypatch.setattr(amh.outbox, "_record_deferral", counted)
        watch = cluster.api("amh").WatchDeliveries(node_api_pb2.WatchDeliveriesRequest(actor=PRACTITIONER))
        shared = await share(cluster, await family_assessment(cluster))
        (sent,) = shared.recipients
        assert await recorded.get()
        async with asyncio.timeout(15):
            async for event in watch:
                if event.status.state == "deferred":
                    break
        watch.cancel()
        assert (event.share_id, event.status.message_id, event.status.node_id) == (
            shared.share_id,
            sent.message_id,
            "csc",
        )
        assert event.status.reason.startswith("not taken yet by the recipient (future)")

        for moving in (clock, ahead):  # past its back-off, amh still ten minutes ahead
            moving.advance(60_000)
        await amh.outbox.send_due()
        assert await recorded.get()  # deferred again, for the same reason
        assert amh.store is not None
        async with amh.store.tx():
            pass  # queued behind the deferral's transaction: that is committed now
        (entry,) = await audit_events(amh, "message.deferred")
        assert entry["message_id"] == sent.message_id and entry["counterpart"] == "csc"
        assert entry["detail"]["share_id"] == shared.share_id
        assert (entry["detail"]["code"], entry["detail"]["by"]) == ("future", "recipient")
        assert len(await audit_events(cluster.nodes["csc"], "message.rejected")) == 2


async def test_a_message_deferred_for_hours_is_on_the_duty_view_with_why(tmp_path: Path) -> None:
    """Still deferred after [delivery] escalate_after_hours, the message is on the sender's
    duty view as delayed, saying what holds it, for the duty team to tell the agency meanwhile
    and to have both clocks checked."""
    async with amh_ahead(tmp_path) as (cluster, _, ahead):
        amh = cluster.nodes["amh"]
        (sent,) = (await share(cluster, await family_assessment(cluster))).recipients
        deferred = "SELECT count(*) FROM outbox WHERE message_id = ? AND reason LIKE 'not taken yet%'"
        await wait_count(amh, deferred, (sent.message_id,), 1)
        ahead.advance(amh.config.delivery.escalate_after_ms + 60_000)
        listed = await cluster.api("amh").ListDue(node_api_pb2.DueRequest(actor=PRACTITIONER))
        (item,) = [i for i in listed.items if i.message_id == sent.message_id]
        assert item.delayed and item.node_id == "csc"
        assert item.what.startswith("not delivered after 4 h (sent, ")  # sent again meanwhile, maybe
        assert "attempt(s)): not taken yet by the recipient (future)" in item.what
        assert item.what.endswith("ask agency IT at both ends to check their clocks")


async def test_a_case_system_watching_a_share_sees_it_deferred_and_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WatchShareStatus tells its watcher each change: a deferral, which changes only why the
    message waits, is one. (csc is away when amh shares, so the watch starts first; and
    neither the gateway nor amh holds its "forwarded" answer back for company, so the
    receipt comes, and is recorded, alone.)"""
    monkeypatch.setattr(gateway_sessions, "ACK_LINGER_S", 0.0)
    monkeypatch.setattr(outbox_module, "ACK_LINGER_S", 0.0)  # nor amh its record of that answer
    async with amh_ahead(tmp_path) as (cluster, _, _):
        assessment_id = await family_assessment(cluster)
        await cluster.stop_node("csc")
        shared = await share(cluster, assessment_id)
        watch = cluster.api("amh").WatchShareStatus(
            node_api_pb2.ShareStatusRequest(actor=PRACTITIONER, share_id=shared.share_id)
        )
        seen = [(await anext(aiter(watch))).recipients[0].state]
        await cluster.start_node("csc")
        async with asyncio.timeout(15):
            async for status in watch:
                (recipient,) = status.recipients
                seen.append(recipient.state)
                if recipient.reason.startswith("not taken yet by the recipient (future)"):
                    break
        watch.cancel()
        assert seen[0] == "queued" and seen[-1] == "sent", seen


@pytest.mark.parametrize("restored", ["csc", "amh"])
async def test_a_store_put_back_after_the_clock_was_set_back_loses_nothing_that_came_since_its_backup(
    tmp_path: Path, restored: str
) -> None:
    """A store is backed up; then the clock is set back ten minutes (NTP stepping a fast
    clock), past the five minutes' skew a restore allows for, and amh shares with csc: by the
    clock, the share was made and received before the backup. Put back, csc is sent the
    share again (its receipt gave a longer audit log than the copy holds), and amh is given
    it back (its id is after the newest the copy holds): neither goes by the clock alone."""
    clock = ManualClock(SystemClock().now_ms() + 3_600_000)  # so the step back stays past the directory's issue
    federation = make_federation(tmp_path / "fed", SystemClock(), nodes=("amh", "csc"))
    member = backup.Member.of(federation.node_configs[restored])
    key, sealed = tmp_path / "backup.key", tmp_path / f"{restored}.age"
    async with running(federation, clock=clock) as cluster:
        assessment_id = await family_assessment(cluster)
        backup.take(member, sealed, backup.recipients([backup.generate_key(key, "")]), clock.now_ms())
        clock.advance(-600_000)
        (sent,) = (await share(cluster, assessment_id)).recipients
        delivered = "SELECT count(*) FROM outbox WHERE message_id = ? AND state = 'delivered'"
        await wait_count(cluster.nodes["amh"], delivered, (sent.message_id,), 1)

        await cluster.stop_node(restored)
        backup.restore_store(member, sealed, backup.identities(key), clock.now_ms())
        node = await cluster.start_node(restored)
        held = "SELECT count(*) FROM inbox WHERE message_id = ?" if restored == "csc" else delivered
        await wait_count(node, held, (sent.message_id,), 1, timeout_s=15)
