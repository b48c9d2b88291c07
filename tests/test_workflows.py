"""Think Family in practice, end to end across a gateway and real nodes: family links,
involvement discovery and notices, change notices, historical updates, corrections and
withdrawals, closure, clarification and information requests, read notifications,
inbox and chronology. Refusals included; audit entries checked at both ends."""

from __future__ import annotations

import asyncio
import re
import stat
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from linkage import stories
from linkage.clock import DAY_MS, ManualClock
from linkage.envelope import MAX_BODY_BYTES
from linkage.v1 import envelope_pb2 as env
from linkage.v1 import gateway_pb2, gateway_pb2_grpc, node_api_pb2, summary_pb2, workflow_pb2
from node import dates
from node.errors import ApiError
from node.messaging import add_to_outbox
from node.requests import check_ahead
from node.store import Tx
from tests.harness import (
    PRACTITIONER,
    CapturedLogs,
    Cluster,
    LocalFederation,
    audit_events,
    next_item,
    revoke,
    running,
    settle,
    wait_count,
    wait_delivered,
    written_first,
)
from tests.test_federation import _case_id, open_case

CSC_WORKER = stories.practitioner("csc-207", "Riley Example", "Social worker")
SCHOOL_DSL = stories.practitioner("sch-031", "Morgan Example", "Designated safeguarding lead")


async def think_family(cluster: Cluster) -> tuple[bytes, bytes, str]:
    """amh, csc and school linked to the family; amh has recorded its assessment."""
    family = stories.think_family_people()
    parent, child = await open_case(cluster, "amh", family)
    await open_case(cluster, "csc", family)
    await open_case(cluster, "school", [family[1]])
    return parent, child, await record_assessment(cluster, parent, child)


async def record_assessment(cluster: Cluster, parent: bytes, child: bytes) -> str:
    """amh records its assessment of the parent's risk to the child; its id."""
    recorded = await cluster.api("amh").RecordAssessment(
        node_api_pb2.RecordAssessmentRequest(
            actor=PRACTITIONER,
            case_id=await _case_id(cluster, "amh"),
            assessment=stories.parent_risk_change(parent, child),
        )
    )
    return recorded.assessment_id


async def share(
    cluster: Cluster, assessment_id: str, kind: env.MessageKind.ValueType = env.MESSAGE_KIND_SUMMARY_SHARE
) -> node_api_pb2.ShareSummaryResponse:
    return await cluster.api("amh").ShareSummary(
        node_api_pb2.ShareSummaryRequest(
            actor=PRACTITIONER, assessment_id=assessment_id, decision=stories.override_decision(), kind=kind
        )
    )


async def shared_with_both(cluster: Cluster) -> tuple[bytes, bytes, str]:
    """amh's assessment shared with csc and school and delivered to both: parent, child, summary id."""
    parent, child, assessment_id = await think_family(cluster)
    await share(cluster, assessment_id)
    summary_id = (await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)).summary.summary_id
    await wait_delivered(cluster.nodes["amh"], 2)
    return parent, child, summary_id


async def chronology_states(cluster: Cluster) -> list[tuple[int, str]]:
    """(kind, state) of each entry of csc's chronology of the family, in order."""
    response = await cluster.api("csc").Chronology(
        node_api_pb2.ChronologyRequest(actor=CSC_WORKER, case_id=await _case_id(cluster, "csc"))
    )
    return [(e.kind, e.state) for e in response.entries]


def events(entries: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in entries if e["event"] == name]


async def test_case_systems_reach_only_their_own_node(federation: LocalFederation) -> None:
    async with running(federation) as cluster:
        _, _, assessment_id = await think_family(cluster)
        for node in cluster.nodes.values():
            mode = node.config.api_socket.stat().st_mode
            assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600  # only the node's own account
        await share(cluster, assessment_id)
        item = await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)
        with pytest.raises(grpc.aio.AioRpcError) as raised:  # school's case system asking about csc's item
            await cluster.api("school").AskClarification(
                node_api_pb2.AskClarificationRequest(actor=SCHOOL_DSL, about_message_id=item.message_id, question="?")
            )
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        opened = events(await audit_events(cluster.nodes["amh"]), "case.opened")[0]
        assert opened["actor"] == {"id": PRACTITIONER.id, "name": PRACTITIONER.name, "role": PRACTITIONER.role}


async def test_involvement_discovery_and_notices(federation: LocalFederation) -> None:
    async with running(federation) as cluster:
        family = stories.think_family_people()
        parent, child = await open_case(cluster, "amh", family)
        await open_case(cluster, "csc", family)
        joined = await next_item(cluster, "amh", env.MESSAGE_KIND_INVOLVEMENT_NOTICE)
        assert joined.sender_node == "csc" and joined.body.involvement.joined
        assert set(joined.body.involvement.link_tokens) == {parent, child}
        assert joined.body.involvement.agency_type == "LA_CHILDRENS_SOCIAL_CARE"

        school_case = await cluster.api("school").OpenCase(
            node_api_pb2.OpenCaseRequest(actor=SCHOOL_DSL, case_ref="s-1", people=[family[1]])
        )
        notice = await next_item(cluster, "csc", env.MESSAGE_KIND_INVOLVEMENT_NOTICE)
        assert notice.sender_node == "school" and list(notice.body.involvement.link_tokens) == [child]

        found = await cluster.api("csc").DiscoverInvolvement(
            node_api_pb2.CaseRequest(actor=CSC_WORKER, case_id=await _case_id(cluster, "csc"))
        )
        agencies = {a.node_id: a for a in found.agencies}
        assert set(agencies) == {"amh", "school"}
        assert agencies["amh"].agency_name == "Adult Mental Health Trust"
        assert agencies["amh"].contact_role == "Duty team"
        assert list(agencies["school"].link_tokens) == [child]
        (discovered,) = await audit_events(cluster.nodes["csc"], "involvement.discovered")
        assert discovered["detail"] == {"case_id": await _case_id(cluster, "csc"), "agencies": ["amh", "school"]}

        # The police node is not involved: the gateway refuses it discovery about the family.
        police = gateway_pb2_grpc.GatewayStub(cluster.gateway_channel("police"))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await police.DiscoverInvolvement(
                gateway_pb2.DiscoverInvolvementRequest(node_id="police", link_tokens=[parent, child])
            )
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED

        # The school removes the child: it leaves the link, and the others are told.
        seq = notice.seq
        await cluster.api("school").RemovePerson(
            node_api_pb2.RemovePersonRequest(actor=SCHOOL_DSL, case_id=school_case.case_id, link_token=child)
        )
        left = await next_item(cluster, "csc", env.MESSAGE_KIND_INVOLVEMENT_NOTICE, after_seq=seq)
        assert not left.body.involvement.joined
        assert cluster.gateway._index is not None and cluster.gateway._index.count("school") == 0
        assert events(await audit_events(cluster.nodes["csc"]), "involvement.notice")[-1]["decision"] == "left"

        # A person added later is linked, and announced, like the first ones.
        added = await cluster.api("school").AddPerson(
            node_api_pb2.AddPersonRequest(actor=SCHOOL_DSL, case_id=school_case.case_id, person=family[1])
        )
        assert [p.link_token for p in added.people] == [child]
        back = await next_item(cluster, "csc", env.MESSAGE_KIND_INVOLVEMENT_NOTICE, after_seq=left.seq)
        assert back.body.involvement.joined

        # One whose identity is protected is announced neither joining nor leaving.
        school, protected = cluster.nodes["school"], node_api_pb2.PersonIdentifier()
        protected.CopyFrom(family[0])
        protected.protect_identity = True
        notices = f"SELECT count(*) FROM outbox WHERE kind = {env.MESSAGE_KIND_INVOLVEMENT_NOTICE}"
        assert school.store is not None
        before = await school.store.fetchone(notices)  # to amh and csc: that the child joined, left and came back
        assert before == (6,)
        await cluster.api("school").AddPerson(
            node_api_pb2.AddPersonRequest(actor=SCHOOL_DSL, case_id=school_case.case_id, person=protected)
        )
        await cluster.api("school").RemovePerson(
            node_api_pb2.RemovePersonRequest(actor=SCHOOL_DSL, case_id=school_case.case_id, link_token=parent)
        )
        assert await school.store.fetchone(notices) == before  # each call queues what it sends before it answers


async def test_decrease_historical_update_correction_and_withdrawal_reach_every_earlier_recipient(
    federation: LocalFederation,
) -> None:
    async with running(federation) as cluster:
        parent, child, summary_id = await shared_with_both(cluster)
        assert await chronology_states(cluster) == [(env.MESSAGE_KIND_SUMMARY_SHARE, "current")] * 2
        # Who made it is the node's record, not the caller's word (the story names no one).
        received = await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)
        assert received.summary.originating_node == "amh" and received.summary.author == PRACTITIONER
        assert received.summary.agency_type == received.sender_agency_type == "NHS_MENTAL_HEALTH"

        # The school leaves the family link; as an earlier recipient it still hears of changes (Art 19).
        school_case = await _case_id(cluster, "school")
        await cluster.api("school").RemovePerson(
            node_api_pb2.RemovePersonRequest(actor=SCHOOL_DSL, case_id=school_case, link_token=child)
        )
        decreased = stories.parent_risk_change(parent, child)
        decreased.summary_id = summary_id
        decreased.version = 2
        decreased.risk_items[0].direction = "DECREASED"
        decreased.risk_items[0].level.value = "MEDIUM"
        decreased.risk_items[0].previous_level.value = "HIGH"
        recorded = await cluster.api("amh").RecordAssessment(
            node_api_pb2.RecordAssessmentRequest(
                actor=PRACTITIONER, case_id=await _case_id(cluster, "amh"), assessment=decreased
            )
        )
        assert recorded.version == 2
        entry = (await audit_events(cluster.nodes["amh"], "assessment.recorded"))[-1]
        assert entry["summary_id"] == summary_id
        assert entry["detail"] == {
            "assessment_id": recorded.assessment_id,
            "case_id": await _case_id(cluster, "amh"),
            "version": 2,
        }
        notice = await share(cluster, recorded.assessment_id, env.MESSAGE_KIND_RISK_CHANGE_NOTICE)
        assert sorted(r.node_id for r in notice.recipients) == ["csc", "school"]
        item = await next_item(cluster, "school", env.MESSAGE_KIND_RISK_CHANGE_NOTICE)
        assert item.summary.risk_items[0].direction == "DECREASED"
        # Shared as a plain summary, a decrease still reaches every earlier recipient (domain.md §6 rule 10).
        plain = await share(cluster, recorded.assessment_id)
        assert sorted(r.node_id for r in plain.recipients) == ["csc", "school"]
        # A later version that tells only of a rise goes to those linked to the family now.
        increased = stories.parent_risk_change(parent, child)
        increased.summary_id, increased.version = summary_id, 3
        del increased.risk_items[1:]  # the other one is resolved
        assert increased.risk_items[0].direction == "INCREASED"
        recorded = await cluster.api("amh").RecordAssessment(
            node_api_pb2.RecordAssessmentRequest(
                actor=PRACTITIONER, case_id=await _case_id(cluster, "amh"), assessment=increased
            )
        )
        assert [r.node_id for r in (await share(cluster, recorded.assessment_id)).recipients] == ["csc"]

        # Now historical: everything about the earlier period is context only.
        historical = stories.parent_risk_change(parent, child)
        historical.summary_id, historical.version = summary_id, 4
        historical.risk_items[0].currency = summary_pb2.CURRENCY_HISTORICAL
        historical.risk_items[0].period.to.CopyFrom(summary_pb2.Date(year=2026, month=11, day=20))
        historical.risk_items[0].historical_relevance = "CONTEXT_ONLY"
        del historical.risk_items[1:]
        recorded = await cluster.api("amh").RecordAssessment(
            node_api_pb2.RecordAssessmentRequest(
                actor=PRACTITIONER, case_id=await _case_id(cluster, "amh"), assessment=historical
            )
        )
        update = await share(cluster, recorded.assessment_id, env.MESSAGE_KIND_HISTORICAL_UPDATE)
        assert sorted(r.node_id for r in update.recipients) == ["csc", "school"]
        got = await next_item(cluster, "csc", env.MESSAGE_KIND_HISTORICAL_UPDATE)
        assert got.summary.risk_items[0].currency == summary_pb2.CURRENCY_HISTORICAL

        # A correction replaces the earlier versions at every recipient.
        corrected = await share(cluster, recorded.assessment_id, env.MESSAGE_KIND_CORRECTION)
        assert sorted(r.node_id for r in corrected.recipients) == ["csc", "school"]
        correction = await next_item(cluster, "csc", env.MESSAGE_KIND_CORRECTION)
        states = {
            i.kind: i.state
            for i in (await cluster.api("csc").ListReceived(node_api_pb2.ListReceivedRequest(actor=CSC_WORKER))).items
            if i.summary.summary_id == summary_id
        }
        assert states[env.MESSAGE_KIND_SUMMARY_SHARE] == "superseded"
        assert states[env.MESSAGE_KIND_CORRECTION] == "new"
        # The chronology's entries, derived when first read, follow their items' states.
        timeline = await chronology_states(cluster)
        assert timeline[:2] == [(env.MESSAGE_KIND_SUMMARY_SHARE, "superseded")] * 2
        assert timeline[-1] == (env.MESSAGE_KIND_CORRECTION, "current")

        # A withdrawal goes to every earlier recipient, and each confirms with its signed receipt.
        withdrawn = await cluster.api("amh").WithdrawSummary(
            node_api_pb2.WithdrawSummaryRequest(
                actor=PRACTITIONER, summary_id=summary_id, reason="Sent in error", ground="NOT_TO_BE_RELIED_ON"
            )
        )
        assert sorted(r.node_id for r in withdrawn.recipients) == ["csc", "school"]
        await next_item(cluster, "csc", env.MESSAGE_KIND_WITHDRAWAL, after_seq=correction.seq)
        status_stream = cluster.api("amh").WatchShareStatus(
            node_api_pb2.ShareStatusRequest(actor=PRACTITIONER, share_id=withdrawn.share_id), timeout=15
        )
        async for status in status_stream:
            last = status
        assert last.settled and {r.state for r in last.recipients} == {"delivered"}
        items = (await cluster.api("csc").ListReceived(node_api_pb2.ListReceivedRequest(actor=CSC_WORKER))).items
        assert {i.state for i in items if i.summary.summary_id == summary_id} == {"withdrawn"}
        assert {state for _, state in await chronology_states(cluster)} == {"withdrawn"}
        assert events(await audit_events(cluster.nodes["amh"]), "summary.withdrawn")
        assert events(await audit_events(cluster.nodes["csc"]), "summary.withdrawn_by_sender")
        with pytest.raises(grpc.aio.AioRpcError) as raised:  # a retried withdrawal tells nobody twice
            await cluster.api("amh").WithdrawSummary(
                node_api_pb2.WithdrawSummaryRequest(
                    actor=PRACTITIONER, summary_id=summary_id, reason="Sent in error", ground="NOT_TO_BE_RELIED_ON"
                )
            )
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"is already withdrawn (withdrawal {withdrawn.share_id}" in (raised.value.details() or "")


async def test_nothing_is_added_to_a_case_closed_while_the_call_waited_to_write(
    federation: LocalFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A person added, or an assessment recorded, by a call that found the case open but
    reached the store only after a close committed: refused, so no subscription or notice
    goes out for a case this agency no longer works."""
    async with running(federation, nodes=("amh",)) as cluster:
        node = cluster.nodes["amh"]
        store = node.store
        assert store is not None
        parent, child = await open_case(cluster, "amh", stories.think_family_people())
        case_id = await _case_id(cluster, "amh")

        async def set_status(status: str) -> None:
            async with store.tx() as tx:
                await tx.execute("UPDATE cases SET status = ? WHERE case_id = ?", (status, case_id))

        async def close(tx: Tx) -> None:
            await tx.execute("UPDATE cases SET status = 'closed' WHERE case_id = ?", (case_id,))

        sibling = node_api_pb2.PersonIdentifier(
            scheme="la-csc", value="sibling-1", role_in_risk="AT_RISK", person_type="CHILD"
        )
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: node.cases.add_person(
                node_api_pb2.AddPersonRequest(actor=PRACTITIONER, case_id=case_id, person=sibling)
            ),
            lambda: node.cases.record_assessment(
                node_api_pb2.RecordAssessmentRequest(
                    actor=PRACTITIONER, case_id=case_id, assessment=stories.parent_risk_change(parent, child)
                )
            ),
        ]
        for call in calls:
            await set_status("open")
            written_first(monkeypatch, store, close)  # committed just before the call's own write
            with pytest.raises(ApiError) as refused:
                await call()
            assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert await store.fetchone("SELECT COUNT(*) FROM case_people WHERE case_id = ?", (case_id,)) == (2,)
        assert await store.fetchone("SELECT COUNT(*) FROM assessments") == (0,)


@pytest.mark.parametrize(
    ("meanwhile", "said"),
    [
        ("UPDATE cases SET status = 'closed'", "the case is closed"),
        (
            "INSERT INTO assessments(assessment_id, case_id, recorded_at_ms, body, summary_id, version) "
            "SELECT 'later', case_id, recorded_at_ms, body, summary_id, version + 1 FROM assessments",
            "was recorded since ('later'): share that one",
        ),
    ],
    ids=["its case closed", "a later version recorded"],
)
async def test_a_share_decided_before_a_close_or_a_later_version_committed_is_refused_where_it_is_written(
    federation: LocalFederation, monkeypatch: pytest.MonkeyPatch, meanwhile: str, said: str
) -> None:
    """A share decided while its case was open and its assessment the summary's latest
    version, written after a close or a later version committed: refused, as it would have
    been decided then (a correction would still go to whoever had the summary), and nothing
    is shared."""
    async with running(federation) as cluster:
        _, _, assessment_id = await think_family(cluster)
        store = cluster.nodes["amh"].store
        assert store is not None

        async def commit_meanwhile(tx: Tx) -> None:
            await tx.execute(meanwhile)

        written_first(monkeypatch, store, commit_meanwhile)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await share(cluster, assessment_id)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert said in (refused.value.details() or "")
        assert await store.fetchone("SELECT COUNT(*) FROM shares") == (0,)
        assert await store.fetchone("SELECT COUNT(*) FROM outbox") == (0,)


async def test_a_withdrawal_from_every_agency_is_not_made_while_a_version_went_to_another_meanwhile(
    federation: LocalFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A withdrawal names no agency, so goes to every one that holds the summary, as found when
    it was asked for. A version that reached the outbox for another agency before the withdrawal
    was written would be left standing there: so the withdrawal is refused, to be asked again."""
    async with running(federation) as cluster:
        _, _, summary_id = await shared_with_both(cluster)
        store = cluster.nodes["amh"].store
        assert store is not None

        async def shared_to_police(tx: Tx) -> None:  # a version for police, committed just before the withdrawal
            await add_to_outbox(
                tx, "m-police", "s-police", "police", None, b"", env.MESSAGE_KIND_SUMMARY_SHARE, summary_id, "x"
            )

        written_first(monkeypatch, store, shared_to_police)
        withdraw = node_api_pb2.WithdrawSummaryRequest(
            actor=PRACTITIONER, summary_id=summary_id, reason="In error", ground="NOT_TO_BE_RELIED_ON"
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await cluster.api("amh").WithdrawSummary(withdraw)
        assert refused.value.code() == grpc.StatusCode.ABORTED
        assert "police" in (refused.value.details() or "")
        again = await cluster.api("amh").WithdrawSummary(withdraw)  # asked again, it reaches all three
        assert sorted(r.node_id for r in again.recipients) == ["csc", "police", "school"]


async def test_racing_calls_withdraw_propose_and_remove_once(federation: LocalFederation) -> None:
    """Two of the same call at once (a case system retrying over a slow answer) each passed
    their check before either wrote: a summary was withdrawn twice, a case had two closures
    proposed, and a person was removed twice, each told to every agency twice. The check is
    made again inside the write, so one call does it and the other is refused."""
    async with running(federation) as cluster:
        _, _, summary_id = await shared_with_both(cluster)
        amh, store = cluster.api("amh"), cluster.nodes["amh"].store
        assert store is not None
        case_id = await _case_id(cluster, "amh")

        async def twice(call: Any, request: Any) -> list[grpc.StatusCode]:
            async def one() -> grpc.StatusCode:
                try:
                    await call(request)
                except grpc.aio.AioRpcError as exc:
                    return exc.code()
                return grpc.StatusCode.OK

            return sorted(await asyncio.gather(one(), one()), key=lambda c: c.value[0])

        withdraw = node_api_pb2.WithdrawSummaryRequest(
            actor=PRACTITIONER, summary_id=summary_id, reason="In error", ground="NOT_TO_BE_RELIED_ON"
        )
        assert await twice(amh.WithdrawSummary, withdraw) == [grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION]
        assert await twice(amh.ProposeClosure, planned_closure(PRACTITIONER, case_id)) == [
            grpc.StatusCode.OK,
            grpc.StatusCode.FAILED_PRECONDITION,
        ]
        (person, *_) = (
            await amh.OpenCase(
                node_api_pb2.OpenCaseRequest(
                    actor=PRACTITIONER, case_ref="case-2", people=stories.think_family_people()
                )
            )
        ).people
        remove = node_api_pb2.RemovePersonRequest(
            actor=PRACTITIONER,
            case_id=(await store.fetchone("SELECT case_id FROM cases WHERE case_ref = 'case-2'"))[0],
            link_token=person.link_token,
        )
        assert await twice(amh.RemovePerson, remove) == [grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND]

        def unlinked(value: str) -> node_api_pb2.PersonIdentifier:  # nobody else is linked to them
            return node_api_pb2.PersonIdentifier(
                scheme="la-asc", value=value, role_in_risk="AT_RISK", person_type="ADULT_AT_RISK"
            )

        alone = await amh.OpenCase(
            node_api_pb2.OpenCaseRequest(actor=PRACTITIONER, case_ref="case-3", people=[unlinked("ASC-1")])
        )
        add = node_api_pb2.AddPersonRequest(actor=PRACTITIONER, case_id=alone.case_id, person=unlinked("ASC-2"))
        assert await twice(amh.AddPerson, add) == [grpc.StatusCode.OK, grpc.StatusCode.ALREADY_EXISTS]
        assert not (await amh.ProposeClosure(planned_closure(PRACTITIONER, alone.case_id))).awaiting
        close = node_api_pb2.CloseCaseRequest(actor=PRACTITIONER, case_id=alone.case_id)
        assert await twice(amh.CloseCase, close) == [grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION]
        entries = await audit_events(cluster.nodes["amh"])
        once = ("summary.withdrawn", "case.person_removed", "case.person_added", "case.closed")
        assert [len(events(entries, e)) for e in once] == [1, 1, 1, 1]
        assert len(events(entries, "closure.proposed")) == 2  # one for each case
        (withdrawals,) = await store.fetchone(
            "SELECT COUNT(*) FROM outbox WHERE kind = ?", (env.MESSAGE_KIND_WITHDRAWAL,)
        )
        (intents,) = await store.fetchone(
            "SELECT COUNT(*) FROM outbox WHERE kind = ?", (env.MESSAGE_KIND_CLOSURE_INTENT,)
        )
        assert (withdrawals, intents) == (2, 2)  # csc and school, once each


async def test_a_withdrawal_whose_bodies_retention_purged_is_refused_with_a_reason(
    federation: LocalFederation,
) -> None:
    async with running(federation) as cluster:
        _, _, summary_id = await shared_with_both(cluster)
        store = cluster.nodes["amh"].store
        assert store is not None
        async with store.tx() as tx:  # what retention does to delivered messages' bodies
            await tx.execute("DELETE FROM outbox_bodies")
            await tx.execute("UPDATE outbox SET body_kept = 0")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await cluster.api("amh").WithdrawSummary(
                node_api_pb2.WithdrawSummaryRequest(
                    actor=PRACTITIONER, summary_id=summary_id, reason="Sent in error", ground="NOT_TO_BE_RELIED_ON"
                )
            )
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "retention has purged" in (raised.value.details() or "")


def planned_closure(
    actor: summary_pb2.Practitioner, case_id: str, note: str = ""
) -> node_api_pb2.ProposeClosureRequest:
    """A planned closure, goals met, the others asked to answer within a fortnight."""
    respond_by = stories.days_from_today(14)
    return node_api_pb2.ProposeClosureRequest(
        actor=actor,
        case_id=case_id,
        note=note,
        intent=summary_pb2.ClosureIntent(intent="PLANNED_CLOSURE", reason_code="RISK_REDUCED_GOALS_MET"),
        respond_by=respond_by,
    )


async def test_closure_intent_objection_and_notice(federation: LocalFederation) -> None:
    async with running(federation) as cluster:
        await think_family(cluster)
        amh, case_id = cluster.api("amh"), await _case_id(cluster, "amh")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await amh.CloseCase(node_api_pb2.CloseCaseRequest(actor=PRACTITIONER, case_id=case_id))
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "must be alerted before a case is closed" in (raised.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as raised:  # alerting them must leave them time to answer
            late = planned_closure(PRACTITIONER, case_id)
            late.respond_by.CopyFrom(stories.days_from_today(-1))
            await amh.ProposeClosure(late)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "has passed" in (raised.value.details() or "")
        assert (await amh.GetClosure(node_api_pb2.CaseRequest(actor=PRACTITIONER, case_id=case_id))).state == "none"
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await amh.GetClosure(node_api_pb2.CaseRequest(actor=PRACTITIONER, case_id="no-such-case"))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND

        proposed = await amh.ProposeClosure(
            planned_closure(PRACTITIONER, case_id, note="Parent stable on treatment for three months.")
        )
        assert proposed.state == "proposed" and sorted(proposed.awaiting) == ["csc", "school"]
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await amh.CloseCase(node_api_pb2.CloseCaseRequest(actor=PRACTITIONER, case_id=case_id))
        assert "waiting for answers from csc, school" in (raised.value.details() or "")

        sent: dict[str, str] = {}
        for node, actor, answer, reason in (
            ("csc", CSC_WORKER, workflow_pb2.CLOSURE_ANSWER_AGREE, ""),
            ("school", SCHOOL_DSL, workflow_pb2.CLOSURE_ANSWER_OBJECT, "Attendance has dropped this month."),
        ):
            intent = await next_item(cluster, node, env.MESSAGE_KIND_CLOSURE_INTENT)
            assert intent.body.closure_intent.note.startswith("Parent stable")
            with pytest.raises(grpc.aio.AioRpcError):  # an objection needs its reason
                await cluster.api(node).RespondToClosure(
                    node_api_pb2.RespondToClosureRequest(
                        actor=actor, intent_message_id=intent.message_id, answer=workflow_pb2.CLOSURE_ANSWER_OBJECT
                    )
                )
            with pytest.raises(grpc.aio.AioRpcError) as raised:  # an answer this node does not know
                await cluster.api(node).RespondToClosure(
                    node_api_pb2.RespondToClosureRequest(
                        actor=actor,
                        intent_message_id=intent.message_id,
                        answer=99,  # type: ignore[arg-type]
                    )
                )
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            answered = await cluster.api(node).RespondToClosure(
                node_api_pb2.RespondToClosureRequest(
                    actor=actor, intent_message_id=intent.message_id, answer=answer, reason=reason
                )
            )
            sent[node] = answered.message_id
        await next_item(cluster, "amh", env.MESSAGE_KIND_CLOSURE_RESPONSE)
        status = await amh.GetClosure(node_api_pb2.CaseRequest(actor=PRACTITIONER, case_id=case_id))
        while status.awaiting:  # the second answer is in flight; each arrival is an inbox event
            seq = max(
                i.seq for i in (await amh.ListReceived(node_api_pb2.ListReceivedRequest(actor=PRACTITIONER))).items
            )
            await next_item(cluster, "amh", env.MESSAGE_KIND_CLOSURE_RESPONSE, after_seq=seq - 1)
            status = await amh.GetClosure(node_api_pb2.CaseRequest(actor=PRACTITIONER, case_id=case_id))
        assert status.objection_outstanding
        received = (await amh.ListReceived(node_api_pb2.ListReceivedRequest(actor=PRACTITIONER))).items
        responses = {i.sender_node: i.message_id for i in received if i.kind == env.MESSAGE_KIND_CLOSURE_RESPONSE}
        assert responses == sent  # each answer's call named the message that carried it
        assert {(r.node_id, r.answer) for r in status.replies} == {
            ("csc", workflow_pb2.CLOSURE_ANSWER_AGREE),
            ("school", workflow_pb2.CLOSURE_ANSWER_OBJECT),
        }
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await amh.CloseCase(node_api_pb2.CloseCaseRequest(actor=PRACTITIONER, case_id=case_id))
        assert "Oak Primary School objects: Attendance has dropped this month." in (raised.value.details() or "")

        closed = await amh.CloseCase(
            node_api_pb2.CloseCaseRequest(
                actor=PRACTITIONER,
                case_id=case_id,
                note="Closing our involvement only.",
                override_objections_reason="The school's concern is for children's services; passed to them.",
            )
        )
        assert closed.state == "closed"
        await next_item(cluster, "school", env.MESSAGE_KIND_CLOSURE_NOTICE)
        assert cluster.gateway._index is not None and cluster.gateway._index.count("amh") == 0
        entry = events(await audit_events(cluster.nodes["amh"]), "case.closed")[0]
        assert entry["detail"]["objections_overridden"].startswith("The school's concern")
        assert events(await audit_events(cluster.nodes["school"]), "closure.responded")


async def test_an_objection_that_comes_as_the_case_is_closed_stops_the_close(
    federation: LocalFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every agency agreed when the close was asked for; one objected before it was written.
    The close is refused, as it would have been a moment later, so the objection is read."""
    async with running(federation) as cluster:
        await think_family(cluster)
        amh, case_id = cluster.api("amh"), await _case_id(cluster, "amh")
        proposed = await amh.ProposeClosure(planned_closure(PRACTITIONER, case_id))
        store = cluster.nodes["amh"].store
        assert store is not None

        async def answer(tx: Tx, node: str, said: int, reason: str = "") -> None:
            await tx.execute(
                "UPDATE closure_invitees SET answer = ?, reason = ?, at_ms = ? WHERE closure_id = ? AND node_id = ?",
                (said, reason, tx.now_ms, proposed.closure_id, node),
            )

        for node in ("csc", "school"):
            async with store.tx() as tx:
                await answer(tx, node, workflow_pb2.CLOSURE_ANSWER_AGREE)

        def objects(node: str, reason: str) -> Callable[[Tx], Awaitable[None]]:
            return lambda tx: answer(tx, node, workflow_pb2.CLOSURE_ANSWER_OBJECT, reason)

        written_first(monkeypatch, store, objects("school", "Attendance has dropped this month."))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await amh.CloseCase(node_api_pb2.CloseCaseRequest(actor=PRACTITIONER, case_id=case_id))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "Oak Primary School objects: Attendance has dropped this month." in (refused.value.details() or "")
        # Overriding the school's objection does not override one the closer has not read.
        written_first(monkeypatch, store, objects("csc", "A new referral came in today."))
        overriding = node_api_pb2.CloseCaseRequest(
            actor=PRACTITIONER, case_id=case_id, override_objections_reason="The school's concern is passed on."
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await amh.CloseCase(overriding)
        assert refused.value.code() == grpc.StatusCode.ABORTED
        assert "objects: A new referral came in today" in (refused.value.details() or "")
        assert (await amh.GetClosure(node_api_pb2.CaseRequest(actor=PRACTITIONER, case_id=case_id))).state == "proposed"


async def test_after_a_case_closes_a_correction_still_reaches_who_had_the_summary(federation: LocalFederation) -> None:
    """Closing unlinks the node from the family at the gateway. A new summary from the closed
    case is refused saying so (it was UNAVAILABLE, "try again", which could never succeed),
    and a correction still goes to every agency that had the summary (UK GDPR Art 19); one
    of a summary nobody had has no one to go to, and says so."""
    clock = ManualClock()
    async with running(federation, clock=clock) as cluster:
        parent, child, assessment_id = await think_family(cluster)
        never_shared = await record_assessment(cluster, parent, child)  # a summary of its own
        await share(cluster, assessment_id)
        await wait_delivered(cluster.nodes["amh"], 2)
        amh, case_id = cluster.api("amh"), await _case_id(cluster, "amh")
        today = planned_closure(PRACTITIONER, case_id)
        today.respond_by.CopyFrom(dates.today(clock.now_ms()))
        await amh.ProposeClosure(today)
        close = node_api_pb2.CloseCaseRequest(actor=PRACTITIONER, case_id=case_id)
        with pytest.raises(grpc.aio.AioRpcError) as raised:  # the agencies alerted have all of that day
            await amh.CloseCase(close)
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"until {dates.iso(today.respond_by)}" in (raised.value.details() or "")
        clock.advance(DAY_MS)  # nobody answered by the day given
        assert (await amh.CloseCase(close)).state == "closed"

        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await share(cluster, assessment_id)
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "the case is closed, so this node is no longer linked to the family" in (raised.value.details() or "")
        corrected = await share(cluster, assessment_id, env.MESSAGE_KIND_CORRECTION)
        assert sorted(r.node_id for r in corrected.recipients) == ["csc", "school"]
        await next_item(cluster, "csc", env.MESSAGE_KIND_CORRECTION)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await share(cluster, never_shared, env.MESSAGE_KIND_CORRECTION)
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "the case is closed and this summary was never shared: no one to tell" in (raised.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as raised:  # said by the node, not guessed from the gateway's refusal
            await amh.DiscoverInvolvement(node_api_pb2.CaseRequest(actor=PRACTITIONER, case_id=case_id))
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert raised.value.details() == f"case {case_id!r} is closed"


async def test_sharing_about_someone_since_removed_from_the_case_says_why_it_cannot(
    federation: LocalFederation,
) -> None:
    """The gateway answers only about people a node is linked to: an assessment naming someone
    since removed is refused as a precondition, not as the gateway being unreachable."""
    async with running(federation) as cluster:
        _, child, assessment_id = await think_family(cluster)
        await cluster.api("amh").RemovePerson(
            node_api_pb2.RemovePersonRequest(
                actor=PRACTITIONER, case_id=await _case_id(cluster, "amh"), link_token=child
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await share(cluster, assessment_id)
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "does not link this node to all of these people (was one removed" in (raised.value.details() or "")


async def test_a_person_protected_in_the_case_or_by_role_is_never_named_to_another_agency(
    federation: LocalFederation,
) -> None:
    """domain.md §6 rule 13. An assessment that named someone the case protects, without the
    flag itself, sent them to the other agencies; and a referrer was protected only if asked."""
    async with running(federation) as cluster:
        parent, child = stories.think_family_people()
        parent.protect_identity = True  # in the case, not in the assessment below
        referrer = node_api_pb2.PersonIdentifier(scheme="nhs", value=stories.UNRELATED_NHS, role_in_risk="REFERRER")
        opened = await cluster.api("amh").OpenCase(
            node_api_pb2.OpenCaseRequest(actor=PRACTITIONER, case_ref="p-1", people=[parent, child, referrer])
        )
        assert [p.protect_identity for p in opened.people] == [True, False, True]  # the referrer, by role
        await open_case(cluster, "csc", [child])
        parent_token, child_token, referrer_token = (p.link_token for p in opened.people)
        assessment = stories.parent_risk_change(parent_token, child_token)  # no one flagged in it
        assessment.people.add(link_token=referrer_token, role_in_risk="REFERRER", person_type="ADULT_OTHER")
        recorded = await cluster.api("amh").RecordAssessment(
            node_api_pb2.RecordAssessmentRequest(actor=PRACTITIONER, case_id=opened.case_id, assessment=assessment)
        )
        await share(cluster, recorded.assessment_id)
        received = await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)
        assert [p.link_token for p in received.summary.people] == [child_token]
        assert all(parent_token not in item.concerns for item in received.summary.risk_items)
        del assessment.people[0]  # the parent, still named in a risk item: protection could not reach them
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await cluster.api("amh").RecordAssessment(
                node_api_pb2.RecordAssessmentRequest(actor=PRACTITIONER, case_id=opened.case_id, assessment=assessment)
            )
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "risk_items[0].concerns names someone not in assessment.people" in (raised.value.details() or "")


async def test_someone_protected_after_an_assessment_was_recorded_is_left_out_of_its_shares(
    federation: LocalFederation,
) -> None:
    """Protection is the case's now, not as it stood when the assessment was recorded: the
    README's way to protect someone (remove them, add them again protected) must hold for
    the assessments already recorded about them."""
    async with running(federation) as cluster:
        parent, child, assessment_id = await think_family(cluster)
        amh, case_id = cluster.api("amh"), await _case_id(cluster, "amh")
        await amh.RemovePerson(node_api_pb2.RemovePersonRequest(actor=PRACTITIONER, case_id=case_id, link_token=parent))
        again = stories.think_family_people()[0]
        again.protect_identity = True
        await amh.AddPerson(node_api_pb2.AddPersonRequest(actor=PRACTITIONER, case_id=case_id, person=again))
        await share(cluster, assessment_id)
        received = await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)
        assert [p.link_token for p in received.summary.people] == [child]
        assert all(parent not in item.concerns for item in received.summary.risk_items)


async def test_an_agency_involved_after_a_closure_was_proposed_is_alerted_before_the_case_closes(
    federation: LocalFederation,
) -> None:
    """The school opens its case for the child after amh proposed closing: amh's closure
    alerted only those involved then, so the school would never have been told. Closing now
    alerts it, with as long to answer as the others had, and closes only once it answers."""
    async with running(federation) as cluster:
        family = stories.think_family_people()
        await open_case(cluster, "amh", family)
        await open_case(cluster, "csc", family)
        amh, case_id = cluster.api("amh"), await _case_id(cluster, "amh")
        proposed = await amh.ProposeClosure(planned_closure(PRACTITIONER, case_id, note="Stable for three months."))
        assert list(proposed.awaiting) == ["csc"]
        intent = await next_item(cluster, "csc", env.MESSAGE_KIND_CLOSURE_INTENT)
        await cluster.api("csc").RespondToClosure(
            node_api_pb2.RespondToClosureRequest(
                actor=CSC_WORKER, intent_message_id=intent.message_id, answer=workflow_pb2.CLOSURE_ANSWER_AGREE
            )
        )
        first = await next_item(cluster, "amh", env.MESSAGE_KIND_CLOSURE_RESPONSE)
        await open_case(cluster, "school", [family[1]])

        close = node_api_pb2.CloseCaseRequest(actor=PRACTITIONER, case_id=case_id)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await amh.CloseCase(close)
        fortnight = dates.iso(stories.days_from_today(14))
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "Oak Primary School became involved after the closure was proposed" in (raised.value.details() or "")
        assert f"asked to answer by {fortnight}" in (raised.value.details() or "")
        late = await next_item(cluster, "school", env.MESSAGE_KIND_CLOSURE_INTENT)
        assert late.body.closure_intent.closure_id == intent.body.closure_intent.closure_id
        assert late.body.closure_intent.note == "Stable for three months."
        status = await amh.GetClosure(node_api_pb2.CaseRequest(actor=PRACTITIONER, case_id=case_id))
        assert list(status.awaiting) == ["school"] and status.state == "proposed"
        assert not status.objection_outstanding  # csc agreed
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await amh.CloseCase(close)
        assert "waiting for answers from school" in (raised.value.details() or "")

        await cluster.api("school").RespondToClosure(
            node_api_pb2.RespondToClosureRequest(
                actor=SCHOOL_DSL, intent_message_id=late.message_id, answer=workflow_pb2.CLOSURE_ANSWER_AGREE
            )
        )
        await next_item(cluster, "amh", env.MESSAGE_KIND_CLOSURE_RESPONSE, after_seq=first.seq)
        assert (await amh.CloseCase(close)).state == "closed"
        for node in ("csc", "school"):
            await next_item(cluster, node, env.MESSAGE_KIND_CLOSURE_NOTICE)
        (alerted,) = events(await audit_events(cluster.nodes["amh"]), "closure.alerted_late")
        assert alerted["detail"]["invited"] == ["school"]


async def test_a_closure_answer_its_recipient_does_not_know_is_refused_and_the_sender_told(
    federation: LocalFederation,
) -> None:
    """A reply with an answer newer than the closing node's software (here 99) was stored
    and counted as an objection; a summary with such a decision outcome failed to store,
    so its sender sent it again and again until it expired. Now the recipient refuses it
    as malformed, says why in its audit log, and the sender's share status says so."""
    async with running(federation) as cluster:
        await think_family(cluster)
        amh, case_id = cluster.api("amh"), await _case_id(cluster, "amh")
        await amh.ProposeClosure(planned_closure(PRACTITIONER, case_id))
        intent = await next_item(cluster, "csc", env.MESSAGE_KIND_CLOSURE_INTENT)
        csc = cluster.nodes["csc"]
        assert csc.store is not None
        closure_id = intent.body.closure_intent.closure_id
        unknown = workflow_pb2.ClosureResponse(closure_id=closure_id, answer=99)  # type: ignore[arg-type]
        sealed = await csc.ctx.messenger.seal_each(
            ["amh"],
            env.MESSAGE_KIND_CLOSURE_RESPONSE,
            list(intent.body.closure_intent.link_tokens),
            closure_id,
            lambda _: lambda body: body.closure_response.CopyFrom(unknown),
            CSC_WORKER,
            in_reply_to=intent.message_id,
        )
        async with csc.store.tx() as tx:
            (status,) = await csc.ctx.messenger.queue(tx, sealed, closure_id, CSC_WORKER)
        await wait_delivered(csc, 1, state="undeliverable")
        row = await csc.store.fetchone("SELECT reason FROM outbox WHERE message_id = ?", (status.message_id,))
        assert row[0] == "refused by the recipient: malformed"
        (given_up,) = await audit_events(csc, "message.undeliverable")
        assert given_up["message_id"] == status.message_id
        assert given_up["detail"].pop("received_at_ms") > 0  # when the recipient refused it, by its clock
        assert given_up["detail"] == {
            "share_id": closure_id,
            "reason": "refused by the recipient: malformed",
            "by": "recipient",
        }
        (rejected,) = events(await audit_events(cluster.nodes["amh"]), "message.rejected")
        assert rejected["message_id"] == status.message_id
        assert rejected["detail"] == {"reason": "malformed", "why": "closure answer 99 is not one this node knows"}
        closure = await amh.GetClosure(node_api_pb2.CaseRequest(actor=PRACTITIONER, case_id=case_id))
        assert sorted(closure.awaiting) == ["csc", "school"] and not closure.objection_outstanding

        await cluster.api("csc").RespondToClosure(
            node_api_pb2.RespondToClosureRequest(
                actor=CSC_WORKER, intent_message_id=intent.message_id, answer=workflow_pb2.CLOSURE_ANSWER_AGREE
            )
        )
        await next_item(cluster, "amh", env.MESSAGE_KIND_CLOSURE_RESPONSE)
        closure = await amh.GetClosure(node_api_pb2.CaseRequest(actor=PRACTITIONER, case_id=case_id))
        assert list(closure.awaiting) == ["school"]


async def test_clarification_and_information_requests(federation: LocalFederation) -> None:
    async with running(federation) as cluster:
        _, _, assessment_id = await think_family(cluster)
        await share(cluster, assessment_id)
        received = await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)
        await cluster.api("csc").AskClarification(
            node_api_pb2.AskClarificationRequest(
                actor=CSC_WORKER, about_message_id=received.message_id, question="Who cares for the child at night?"
            )
        )
        question = await next_item(cluster, "amh", env.MESSAGE_KIND_CLARIFICATION_REQUEST)
        assert question.body.in_reply_to == received.message_id
        await cluster.api("amh").AnswerClarification(
            node_api_pb2.AnswerClarificationRequest(
                actor=PRACTITIONER, request_message_id=question.message_id, answer="The grandparent stays over."
            )
        )
        answer = await next_item(cluster, "csc", env.MESSAGE_KIND_CLARIFICATION_RESPONSE)
        assert answer.body.clarification_response.answer == "The grandparent stays over."
        assert answer.body.in_reply_to == question.message_id

        with pytest.raises(grpc.aio.AioRpcError) as raised:  # a request must say why and on what ground
            await cluster.api("csc").RequestInformation(
                node_api_pb2.RequestInformationRequest(
                    actor=CSC_WORKER, case_id=await _case_id(cluster, "csc"), purpose="s47 enquiry", what="x"
                )
            )
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        under_s47 = s47_request(await _case_id(cluster, "csc"), "amh")
        under_s47.lawful_basis.statutory_gateway.append("CA1989_S99")
        with pytest.raises(grpc.aio.AioRpcError) as raised:  # and a ground from the code lists
            await cluster.api("csc").RequestInformation(under_s47)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'CA1989_S99' is not in the statutory_gateway code list" in (raised.value.details() or "")
        under_s47.lawful_basis.statutory_gateway[:] = ["CA1989_S47_9_REQUEST"]
        for needed_by, said in (  # a deadline, when given, is a day to come: it was sent as given
            (summary_pb2.Date(year=2026, month=2, day=29), "needed_by must be a date on the calendar"),
            (summary_pb2.Date(year=2020, month=1, day=31), "needed_by 2020-01-31 has passed"),
        ):
            under_s47.needed_by.CopyFrom(needed_by)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await cluster.api("csc").RequestInformation(under_s47)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert said in (raised.value.details() or "")
        under_s47.needed_by.CopyFrom(summary_pb2.Date(year=2099, month=1, day=31))
        await cluster.api("csc").RequestInformation(under_s47)
        request = await next_item(cluster, "amh", env.MESSAGE_KIND_INFORMATION_REQUEST)
        assert request.body.information_request.lawful_basis.statutory_gateway == ["CA1989_S47_9_REQUEST"]
        assert request.body.information_request.needed_by.year == 2099
        assert request.body.sent_by.role == CSC_WORKER.role
        await decline(cluster, request.message_id, "Everything relevant was shared yesterday.")
        declined = await next_item(cluster, "csc", env.MESSAGE_KIND_INFORMATION_RESPONSE)
        assert declined.body.information_response.answer == workflow_pb2.INFORMATION_ANSWER_DECLINED
        assert declined.body.information_response.decision.outcome == summary_pb2.DECISION_OUTCOME_NOT_SHARED
        decisions = events(await audit_events(cluster.nodes["amh"]), "share.decision")
        assert decisions[-1]["decision"] == "DECISION_OUTCOME_NOT_SHARED"
        assert decisions[-1]["rationale"] == "Everything relevant was shared yesterday."

        await provide(cluster, request.message_id, assessment_id)
        provided = await next_item(cluster, "csc", env.MESSAGE_KIND_INFORMATION_RESPONSE, after_seq=declined.seq)
        assert provided.body.information_response.answer == workflow_pb2.INFORMATION_ANSWER_PROVIDED
        assert provided.summary.risk_items  # the summary travels inside the answer, minimised for csc
        # The recipient's log holds each answer's decision: its outcome, reasons and ground.
        logged = {e["message_id"]: e for e in events(await audit_events(cluster.nodes["csc"]), "message.received")}
        assert logged[declined.message_id]["decision"] == "DECISION_OUTCOME_NOT_SHARED"
        assert logged[declined.message_id]["rationale"] == "Everything relevant was shared yesterday."
        answered = logged[provided.message_id]
        assert answered["decision"] == summary_pb2.DecisionOutcome.Name(provided.summary.decision.outcome)
        assert answered["summary_id"] == provided.summary.summary_id and answered["lawful_ground"]
        assert logged[answer.message_id]["decision"] == ""  # a clarification carries no decision


async def test_information_requests_are_followed_to_their_answers_and_overdue_ones_shown(
    federation: LocalFederation,
) -> None:
    """domain.md §6 rule 7: every request ends in a decision. Both ends see which agencies
    have answered, how (the newest answer holds), and which are late past needed_by."""
    clock = ManualClock()
    async with running(federation, clock=clock) as cluster:
        _, _, assessment_id = await think_family(cluster)

        async def listed(node: str) -> node_api_pb2.InformationRequests:
            case = node_api_pb2.CaseRequest(actor=CSC_WORKER, case_id=await _case_id(cluster, node))
            return await cluster.api(node).ListInformationRequests(case)

        ask = s47_request(await _case_id(cluster, "csc"))  # to every agency linked: amh and the school
        ask.needed_by.CopyFrom(dates.add_days(dates.today(clock.now_ms()), 1))
        await cluster.api("csc").RequestInformation(ask)
        (sent,) = (await listed("csc")).sent
        assert sent.purpose == ask.purpose and sent.needed_by == ask.needed_by
        assert [(a.node_id, a.answer, a.answered_at_ms, a.overdue) for a in sent.asked] == [
            ("amh", 0, 0, False),
            ("school", 0, 0, False),
        ]

        at_amh = await next_item(cluster, "amh", env.MESSAGE_KIND_INFORMATION_REQUEST)
        (received,) = (await listed("amh")).received
        assert (received.message_id, received.from_node, received.answer, received.answered_at_ms) == (
            at_amh.message_id,
            "csc",
            0,
            0,
        )
        assert received.what == ask.what and received.needed_by == ask.needed_by
        await decline(cluster, at_amh.message_id, "Nothing more is held.")
        declined = await next_item(cluster, "csc", env.MESSAGE_KIND_INFORMATION_RESPONSE)
        (amh_asked, _) = (await listed("csc")).sent[0].asked
        assert amh_asked.answer == workflow_pb2.INFORMATION_ANSWER_DECLINED
        assert (amh_asked.answer_message_id, amh_asked.answered_at_ms) == (declined.message_id, clock.now_ms())
        await provide(cluster, at_amh.message_id, assessment_id)  # on second thoughts
        provided = await next_item(cluster, "csc", env.MESSAGE_KIND_INFORMATION_RESPONSE, after_seq=declined.seq)
        (received,) = (await listed("amh")).received
        assert received.answer == workflow_pb2.INFORMATION_ANSWER_PROVIDED and received.answered_at_ms

        await cluster.api("csc").RequestInformation(s47_request(await _case_id(cluster, "csc"), "amh"))  # no date
        undated = await next_item(cluster, "amh", env.MESSAGE_KIND_INFORMATION_REQUEST, after_seq=at_amh.seq)
        clock.advance(DAY_MS)  # needed by today: not late yet
        assert not (await listed("csc")).sent[1].asked[1].overdue
        assert not (await listed("school")).received[0].overdue
        clock.advance(DAY_MS)  # past needed_by: the school, which has not answered, is late
        undated_sent, dated_sent = (await listed("csc")).sent  # newest first
        assert not undated_sent.HasField("needed_by") and not undated_sent.asked[0].overdue  # never late
        undated_received = next(r for r in (await listed("amh")).received if r.message_id == undated.message_id)
        assert not undated_received.HasField("needed_by") and not undated_received.overdue
        (amh_asked, school_asked) = dated_sent.asked
        assert (amh_asked.answer, amh_asked.answer_message_id) == (
            workflow_pb2.INFORMATION_ANSWER_PROVIDED,
            provided.message_id,
        )
        assert not amh_asked.overdue and school_asked.delivery == "delivered"
        assert school_asked.answer == 0 and school_asked.overdue
        (at_school,) = (await listed("school")).received
        assert at_school.overdue and not at_school.answer
        viewed = events(await audit_events(cluster.nodes["csc"]), "requests.viewed")
        assert viewed[-1]["detail"] == {"case_id": await _case_id(cluster, "csc"), "sent": 2, "received": 0}
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await cluster.api("csc").ListInformationRequests(
                node_api_pb2.CaseRequest(actor=CSC_WORKER, case_id="no-such-case")
            )
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_answer_a_withdrawal_kept_from_going_leaves_its_request_to_be_answered_again(
    federation: LocalFederation,
) -> None:
    """amh provides a summary in answer to csc's request while csc is away, then withdraws
    that summary: the answer, not yet gone, is cancelled with it. csc never had an answer, so
    amh's request is to be answered again, in its lists and its duty view, and not shown
    answered as if csc had its answer. (Found by tests/test_workflows_at_random.py.)"""
    async with running(federation) as cluster:
        _, _, assessment_id = await think_family(cluster)
        await share(cluster, assessment_id)
        await wait_delivered(cluster.nodes["amh"], 2)
        await cluster.api("csc").RequestInformation(s47_request(await _case_id(cluster, "csc"), "amh"))
        asked = await next_item(cluster, "amh", env.MESSAGE_KIND_INFORMATION_REQUEST)
        await cluster.stop_node("csc")
        (answer,) = (await provide(cluster, asked.message_id, assessment_id)).recipients
        await settle(cluster.nodes["amh"])  # the gateway said csc is away: the answer waits for it
        await cluster.api("amh").WithdrawSummary(
            node_api_pb2.WithdrawSummaryRequest(
                actor=PRACTITIONER, summary_id=assessment_id, reason="Sent in error", ground="NOT_TO_BE_RELIED_ON"
            )
        )

        async def at_amh() -> tuple[int, list[str]]:
            case = node_api_pb2.CaseRequest(actor=PRACTITIONER, case_id=await _case_id(cluster, "amh"))
            (received,) = (await cluster.api("amh").ListInformationRequests(case)).received
            due = await cluster.api("amh").ListDue(node_api_pb2.DueRequest(actor=PRACTITIONER))
            return received.answer, [i.message_id for i in due.items if i.to_answer]

        assert await at_amh() == (0, [asked.message_id])
        (cancelled,) = await audit_events(cluster.nodes["amh"], "message.cancelled")
        assert cancelled["message_id"] == answer.message_id
        assert cancelled["detail"]["to_answer_again"] == [asked.message_id]

        await cluster.start_node("csc")  # it has the withdrawal, and no answer
        await wait_delivered(cluster.nodes["amh"], 4)
        case = node_api_pb2.CaseRequest(actor=CSC_WORKER, case_id=await _case_id(cluster, "csc"))
        (sent,) = (await cluster.api("csc").ListInformationRequests(case)).sent
        assert [(a.node_id, a.answer) for a in sent.asked] == [("amh", 0)]
        await decline(cluster, asked.message_id, "The assessment no longer stands.")
        assert await at_amh() == (workflow_pb2.INFORMATION_ANSWER_DECLINED, [])


async def test_a_public_task_request_basis_is_accepted_only_in_answer_to_a_request(
    federation: LocalFederation,
) -> None:
    async with running(federation) as cluster:
        _, _, assessment_id = await think_family(cluster)
        decision = stories.override_decision()
        decision.lawful_basis.art6.append("A6_1_EA_PUBLIC_TASK_REQUEST")
        unasked = await cluster.api("amh").ShareSummary(
            node_api_pb2.ShareSummaryRequest(actor=PRACTITIONER, assessment_id=assessment_id, decision=decision)
        )
        assert unasked.outcome == summary_pb2.DECISION_OUTCOME_NOT_SHARED and not unasked.recipients
        assert "public_task_request_unanswered" in {f.code for f in unasked.findings}
        await cluster.api("csc").RequestInformation(s47_request(await _case_id(cluster, "csc"), "amh"))
        request = await next_item(cluster, "amh", env.MESSAGE_KIND_INFORMATION_REQUEST)
        # Consent refused and no ground recorded: the answer is refused, saying why in the
        # policy's own words (its errors), and the decision not to share is kept.
        ungrounded = stories.override_decision()
        ungrounded.ClearField("override_grounds")
        findings = (
            await cluster.api("amh").PreviewShare(
                node_api_pb2.ShareSummaryRequest(actor=PRACTITIONER, assessment_id=assessment_id, decision=ungrounded)
            )
        ).findings
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await provide(cluster, request.message_id, assessment_id, ungrounded)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        errors = "; ".join(f.message for f in findings if f.severity == "error")
        assert refused.value.details() == (
            f"the policy did not allow this answer ({errors}); the decision not to share was recorded"
        )
        kept = events(await audit_events(cluster.nodes["amh"]), "share.decision")[-1]
        assert kept["decision"] == "DECISION_OUTCOME_NOT_SHARED" and "override_ground_missing" in str(kept)
        answered = await provide(cluster, request.message_id, assessment_id, decision)
        assert [r.node_id for r in answered.recipients] == ["csc"]


def test_a_reply_may_be_wanted_by_today_but_not_by_a_day_gone() -> None:
    now = ManualClock().now_ms()
    check_ahead("needed_by", dates.today(now), now)
    with pytest.raises(ApiError) as passed:
        check_ahead("needed_by", dates.add_days(dates.today(now), -1), now)
    assert "has passed: give a date from today on, or leave it out" in passed.value.message


async def provide(
    cluster: Cluster, request_message_id: str, assessment_id: str, decision: summary_pb2.ShareDecision | None = None
) -> node_api_pb2.MessageSent:
    """amh answers an information request with a summary of its assessment, on `decision`
    (unless given, the stories' override of refused consent)."""
    return await cluster.api("amh").RespondToInformationRequest(
        node_api_pb2.InformationReplyRequest(
            actor=PRACTITIONER,
            request_message_id=request_message_id,
            answer=workflow_pb2.INFORMATION_ANSWER_PROVIDED,
            decision=decision or stories.override_decision(),
            assessment_id=assessment_id,
        )
    )


async def decline(
    cluster: Cluster, request_message_id: str, rationale: str, actor: summary_pb2.Practitioner = PRACTITIONER
) -> None:
    """amh declines an information request, with its reasons."""
    await cluster.api("amh").RespondToInformationRequest(
        node_api_pb2.InformationReplyRequest(
            actor=actor,
            request_message_id=request_message_id,
            answer=workflow_pb2.INFORMATION_ANSWER_DECLINED,
            decision=summary_pb2.ShareDecision(rationale=rationale),
        )
    )


def s47_request(case_id: str, *to: str) -> node_api_pb2.RequestInformationRequest:
    """csc asks, under section 47, the agencies `to` (none: every agency linked)."""
    return node_api_pb2.RequestInformationRequest(
        actor=CSC_WORKER,
        case_id=case_id,
        to_nodes=to,
        purpose="Child protection enquiry under section 47",
        what="Any risk to the child from the parent",
        lawful_basis=summary_pb2.LawfulBasis(art6=["A6_1_C"]),
    )


async def test_a_message_too_large_to_travel_is_refused_and_holds_up_nothing(federation: LocalFederation) -> None:
    """A question near the API's limit made an envelope larger than a stream frame may be:
    it was queued, then broke the node's stream at every attempt, and nothing queued after
    it ever left. Free text is now held to a summary's limit on its texts, and a summary
    whose every text is within its limits but whose whole is too large to travel is refused,
    naming the limit; what follows is delivered."""
    async with running(federation) as cluster:
        parent, child, assessment_id = await think_family(cluster)
        await share(cluster, assessment_id)
        received = await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)

        def ask(question: str) -> node_api_pb2.AskClarificationRequest:
            return node_api_pb2.AskClarificationRequest(
                actor=CSC_WORKER, about_message_id=received.message_id, question=question
            )

        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await cluster.api("csc").AskClarification(ask("Who cares for the child at night? " * 7_000))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "question is 238,000 characters; keep it under 2,000" in (raised.value.details() or "")
        assert not events(await audit_events(cluster.nodes["csc"]), "clarification.asked")

        large = stories.parent_risk_change(parent, child)
        item = large.risk_items[0]
        item.narrative = item.relevance = "Seen at home with the child; the parent was unwell. " * 37  # under 2,000
        large.risk_items.extend([item] * 48)  # 50 items, the most a summary holds
        recorded = await cluster.api("amh").RecordAssessment(
            node_api_pb2.RecordAssessmentRequest(
                actor=PRACTITIONER, case_id=await _case_id(cluster, "amh"), assessment=large
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await share(cluster, recorded.assessment_id)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        too_large = (
            r"this summary share would be [\d,]+ bytes, more than one message may carry "
            rf"\({MAX_BODY_BYTES:,}\): shorten its text or send less in one message; nothing was sent"
        )
        assert re.fullmatch(too_large, raised.value.details() or ""), raised.value.details()
        assert len(events(await audit_events(cluster.nodes["amh"]), "share.decision")) == 1  # the first share's

        await cluster.api("csc").AskClarification(ask("Who cares for the child at night?"))
        await next_item(cluster, "amh", env.MESSAGE_KIND_CLARIFICATION_REQUEST)
        await wait_delivered(cluster.nodes["csc"], 1)


async def test_free_text_past_a_summarys_limit_is_refused_naming_the_field(federation: LocalFederation) -> None:
    """Every call's free text is held to the limit a summary's texts have, and refused before
    anything is looked up or written: a question, an answer, a reason, a note."""
    long, api, a, c = "x" * 2_001, node_api_pb2, PRACTITIONER, CSC_WORKER
    async with running(federation) as cluster:
        await think_family(cluster)
        amh, csc = cluster.api("amh"), cluster.api("csc")
        case, by = await _case_id(cluster, "amh"), summary_pb2.Date(year=2099, month=1, day=1)
        calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("question", lambda: csc.AskClarification(api.AskClarificationRequest(actor=c, question=long))),
            ("answer", lambda: amh.AnswerClarification(api.AnswerClarificationRequest(actor=a, answer=long))),
            ("purpose", lambda: csc.RequestInformation(api.RequestInformationRequest(actor=c, purpose=long, what="x"))),
            ("what", lambda: csc.RequestInformation(api.RequestInformationRequest(actor=c, purpose="x", what=long))),
            (
                "decision.rationale",
                lambda: amh.RespondToInformationRequest(
                    api.InformationReplyRequest(actor=a, decision=summary_pb2.ShareDecision(rationale=long))
                ),
            ),
            (
                "note",
                lambda: amh.ProposeClosure(api.ProposeClosureRequest(actor=a, case_id=case, note=long, respond_by=by)),
            ),
            ("reason", lambda: csc.RespondToClosure(api.RespondToClosureRequest(actor=c, reason=long))),
            ("note", lambda: amh.CloseCase(api.CloseCaseRequest(actor=a, case_id=case, note=long))),
            (
                "override_objections_reason",
                lambda: amh.CloseCase(api.CloseCaseRequest(actor=a, case_id=case, override_objections_reason=long)),
            ),
            ("reason", lambda: amh.WithdrawSummary(api.WithdrawSummaryRequest(actor=a, summary_id="s", reason=long))),
            ("silent_read_reason", lambda: csc.OpenReceived(api.OpenReceivedRequest(actor=c, silent_read_reason=long))),
        ]
        for field, call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call()
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
            assert f"{field} is 2,001 characters; keep it under 2,000" in (raised.value.details() or ""), field
        for node in ("amh", "csc"):
            written = [e["event"] for e in await audit_events(cluster.nodes[node])]
            assert not [e for e in written if e.startswith(("clarification", "request", "closure", "summary"))]


async def test_an_information_request_goes_once_to_each_other_agency_it_names(federation: LocalFederation) -> None:
    async with running(federation) as cluster:
        await think_family(cluster)
        case_id = await _case_id(cluster, "csc")

        async def ask(*to: str) -> node_api_pb2.MessageSent:
            return await cluster.api("csc").RequestInformation(s47_request(case_id, *to))

        for to, said in ((("amh", "no-such-agency"), "'no-such-agency'"), (("csc",), "this node itself")):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await ask(*to)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert said in (raised.value.details() or "")
        assert not events(await audit_events(cluster.nodes["csc"]), "request.sent")  # refused, nothing sent
        sent = await ask("amh", "amh")
        assert [r.node_id for r in sent.recipients] == ["amh"]


async def test_a_case_of_identity_protected_people_only_links_to_nobody_and_still_closes(
    federation: LocalFederation,
) -> None:
    """Protected people are never announced, so no other agency can be linked through
    them: discovery finds none, a request is refused as naming nobody, and a closure
    has nobody to wait for. (Each of these went to the gateway with no tokens, and
    came back as "cannot reach the gateway".)"""
    async with running(federation, nodes=("amh", "csc")) as cluster:
        protected = stories.think_family_people()
        for person in protected:
            person.protect_identity = True
        await open_case(cluster, "csc", protected)
        await open_case(cluster, "amh", stories.think_family_people())
        csc, case_id = cluster.api("csc"), await _case_id(cluster, "csc")
        found = await csc.DiscoverInvolvement(node_api_pb2.CaseRequest(actor=CSC_WORKER, case_id=case_id))
        assert not found.agencies
        for to in ([], ["amh"]):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await csc.RequestInformation(s47_request(case_id, *to))
            assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "identity-protected" in (raised.value.details() or "")
        proposed = await csc.ProposeClosure(planned_closure(CSC_WORKER, case_id))
        assert proposed.state == "proposed" and not proposed.awaiting
        closed = await csc.CloseCase(node_api_pb2.CloseCaseRequest(actor=CSC_WORKER, case_id=case_id))
        assert closed.state == "closed"
        await open_case(cluster, "csc", protected)  # its reference may open a case again once closed


async def csc_closure_agreed(cluster: Cluster) -> str:
    """csc proposes to close its case, and amh and the school agree (csc has their answers): its id."""
    case_id = await _case_id(cluster, "csc")
    await cluster.api("csc").ProposeClosure(planned_closure(CSC_WORKER, case_id))
    for node, actor in (("amh", PRACTITIONER), ("school", SCHOOL_DSL)):
        intent = await next_item(cluster, node, env.MESSAGE_KIND_CLOSURE_INTENT)
        await cluster.api(node).RespondToClosure(
            node_api_pb2.RespondToClosureRequest(
                actor=actor, intent_message_id=intent.message_id, answer=workflow_pb2.CLOSURE_ANSWER_AGREE
            )
        )
    answered = "SELECT COUNT(*) FROM inbox WHERE kind = ?"
    await wait_count(cluster.nodes["csc"], answered, (env.MESSAGE_KIND_CLOSURE_RESPONSE,), 2)
    return case_id


async def test_a_case_everyone_was_taken_out_of_since_its_closure_was_proposed_still_tells_of_its_close(
    federation: LocalFederation,
) -> None:
    """csc alerts amh and the school that it means to close its case, and they agree; then
    csc takes the parent and the child out of it. Its notice that the case closed names those
    the proposal named, whom the agencies alerted know of: naming no one, as the case now
    does, the gateway refused it as about no family, and they never heard the case closed.
    (Found by tests/test_workflows_at_random.py.)"""
    async with running(federation) as cluster:
        parent, child, _ = await think_family(cluster)
        csc, case_id = cluster.api("csc"), await csc_closure_agreed(cluster)
        for token in (parent, child):
            await csc.RemovePerson(
                node_api_pb2.RemovePersonRequest(actor=CSC_WORKER, case_id=case_id, link_token=token)
            )

        closed = await csc.CloseCase(node_api_pb2.CloseCaseRequest(actor=CSC_WORKER, case_id=case_id))
        assert closed.state == "closed"
        for node in ("amh", "school"):
            notice = await next_item(cluster, node, env.MESSAGE_KIND_CLOSURE_NOTICE, timeout_s=5)
            assert notice.body.closure_notice.closure_id == closed.closure_id
            store = cluster.nodes[node].store
            assert store is not None
            named = await store.fetchall(
                "SELECT token FROM inbox_tokens JOIN inbox ON seq = inbox_seq WHERE message_id = ?",
                (notice.message_id,),
            )
            assert sorted(bytes(t) for (t,) in named) == sorted([parent, child])


async def test_a_revoked_recipient_does_not_stop_a_correction_or_withdrawal_reaching_the_others(
    federation: LocalFederation, captured_logs: CapturedLogs
) -> None:
    async with running(federation) as cluster:
        _, _, summary_id = await shared_with_both(cluster)
        await revoke(cluster, "school")
        amh = cluster.nodes["amh"]
        assert amh.store is not None
        (assessment_id,) = await amh.store.fetchone("SELECT assessment_id FROM assessments")
        corrected = await share(cluster, assessment_id, env.MESSAGE_KIND_CORRECTION)
        withdrawn = await cluster.api("amh").WithdrawSummary(
            node_api_pb2.WithdrawSummaryRequest(
                actor=PRACTITIONER, summary_id=summary_id, reason="Wrong family.", ground="NOT_TO_BE_RELIED_ON"
            )
        )
        for response in (corrected, withdrawn):
            by_node = {r.node_id: r for r in response.recipients}
            assert by_node["csc"].state == "queued"
            assert by_node["school"].state == "undeliverable"
            assert by_node["school"].reason == (
                "not sent: node 'school' is revoked; if this agency must still know, tell it another way"
            )
            status = await cluster.api("amh").GetShareStatus(
                node_api_pb2.ShareStatusRequest(actor=PRACTITIONER, share_id=response.share_id)
            )
            assert [(r.node_id, r.reason) for r in status.recipients if r.state == "undeliverable"] == [
                ("school", by_node["school"].reason)
            ]
        await next_item(cluster, "csc", env.MESSAGE_KIND_CORRECTION)
        await next_item(cluster, "csc", env.MESSAGE_KIND_WITHDRAWAL)
        unsent = events(await audit_events(amh), "message.undeliverable")
        reason = corrected.recipients[-1].reason
        assert [(e["counterpart"], e["detail"]) for e in unsent] == [
            ("school", {"share_id": corrected.share_id, "kind": "correction", "reason": reason, "by": "sender"}),
            ("school", {"share_id": withdrawn.share_id, "kind": "withdrawal", "reason": reason, "by": "sender"}),
        ]
        said = [(r["counterpart"], r["reason"]) for r in captured_logs.records("recipient.unreachable")]
        assert said == [("school", "sender_revoked")] * 2
        assert all(e["tokens"] and e["actor"]["id"] == PRACTITIONER.id for e in unsent)
        assert amh.metrics.registry.get_sample_value("linkage_node_messages_undeliverable_total") == 2
        feed = cluster.api("amh").WatchDeliveries(node_api_pb2.WatchDeliveriesRequest(actor=PRACTITIONER))
        told = []  # what a case system following deliveries hears of the two
        async with asyncio.timeout(15):
            async for event in feed:
                if event.status.state == "undeliverable":
                    told.append((event.share_id, event.status.node_id, event.status.reason))
                if len(told) == 2:
                    break
        feed.cancel()
        assert told == [(corrected.share_id, "school", reason), (withdrawn.share_id, "school", reason)]


async def test_a_received_summary_opens_and_a_case_closes_after_the_sender_is_revoked(
    federation: LocalFederation,
) -> None:
    async with running(federation) as cluster:
        _, _, assessment_id = await think_family(cluster)
        await share(cluster, assessment_id)
        received = await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)
        csc, case_id = cluster.api("csc"), await csc_closure_agreed(cluster)

        await revoke(cluster, "amh")
        opened = await csc.OpenReceived(
            node_api_pb2.OpenReceivedRequest(actor=CSC_WORKER, message_id=received.message_id)
        )
        assert opened.state == "read" and opened.summary.risk_items
        closed = await csc.CloseCase(node_api_pb2.CloseCaseRequest(actor=CSC_WORKER, case_id=case_id))
        assert closed.state == "closed"
        await next_item(cluster, "school", env.MESSAGE_KIND_CLOSURE_NOTICE)
        store = cluster.nodes["csc"].store
        assert store is not None
        rows = await store.fetchall("SELECT kind, state, reason FROM outbox WHERE recipient = 'amh'")
        assert {(kind, state) for kind, state, reason in rows if "'amh' is revoked" in reason} == {
            (env.MESSAGE_KIND_READ_NOTIFICATION, "undeliverable"),
            (env.MESSAGE_KIND_CLOSURE_NOTICE, "undeliverable"),
        }


async def test_a_summary_provided_on_request_is_corrected_withdrawn_and_in_the_chronology_like_a_share(
    federation: LocalFederation,
) -> None:
    """UK GDPR Art 19: a correction or withdrawal goes to everyone the summary went to,
    including an agency that had it in answer to an information request."""
    async with running(federation, nodes=("amh", "csc")) as cluster:
        family = stories.think_family_people()
        parent, child = await open_case(cluster, "amh", family)
        await open_case(cluster, "csc", family)
        assessment_id = await record_assessment(cluster, parent, child)
        csc_case = await _case_id(cluster, "csc")
        await cluster.api("csc").RequestInformation(s47_request(csc_case, "amh"))
        request = await next_item(cluster, "amh", env.MESSAGE_KIND_INFORMATION_REQUEST)
        await provide(cluster, request.message_id, assessment_id)
        provided = await next_item(cluster, "csc", env.MESSAGE_KIND_INFORMATION_RESPONSE)
        summary_id = provided.summary.summary_id
        assert (
            summary_id and await chronology_states(cluster) == [(env.MESSAGE_KIND_INFORMATION_RESPONSE, "current")] * 2
        )

        corrected = await share(cluster, assessment_id, env.MESSAGE_KIND_CORRECTION)
        assert [r.node_id for r in corrected.recipients] == ["csc"]
        correction = await next_item(cluster, "csc", env.MESSAGE_KIND_CORRECTION)
        assert [state for _, state in await chronology_states(cluster)] == ["superseded"] * 2 + ["current"] * 2

        withdrawn = await cluster.api("amh").WithdrawSummary(
            node_api_pb2.WithdrawSummaryRequest(
                actor=PRACTITIONER, summary_id=summary_id, reason="Sent in error", ground="NOT_TO_BE_RELIED_ON"
            )
        )
        assert [r.node_id for r in withdrawn.recipients] == ["csc"]
        await next_item(cluster, "csc", env.MESSAGE_KIND_WITHDRAWAL, after_seq=correction.seq)
        items = (await cluster.api("csc").ListReceived(node_api_pb2.ListReceivedRequest(actor=CSC_WORKER))).items
        assert {i.message_id: i.state for i in items if i.summary.summary_id == summary_id} == {
            provided.message_id: "withdrawn",
            correction.message_id: "withdrawn",
        }


async def test_a_new_version_of_a_summary_comes_from_its_own_case(federation: LocalFederation) -> None:
    """A summary's versions stay in the case it was recorded in, shared or not (one recorded
    elsewhere would supersede it there, about another family)."""
    async with running(federation) as cluster:
        parent, child, summary_id = await shared_with_both(cluster)
        own_case = await _case_id(cluster, "amh")
        unshared = (
            await cluster.api("amh").RecordAssessment(
                node_api_pb2.RecordAssessmentRequest(
                    actor=PRACTITIONER, case_id=own_case, assessment=stories.parent_risk_change(parent, child)
                )
            )
        ).summary_id
        other = [node_api_pb2.PersonIdentifier(scheme="nhs", value=stories.UNRELATED_NHS, role_in_risk="AT_RISK")]
        opened = await cluster.api("amh").OpenCase(
            node_api_pb2.OpenCaseRequest(actor=PRACTITIONER, case_ref="another family", people=other)
        )
        for recorded in (summary_id, unshared):
            elsewhere = stories.parent_risk_change(opened.people[0].link_token, opened.people[0].link_token)
            elsewhere.summary_id = recorded
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await cluster.api("amh").RecordAssessment(
                    node_api_pb2.RecordAssessmentRequest(
                        actor=PRACTITIONER, case_id=opened.case_id, assessment=elsewhere
                    )
                )
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"summary_id {recorded!r} was recorded in case {own_case!r}" in (raised.value.details() or "")
        same = stories.parent_risk_change(parent, child)
        same.summary_id, same.version = summary_id, 2
        await cluster.api("amh").RecordAssessment(  # its own case may record the next version
            node_api_pb2.RecordAssessmentRequest(
                actor=PRACTITIONER, case_id=await _case_id(cluster, "amh"), assessment=same
            )
        )


async def test_versions_of_a_summary_are_numbered_by_the_node(federation: LocalFederation) -> None:
    """Each version took whatever number the case system sent (or 1), so a correction could
    reach recipients as version 1 of a summary they already held as version 1. The node
    numbers each from the last recorded, keeps a higher number it is given, and two
    recorded at once get two numbers; recipients see the number."""
    async with running(federation) as cluster:
        parent, child, _ = await think_family(cluster)
        amh, case_id = cluster.api("amh"), await _case_id(cluster, "amh")

        async def record(summary_id: str, version: int = 0) -> node_api_pb2.RecordAssessmentResponse:
            assessment = stories.parent_risk_change(parent, child)
            assessment.summary_id, assessment.version = summary_id, version
            return await amh.RecordAssessment(
                node_api_pb2.RecordAssessmentRequest(actor=PRACTITIONER, case_id=case_id, assessment=assessment)
            )

        first = await record("")
        assert (first.summary_id, first.version) == (first.assessment_id, 1)
        assert (await record(first.summary_id, version=1)).version == 2
        assert (await record(first.summary_id, version=7)).version == 7
        both = await asyncio.gather(record(first.summary_id), record(first.summary_id))
        assert sorted(r.version for r in both) == [8, 9]
        latest = max(both, key=lambda r: r.version)  # an earlier version no longer stands to be shared
        await share(cluster, latest.assessment_id)
        received = await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)
        assert (received.summary.summary_id, received.summary.version) == (first.summary_id, 9)


async def test_a_share_repeated_with_its_request_id_is_answered_again_and_shares_nothing_more(
    federation: LocalFederation,
) -> None:
    async with running(federation) as cluster:
        _, _, assessment_id = await think_family(cluster)
        request = node_api_pb2.ShareSummaryRequest(
            actor=PRACTITIONER, assessment_id=assessment_id, decision=stories.override_decision(), request_id="r-1"
        )
        amh = cluster.api("amh")
        first, again = await amh.ShareSummary(request), await amh.ShareSummary(request)
        assert again == first and len(first.recipients) == 2
        store = cluster.nodes["amh"].store
        assert store is not None
        assert (await store.fetchone("SELECT COUNT(*) FROM outbox"))[0] == 2
        assert len(events(await audit_events(cluster.nodes["amh"]), "share.decision")) == 1

        request.kind = env.MESSAGE_KIND_CORRECTION  # the same id for a different share
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await amh.ShareSummary(request)
        assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
        request.request_id = "r-2"
        assert (await amh.ShareSummary(request)).share_id != first.share_id

        # Two calls racing with one id: one shares; the other has its answer or is told to ask again.
        request.request_id = "r-3"
        answers = await asyncio.gather(amh.ShareSummary(request), amh.ShareSummary(request), return_exceptions=True)
        shared = {a.share_id for a in answers if isinstance(a, node_api_pb2.ShareSummaryResponse)}
        refused = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
        assert len(shared) == 1 and all(a.code() == grpc.StatusCode.ABORTED for a in refused)
        (count,) = await store.fetchone("SELECT COUNT(*) FROM shares WHERE request_id = 'r-3'")
        assert count == 1


async def test_read_notifications_and_justified_silent_reads(federation: LocalFederation) -> None:
    async with running(federation) as cluster:
        _, _, assessment_id = await think_family(cluster)
        await share(cluster, assessment_id)
        for_csc = await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)
        for_school = await next_item(cluster, "school", env.MESSAGE_KIND_SUMMARY_SHARE)
        opened = await cluster.api("csc").OpenReceived(
            node_api_pb2.OpenReceivedRequest(actor=CSC_WORKER, message_id=for_csc.message_id)
        )
        assert opened.state == "read"
        read = await next_item(cluster, "amh", env.MESSAGE_KIND_READ_NOTIFICATION)
        assert read.body.read.read_message_id == for_csc.message_id
        assert read.body.read.reader_role == "Social worker"
        store = cluster.nodes["amh"].store
        assert store is not None
        row = await store.fetchone(
            "SELECT read_at_ms, read_by_role FROM outbox WHERE message_id = ?", (for_csc.message_id,)
        )
        assert row[0] and row[1] == "Social worker"

        await cluster.api("school").OpenReceived(
            node_api_pb2.OpenReceivedRequest(
                actor=SCHOOL_DSL,
                message_id=for_school.message_id,
                silent_read_reason="Routine check before a pupil-progress meeting; no action taken.",
            )
        )
        silent = events(await audit_events(cluster.nodes["school"]), "message.silent_read")
        assert silent and str(silent[0]["rationale"]).startswith("Routine check")
        assert silent[0]["detail"] == {"kind": "summary_share", "sender_told": False}
        school_store = cluster.nodes["school"].store
        assert school_store is not None
        read_kind = (env.MESSAGE_KIND_READ_NOTIFICATION,)
        assert await school_store.fetchall("SELECT recipient FROM outbox WHERE kind = ?", read_kind) == []  # none
        row = await store.fetchone("SELECT read_at_ms FROM outbox WHERE message_id = ?", (for_school.message_id,))
        assert row[0] is None
        assert events(await audit_events(cluster.nodes["amh"]), "message.read_by_recipient")

        # Reading again tells nobody again; the first read that is not silent tells the sender, once,
        # even when two come at once.
        for node, actor, item in (("csc", CSC_WORKER, for_csc), ("school", SCHOOL_DSL, for_school)):
            request = node_api_pb2.OpenReceivedRequest(actor=actor, message_id=item.message_id)
            await asyncio.gather(*(cluster.api(node).OpenReceived(request) for _ in range(2)))
            reader = cluster.nodes[node].store
            assert reader is not None
            told = await reader.fetchall(
                "SELECT recipient FROM outbox WHERE kind = ?", (env.MESSAGE_KIND_READ_NOTIFICATION,)
            )
            assert told == [("amh",)]
            reads = events(await audit_events(cluster.nodes[node]), "message.read")
            assert len(reads) == 3 - (node == "school")
            assert [e["detail"]["sender_told"] for e in reads].count(True) == 1  # the one that told, racing or not

        # Reading is told for summaries only: opening csc's read notification tells csc nothing.
        await cluster.api("amh").OpenReceived(
            node_api_pb2.OpenReceivedRequest(actor=PRACTITIONER, message_id=read.message_id)
        )
        assert events(await audit_events(cluster.nodes["amh"]), "message.read")[-1]["detail"] == {
            "kind": "read_notification",
            "sender_told": False,
        }
        told = await store.fetchall("SELECT 1 FROM outbox WHERE kind = ?", (env.MESSAGE_KIND_READ_NOTIFICATION,))
        assert told == []


async def test_what_the_case_system_is_handed_from_the_inbox_is_audited(federation: LocalFederation) -> None:
    async with running(federation) as cluster:
        parent, child, assessment_id = await think_family(cluster)
        await share(cluster, assessment_id)
        watched = await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)
        csc = cluster.nodes["csc"]
        # The watch stream handed the items over: on the record, with the harness's practitioner.
        handed = events(await audit_events(csc), "received.exported")
        assert handed and {e["detail"]["via"] for e in handed} == {"WatchReceived"}
        assert watched.message_id in {m for e in handed for m in e["detail"]["message_ids"]}
        assert {e["actor"]["id"] for e in handed} == {PRACTITIONER.id}

        listed = await cluster.api("csc").ListReceived(
            node_api_pb2.ListReceivedRequest(actor=CSC_WORKER, link_token=parent)
        )
        assert watched.message_id in [i.message_id for i in listed.items]
        entry = events(await audit_events(csc), "received.exported")[-1]
        assert entry["actor"] == {"id": CSC_WORKER.id, "name": CSC_WORKER.name, "role": CSC_WORKER.role}
        assert entry["detail"] == {
            "via": "ListReceived",
            "items": len(listed.items),
            "message_ids": [i.message_id for i in listed.items],
        }
        assert {parent.hex(), child.hex()} <= set(entry["tokens"])  # found by `audit report --person`

        # A poll that finds nothing new hands nothing over, and adds nothing to the log.
        before = len(await audit_events(csc))
        empty = await cluster.api("csc").ListReceived(
            node_api_pb2.ListReceivedRequest(actor=CSC_WORKER, after_seq=max(i.seq for i in listed.items))
        )
        assert list(empty.items) == []
        assert len(await audit_events(csc)) == before

        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await cluster.api("csc").ListReceived(node_api_pb2.ListReceivedRequest(actor=CSC_WORKER, link_token=b"x"))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "link_token must be" in str(raised.value.details())


async def test_chronology_holds_own_and_received_assessments_in_time_order(federation: LocalFederation) -> None:
    async with running(federation) as cluster:
        parent, child, assessment_id = await think_family(cluster)
        await share(cluster, assessment_id)
        await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)
        own = summary_pb2.RiskSummary(
            headline="Child seen at home; well cared for by grandparent.",
            people=[summary_pb2.Person(link_token=child, role_in_risk="AT_RISK", person_type="CHILD")],
            risk_items=[
                summary_pb2.RiskItem(
                    category="NEGLECT",
                    direction="UNCHANGED",
                    currency=summary_pb2.CURRENCY_CURRENT,
                    basis="FACT_OBSERVED",
                    level=summary_pb2.RiskLevel(scale="SIGNS_OF_SAFETY", value="6"),
                )
            ],
        )
        await cluster.api("csc").RecordAssessment(
            node_api_pb2.RecordAssessmentRequest(
                actor=CSC_WORKER, case_id=await _case_id(cluster, "csc"), assessment=own
            )
        )
        chronology = await cluster.api("csc").Chronology(
            node_api_pb2.ChronologyRequest(actor=CSC_WORKER, case_id=await _case_id(cluster, "csc"))
        )
        entries = list(chronology.entries)
        assert [e.at_ms for e in entries] == sorted(e.at_ms for e in entries)
        received = [e for e in entries if not e.own]
        assert {(e.source_agency, e.category, e.currency, e.direction) for e in received} == {
            ("Adult Mental Health Trust", "PARENTAL_CAPACITY", summary_pb2.CURRENCY_CURRENT, "INCREASED"),
            ("Adult Mental Health Trust", "SUBSTANCE_MISUSE", summary_pb2.CURRENCY_HISTORICAL, "RESOLVED"),
        }
        mine = [e for e in entries if e.own]
        assert [(e.source_agency, e.category, e.level) for e in mine] == [
            ("Children's Social Care", "NEGLECT", "6 (SIGNS_OF_SAFETY)")
        ]
        # Who looked at the family's timeline is on the record, about each of its people.
        (viewed,) = events(await audit_events(cluster.nodes["csc"]), "chronology.viewed")
        assert viewed["actor"] == {"id": CSC_WORKER.id, "name": CSC_WORKER.name, "role": CSC_WORKER.role}
        assert viewed["detail"] == {"case_id": await _case_id(cluster, "csc"), "entries": len(entries)}
        assert viewed["tokens"] == sorted([parent.hex(), child.hex()])


async def test_chronology_entries_are_derived_once_batch_by_batch(
    federation: LocalFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries are derived from what arrived since the last call, a batch at a time (here one
    item to a batch): each item's entries appear once, in the order the items arrived."""
    monkeypatch.setattr("node.chronology.DERIVE_BATCH", 1)
    async with running(federation) as cluster:
        _, _, assessment_id = await think_family(cluster)
        await share(cluster, assessment_id)
        await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)
        assert await chronology_states(cluster) == [(env.MESSAGE_KIND_SUMMARY_SHARE, "current")] * 2
        await share(cluster, assessment_id, env.MESSAGE_KIND_CORRECTION)
        await share(cluster, assessment_id, env.MESSAGE_KIND_CORRECTION)
        stream = cluster.api("csc").WatchReceived(node_api_pb2.WatchReceivedRequest(actor=CSC_WORKER), timeout=15)
        async for item in stream:  # the third item: both corrections have arrived
            if item.seq == 3:
                break
        stream.cancel()
        kinds = [kind for kind, _ in await chronology_states(cluster)]
        assert kinds == [env.MESSAGE_KIND_SUMMARY_SHARE] * 2 + [env.MESSAGE_KIND_CORRECTION] * 4
