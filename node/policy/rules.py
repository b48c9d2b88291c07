"""Validation rules (reference/domain.md §6), each with its reason code."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator

from linkage import jurisdictions
from linkage.calendar import given, on_calendar
from linkage.codelists import CodeLists
from linkage.v1 import summary_pb2 as pb
from node import dates
from node.policy.findings import Finding

# Consent states meaning the person has not agreed: sharing then needs a recorded
# override ground and the common override record (domain.md §6 rule 6).
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
PART3 = "DPA2018_PART3"  # law-enforcement processing by the police (domain.md §1.4)
# DPA 2018 Schedule 1 Part 2 (substantial public interest) conditions in the code list.
SCH1_PART2 = frozenset({"SCH1_P6", "SCH1_P10", "SCH1_P18", "SCH1_P19"})
PUBLIC_TASK_REQUEST = "A6_1_EA_PUBLIC_TASK_REQUEST"  # only in answer to a body's request (domain.md §6 rule 5)
LEGITIMATE_INTERESTS = frozenset({"A6_1_F", "A6_1_EA_SAFEGUARDING", PUBLIC_TASK_REQUEST})
NON_PUBLIC_AGENCIES = frozenset(
    {"VCS_OLDER_PEOPLE", "VCS_DOMESTIC_ABUSE", "VCS_CHILDREN", "VCS_OTHER", "HOUSING_PROVIDER", "EARLY_YEARS"}
)


def consent_absent(decision: pb.ShareDecision) -> bool:
    return decision.consent_status in CONSENT_ABSENT


def _code(codes: CodeLists, name: str, value: str, where: str) -> Iterator[Finding]:
    if value and not codes.has(name, value):
        yield Finding("unknown_code", f"{where}: '{value}' is not in the {name} code list ({codes.version}).")


def protected_role(codes: CodeLists, role: str) -> bool:
    """A referrer or an informant is protected whatever the caller says (domain.md §6 rule 13)."""
    return bool(codes.entry("role_in_risk", role).get("protected"))


def basis_rules(basis: pb.LawfulBasis, codes: CodeLists, jurisdiction: str) -> Iterator[Finding]:
    """A lawful basis is given under its regime, and each of its codes is in its code list.
    Under UK GDPR that is an Article 6 basis; the police's law-enforcement processing (DPA
    2018 Part 3) has no Article 6 basis but a Schedule 8 condition (domain.md §1.4). Its
    statutory powers are law in `jurisdiction` (domain.md §1.9)."""
    condition_regime = codes.entry("dpa_condition", basis.dpa_condition).get("regime")
    if basis.dp_regime == PART3:
        if condition_regime != PART3:
            yield Finding(
                "part3_condition_missing",
                "Under DPA 2018 Part 3, give the Schedule 8 condition relied on (for example SCH8_P4).",
            )
    elif not basis.art6:
        yield Finding("lawful_basis_missing", "Give the UK GDPR Article 6 lawful basis (for example A6_1_E).")
    elif condition_regime == PART3:
        yield Finding(
            "regime_mismatch",
            f"{basis.dpa_condition} is a DPA 2018 Part 3 condition: for law-enforcement processing set "
            f"dp_regime {PART3}; otherwise cite a Schedule 1 condition.",
        )
    for code in basis.art6:
        yield from _code(codes, "art6", code, "Article 6 basis")
    yield from _code(codes, "art9", basis.art9, "Article 9 condition")
    yield from _code(codes, "dpa_condition", basis.dpa_condition, "DPA 2018 condition")
    yield from _code(codes, "dp_regime", basis.dp_regime, "data-protection regime")
    yield from _code(codes, "cldc_basis", basis.cldc_basis, "confidentiality basis")
    for code in basis.statutory_gateway:
        yield from _code(codes, "statutory_gateway", code, "statutory power")
        if codes.has("statutory_gateway", code) and not jurisdictions.applies(
            codes, "statutory_gateway", code, jurisdiction
        ):
            own = jurisdictions.powers_of(codes, jurisdiction)
            yield Finding(
                "power_not_in_jurisdiction",
                f"{code} is not the law of {jurisdictions.name(codes, jurisdiction)}, where this was made: cite "
                + (f"a power that is (one of {', '.join(own)}), " if own else "")
                + "a court order or a local agreement (COURT_ORDER, LOCAL_ISA).",
            )


def decision_rules(
    decision: pb.ShareDecision,
    codes: CodeLists,
    sender_agency_type: str,
    jurisdiction: str,
    answering_request: bool = False,
) -> Iterator[Finding]:
    """Grounds for sharing: consent, lawful basis and the override record, under the law of
    `jurisdiction`. `answering_request`: the share answers another agency's information request."""
    basis = decision.lawful_basis
    if not decision.consent_status:
        yield Finding("consent_status_missing", "Record the consent status (for example GIVEN_EXPLICIT or REFUSED).")
    yield from _code(codes, "consent_status", decision.consent_status, "consent status")
    yield from basis_rules(basis, codes, jurisdiction)
    for code in decision.override_grounds:
        yield from _code(codes, "override_ground", code, "override ground")
    yield from _code(codes, "subject_informed", decision.subject_informed, "subject informed")
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
    if basis.art9 == "A9_2_G" and basis.dpa_condition not in SCH1_PART2:
        yield Finding(
            "art9g_needs_part2_condition",
            "Article 9(2)(g) needs a DPA 2018 Schedule 1 Part 2 condition (for example SCH1_P18).",
        )
    if PUBLIC_TASK_REQUEST in basis.art6 and not answering_request:
        yield Finding(
            "public_task_request_unanswered",
            f"{PUBLIC_TASK_REQUEST} applies only in answer to a body's request that states its public task: "
            "answer that request (RespondToInformationRequest), or cite another basis.",
        )
    if LEGITIMATE_INTERESTS & set(basis.art6) and sender_agency_type not in NON_PUBLIC_AGENCIES:
        yield Finding(
            "legitimate_interest_public_authority",
            "A public authority acting in its tasks cannot usually rely on legitimate interests; consider A6_1_E.",
            "warning",
        )
    if consent_absent(decision):
        if not decision.override_grounds:
            yield Finding(
                "override_ground_missing",
                f"Consent is {decision.consent_status}: record the override ground that justifies sharing.",
            )
        if not decision.subject_informed:
            yield Finding(
                "subject_informed_missing",
                "Say whether the person was told about the sharing, and if not, why not.",
            )
        if not decision.necessity_proportionality.strip():
            yield Finding(
                "proportionality_missing",
                "Sharing without consent needs a statement of why it is necessary and proportionate.",
            )
    if decision.subject_informed == "NOT_INFORMED_OTHER" and not decision.subject_not_informed_reason.strip():
        yield Finding("not_informed_reason_missing", "Say why the person was not told about the sharing.")
    yield from handling_rules(decision, codes)
    yield from _text_problems(_decision_texts(decision))
    if decision.consent_status == "CANNOT_GIVE_LACKS_CAPACITY" and not (
        decision.capacity_assessment_ref and decision.best_interests_ref
    ):
        yield Finding(
            "capacity_refs_missing",
            "Lack of capacity needs the decision-specific capacity assessment and the best-interests decision.",
        )


def advice_rules(decision: pb.ShareDecision, codes: CodeLists) -> Iterator[Finding]:
    """Advice sought before deciding, to share or not: from whom, by role, and what it was, on
    a date on the calendar (domain.md §4.1)."""
    for n, advice in enumerate(decision.advice_sought, start=1):
        where = f"advice {n}"
        if not advice.from_role:
            yield Finding("advice_role_missing", f"Say whom {where} came from, by role (for example DSL or DPO).")
        yield from _code(codes, "advice_role", advice.from_role, where)
        if not advice.advice.strip():
            yield Finding("advice_missing", f"Say what {where} was: the log keeps the advice, not only who gave it.")
        if given(advice.on) and not on_calendar(advice.on):
            yield Finding("advice_date_invalid", f"{where} is dated {dates.iso(advice.on)}, not a calendar date.")
    yield from _text_problems(
        (f"advice {n}", a.advice, MAX_TEXT) for n, a in enumerate(decision.advice_sought, start=1)
    )


def left_out_rules(
    decision: pb.ShareDecision, reaching: Collection[str], must_reach: Collection[str]
) -> Iterator[Finding]:
    """An agency left out of a share is one it would reach, and the decision says why; one
    that had an earlier version is not left out of what changes or corrects it (UK GDPR Art 19)."""
    for n, left in enumerate(decision.not_shared_with, start=1):
        who = left.node_id or f"agency {n} left out"
        if left.node_id not in reaching:
            yield Finding(
                "left_out_not_reached",
                f"{who} is not among the agencies this share would reach; leave out only those it would.",
            )
        elif left.node_id in must_reach:
            yield Finding(
                "left_out_must_be_told",
                f"{who} had an earlier version of this summary: what changes or corrects it goes to every "
                "agency that had it (UK GDPR Art 19).",
            )
        if not left.reason.strip():
            yield Finding(
                "left_out_reason_missing", f"Say why {who} is left out: every decision not to share needs its reasons."
            )
    yield from _text_problems(
        (f"reason {left.node_id} is left out", left.reason, MAX_TEXT) for left in decision.not_shared_with
    )


def handling_rules(decision: pb.ShareDecision, codes: CodeLists) -> Iterator[Finding]:
    """What recipients may do with it: known conditions, the words a condition needs, and a
    nudge to say it for police information under DPA 2018 Part 3 (domain.md §6 rule 14)."""
    for code in decision.handling_conditions:
        yield from _code(codes, "handling_condition", code, "handling condition")
    needing = [
        c
        for c in decision.handling_conditions
        if "instructions" in codes.entry("handling_condition", c).get("requires", [])
    ]
    if needing and not decision.handling_instructions.strip():
        yield Finding(
            "handling_instructions_missing",
            f"{', '.join(needing)}: state the conditions on which recipients may share it onward.",
        )
    if decision.lawful_basis.dp_regime == PART3 and not decision.handling_conditions:
        yield Finding(
            "part3_handling_unstated",
            "Police information under DPA 2018 Part 3: say how recipients may handle it "
            "(for example POLICE_HANDLING_C with its conditions, or NO_ONWARD_SHARING).",
            "warning",
        )


def _level_rules(
    level: pb.RiskLevel, item: pb.RiskItem, codes: CodeLists, where: str, current: bool
) -> Iterator[Finding]:
    if not level.scale:
        yield Finding("level_without_scale", f"{where}: a risk level must name its scale.")
        return
    scale = codes.entry("risk_scale", level.scale)
    if not scale:
        yield from _code(codes, "risk_scale", level.scale, where)
        return
    values = scale.get("values", [])
    if values and level.value not in values:
        yield Finding("level_not_on_scale", f"{where}: '{level.value}' is not a value of {level.scale} ({values}).")
    if item.subcategory == "SUICIDE_RISK" and scale.get("banded"):
        yield Finding(
            "suicide_risk_banded",
            f"{where}: do not grade suicide risk low/medium/high (NICE NG225); describe the formulation instead.",
        )
    if current and "rationale" in scale.get("requires", []) and not level.rationale.strip():
        yield Finding("judgement_without_rationale", f"{where}: a {level.scale} level needs its rationale.")


def item_rules(item: pb.RiskItem, n: int, codes: CodeLists, jurisdiction: str) -> Iterator[Finding]:
    where = f"Risk item {n} ({item.category or 'no category'})"
    for code in item.sar_exemptions:
        yield from _code(codes, "sar_exemption", code, where)
        if codes.has("sar_exemption", code) and not jurisdictions.applies(codes, "sar_exemption", code, jurisdiction):
            yield Finding(
                "exemption_not_in_jurisdiction",
                f"{where}: {code} is not an exemption in {jurisdictions.name(codes, jurisdiction)}, "
                "where this was made.",
            )
    if not item.category:
        yield Finding("category_missing", f"{where}: choose a risk category.")
    else:
        yield from _code(codes, "risk_category", item.category, where)
        subs = codes.entry("risk_category", item.category).get("sub", [])
        if item.subcategory and item.subcategory not in subs:
            yield Finding("unknown_code", f"{where}: '{item.subcategory}' is not a kind of {item.category}.")
        if item.category == "OTHER" and not item.narrative.strip():
            yield Finding("other_needs_text", f"{where}: say what the risk is when the category is OTHER.")
    if not item.direction:
        yield Finding("direction_missing", f"{where}: say whether the risk is new, increased, decreased...")
    yield from _code(codes, "change_direction", item.direction, where)
    yield from _code(codes, "who_at_risk", item.who_at_risk, where)
    yield from _code(codes, "basis", item.basis, where)
    if not item.basis:
        yield Finding(
            "basis_missing", f"{where}: say whether this is fact, disclosure, allegation or professional opinion."
        )
    if item.currency not in (pb.CURRENCY_CURRENT, pb.CURRENCY_HISTORICAL):
        yield Finding("currency_missing", f"{where}: say whether it is current or historical.")
    elif item.currency == pb.CURRENCY_HISTORICAL:
        if not (given(item.period.to) and item.historical_relevance):
            yield Finding(
                "historical_needs_dates",
                f"{where}: historical information needs the date it ended and its relevance now.",
            )
        yield from _code(codes, "historical_relevance", item.historical_relevance, where)
    for level, current in ((item.level, True), (item.previous_level, False)):
        if level.ByteSize():
            yield from _level_rules(level, item, codes, where, current)


MAX_TEXT = 2_000  # characters in any free-text field: a summary, not the record
MAX_HEADLINE = 300
MAX_ITEMS = 50


def _texts(summary: pb.RiskSummary) -> Iterator[tuple[str, str, int]]:
    yield "headline", summary.headline, MAX_HEADLINE
    yield "strengths", summary.strengths, MAX_TEXT
    yield "child's wishes and feelings", summary.voice.child_wishes_feelings, MAX_TEXT
    yield "adult's views and wishes", summary.voice.adult_views_wishes, MAX_TEXT
    for n, item in enumerate(summary.risk_items, start=1):
        yield f"risk item {n} narrative", item.narrative, MAX_TEXT
        yield f"risk item {n} relevance", item.relevance, MAX_TEXT
    for n, factor in enumerate(summary.protective_factors, start=1):
        yield f"protective factor {n}", factor.text, MAX_TEXT


def _decision_texts(decision: pb.ShareDecision) -> Iterator[tuple[str, str, int]]:
    yield "rationale", decision.rationale, MAX_TEXT
    yield "purpose", decision.purpose, MAX_TEXT
    yield "necessity and proportionality statement", decision.necessity_proportionality, MAX_TEXT
    yield "reason the person was not told", decision.subject_not_informed_reason, MAX_TEXT
    yield "handling instructions", decision.handling_instructions, MAX_TEXT


def _text_problems(texts: Iterator[tuple[str, str, int]]) -> Iterator[Finding]:
    for where, text, limit in texts:
        if len(text) > limit:
            yield Finding("text_too_long", f"The {where} is {len(text)} characters; keep it under {limit}.")
        if problem := control_character(text):
            yield Finding("text_control_character", f"The {where} {problem}.")


# No practitioner writes these (tab and line ends aside, a carriage return only before a
# newline); in a case system or a terminal they can hide or rewrite what is shown ("LOW"
# printed over "HIGH"), so they are refused before anything is sent.
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # one class: a third the cost of "|\r(?!\n)"


def control_character(text: str) -> str:
    """What is wrong, if `text` holds a control character: which, and where."""
    found = CONTROL.search(text)
    while found is not None and text.startswith("\r\n", found.start()):
        found = CONTROL.search(text, found.end())
    if found is None:
        return ""
    return f"holds a control character (U+{ord(found.group()):04X}) at character {found.start() + 1}: send plain text"


def _dates(summary: pb.RiskSummary) -> Iterator[tuple[str, pb.Date]]:
    yield "assessment date", summary.assessment.assessed_on
    yield "review date", summary.review_date
    yield "date the voice was recorded", summary.voice.recorded_on
    yield "closure target date", summary.closure_intent.target_date
    for n, item in enumerate(summary.risk_items, start=1):
        yield f"risk item {n}'s level date", item.level.assessed_on
        yield f"risk item {n}'s previous level date", item.previous_level.assessed_on
        yield f"risk item {n}'s start", getattr(item.period, "from")  # `from` is a Python keyword
        yield f"risk item {n}'s end", item.period.to
    for n, action in enumerate(summary.actions, start=1):
        yield f"action {n}'s due date", action.due


def _day(date: pb.Date) -> tuple[int, int, int]:
    return date.year, date.month, date.day


def date_problems(summary: pb.RiskSummary) -> list[str]:
    """What is wrong with an assessment's dates: each given is on the calendar, and each
    period ends after it starts. (Checked once, when the assessment is recorded.)"""
    problems = [
        f"the {where} ({dates.iso(date)}) is not a date on the calendar"
        for where, date in _dates(summary)
        if given(date) and not on_calendar(date)
    ]
    for n, item in enumerate(summary.risk_items, start=1):
        start, end = _day(getattr(item.period, "from")), _day(item.period.to)
        if start[0] and end[0] and end < start:
            problems.append(f"risk item {n}'s period ends before it starts")
    return problems


def review_rules(summary: pb.RiskSummary, today: pb.Date) -> Iterator[Finding]:
    """A summary of current risk is not shared past its review date unremarked (domain.md §6
    rule 12)."""
    review = summary.review_date
    if (
        review.year
        and _day(review) < _day(today)
        and any(i.currency == pb.CURRENCY_CURRENT for i in summary.risk_items)
    ):
        yield Finding(
            "review_date_passed",
            f"The review date {dates.iso(review)} has passed: review the assessment, or say in the "
            "rationale why it still holds.",
            "warning",
        )


def identity_rules(summary: pb.RiskSummary, codes: CodeLists) -> Iterator[Finding]:
    """A person linked by a match or by someone's word, not a verified identifier, may be
    the wrong person: recipients are told, and the sender is asked to verify it first
    where it can (mission anchors §8 item 11)."""
    for n, person in enumerate(summary.people, start=1):
        if codes.unverified_link(person.identity_basis) and not person.protect_identity:
            who = person.relationship or f"Person {n}"
            how = codes.entry("identity_basis", person.identity_basis).get("label", "").lower()
            yield Finding(
                "identity_not_verified",
                f"{who} was linked by {person.identity_basis} ({how}): recipients will "
                "be told to confirm it is the same person before acting; verify the identifier first where you can.",
                "warning",
            )


def summary_rules(summary: pb.RiskSummary, codes: CodeLists) -> Iterator[Finding]:
    if not summary.risk_items:
        yield Finding("no_risk_items", "A summary needs at least one risk item.")
    if len(summary.risk_items) > MAX_ITEMS:
        yield Finding("too_many_items", f"A summary holds at most {MAX_ITEMS} risk items; share what is necessary.")
    yield from _text_problems(_texts(summary))
    for n, person in enumerate(summary.people, start=1):
        yield from _code(codes, "role_in_risk", person.role_in_risk, f"Person {n}")
        yield from _code(codes, "person_type", person.person_type, f"Person {n}")
        yield from _code(codes, "identity_basis", person.identity_basis, f"Person {n}")
    yield from identity_rules(summary, codes)
    jurisdiction = jurisdictions.of_summary(summary)
    for n, item in enumerate(summary.risk_items, start=1):
        yield from item_rules(item, n, codes, jurisdiction)
    yield from _code(codes, "assessment_formality", summary.assessment.formality, "assessment")
    yield from _code(codes, "jurisdiction", summary.jurisdiction, "jurisdiction")
    if summary.HasField("closure_intent"):
        yield from _code(codes, "closure_intent", summary.closure_intent.intent, "closure intent")
    if any(i.currency == pb.CURRENCY_CURRENT for i in summary.risk_items) and not given(summary.review_date):
        yield Finding("review_date_missing", "A summary with current risk needs a review date.")
