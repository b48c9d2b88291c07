"""A real gateway and real nodes over mTLS on loopback: routing by family link."""

from __future__ import annotations

from linkage import stories
from linkage.v1 import node_api_pb2, summary_pb2
from node.server import NodeServer
from tests.harness import PRACTITIONER, Cluster, LocalFederation, running


async def open_case(cluster: Cluster, node: str, people: list[node_api_pb2.PersonIdentifier]) -> list[bytes]:
    response = await cluster.api(node).OpenCase(
        node_api_pb2.OpenCaseRequest(actor=PRACTITIONER, case_ref=f"{node}-case-1", people=people)
    )
    return [p.link_token for p in response.people]


async def wait_delivered(node: NodeServer, count: int) -> None:
    """Until `count` outbox rows are delivered, awaiting state changes (no sleeping)."""
    assert node.store is not None
    while True:
        version = node.outbox.version
        row = await node.store.fetchone("SELECT COUNT(*) FROM outbox WHERE state = 'delivered'")
        if row[0] >= count:
            return
        await node.outbox.wait_change(version)


async def share_think_family(cluster: Cluster) -> node_api_pb2.ShareSummaryResponse:
    family = stories.think_family_people()
    parent, child = await open_case(cluster, "amh", family)
    await open_case(cluster, "csc", family)
    await open_case(cluster, "school", [family[1]])
    await open_case(
        cluster, "police",
        [node_api_pb2.PersonIdentifier(scheme="nhs", value=stories.UNRELATED_NHS, role_in_risk="AT_RISK")],
    )
    amh = cluster.api("amh")
    recorded = await amh.RecordAssessment(
        node_api_pb2.RecordAssessmentRequest(
            actor=PRACTITIONER, case_id=(await _case_id(cluster, "amh")),
            assessment=stories.parent_risk_change(parent, child),
        )
    )
    return await amh.ShareSummary(
        node_api_pb2.ShareSummaryRequest(
            actor=PRACTITIONER, assessment_id=recorded.assessment_id, decision=stories.override_decision()
        )
    )


async def _case_id(cluster: Cluster, node: str) -> str:
    store = cluster.nodes[node].store
    assert store is not None
    row = await store.fetchone("SELECT case_id FROM cases ORDER BY opened_at_ms LIMIT 1")
    return str(row[0])


async def test_summary_reaches_every_subscribed_node_and_no_other(federation: LocalFederation) -> None:
    async with running(federation) as cluster:
        shared = await share_think_family(cluster)
        assert shared.outcome == summary_pb2.DECISION_OUTCOME_SHARED
        assert sorted(r.node_id for r in shared.recipients) == ["csc", "school"]
        await wait_delivered(cluster.nodes["amh"], 2)

        for node in ("csc", "school"):
            items = (await cluster.api(node).ListReceived(node_api_pb2.ListReceivedRequest(actor=PRACTITIONER))).items
            assert len(items) == 1
            item = items[0]
            assert item.sender_node == "amh"
            assert item.sender_agency_type == "NHS_MENTAL_HEALTH"
            currencies = [r.currency for r in item.summary.risk_items]
            assert currencies == [summary_pb2.CURRENCY_CURRENT, summary_pb2.CURRENCY_HISTORICAL]
            assert item.summary.decision.override_grounds == ["CHILD_AT_RISK"]
            assert "treatment" in item.summary.decision.rationale
        for node in ("police", "amh"):
            items = (await cluster.api(node).ListReceived(node_api_pb2.ListReceivedRequest(actor=PRACTITIONER))).items
            assert items == []
