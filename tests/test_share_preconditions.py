"""A share, an assessment, an information request or its answer that the node cannot take
as asked is refused with the status a case system can act on and a message that says what
to change, and leaves nothing behind that was not asked for: no share, nothing queued for
any agency. Real nodes, gateway and stores."""

from __future__ import annotations

from collections.abc import Awaitable

import grpc
import pytest

from linkage import stories
from linkage.v1 import envelope_pb2 as env
from linkage.v1 import node_api_pb2, summary_pb2, workflow_pb2
from node.server import NodeServer
from tests.harness import PRACTITIONER, Cluster, LocalFederation, audit_events, next_item, running, settle
from tests.test_federation import _case_id, open_case
from tests.test_workflows import planned_closure, s47_request, think_family


async def written(node: NodeServer) -> tuple[int, int, int]:
    """What a share leaves in its node's store: decisions, shares and queued messages."""
    assert node.store is not None
    return (
        len(await audit_events(node, "share.decision")),
        (await node.store.fetchone("SELECT COUNT(*) FROM shares", ()))[0],
        (await node.store.fetchone("SELECT COUNT(*) FROM outbox", ()))[0],
    )


async def refused(call: Awaitable[object], code: grpc.StatusCode, says: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == code
    assert says in (raised.value.details() or ""), raised.value.details()


async def record(cluster: Cluster, assessment: summary_pb2.RiskSummary) -> str:
    recorded = await cluster.api("amh").RecordAssessment(
        node_api_pb2.RecordAssessmentRequest(
            actor=PRACTITIONER, case_id=await _case_id(cluster, "amh"), assessment=assessment
        )
    )
    return recorded.assessment_id


def share_as(assessment_id: str, kind: env.MessageKind.ValueType) -> node_api_pb2.ShareSummaryRequest:
    return node_api_pb2.ShareSummaryRequest(
        actor=PRACTITIONER, assessment_id=assessment_id, decision=stories.override_decision(), kind=kind
    )


async def test_a_share_of_a_kind_its_assessment_does_not_bear_out_is_refused_saying_what_it_lacks(
    federation: LocalFederation,
) -> None:
    """A 'now historical' update with nothing marked historical, a change notice in which no
    risk changed, and a correction of a summary nobody was sent would each tell the other
    agencies something the assessment does not say (share what is current or historical, new,
    changed or decreased: seeds 000 and 003)."""
    async with running(federation, nodes=("amh", "csc", "school")) as cluster:
        parent, child, whole = await think_family(cluster)
        amh, node = cluster.api("amh"), cluster.nodes["amh"]
        all_current = stories.parent_risk_change(parent, child)
        del all_current.risk_items[1:]  # the historical alcohol item left out: only the current one
        unchanged = stories.parent_risk_change(parent, child)
        for item in unchanged.risk_items:
            item.direction = "UNCHANGED"
        never_shared = await record(cluster, stories.parent_risk_change(parent, child))
        before = await written(node)
        for assessment_id, kind, code, says in (
            (
                await record(cluster, all_current),
                env.MESSAGE_KIND_HISTORICAL_UPDATE,
                grpc.StatusCode.INVALID_ARGUMENT,
                "a 'now historical' update needs at least one risk item marked historical",
            ),
            (
                await record(cluster, unchanged),
                env.MESSAGE_KIND_RISK_CHANGE_NOTICE,
                grpc.StatusCode.INVALID_ARGUMENT,
                "a risk change notice needs an item whose risk is new, increased, decreased or resolved",
            ),
            (
                never_shared,
                env.MESSAGE_KIND_CORRECTION,
                grpc.StatusCode.FAILED_PRECONDITION,
                "nothing to correct: this summary was never shared",
            ),
        ):
            await refused(amh.ShareSummary(share_as(assessment_id, kind)), code, says)
            await refused(amh.PreviewShare(share_as(assessment_id, kind)), code, says)
        assert await written(node) == before
        # The same kinds where the assessment bears them out are taken.
        for kind in (env.MESSAGE_KIND_HISTORICAL_UPDATE, env.MESSAGE_KIND_RISK_CHANGE_NOTICE):
            assert (await amh.ShareSummary(share_as(whole, kind))).decision.outcome in (
                summary_pb2.DECISION_OUTCOME_SHARED,
                summary_pb2.DECISION_OUTCOME_SHARED_PARTIAL,
            )


async def test_an_assessment_that_names_nobody_of_its_case_is_refused_and_not_recorded(
    federation: LocalFederation,
) -> None:
    async with running(federation, nodes=("amh",)) as cluster:
        parent, child = await open_case(cluster, "amh", stories.think_family_people())
        stranger = bytes([7]) * 32
        nobody = stories.parent_risk_change(parent, child)
        del nobody.people[:]
        outsider = stories.parent_risk_change(parent, child)
        outsider.people[1].link_token = stranger
        node = cluster.nodes["amh"]
        before = len(await audit_events(node, "assessment.recorded"))
        for assessment, says in (
            (nobody, "assessment.people is empty: name the people it concerns by their link tokens"),
            (outsider, "assessment.people[1] is not a person of case"),
        ):
            await refused(record(cluster, assessment), grpc.StatusCode.INVALID_ARGUMENT, says)
        assert len(await audit_events(node, "assessment.recorded")) == before
        assert node.store is not None
        assert (await node.store.fetchone("SELECT COUNT(*) FROM assessments", ()))[0] == 0


async def test_an_assessment_of_protected_people_only_cannot_be_shared_and_says_why(
    federation: LocalFederation,
) -> None:
    """Everyone it concerns is identity-protected in the case: a share would have to name one
    of them to the gateway, so there is nothing it may be shared about."""
    async with running(federation, nodes=("amh", "csc")) as cluster:
        protected = stories.think_family_people()
        for person in protected:
            person.protect_identity = True
        parent, child = await open_case(cluster, "amh", protected)
        await open_case(cluster, "csc", stories.think_family_people())
        assessment_id = await record(cluster, stories.parent_risk_change(parent, child))
        node = cluster.nodes["amh"]
        before = await written(node)
        await refused(
            cluster.api("amh").ShareSummary(share_as(assessment_id, env.MESSAGE_KIND_SUMMARY_SHARE)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "the assessment names nobody who may be shared about (all identities are protected)",
        )
        assert await written(node) == before


async def test_asking_who_is_involved_while_the_gateway_is_away_says_so(federation: LocalFederation) -> None:
    """Asking who is involved, and proposing a closure (which alerts them), each say the
    gateway could not be asked, that nothing was done, and to try again."""
    async with running(federation, nodes=("csc",)) as cluster:
        await open_case(cluster, "csc", stories.think_family_people())
        case_id = await _case_id(cluster, "csc")
        await cluster.gateway.stop(grace=0)
        unreachable = "cannot reach the gateway to find the agencies linked to this family (UNAVAILABLE); "
        await refused(
            cluster.api("csc").DiscoverInvolvement(node_api_pb2.CaseRequest(actor=PRACTITIONER, case_id=case_id)),
            grpc.StatusCode.UNAVAILABLE,
            unreachable + "nothing was recorded, try again",
        )
        await refused(
            cluster.api("csc").ProposeClosure(planned_closure(PRACTITIONER, case_id)),
            grpc.StatusCode.UNAVAILABLE,
            unreachable + "nothing was proposed, try again",
        )
        assert not await audit_events(cluster.nodes["csc"], "involvement.discovered")
        assert not await audit_events(cluster.nodes["csc"], "closure.proposed")
        closure = await cluster.api("csc").GetClosure(node_api_pb2.CaseRequest(actor=PRACTITIONER, case_id=case_id))
        assert closure.state == "none"


async def test_an_information_request_or_answer_the_node_cannot_send_is_refused_saying_why(
    federation: LocalFederation,
) -> None:
    """A request about a family no other agency is linked to has nobody to go to; an answer
    must say whether it provides or declines, name what it provides, and be one the policy
    allows. Every request ends in a decision (domain.md §6 rule 7): one the policy refused is
    recorded as not shared, and the asking agency is sent nothing it could take as an answer."""
    async with running(federation, nodes=("amh", "csc", "school")) as cluster:
        _, _, assessment_id = await think_family(cluster)
        csc, amh = cluster.api("csc"), cluster.api("amh")
        alone = [node_api_pb2.PersonIdentifier(scheme="nhs", value=stories.UNRELATED_NHS, role_in_risk="AT_RISK")]
        unlinked = await csc.OpenCase(node_api_pb2.OpenCaseRequest(actor=PRACTITIONER, case_ref="c-2", people=alone))
        await refused(
            csc.RequestInformation(s47_request(unlinked.case_id)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "no other agency is linked to this family yet",
        )
        await csc.RequestInformation(s47_request(await _case_id(cluster, "csc"), "amh"))
        asked = await next_item(cluster, "amh", env.MESSAGE_KIND_INFORMATION_REQUEST)
        bare = summary_pb2.ShareDecision(rationale="Provided to help the enquiry.")
        decisions = len(await audit_events(cluster.nodes["amh"], "share.decision"))
        for answer, decision, provided, code, says in (
            (0, bare, assessment_id, grpc.StatusCode.INVALID_ARGUMENT, "answer must be PROVIDED, PARTIAL or DECLINED"),
            (
                workflow_pb2.INFORMATION_ANSWER_PROVIDED,
                stories.override_decision(),
                "",
                grpc.StatusCode.INVALID_ARGUMENT,
                "name the assessment to provide (assessment_id)",
            ),
            (
                workflow_pb2.INFORMATION_ANSWER_PROVIDED,
                bare,  # no consent status, no lawful basis
                assessment_id,
                grpc.StatusCode.FAILED_PRECONDITION,
                "; the decision not to share was recorded",
            ),
        ):
            reply = node_api_pb2.InformationReplyRequest(
                actor=PRACTITIONER,
                request_message_id=asked.message_id,
                answer=answer,  # type: ignore[arg-type]
                decision=decision,
                assessment_id=provided,
            )
            await refused(amh.RespondToInformationRequest(reply), code, says)
        (recorded,) = (await audit_events(cluster.nodes["amh"], "share.decision"))[decisions:]
        assert recorded["decision"] == "DECISION_OUTCOME_NOT_SHARED"
        assert recorded["rationale"].startswith(f"{bare.rationale} [not shared by policy: consent_status_missing")
        await settle(cluster.nodes["amh"])
        assert cluster.nodes["csc"].store is not None
        kinds = await cluster.nodes["csc"].store.fetchall("SELECT DISTINCT kind FROM inbox", ())
        assert env.MESSAGE_KIND_INFORMATION_RESPONSE not in {k for (k,) in kinds}
