"""A case system that repeats a call after its answer was lost (a timeout, a dropped
connection) must not send the other agency the same question, request, challenge or answer
(to a closure proposal too) twice. A call that names a request_id is answered, when repeated, as it was the first time
(node/repeats.py); an id used for another call is refused; two calls racing with one id
send once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from linkage import stories
from linkage.v1 import envelope_pb2 as env
from linkage.v1 import node_api_pb2, summary_pb2, workflow_pb2
from tests.harness import PRACTITIONER, Cluster, LocalFederation, next_item, running, wait_delivered
from tests.test_federation import _case_id
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
        other_question.request_id = "x" * 129
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await csc.AskClarification(other_question)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # Two calls racing with one id: one sends; the other has its answer or is told to ask again.
        other_question.request_id = "raced"
        both = await asyncio.gather(
            csc.AskClarification(other_question), csc.AskClarification(other_question), return_exceptions=True
        )
        answered = [a for a in both if isinstance(a, node_api_pb2.MessageSent)]
        refused_again = [a for a in both if isinstance(a, grpc.aio.AioRpcError)]
        assert answered and all(a == answered[0] for a in answered)
        assert all(a.code() == grpc.StatusCode.ABORTED for a in refused_again)
        assert (await sent_kinds(cluster, "csc"))[env.MESSAGE_KIND_CLARIFICATION_REQUEST] == 2
