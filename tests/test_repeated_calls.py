"""A case system that repeats a call after its answer was lost (a timeout, a dropped
connection) must not send the other agency the same question, request, challenge or answer
(to a closure proposal too) twice, nor change its own node's record twice. A call that
names a request_id is answered, when repeated, as it was the first time (node/repeats.py);
an id used for another call is refused; two calls racing with one id send once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from linkage import stories
from linkage.v1 import envelope_pb2 as env
from linkage.v1 import node_api_pb2, summary_pb2, workflow_pb2
from node import repeats
from node.store import Tx
from tests.harness import (
    PRACTITIONER,
    Cluster,
    LocalFederation,
    audit_events,
    next_item,
    running,
    wait_delivered,
    written_first,
)
from tests.test_federation import _case_id, open_case
from tests.test_workflows import CSC_WORKER, planned_closure, s47_request, share, think_family

Call = Callable[[Any], Awaitable[node_api_pb2.MessageSent]]


async def sent_kinds(cluster: Cluster, node: str) -> dict[int, int]:
    """How many messages of each kind a node has queued."""
    store = cluster.nodes[node].store
    assert store is not None
    return dict(await store.fetchall("SELECT kind, COUNT(*) FROM outbox GROUP BY kind"))


async def test_each_call_that_sends_repeated_with_its_request_id_is_answered_again_and_sends_nothing_more(
    federation: LocalFederation,
) -> None:
    async with running(federation) as cluster:
        _, _, assessment_id = await think_family(cluster)
        await share(cluster, assessment_id)
        await wait_delivered(cluster.nodes["amh"], 2)
        item = await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)
        csc, amh = cluster.api("csc"), cluster.api("amh")
        case_id = await _case_id(cluster, "csc")
        answers: list[node_api_pb2.MessageSent] = []

        async def twice(call: Call, request: Any) -> node_api_pb2.MessageSent:
            request.request_id = f"call-{len(answers)}"
            first, again = await call(request), await call(request)
            assert again == first and first.recipients
            answers.append(first)
            return first

        await twice(
            csc.AskClarification,
            node_api_pb2.AskClarificationRequest(actor=CSC_WORKER, about_message_id=item.message_id, question="When?"),
        )
        question = await next_item(cluster, "amh", env.MESSAGE_KIND_CLARIFICATION_REQUEST)
        await twice(
            amh.AnswerClarification,
            node_api_pb2.AnswerClarificationRequest(
                actor=PRACTITIONER, request_message_id=question.message_id, answer="Since March."
            ),
        )
        await twice(csc.RequestInformation, s47_request(case_id, "amh"))
        asked = await next_item(cluster, "amh", env.MESSAGE_KIND_INFORMATION_REQUEST)
        await twice(
            amh.RespondToInformationRequest,
            node_api_pb2.InformationReplyRequest(
                actor=PRACTITIONER,
                request_message_id=asked.message_id,
                answer=workflow_pb2.INFORMATION_ANSWER_DECLINED,
                decision=summary_pb2.ShareDecision(rationale="Everything relevant was shared yesterday."),
            ),
        )
        await twice(csc.RequestInformation, s47_request(case_id, "amh"))  # a new id: a new request
        asked = await next_item(cluster, "amh", env.MESSAGE_KIND_INFORMATION_REQUEST, after_seq=asked.seq)
        await twice(  # provided: the share's own request_id answers the repeat
            amh.RespondToInformationRequest,
            node_api_pb2.InformationReplyRequest(
                actor=PRACTITIONER,
                request_message_id=asked.message_id,
                answer=workflow_pb2.INFORMATION_ANSWER_PROVIDED,
                decision=stories.override_decision(),
                assessment_id=assessment_id,
            ),
        )
        raise_challenge = node_api_pb2.RaiseChallengeRequest(
            actor=CSC_WORKER,
            case_id=case_id,
            to_node="amh",
            stage="PRACTITIONER",
            subject="RISK_ASSESSMENT",
            concern="The school reports the child is often left alone; we think the risk is higher.",
            outcome_sought="Review the assessment with us this week.",
        )
        (raised,) = (await twice(csc.RaiseChallenge, raise_challenge)).recipients
        escalated = node_api_pb2.RaiseChallengeRequest()
        escalated.CopyFrom(raise_challenge)
        escalated.stage, escalated.escalates_message_id = "LINE_MANAGER", raised.message_id
        await twice(csc.RaiseChallenge, escalated)  # its repeat was refused as escalated already
        challenged = await next_item(cluster, "amh", env.MESSAGE_KIND_CHALLENGE)
        await twice(
            amh.RespondToChallenge,
            node_api_pb2.ChallengeReplyRequest(
                actor=PRACTITIONER,
                challenge_message_id=challenged.message_id,
                answer=workflow_pb2.CHALLENGE_ANSWER_MAINTAINED,
                response="HIGH holds until review.",
            ),
        )

        await amh.ProposeClosure(planned_closure(PRACTITIONER, await _case_id(cluster, "amh")))
        intent = await next_item(cluster, "csc", env.MESSAGE_KIND_CLOSURE_INTENT)
        agree = node_api_pb2.RespondToClosureRequest(
            actor=CSC_WORKER, intent_message_id=intent.message_id, answer=workflow_pb2.CLOSURE_ANSWER_AGREE
        )
        agree.request_id = "agreed"
        first_agreed, agreed_again = await csc.RespondToClosure(agree), await csc.RespondToClosure(agree)
        assert agreed_again == first_agreed and first_agreed.message_id

        csc_sent = await sent_kinds(cluster, "csc")
        assert csc_sent[env.MESSAGE_KIND_CLOSURE_RESPONSE] == 1
        assert csc_sent[env.MESSAGE_KIND_CLARIFICATION_REQUEST] == 1
        assert csc_sent[env.MESSAGE_KIND_INFORMATION_REQUEST] == csc_sent[env.MESSAGE_KIND_CHALLENGE] == 2
        amh_sent = await sent_kinds(cluster, "amh")
        assert amh_sent[env.MESSAGE_KIND_CLARIFICATION_RESPONSE] == amh_sent[env.MESSAGE_KIND_CHALLENGE_RESPONSE] == 1
        assert amh_sent[env.MESSAGE_KIND_INFORMATION_RESPONSE] == 2

        # An id once answered, given to another call (of the same kind, or another): refused.
        other_question = node_api_pb2.AskClarificationRequest(
            actor=CSC_WORKER, about_message_id=item.message_id, question="Where?", request_id="call-0"
        )
        other_call = s47_request(case_id, "amh")
        other_call.request_id = "call-0"
        calls: list[tuple[Call, Any]] = [(csc.AskClarification, other_question), (csc.RequestInformation, other_call)]
        for call, request in calls:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(request)
            assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
            assert "request_id 'call-0' was used for another call" in (refused.value.details() or "")
        # A share keeps its ids apart from the other calls' (with the share), but they are one set:
        # an id a share used, given to another kind of call, is refused; and the other way about.
        await amh.ShareSummary(
            node_api_pb2.ShareSummaryRequest(
                actor=PRACTITIONER,
                assessment_id=assessment_id,
                decision=stories.override_decision(),
                request_id="shared",
            )
        )
        opening = node_api_pb2.OpenCaseRequest(actor=PRACTITIONER, case_ref="another", request_id="shared")
        sharing = node_api_pb2.ShareSummaryRequest(  # call-1: amh answered a clarification with it
            actor=PRACTITIONER, assessment_id=assessment_id, decision=stories.override_decision(), request_id="call-1"
        )
        for reused in (amh.OpenCase(opening), amh.ShareSummary(sharing)):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await reused
            assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
            assert "was used for another call" in (refused.value.details() or "")
        other_question.request_id = "x" * 129
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await csc.AskClarification(other_question)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # Two calls racing with one id: one sends; both have its answer.
        other_question.request_id = "raced"
        first, second = await asyncio.gather(csc.AskClarification(other_question), csc.AskClarification(other_question))
        assert first == second
        assert (await sent_kinds(cluster, "csc"))[env.MESSAGE_KIND_CLARIFICATION_REQUEST] == 2


async def test_a_call_that_a_call_racing_it_with_its_request_id_made_first_is_given_that_calls_answer(
    federation: LocalFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race made certain: the other call commits between this one's check for an answer
    and its own write. Refused for what the other did (the case it opened), or stopped by the
    answer it kept, this call rolls back and answers as the other did."""
    async with running(federation) as cluster:
        amh, store = cluster.api("amh"), cluster.nodes["amh"].store
        assert store is not None
        parent, child = stories.think_family_people()
        opening = node_api_pb2.OpenCaseRequest(actor=PRACTITIONER, case_ref="amh-5", people=[parent], request_id="o")
        theirs = node_api_pb2.OpenCaseResponse(case_id="case-opened-by-the-other-call")

        async def other_opened(tx: Tx) -> None:
            await tx.execute(
                "INSERT INTO cases(case_id, case_ref, opened_at_ms, status) VALUES (?, 'amh-5', ?, 'open')",
                (theirs.case_id, tx.now_ms),
            )
            await repeats.keep(tx, opening, theirs)

        written_first(monkeypatch, store, other_opened)
        assert await amh.OpenCase(opening) == theirs  # not ALREADY_EXISTS for the case the other opened
        assert await store.fetchone("SELECT COUNT(*) FROM cases") == (1,)

        opened = await amh.OpenCase(
            node_api_pb2.OpenCaseRequest(actor=PRACTITIONER, case_ref="amh-6", people=[parent, child])
        )
        adult, minor = (p.link_token for p in opened.people)  # in request order
        recording = node_api_pb2.RecordAssessmentRequest(
            actor=PRACTITIONER,
            case_id=opened.case_id,
            assessment=stories.parent_risk_change(adult, minor),
            request_id="r",
        )
        recorded = node_api_pb2.RecordAssessmentResponse(assessment_id="by-the-other-call", version=1)
        written_first(monkeypatch, store, lambda tx: repeats.keep(tx, recording, recorded))
        assert await amh.RecordAssessment(recording) == recorded  # not ABORTED by the answer it kept
        assert await store.fetchone("SELECT COUNT(*) FROM assessments") == (0,)

        recording.request_id = ""
        assessment_id = (await amh.RecordAssessment(recording)).assessment_id
        sharing = node_api_pb2.ShareSummaryRequest(  # call-1: amh answered a clarification with it
            actor=PRACTITIONER, assessment_id=assessment_id, decision=stories.override_decision(), request_id="s"
        )
        shared = node_api_pb2.ShareSummaryResponse(share_id="shared-by-the-other-call")

        async def other_shared(tx: Tx) -> None:
            await tx.execute(
                "INSERT INTO shares(share_id, assessment_id, created_at_ms, outcome, decision, request_id, response) "
                "VALUES (?, ?, ?, 'SHARED', x'', 's', ?)",
                (shared.share_id, assessment_id, tx.now_ms, shared.SerializeToString()),
            )

        written_first(monkeypatch, store, other_shared)
        assert await amh.ShareSummary(sharing) == shared  # not ABORTED by the share the other recorded
        assert await store.fetchone("SELECT share_id FROM shares") == (shared.share_id,)


async def test_each_call_that_changes_a_case_or_a_summary_repeated_with_its_request_id_changes_it_once(
    federation: LocalFederation,
) -> None:
    """Opening a case, adding and removing a person, recording an assessment, withdrawing a
    summary, proposing and making a closure: each repeat is answered as the first call was,
    where without its request_id it would open a second case, record a second version, or
    be refused as done already."""
    async with running(federation) as cluster:
        amh, csc = cluster.api("amh"), cluster.api("csc")
        parent_id, child_id = stories.think_family_people()
        await open_case(cluster, "csc", [parent_id, child_id])

        async def twice(call: Callable[[Any], Awaitable[Any]], request: Any, request_id: str) -> Any:
            request.request_id = request_id
            first, again = await call(request), await call(request)
            assert again == first
            return first

        opened = await twice(
            amh.OpenCase, node_api_pb2.OpenCaseRequest(actor=PRACTITIONER, case_ref="amh-77", people=[parent_id]), "o"
        )
        case_id = opened.case_id
        add_child = node_api_pb2.AddPersonRequest(actor=PRACTITIONER, case_id=case_id, person=child_id)
        added = await twice(amh.AddPerson, add_child, "a1")
        assert len(added.people) == 2
        child = next(p.link_token for p in added.people if p.person_type == "CHILD")
        removed = await twice(
            amh.RemovePerson,
            node_api_pb2.RemovePersonRequest(actor=PRACTITIONER, case_id=case_id, link_token=child),
            "r",
        )
        assert [p.link_token for p in removed.people] == [p.link_token for p in opened.people]
        await twice(amh.AddPerson, add_child, "a2")  # a new id: added again
        recorded = await twice(
            amh.RecordAssessment,
            node_api_pb2.RecordAssessmentRequest(
                actor=PRACTITIONER,
                case_id=case_id,
                assessment=stories.parent_risk_change(opened.people[0].link_token, child),
            ),
            "rec",
        )
        assert recorded.version == 1
        await share(cluster, recorded.assessment_id)
        await wait_delivered(cluster.nodes["amh"], 1)
        withdrawn = await twice(
            amh.WithdrawSummary,
            node_api_pb2.WithdrawSummaryRequest(
                actor=PRACTITIONER,
                summary_id=recorded.summary_id,
                reason="Recorded against the wrong family.",
                ground="WRONG_PERSON",
            ),
            "w",
        )
        assert [r.node_id for r in withdrawn.recipients] == ["csc"]
        proposed = await twice(amh.ProposeClosure, planned_closure(PRACTITIONER, case_id), "p")
        assert (proposed.state, list(proposed.awaiting)) == ("proposed", ["csc"])
        intent = await next_item(cluster, "csc", env.MESSAGE_KIND_CLOSURE_INTENT)
        await csc.RespondToClosure(
            node_api_pb2.RespondToClosureRequest(
                actor=CSC_WORKER, intent_message_id=intent.message_id, answer=workflow_pb2.CLOSURE_ANSWER_AGREE
            )
        )
        await next_item(cluster, "amh", env.MESSAGE_KIND_CLOSURE_RESPONSE)
        closed = await twice(
            amh.CloseCase, node_api_pb2.CloseCaseRequest(actor=PRACTITIONER, case_id=case_id, note="Goals met."), "c"
        )
        assert (closed.state, list(closed.awaiting), len(closed.replies)) == ("closed", [], 1)

        store = cluster.nodes["amh"].store
        assert store is not None
        assert await store.fetchone("SELECT COUNT(*) FROM cases") == (1,)
        assert await store.fetchone("SELECT COUNT(*) FROM assessments") == (1,)
        sent = await sent_kinds(cluster, "amh")
        assert sent[env.MESSAGE_KIND_WITHDRAWAL] == sent[env.MESSAGE_KIND_CLOSURE_INTENT] == 1
        assert sent[env.MESSAGE_KIND_CLOSURE_NOTICE] == 1
        made = [e["event"] for e in await audit_events(cluster.nodes["amh"])]
        assert [made.count(e) for e in ("case.opened", "case.person_added", "case.person_removed")] == [1, 2, 1]
        assert [made.count(e) for e in ("summary.withdrawn", "closure.proposed", "case.closed")] == [1, 1, 1]

        other_case = node_api_pb2.OpenCaseRequest(actor=PRACTITIONER, case_ref="amh-78", people=[parent_id])
        other_case.request_id = "o"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await amh.OpenCase(other_case)
        assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
