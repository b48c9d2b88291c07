"""Each UK jurisdiction has its own law to share under (domain.md §1.9): a summary says
whose, its decision may cite only that law's statutory powers, and a recipient in
another jurisdiction sees which law it came under."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from linkage import stories
from linkage.clock import SystemClock
from linkage.federation import FederationError, enrol_node, init_federation
from linkage.v1 import directory_pb2, node_api_pb2, summary_pb2
from linkage.v1 import envelope_pb2 as env
from tests.harness import PRACTITIONER, Cluster, audit_events, make_federation, next_item, running, wait_delivered
from tests.policy_fixtures import SCHOOL, codes, request, run
from tests.test_federation import _case_id
from tests.test_workflows import events, think_family


def decision_under(*powers: str) -> summary_pb2.ShareDecision:
    decision = stories.override_decision()
    del decision.lawful_basis.statutory_gateway[:]
    decision.lawful_basis.statutory_gateway.extend(powers)
    return decision


def test_a_decision_cites_only_powers_of_the_law_its_summary_was_made_under() -> None:
    welsh = request(decision=decision_under("CARE2014_S42"))
    welsh.assessment.jurisdiction = "WLS"
    refused = run(welsh)
    (finding,) = [f for f in refused.findings if f.code == "power_not_in_jurisdiction"]
    assert finding.message.startswith("CARE2014_S42 is not the law of Wales (WLS), where this was made")
    assert "SSWBA2014_S126" in finding.message and "ASPSA2007_S4" not in finding.message
    assert refused.outcome == summary_pb2.DECISION_OUTCOME_NOT_SHARED

    for jurisdiction, powers in [
        ("WLS", ("SSWBA2014_S130",)),
        ("SCT", ("ASPSA2007_S4", "CTSA2015_CHANNEL")),
        ("NIR", ("CNIO1995_ART66", "COURT_ORDER")),  # a court order is law everywhere
        ("", ("CA2004_S11",)),  # a summary recorded before jurisdictions were: England's
    ]:
        req = request(decision=decision_under(*powers))
        req.assessment.jurisdiction = jurisdiction
        assert "power_not_in_jurisdiction" not in codes(run(req)), jurisdiction

    english = request(decision=decision_under("SSWBA2014_S130"))
    english.assessment.jurisdiction = "ENG"
    assert "power_not_in_jurisdiction" in codes(run(english))
    unknown = request()
    unknown.assessment.jurisdiction = "EN"
    assert "unknown_code" in codes(run(unknown))


def test_enrolment_records_the_jurisdiction_and_refuses_one_it_does_not_know(tmp_path: Path) -> None:
    now = SystemClock().now_ms()
    fed = init_federation(tmp_path / "federation", "test.linkage.example", now, "classic")
    with pytest.raises(FederationError, match="jurisdiction 'Wales' is not in the jurisdiction code list; use one of"):
        enrol_node(
            fed, "wcc", "Welsh council", "LA_ADULT_SOCIAL_CARE", tmp_path / "x", "g:1", now, jurisdiction="Wales"
        )
    enrol_node(fed, "wcc", "Welsh council", "LA_ADULT_SOCIAL_CARE", tmp_path / "wcc", "g:1", now, jurisdiction="WLS")
    entry = directory_pb2.NodeEntry.FromString((fed.entries / "wcc.pb").read_bytes())
    assert entry.jurisdiction == "WLS"


async def share_from_amh(cluster: Cluster, assessment_id: str, *powers: str) -> node_api_pb2.ShareSummaryResponse:
    return await cluster.api("amh").ShareSummary(
        node_api_pb2.ShareSummaryRequest(
            actor=PRACTITIONER, assessment_id=assessment_id, decision=decision_under(*powers)
        )
    )


async def test_a_welsh_agency_shares_under_welsh_law_and_an_english_one_sees_which(tmp_path: Path) -> None:
    federation = make_federation(tmp_path, SystemClock(), ("amh", "csc", "school"), jurisdictions={"amh": "WLS"})
    async with running(federation) as cluster:
        parent, child, assessment_id = await think_family(cluster)
        refused = await share_from_amh(cluster, assessment_id, "CA2004_S11")
        assert refused.outcome == summary_pb2.DECISION_OUTCOME_NOT_SHARED
        assert [f.code for f in refused.findings if f.code == "power_not_in_jurisdiction"]

        shared = await share_from_amh(cluster, assessment_id, "SSWBA2014_S130")
        assert shared.outcome in (summary_pb2.DECISION_OUTCOME_SHARED, summary_pb2.DECISION_OUTCOME_SHARED_PARTIAL)
        item = await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)
        assert item.summary.jurisdiction == "WLS"
        assert list(item.summary.decision.lawful_basis.statutory_gateway) == ["SSWBA2014_S130"]
        await wait_delivered(cluster.nodes["amh"], len(shared.recipients))
        decisions = events(await audit_events(cluster.nodes["amh"]), "share.decision")
        assert [d["detail"]["jurisdiction"] for d in decisions] == ["WLS", "WLS"]
        assert "SSWBA2014_S130" in decisions[-1]["lawful_ground"]

        # A case system may name another jurisdiction (a service across the border); never an unknown one.
        case_id = await _case_id(cluster, "amh")
        assessment = stories.parent_risk_change(parent, child)
        assessment.jurisdiction = "EN"
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await cluster.api("amh").RecordAssessment(
                node_api_pb2.RecordAssessmentRequest(actor=PRACTITIONER, case_id=case_id, assessment=assessment)
            )
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "assessment.jurisdiction 'EN' is not a UK jurisdiction code; use one of ENG, NIR, SCT, WLS" in (
            raised.value.details() or ""
        )
        assessment.jurisdiction = "ENG"
        recorded = await cluster.api("amh").RecordAssessment(
            node_api_pb2.RecordAssessmentRequest(actor=PRACTITIONER, case_id=case_id, assessment=assessment)
        )
        english = await share_from_amh(cluster, recorded.assessment_id, "CA2004_S11")
        assert "power_not_in_jurisdiction" not in [f.code for f in english.findings]

        # Who else is involved says whose law each agency works under.
        found = await cluster.api("csc").DiscoverInvolvement(
            node_api_pb2.CaseRequest(actor=PRACTITIONER, case_id=await _case_id(cluster, "csc"))
        )
        assert {a.node_id: a.jurisdiction for a in found.agencies} == {"amh": "WLS", "school": "ENG"}

        # The Welsh agency's request for information is under Welsh law too.
        with pytest.raises(grpc.aio.AioRpcError) as asked:
            await cluster.api("amh").RequestInformation(
                node_api_pb2.RequestInformationRequest(
                    actor=PRACTITIONER,
                    case_id=case_id,
                    purpose="To assess the risk to the child",
                    what="Any concerns about the child's attendance",
                    lawful_basis=summary_pb2.LawfulBasis(art6=["A6_1_E"], statutory_gateway=["CARE2014_S42"]),
                )
            )
        assert asked.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "CARE2014_S42 is not the law of Wales (WLS)" in (asked.value.details() or "")


def test_an_items_subject_access_exemptions_are_known_codes_of_its_law_and_reach_every_recipient() -> None:
    req = request(recipients=[SCHOOL])  # the school's agreement names each item field it may have
    item = req.assessment.risk_items[0]
    item.sar_exemptions.extend(["SCH3_P3_SOCIAL_WORK_SERIOUS_HARM", "SCH3_P5_CHILD_ABUSE_DATA"])
    result = run(req)
    assert not {"unknown_code", "exemption_not_in_jurisdiction"} & codes(result)
    (payload,) = result.payloads.values()
    assert list(payload.risk_items[0].sar_exemptions) == [
        "SCH3_P3_SOCIAL_WORK_SERIOUS_HARM",
        "SCH3_P5_CHILD_ABUSE_DATA",
    ]

    req.assessment.jurisdiction = "SCT"  # the child abuse data exemption does not exist in Scotland
    req.decision.lawful_basis.ClearField("statutory_gateway")
    (finding,) = [f for f in run(req).findings if f.code == "exemption_not_in_jurisdiction"]
    assert "SCH3_P5_CHILD_ABUSE_DATA is not an exemption in Scotland (SCT)" in finding.message
    item.sar_exemptions.append("SCH9_MADE_UP")
    assert "unknown_code" in codes(run(req))
