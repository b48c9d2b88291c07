"""A practitioner may decide a share is not for one of the agencies linked to the family,
saying why (share only what is necessary; record the reasons not to share): that agency gets
nothing, the others are not told of it, the sender's record keeps it, and an agency that had
an earlier version is not left out of what corrects it. The advice sought before deciding
is kept with the decision, not sent. Real nodes, gateway and stores."""

from __future__ import annotations

from linkage import stories
from linkage.v1 import envelope_pb2 as env
from linkage.v1 import node_api_pb2, summary_pb2
from tests.harness import PRACTITIONER, LocalFederation, audit_events, next_item, running, wait_delivered
from tests.test_audit_ig import config, linkage
from tests.test_workflows import events, think_family

WHY = "The school needs nothing of the parent's treatment to keep the child safe there."
ADVICE = "Tell children's social care; the school hears what it needs from them."


async def test_an_agency_left_out_gets_nothing_and_the_decision_says_why(federation: LocalFederation) -> None:
    async with running(federation) as cluster:
        _, _, assessment_id = await think_family(cluster)
        decision = stories.override_decision()
        decision.not_shared_with.add(node_id="school", reason=WHY)
        advice = decision.advice_sought.add(from_role="DSL", advice=ADVICE)
        advice.adviser.name, advice.on.year, advice.on.month, advice.on.day = "Sam Example", 2026, 12, 1
        api = cluster.api("amh")
        shared = await api.ShareSummary(
            node_api_pb2.ShareSummaryRequest(actor=PRACTITIONER, assessment_id=assessment_id, decision=decision)
        )
        assert shared.outcome == summary_pb2.DECISION_OUTCOME_SHARED_PARTIAL
        assert [r.node_id for r in shared.recipients] == ["csc"]  # nothing queued for the school
        school = next(r for r in shared.decision.recipients if r.node_id == "school")
        assert list(school.withheld) == [f"left out by the practitioner: {WHY}"]

        received = await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)
        told = received.summary.decision
        assert [r.node_id for r in told.recipients] == ["csc"] and not told.not_shared_with
        assert not told.advice_sought and told.rationale == decision.rationale
        amh = cluster.nodes["amh"]
        await wait_delivered(amh, 1)
        school_store = cluster.nodes["school"].store
        assert school_store is not None
        assert await school_store.fetchone("SELECT COUNT(*) FROM inbox WHERE summary_id != ''") == (0,)
        (entry,) = events(await audit_events(amh), "share.decision")
        assert entry["detail"]["left_out"] == {"school": WHY}
        assert entry["detail"]["advice"] == [{"role": "DSL", "by": "Sam Example", "on": "2026-12-01", "advice": ADVICE}]

        decision.not_shared_with[0].node_id = "csc"  # it had the summary: a correction must reach it
        corrected = await api.ShareSummary(
            node_api_pb2.ShareSummaryRequest(
                actor=PRACTITIONER, assessment_id=assessment_id, decision=decision, kind=env.MESSAGE_KIND_CORRECTION
            )
        )
        assert corrected.outcome == summary_pb2.DECISION_OUTCOME_NOT_SHARED and not corrected.recipients
        assert "left_out_must_be_told" in {f.code for f in corrected.findings}

    register = linkage("audit", "register", "--config", config(federation, "amh"))
    assert register.returncode == 0, register.stderr
    assert f"left out: Oak Primary School ({WHY}); advice sought from DSL (Sam Example, 2026-12-01): {ADVICE}" in (
        register.stdout
    )
