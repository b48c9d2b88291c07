"""Validation rules from reference/domain.md §6, each with its reason code."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from linkage.v1 import summary_pb2 as pb

# Consent states that mean the person has not agreed: sharing then needs a
# recorded override ground (domain.md §6 rule 6).
CONSENT_ABSENT = frozenset(
    {
        "REFUSED",
        "WITHDRAWN",
        "NOT_SOUGHT_INCREASES_RISK",
        "NOT_SOUGHT_PREJUDICE",
        "NOT_SOUGHT_NOT_REQUIRED",
        "CANNOT_GIVE_LACKS_CAPACITY",
        "CANNOT_OBTAIN",
    }
)
NO_CONSENT_CONDITIONS = frozenset({"SCH1_P18", "SCH8_P4"})
BANDED_SCALES = frozenset({"PRACTITIONER_JUDGEMENT", "OASYS_ROSH", "DASH_RIC"})


@dataclass(frozen=True)
class Finding:
    code: str
    message: str
    severity: str = "error"  # "error" stops the share; "warning" is shown before sending


def date_set(date: pb.Date) -> bool:
    return date.year > 0


def decision_rules(decision: pb.ShareDecision) -> Iterator[Finding]:
    if not decision.rationale.strip():
        yield Finding("rationale_missing", "Say why you are sharing: every decision needs a rationale.")
    if not decision.consent_status:
        yield Finding("consent_status_missing", "Record the consent status (for example GIVEN_EXPLICIT or REFUSED).")
    basis = decision.lawful_basis
    if not basis.art6:
        yield Finding("lawful_basis_missing", "Give the UK GDPR Article 6 lawful basis (for example A6_1_E).")
    if decision.consent_status == "GIVEN_EXPLICIT" and basis.dpa_condition in NO_CONSENT_CONDITIONS:
        yield Finding(
            "explicit_consent_with_p18",
            "Schedule 1 para 18 applies only without consent; with explicit consent cite another condition.",
        )
    if basis.dpa_condition in NO_CONSENT_CONDITIONS and not (basis.no_consent_reason and basis.apd_ref):
        yield Finding(
            "p18_needs_reason_and_apd",
            "Schedule 1 para 18 needs the reason consent was not used and the appropriate policy document.",
        )
    if decision.consent_status in CONSENT_ABSENT and not decision.override_grounds:
        yield Finding(
            "override_ground_missing",
            f"Consent is {decision.consent_status}: record the override ground that justifies sharing.",
        )


def summary_rules(summary: pb.RiskSummary) -> Iterator[Finding]:
    if not summary.risk_items:
        yield Finding("no_risk_items", "A summary needs at least one risk item.")
    any_current = False
    for n, item in enumerate(summary.risk_items, start=1):
        where = f"Risk item {n} ({item.category or 'no category'})"
        if not item.category:
            yield Finding("category_missing", f"{where}: choose a risk category.")
        if item.currency == pb.CURRENCY_UNSPECIFIED:
            yield Finding("currency_missing", f"{where}: say whether it is current or historical.")
        elif item.currency == pb.CURRENCY_CURRENT:
            any_current = True
        elif not (date_set(item.period.to) and item.historical_relevance):
            yield Finding(
                "historical_needs_dates",
                f"{where}: historical information needs the date it ended and its relevance now.",
            )
        if item.HasField("level"):
            if not item.level.scale:
                yield Finding("level_without_scale", f"{where}: a risk level must name its scale.")
            if item.subcategory == "SUICIDE_RISK" and item.level.scale in BANDED_SCALES:
                yield Finding(
                    "suicide_risk_banded",
                    f"{where}: do not grade suicide risk low/medium/high (NICE NG225); describe the formulation.",
                )
            if item.level.scale == "PRACTITIONER_JUDGEMENT" and not item.level.rationale:
                yield Finding("judgement_without_rationale", f"{where}: a practitioner judgement needs its rationale.")
        if not item.direction:
            yield Finding("direction_missing", f"{where}: say whether the risk is new, increased, decreased...")
    if any_current and not date_set(summary.review_date):
        yield Finding("review_date_missing", "A summary with current risk needs a review date.")
