"""Synthetic families and assessments drawn from the guidance seeds, used by
the demo and the tests. Every name and number here is invented; the NHS
numbers are in the 999 test range and pass the modulus-11 check."""

from __future__ import annotations

import datetime as dt

from linkage import calendar
from linkage.clock import SystemClock
from linkage.v1 import node_api_pb2
from linkage.v1 import summary_pb2 as pb

PARENT_NHS = "9991000003"
CHILD_NHS = "9991000011"
UNRELATED_NHS = "9991000038"


def practitioner(pid: str, name: str, role: str) -> pb.Practitioner:
    return pb.Practitioner(id=pid, name=name, role=role)


def think_family_people() -> list[node_api_pb2.PersonIdentifier]:
    """A parent receiving mental-health care and their child (seed 000)."""
    return [
        node_api_pb2.PersonIdentifier(
            scheme="nhs",
            value=PARENT_NHS,
            role_in_risk="POSES_RISK",
            person_type="ADULT_OTHER",
            relationship="parent",
            identity_basis="VERIFIED_NATIONAL",
        ),
        node_api_pb2.PersonIdentifier(
            scheme="nhs",
            value=CHILD_NHS,
            role_in_risk="AT_RISK",
            person_type="CHILD",
            relationship="child",
            identity_basis="VERIFIED_NATIONAL",
        ),
    ]


def date(year: int, month: int, day: int) -> pb.Date:
    return pb.Date(year=year, month=month, day=day)


def days_from_today(days: int) -> pb.Date:
    """A date relative to today, so that the stories' reviews and actions stay ahead of
    the demo and the tests whenever they run."""
    now = calendar.today(SystemClock().now_ms())
    d = dt.date(now.year, now.month, now.day) + dt.timedelta(days=days)
    return pb.Date(year=d.year, month=d.month, day=d.day)


def _period(start: pb.Date, end: pb.Date) -> pb.Period:
    period = pb.Period(to=end)
    getattr(period, "from").CopyFrom(start)  # "from" is a Python keyword
    return period


def parent_risk_change(parent: bytes, child: bytes) -> pb.RiskSummary:
    """Adult mental health: the parent has stopped treatment; risk to the child rises.

    One current item (increased) and one historical item, so recipients see
    what is live now and what is context only.
    """
    return pb.RiskSummary(
        headline="Parent has stopped prescribed medication; risk to the child has increased.",
        people=[
            pb.Person(link_token=parent, role_in_risk="POSES_RISK", person_type="ADULT_OTHER", relationship="parent"),
            pb.Person(link_token=child, role_in_risk="AT_RISK", person_type="CHILD", relationship="child"),
        ],
        risk_items=[
            pb.RiskItem(
                category="PARENTAL_CAPACITY",
                subcategory="PARENTAL_MH",
                who_at_risk="CHILDREN_IN_HOUSEHOLD",
                level=pb.RiskLevel(
                    scale="PRACTITIONER_JUDGEMENT",
                    value="HIGH",
                    assessed_on=days_from_today(-4),
                    rationale="Stopped medication three weeks ago and missed two appointments.",
                ),
                previous_level=pb.RiskLevel(scale="PRACTITIONER_JUDGEMENT", value="MEDIUM"),
                direction="INCREASED",
                currency=pb.CURRENCY_CURRENT,
                basis="PROFESSIONAL_OPINION",
                narrative="Low mood and disturbed sleep reported; parent is the main carer on weekdays.",
                concerns=[parent, child],
            ),
            pb.RiskItem(
                category="SUBSTANCE_MISUSE",
                subcategory="ALCOHOL",
                who_at_risk="SUBJECT",
                direction="RESOLVED",
                currency=pb.CURRENCY_HISTORICAL,
                period=_period(date(2019, 3, 1), date(2021, 6, 30)),
                historical_relevance="CONTEXT_ONLY",
                basis="FACT_DOCUMENTED",
                narrative="Completed community alcohol treatment in 2021; no relapse recorded since.",
                concerns=[parent],
            ),
        ],
        protective_factors=[
            pb.ProtectiveFactor(
                text="Grandparent visits daily and helps with the school run.", category="FAMILY_NETWORK"
            )
        ],
        assessment=pb.Assessment(formality="PROFESSIONAL_JUDGEMENT", assessed_on=days_from_today(-4)),
        lead_professional=pb.Contact(name="Jordan Example", role="Care coordinator", agency_node="amh"),
        review_date=days_from_today(24),
    )


def override_decision() -> pb.ShareDecision:
    """Consent refused and overridden on a recorded ground (domain.md §1.10)."""
    return pb.ShareDecision(
        rationale=(
            "A change in the parent's treatment may change the risk to the child; the agencies assessing "
            "risk to the child need to know now."
        ),
        consent_status="REFUSED",
        override_grounds=["CHILD_AT_RISK"],
        lawful_basis=pb.LawfulBasis(
            dp_regime="UKGDPR_DPA2018_PART2",
            art6=["A6_1_E"],
            art9="A9_2_G",
            dpa_condition="SCH1_P18",
            statutory_gateway=["CA2004_S11"],
            cldc_basis="PUBLIC_INTEREST_OVERRIDE",
            no_consent_reason="WOULD_PREJUDICE_PROTECTION",
            apd_ref="APD-AMH-2026-01",
        ),
        subject_informed="INFORMED_BEFORE",
        approved_by=pb.Practitioner(id="amh-020", name="Sam Example", role="Team manager"),
        purpose="Safeguarding the child",
        necessity_proportionality="Only the change in risk and its context; no clinical detail.",
    )


# --- Ms B (seed 004): self-neglect and hoarding, several agencies unaware of each other ---

MS_B_NHS = "9991000046"


def ms_b(identity_basis: str = "VERIFIED_NATIONAL") -> list[node_api_pb2.PersonIdentifier]:
    """Ms B, by her NHS number: traced by the statutory agencies; a charity may have only her word."""
    return [
        node_api_pb2.PersonIdentifier(
            scheme="nhs",
            value=MS_B_NHS,
            role_in_risk="AT_RISK",
            person_type="ADULT_AT_RISK",
            relationship="self",
            identity_basis=identity_basis,
        )
    ]


def _ms_b_person(token: bytes) -> pb.Person:
    return pb.Person(link_token=token, role_in_risk="AT_RISK", person_type="ADULT_AT_RISK", relationship="self")


def fire_home_visit(token: bytes) -> pb.RiskSummary:
    """Fire and rescue Safe and Well visit: extreme hoarding, high fire load."""
    return pb.RiskSummary(
        headline="Extreme hoarding with a high fire load; escape routes blocked.",
        people=[_ms_b_person(token)],
        risk_items=[
            pb.RiskItem(
                category="FIRE_RISK",
                subcategory="HOARDING_FIRE_LOAD",
                who_at_risk="SUBJECT",
                level=pb.RiskLevel(scale="CLUTTER_IMAGE_RATING", value="7", assessed_on=days_from_today(-12)),
                direction="NEW",
                currency=pb.CURRENCY_CURRENT,
                basis="FACT_OBSERVED",
                narrative="Hallway and stairs impassable; no working smoke alarm.",
                concerns=[token],
            ),
            pb.RiskItem(
                category="SELF_NEGLECT",
                subcategory="HOARDING",
                who_at_risk="SUBJECT",
                direction="INCREASED",
                currency=pb.CURRENCY_CURRENT,
                basis="FACT_OBSERVED",
                concerns=[token],
            ),
        ],
        voice=pb.Voice(adult_views_wishes="Wants to stay at home and keep her belongings; will accept smoke alarms."),
        assessment=pb.Assessment(
            formality="FORMAL_STRUCTURED_TOOL", instrument="FIRE_SAFE_AND_WELL", assessed_on=days_from_today(-12)
        ),
        actions=[pb.Action(action="Fit smoke alarms", owner_agency="fire", due=days_from_today(9), status="OPEN")],
        review_date=days_from_today(18),
    )


def fire_decision() -> pb.ShareDecision:
    return pb.ShareDecision(
        rationale="A fire here could kill her; the agencies supporting her need to know the fire risk now.",
        consent_status="REFUSED",
        override_grounds=["RISK_TO_LIFE"],
        lawful_basis=pb.LawfulBasis(
            dp_regime="UKGDPR_DPA2018_PART2",
            art6=["A6_1_D", "A6_1_E"],
            art9="A9_2_C",
            cldc_basis="PUBLIC_INTEREST_OVERRIDE",
        ),
        subject_informed="INFORMED_BEFORE",
        approved_by=pb.Practitioner(id="fire-009", name="Drew Example", role="Station manager"),
        necessity_proportionality="Only the fire risk and her wishes; nothing about her health.",
        purpose="Protecting life",
    )


def police_welfare_concern(token: bytes) -> pb.RiskSummary:
    """County Police: welfare calls point to someone taking her money."""
    return pb.RiskSummary(
        headline="Two welfare calls; a man who visits on pension day is believed to be taking her money.",
        people=[_ms_b_person(token)],
        risk_items=[
            pb.RiskItem(
                category="FINANCIAL_MATERIAL_ABUSE",
                subcategory="COERCION_OVER_MONEY",
                who_at_risk="SUBJECT",
                direction="NEW",
                currency=pb.CURRENCY_CURRENT,
                basis="ALLEGATION",
                narrative="Neighbours report the visits; twice she has had no money left for food.",
                concerns=[token],
                sar_exemptions=["SCH2_P1_PARA2_CRIME", "SCH2_P3_THIRD_PARTY"],  # an inquiry; the neighbours
            )
        ],
        assessment=pb.Assessment(formality="PROFESSIONAL_JUDGEMENT", assessed_on=days_from_today(-8)),
        review_date=days_from_today(53),
    )


def police_decision() -> pb.ShareDecision:
    """Law-enforcement processing (DPA 2018 Part 3), on a Schedule 8 condition, with police
    handling code C: recipients may pass it on only on the conditions stated."""
    return pb.ShareDecision(
        rationale="She may be being financially abused; those supporting her need to know to protect her.",
        consent_status="NOT_SOUGHT_PREJUDICE",
        override_grounds=["DURESS_COERCION", "PREVENT_DETECT_CRIME"],
        lawful_basis=pb.LawfulBasis(
            dp_regime="DPA2018_PART3",
            dpa_condition="SCH8_P4",
            no_consent_reason="Asking her now could alert the visitor and put her at greater risk.",
            apd_ref="APD-POLICE-7",
        ),
        subject_informed="NOT_INFORMED_PREJUDICE_CRIME",
        subject_not_informed_reason="Telling her could alert the visitor while enquiries continue.",
        approved_by=pb.Practitioner(id="pol-301", name="Sam Example", role="Detective sergeant"),
        necessity_proportionality="Only the concern and its effect on her; no names, no intelligence sources.",
        purpose="Protecting an adult at risk",
        handling_conditions=["POLICE_HANDLING_C", "DO_NOT_DISCLOSE_TO_SUBJECT"],
        handling_instructions="For Ms B's safeguarding only; not to be passed on without asking County Police.",
    )


def age_uk_support(token: bytes) -> pb.RiskSummary:
    """Age UK: two years of weekly support, unknown to the others until now."""
    return pb.RiskSummary(
        headline="Supported weekly by Age UK for two years; trusts her volunteer.",
        people=[_ms_b_person(token)],
        risk_items=[
            pb.RiskItem(
                category="SELF_NEGLECT",
                subcategory="HOME_CONDITIONS",
                who_at_risk="SUBJECT",
                direction="UNCHANGED",
                currency=pb.CURRENCY_CURRENT,
                basis="FACT_OBSERVED",
                narrative="Shopping and benefits help weekly since 2024; declines help with the house.",
                concerns=[token],
            )
        ],
        protective_factors=[
            pb.ProtectiveFactor(
                text="Trusting relationship with her Age UK volunteer.", category="PROFESSIONAL_SUPPORT"
            )
        ],
        voice=pb.Voice(adult_views_wishes="Happy for Age UK to tell the council what help she gets."),
        assessment=pb.Assessment(formality="INFORMAL_CONCERN", assessed_on=days_from_today(-10)),
        review_date=days_from_today(51),
    )


def age_uk_decision() -> pb.ShareDecision:
    """Age UK shares on Ms B's consent, which does not reach the police: it leaves them out,
    saying why."""
    decision = consented_decision(
        "Adult social care is planning support; our two years of weekly contact should inform it."
    )
    decision.not_shared_with.add(
        node_id="police", reason="Ms B agreed to adult social care and the fire service being told, not the police."
    )
    return decision


def consented_decision(rationale: str) -> pb.ShareDecision:
    return pb.ShareDecision(
        rationale=rationale,
        consent_status="GIVEN_EXPLICIT",
        lawful_basis=pb.LawfulBasis(art6=["A6_1_EA_SAFEGUARDING"], cldc_basis="CONSENT_EXPLICIT"),
        subject_informed="INFORMED_BEFORE",
        purpose="Coordinated support",
    )
