"""Golden decisions drawn from the guidance seeds: each scenario yields the decision
record an IG officer should find (outcome, grounds, what each recipient got or did not)."""

from __future__ import annotations

from typing import Any

from linkage import stories
from linkage.v1 import summary_pb2 as pb
from node.policy import PolicyResult
from tests.policy_fixtures import ACTOR, CHILD, CSC, PARENT, SCHOOL, codes, request, run


def record(result: PolicyResult) -> dict[str, Any]:
    d = result.decision
    return {
        "outcome": pb.DecisionOutcome.Name(d.outcome).removeprefix("DECISION_OUTCOME_"),
        "consent": d.consent_status,
        "override": list(d.override_grounds),
        "basis": [*d.lawful_basis.art6, d.lawful_basis.art9, d.lawful_basis.dpa_condition],
        "approved_by": d.approved_by.role,
        "decided_by": (d.decided_by.id, d.decided_by.role),
        "recipients": {
            r.node_id: {"categories": list(r.data_categories), "withheld": list(r.withheld)} for r in d.recipients
        },
        "sent_to": sorted(result.payloads),
    }


def test_think_family_parent_risk_change_seed_000() -> None:
    """Adult mental health shares a change in a parent's risk with those assessing the child."""
    result = run(request(recipients=[CSC, SCHOOL]))
    assert record(result) == {
        "outcome": "SHARED_PARTIAL",
        "consent": "REFUSED",
        "override": ["CHILD_AT_RISK"],
        "basis": ["A6_1_E", "A9_2_G", "SCH1_P18"],
        "approved_by": "Team manager",
        "decided_by": (ACTOR.id, ACTOR.role),
        "recipients": {
            "csc": {"categories": ["HEALTH", "MENTAL_HEALTH"], "withheld": []},
            "school": {
                "categories": ["HEALTH", "MENTAL_HEALTH"],
                "withheld": ["risk item 2 (SUBSTANCE_MISUSE): relevance to SCHOOL not stated"],
            },
        },
        "sent_to": ["csc", "school"],
    }
    school = result.payloads["school"]
    assert [i.category for i in school.risk_items] == ["PARENTAL_CAPACITY"]
    assert not school.risk_items[0].narrative  # the school's agreement carries no clinical narrative
    assert result.payloads["csc"].risk_items[0].narrative
    assert school.decision == result.decision  # the decision travels signed inside the summary


def _decrease() -> pb.RiskSummary:
    summary = stories.parent_risk_change(PARENT, CHILD)
    item = summary.risk_items[0]
    item.direction = "DECREASED"
    item.previous_level.value = "HIGH"
    item.level.value = "MEDIUM"
    item.level.rationale = "Back on medication for four weeks and attending every appointment."
    del summary.risk_items[1:]
    summary.headline = "Parent has re-engaged with treatment; risk to the child has reduced."
    return summary


def _consented() -> pb.ShareDecision:
    return pb.ShareDecision(
        rationale="Decreases in risk should be shared too, so that the child's plan is not kept open needlessly.",
        consent_status="GIVEN_EXPLICIT",
        lawful_basis=pb.LawfulBasis(
            art6=["A6_1_E"], art9="A9_2_H", dpa_condition="SCH1_P2", cldc_basis="CONSENT_EXPLICIT"
        ),
        subject_informed="INFORMED_BEFORE",
    )


def test_decrease_in_risk_is_shared_with_consent() -> None:
    result = run(request(_decrease(), _consented(), recipients=[CSC, SCHOOL]))
    assert record(result)["outcome"] == "SHARED"
    assert record(result)["approved_by"] == ""  # consent given: no approval needed
    assert result.payloads["school"].risk_items[0].direction == "DECREASED"
    assert result.payloads["school"].risk_items[0].previous_level.value == "HIGH"


def test_historical_item_with_dates_and_relevance_reaches_the_school() -> None:
    summary = stories.parent_risk_change(PARENT, CHILD)
    summary.risk_items[1].relevance = "Relapse risk is higher while treatment is interrupted."
    summary.risk_items[1].historical_relevance = "STILL_RELEVANT"
    result = run(request(summary, recipients=[SCHOOL]))
    assert record(result)["outcome"] == "SHARED"
    historical = result.payloads["school"].risk_items[1]
    assert historical.currency == pb.CURRENCY_HISTORICAL
    assert historical.period.to.year == 2021
    assert historical.historical_relevance == "STILL_RELEVANT"
    assert historical.relevance.startswith("Relapse risk")


def test_refused_consent_overridden_on_a_recorded_ground_seed_003() -> None:
    """An adult refuses; there is a risk to others, so the practitioner overrides on that ground."""
    decision = stories.override_decision()
    decision.override_grounds[:] = ["RISK_TO_OTHERS"]
    decision.lawful_basis.statutory_gateway[:] = ["CARE2014_S42"]
    result = run(request(decision=decision, recipients=[CSC]))
    rec = record(result)
    assert rec["outcome"] == "SHARED"
    assert rec["consent"] == "REFUSED" and rec["override"] == ["RISK_TO_OTHERS"]
    assert rec["approved_by"] == "Team manager"
    assert result.decision.necessity_proportionality
    assert result.decision.subject_informed == "INFORMED_BEFORE"


def test_a_decision_not_to_share_is_recorded_with_its_reasons() -> None:
    decision = pb.ShareDecision(
        outcome=pb.DECISION_OUTCOME_NOT_SHARED,
        rationale="The change concerns the parent's physical health only and does not affect the child's safety.",
    )
    result = run(request(decision=decision, recipients=[CSC, SCHOOL]))
    assert record(result)["outcome"] == "NOT_SHARED"
    assert result.payloads == {}
    assert result.decision.rationale.startswith("The change concerns")
    assert result.decision.decided_by.id == ACTOR.id
    assert not result.errors


def test_a_decision_not_to_share_still_needs_reasons() -> None:
    result = run(request(decision=pb.ShareDecision(outcome=pb.DECISION_OUTCOME_NOT_SHARED)))
    assert "rationale_missing" in codes(result)
