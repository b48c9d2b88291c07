"""The duty view across every case, end to end across a gateway and real nodes: what a node
must answer (requests, challenges, closure proposals) by when, gone once answered, and what
other agencies owe it past its date; from the API and the CLI."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import grpc
import pytest

from linkage import calendar, stories
from linkage.clock import DAY_MS, ManualClock
from linkage.v1 import envelope_pb2 as env
from linkage.v1 import node_api_pb2, summary_pb2, workflow_pb2
from node import dates
from node import due as due_view
from tests.harness import (
    PRACTITIONER,
    Cluster,
    LocalFederation,
    audit_events,
    linkage,
    make_federation,
    next_item,
    revoke,
    running,
    settle,
    wait_delivered,
)
from tests.test_challenges import challenge
from tests.test_federation import _case_id
from tests.test_workflows import (
    CSC_WORKER,
    decline,
    events,
    planned_closure,
    s47_request,
    share,
    shared_with_both,
    think_family,
)

REQUEST, CHALLENGE, CLOSURE = (
    env.MESSAGE_KIND_INFORMATION_REQUEST,
    env.MESSAGE_KIND_CHALLENGE,
    env.MESSAGE_KIND_CLOSURE_INTENT,
)


async def due(cluster: Cluster, node: str, within: int = 0) -> list[tuple[int, bool, str, str, bool]]:
    listed = await cluster.api(node).ListDue(node_api_pb2.DueRequest(actor=CSC_WORKER, within_days=within))
    return [(i.kind, i.to_answer, i.message_id, i.node_id, i.overdue) for i in listed.items]


async def test_the_duty_view_lists_what_to_answer_by_when_and_what_others_owe(
    federation: LocalFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock()
    async with running(federation, clock=clock) as cluster:
        await shared_with_both(cluster)
        csc_case = await _case_id(cluster, "csc")
        ask = s47_request(csc_case)  # to amh and the school, in two days
        ask.needed_by.CopyFrom(dates.add_days(dates.today(clock.now_ms()), 2))
        asked = {s.node_id: s.message_id for s in (await cluster.api("csc").RequestInformation(ask)).recipients}
        request = await next_item(cluster, "amh", REQUEST)
        await challenge(cluster)  # undated
        challenged = await next_item(cluster, "amh", CHALLENGE)
        await cluster.api("csc").ProposeClosure(planned_closure(CSC_WORKER, csc_case))  # answer within 14 days
        intent = await next_item(cluster, "amh", CLOSURE)

        dated, undated = (
            (REQUEST, True, request.message_id, "csc", False),
            (CHALLENGE, True, challenged.message_id, "csc", False),
        )
        assert await due(cluster, "amh") == [dated, undated]  # the closure proposal is due beyond 7 days
        assert await due(cluster, "amh", 14) == [dated, (CLOSURE, True, intent.message_id, "csc", False), undated]
        code, out, err = await linkage(
            "due", "--within", "14", "--socket", str(cluster.nodes["amh"].config.api_socket),
            "--actor-id", "amh-1", "--actor-role", "Duty social worker",
        )  # fmt: skip
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].endswith(f"answer the information request from Children's Social Care: {ask.purpose}")
        assert lines[1].strip() == f"linkage inbox reply {request.message_id} provide|partial|decline ..."
        assert lines[4].startswith("-") and f"linkage inbox respond {challenged.message_id}" in lines[5]

        await decline(cluster, request.message_id, "Nothing more is held.")
        await cluster.api("amh").RespondToClosure(
            node_api_pb2.RespondToClosureRequest(
                actor=CSC_WORKER, intent_message_id=intent.message_id, answer=workflow_pb2.CLOSURE_ANSWER_AGREE
            )
        )
        assert await due(cluster, "amh", 14) == [undated]  # what is answered is no longer due
        await next_item(cluster, "csc", env.MESSAGE_KIND_INFORMATION_RESPONSE)

        clock.advance(3 * DAY_MS)  # past the day needed: the school, which has not answered, is late
        owed = (await cluster.api("csc").ListDue(node_api_pb2.DueRequest(actor=CSC_WORKER))).items
        assert [(i.kind, i.to_answer, i.message_id, i.node_id, i.overdue) for i in owed] == [
            (REQUEST, False, asked["school"], "school", True)
        ]
        assert (owed[0].case_id, owed[0].what, owed[0].due) == (csc_case, ask.purpose, ask.needed_by)
        school_request = await next_item(cluster, "school", REQUEST)
        assert (await due(cluster, "school"))[0] == (REQUEST, True, school_request.message_id, "csc", True)
        assert [e["detail"] for e in events(await audit_events(cluster.nodes["amh"]), "due.viewed")][-1] == {
            "to_answer": 1,
            "reviews": 0,
            "undeliverable": 0,
            "delayed": 0,
            "owed": 0,
            "reviews_owed": 0,
            "still_held": 0,
        }
        await cluster.api("amh").ListDue(node_api_pb2.DueRequest(actor=CSC_WORKER, within_days=366))  # a leap year
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await cluster.api("amh").ListDue(node_api_pb2.DueRequest(actor=CSC_WORKER, within_days=367))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "at most 366" in (refused.value.details() or "")
        school_due = node_api_pb2.DueRequest(actor=CSC_WORKER, within_days=30)
        every = (await cluster.api("school").ListDue(school_due)).items
        with monkeypatch.context() as patched:
            patched.setattr(due_view, "MOST", len(every))  # exactly a page: nothing more
            listed = await cluster.api("school").ListDue(school_due)
            assert listed.items == every and not listed.more
            patched.setattr(due_view, "MOST", len(every) - 1)  # one past a page
            listed = await cluster.api("school").ListDue(school_due)
            assert listed.items == every[:-1] and listed.more
        monkeypatch.setattr(due_view, "READ_AT_MOST", 1)  # a look-up that stops at its bound says there is more
        listed = await cluster.api("school").ListDue(school_due)
        assert len(listed.items) == 1 and listed.more
        who = ("--actor-id", "duty-1", "--actor-role", "Duty worker")
        school, police = (str(cluster.nodes[n].config.api_socket) for n in ("school", "police"))
        code, out, err = await linkage("due", "--within", "30", "--socket", school, *who)
        assert code == 0, err
        assert out.splitlines()[-1] == "... and more: only the first 1 are listed"
        code, out, err = await linkage("due", "--json", "--socket", school, *who)
        assert code == 0, err
        answer = json.loads(out)
        assert answer["more"] and [i["message_id"] for i in answer["items"]] == [school_request.message_id]
        code, out, err = await linkage("due", "--within", "3", "--socket", police, *who)
        assert (code, out) == (0, "Nothing to answer in the next 3 days, and nothing owed to this agency is late.\n")


async def test_a_closure_proposal_is_to_answer_through_its_last_day_and_then_no_longer(tmp_path: Path) -> None:
    """The proposer may close once the day to answer by has passed: until its end, the
    proposal is on the duty view (not yet overdue); the day after, there is nothing to answer."""
    clock = ManualClock()
    async with running(make_federation(tmp_path, clock, validity_days=30), clock=clock) as cluster:
        await shared_with_both(cluster)
        await cluster.api("csc").ProposeClosure(planned_closure(CSC_WORKER, await _case_id(cluster, "csc")))
        intent = await next_item(cluster, "amh", CLOSURE)
        listed = await cluster.api("amh").ListDue(node_api_pb2.DueRequest(actor=CSC_WORKER, within_days=30))
        (last,) = [i.due for i in listed.items if i.message_id == intent.message_id]
        _to_noon_in_london(clock, last)
        assert (CLOSURE, True, intent.message_id, "csc", False) in await due(cluster, "amh")
        clock.advance(DAY_MS)
        assert intent.message_id not in [i[2] for i in await due(cluster, "amh", 30)]


def _to_noon_in_london(clock: ManualClock, day: summary_pb2.Date) -> None:
    """Noon that day, however many clock changes lie between: London's date is the day."""
    noon = dt.datetime(day.year, day.month, day.day, 12, tzinfo=calendar.UK)
    clock.advance(int(noon.timestamp() * 1000) - clock.now_ms())


async def test_the_duty_view_flags_the_reviews_of_its_own_assessments_to_their_author(
    federation: LocalFederation,
) -> None:
    """domain.md §6 rule 12: an overdue review is flagged to its author. The latest version
    of each summary counts, and only one of current risk."""
    clock = ManualClock()
    async with running(federation, clock=clock) as cluster:
        parent, child, first = await think_family(cluster)  # its review is 24 days ahead
        amh_case = await _case_id(cluster, "amh")

        async def reviews(within: int = 0) -> list[tuple[str, str, bool]]:
            listed = await cluster.api("amh").ListDue(node_api_pb2.DueRequest(actor=CSC_WORKER, within_days=within))
            return [(i.assessment_id, i.case_id, i.overdue) for i in listed.items if i.assessment_id]

        assert await reviews() == []  # not due within a week
        assert await reviews(30) == [(first, amh_case, False)]
        historical = stories.parent_risk_change(parent, child)
        del historical.risk_items[0]  # historical only: nothing to review
        await cluster.api("amh").RecordAssessment(
            node_api_pb2.RecordAssessmentRequest(actor=PRACTITIONER, case_id=amh_case, assessment=historical)
        )
        later = stories.parent_risk_change(parent, child)
        later.summary_id = first  # a new summary's id is its first assessment's
        later.review_date.CopyFrom(dates.add_days(dates.today(clock.now_ms()), 40))
        second = (
            await cluster.api("amh").RecordAssessment(
                node_api_pb2.RecordAssessmentRequest(actor=PRACTITIONER, case_id=amh_case, assessment=later)
            )
        ).assessment_id
        assert await reviews(30) == []  # the new version is due later; the first is no longer the latest
        _to_noon_in_london(clock, later.review_date)
        assert await reviews() == [(second, amh_case, False)]  # due today is not overdue
        clock.advance(DAY_MS)
        (item,) = (await cluster.api("amh").ListDue(node_api_pb2.DueRequest(actor=CSC_WORKER))).items
        assert (item.assessment_id, item.overdue, item.what) == (second, True, later.headline)
        code, out, err = await linkage(
            "due", "--socket", str(cluster.nodes["amh"].config.api_socket), "--actor-id", "amh-1", "--actor-role", "SW"
        )
        assert code == 0 and f"review your assessment {second} (case {amh_case}): {later.headline}" in out, err


async def corrected_without_the_school(
    cluster: Cluster,
) -> tuple[node_api_pb2.ShareSummaryResponse, node_api_pb2.DeliveryStatus]:
    """amh's summary corrected, once csc has its copy: the share, and the school's copy's status."""
    store = cluster.nodes["amh"].store
    assert store is not None
    (assessment_id,) = await store.fetchone("SELECT assessment_id FROM assessments")
    corrected = await share(cluster, assessment_id, env.MESSAGE_KIND_CORRECTION)
    (school,) = [r for r in corrected.recipients if r.node_id == "school"]
    await wait_delivered(cluster.nodes["amh"], 3)  # the first share's two copies, and csc's
    return corrected, school


async def test_a_message_that_could_not_be_delivered_stays_on_the_duty_view_until_followed_up(
    federation: LocalFederation,
) -> None:
    async with running(federation) as cluster:
        await shared_with_both(cluster)
        await revoke(cluster, "school")
        amh = cluster.api("amh")
        corrected, lost = await corrected_without_the_school(cluster)

        async def undeliverable() -> list[tuple[int, str, str, bool]]:
            listed = await amh.ListDue(node_api_pb2.DueRequest(actor=PRACTITIONER))
            return [(i.kind, i.message_id, i.node_id, i.overdue) for i in listed.items if i.undeliverable]

        assert await undeliverable() == [(env.MESSAGE_KIND_CORRECTION, lost.message_id, "school", True)]
        who = ("--socket", str(cluster.nodes["amh"].config.api_socket), "--actor-id", "amh-1", "--actor-role", "SW")
        code, out, err = await linkage("due", *who)
        assert f"UNDELIVERABLE      your correction to Oak Primary School: {lost.reason}" in out, (out, err)
        assert f"linkage share follow-up {lost.message_id} --note ..." in out

        for message_id, note, code_, said in [
            (lost.message_id, " ", grpc.StatusCode.INVALID_ARGUMENT, "note is empty"),
            ("m-none", "Phoned.", grpc.StatusCode.NOT_FOUND, "sent no message"),
            (next(r for r in corrected.recipients if r.node_id == "csc").message_id, "Phoned.",
             grpc.StatusCode.FAILED_PRECONDITION, "was delivered: there is nothing to follow up"),
        ]:  # fmt: skip
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await amh.RecordFollowUp(
                    node_api_pb2.FollowUpRequest(actor=PRACTITIONER, message_id=message_id, note=note)
                )
            assert refused.value.code() == code_ and said in (refused.value.details() or ""), refused.value

        note = "Phoned the school's DSL and read the correction to them."
        for _ in range(2):  # repeated with its request id (the answer lost, say): answered as the first
            code, out, err = await linkage(
                "share", "follow-up", lost.message_id, "--note", note, "--request-id", "f", *who
            )
            assert code == 0 and f"Followed up: school, message {lost.message_id}" in out, err
        assert await undeliverable() == []
        status = await amh.GetShareStatus(
            node_api_pb2.ShareStatusRequest(actor=PRACTITIONER, share_id=corrected.share_id)
        )
        (school,) = [r for r in status.recipients if r.node_id == "school"]
        assert (school.follow_up, bool(school.followed_up_at_ms)) == (note, True)
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await amh.RecordFollowUp(
                node_api_pb2.FollowUpRequest(actor=PRACTITIONER, message_id=lost.message_id, note="Again.")
            )
        assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION and note in (again.value.details() or "")
        (entry,) = events(await audit_events(cluster.nodes["amh"]), "message.followed_up")
        assert (entry["rationale"], entry["counterpart"], entry["message_id"]) == (note, "school", lost.message_id)


async def test_a_message_not_delivered_after_some_hours_is_on_the_duty_view_until_followed_up(
    federation: LocalFederation,
) -> None:
    """Mission anchors §8 item 9: a correction the school has not had for hours (its node is
    down) is not left to the 7 days after which it is undeliverable: the duty team tells
    the school another way meanwhile, and delivery goes on."""
    clock = ManualClock()
    async with running(federation, clock=clock) as cluster:
        await shared_with_both(cluster)
        await cluster.stop_node("school")
        amh = cluster.api("amh")
        corrected, away = await corrected_without_the_school(cluster)

        async def delayed() -> list[tuple[int, str, str, bool]]:
            listed = await amh.ListDue(node_api_pb2.DueRequest(actor=PRACTITIONER))
            return [(i.kind, i.message_id, i.node_id, i.overdue) for i in listed.items if i.delayed]

        assert await delayed() == []
        clock.advance(3 * 3_600_000)
        assert await delayed() == []  # [delivery] escalate_after_hours is 4
        clock.advance(2 * 3_600_000)
        assert await delayed() == [(env.MESSAGE_KIND_CORRECTION, away.message_id, "school", True)]
        who = ("--socket", str(cluster.nodes["amh"].config.api_socket), "--actor-id", "amh-1", "--actor-role", "SW")
        code, out, err = await linkage("due", *who)
        assert code == 0, err
        assert "NOT DELIVERED      your correction to Oak Primary School: not delivered after 5 h (" in out, (out, err)
        assert f"linkage share follow-up {away.message_id} --note ..." in out
        viewed = events(await audit_events(cluster.nodes["amh"]), "due.viewed")[-1]["detail"]
        assert (viewed["delayed"], viewed["to_answer"], viewed["undeliverable"]) == (1, 0, 0)

        await cluster.nodes["amh"].outbox.send_due()  # the school's copy, due after 5 h, tried again now
        await settle(cluster.nodes["amh"])  # and answered (the school is away): it waits, quiet
        watch = amh.WatchShareStatus(node_api_pb2.ShareStatusRequest(actor=PRACTITIONER, share_id=corrected.share_id))
        stream = aiter(watch)
        before = await anext(stream)
        await amh.RecordFollowUp(
            node_api_pb2.FollowUpRequest(actor=PRACTITIONER, message_id=away.message_id, note="Phoned the DSL.")
        )
        async with asyncio.timeout(10):  # its watcher is told: the follow-up is part of the share's status
            told = await anext(stream)
        watch.cancel()
        (school,) = [r for r in before.recipients if r.node_id == "school"]
        assert (school.state, school.sent_at_ms, school.follow_up, school.followed_up_at_ms) == ("queued", 0, "", 0)
        (school,) = [r for r in told.recipients if r.node_id == "school"]
        assert (school.follow_up, school.followed_up_at_ms) == ("Phoned the DSL.", clock.now_ms())
        assert await delayed() == []
        await cluster.start_node("school")  # and it is delivered all the same
        await wait_delivered(cluster.nodes["amh"], 4)
        assert events(await audit_events(cluster.nodes["amh"]), "due.viewed")[-1]["detail"]["delayed"] == 0


async def test_the_duty_view_flags_a_received_summary_past_its_review_date_to_its_recipients(
    federation: LocalFederation,
) -> None:
    """domain.md §6 rule 12: an overdue review is flagged to recipients too, who ask whether
    it still holds. Only a version still live counts: one replaced by a newer is not listed."""
    clock = ManualClock()
    async with running(federation, clock=clock) as cluster:
        parent, child, _ = await think_family(cluster)
        amh_case = await _case_id(cluster, "amh")

        async def shared(summary_id: str = "", review_in_days: int = 1) -> str:
            """A version of a summary shared with csc and school: the share's id."""
            assessment = stories.parent_risk_change(parent, child)
            assessment.summary_id = summary_id
            assessment.review_date.CopyFrom(dates.add_days(dates.today(clock.now_ms()), review_in_days))
            recorded = await cluster.api("amh").RecordAssessment(
                node_api_pb2.RecordAssessmentRequest(actor=PRACTITIONER, case_id=amh_case, assessment=assessment)
            )
            return (await share(cluster, recorded.assessment_id)).share_id

        first = await shared()
        (summary_id,) = await cluster.nodes["amh"].store.fetchone(  # type: ignore[union-attr]
            "SELECT summary_id FROM outbox WHERE share_id = ?", (first,)
        )
        await shared(summary_id, review_in_days=40)  # reviewed before its day: due later
        other = await shared()  # another summary, due tomorrow
        await wait_delivered(cluster.nodes["amh"], 6)
        (received,) = [
            i
            for i in (await cluster.api("csc").ListReceived(node_api_pb2.ListReceivedRequest(actor=CSC_WORKER))).items
            if i.share_id == other
        ]

        async def owed() -> list[tuple[str, str, str, bool, str]]:
            listed = await cluster.api("csc").ListDue(node_api_pb2.DueRequest(actor=CSC_WORKER))
            return [(i.message_id, i.node_id, i.case_id, i.overdue, i.what) for i in listed.items if i.review_owed]

        assert await owed() == []
        _to_noon_in_london(clock, received.summary.review_date)
        assert await owed() == []  # the review is due today: not yet passed
        clock.advance(DAY_MS)
        csc_case = await _case_id(cluster, "csc")
        assert await owed() == [(received.message_id, "amh", csc_case, True, received.summary.headline)]
        code, out, err = await linkage(
            "due", "--socket", str(cluster.nodes["csc"].config.api_socket), "--actor-id", "csc-1", "--actor-role", "SW"
        )
        assert code == 0, err
        assert f"Adult Mental Health Trust's summary is past its review date (case {csc_case}): " in out
        assert f"linkage inbox ask {received.message_id} --question 'Its review date has passed" in out
        assert events(await audit_events(cluster.nodes["csc"]), "due.viewed")[-1]["detail"]["reviews_owed"] == 1
