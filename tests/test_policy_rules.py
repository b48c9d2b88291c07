"""Every validation rule, failing and passing, with its reason code (table-driven)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import pytest
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from linkage import stories
from linkage.clock import SystemClock
from linkage.v1 import summary_pb2 as pb
from node import dates
from node.policy import Agreement
from node.policy.rules import MAX_ITEMS, date_problems, review_rules
from node.policy_files import document
from tests.policy_fixtures import CHILD, CONTEXT, CSC, PARENT, SCHOOL, codes, request, run

Mutation = Callable[[pb.RiskSummary, pb.ShareDecision], None]


def _consent(status: str) -> Mutation:
    def mutate(s: pb.RiskSummary, d: pb.ShareDecision) -> None:
        d.consent_status = status

    return mutate


def _explicit_consent_basis(s: pb.RiskSummary, d: pb.ShareDecision) -> None:
    d.consent_status = "GIVEN_EXPLICIT"
    d.ClearField("override_grounds")
    d.lawful_basis.art9 = "A9_2_H"
    d.lawful_basis.dpa_condition = "SCH1_P2"
    d.lawful_basis.cldc_basis = "CONSENT_EXPLICIT"


def _set(path: str, value: object) -> Mutation:
    def mutate(s: pb.RiskSummary, d: pb.ShareDecision) -> None:
        target: object = {"s": s, "d": d}[path[0]]
        *parents, leaf = path[2:].split(".")
        for part in parents:
            target = target[int(part)] if part.isdigit() else getattr(target, part)  # type: ignore[index]
        if value is None:
            target.ClearField(leaf)  # type: ignore[attr-defined]
        elif isinstance(value, list):
            field = getattr(target, leaf)
            del field[:]
            field.extend(value)
        elif isinstance(value, Message):
            getattr(target, leaf).CopyFrom(value)
        else:
            setattr(target, leaf, value)

    return mutate


def _more_items(count: int) -> Mutation:
    """As many risk items in all as `count`, the first repeated."""

    def mutate(s: pb.RiskSummary, d: pb.ShareDecision) -> None:
        s.risk_items.extend([s.risk_items[0]] * (count - len(s.risk_items)))

    return mutate


def _historical_only(s: pb.RiskSummary, d: pb.ShareDecision) -> None:
    current = [i for i in s.risk_items if i.currency != pb.CURRENCY_HISTORICAL]
    for item in current:
        s.risk_items.remove(item)


def _both(*mutations: Mutation) -> Mutation:
    def mutate(s: pb.RiskSummary, d: pb.ShareDecision) -> None:
        for m in mutations:
            m(s, d)

    return mutate


CASES: list[tuple[str, Mutation, Mutation]] = [
    # (reason code, a mutation that breaks the rule, a mutation that satisfies it)
    ("rationale_missing", _set("d.rationale", ""), _set("d.rationale", "Why it matters")),
    ("consent_status_missing", _set("d.consent_status", ""), _consent("REFUSED")),
    ("lawful_basis_missing", _set("d.lawful_basis.art6", []), _set("d.lawful_basis.art6", ["A6_1_E"])),
    ("unknown_code", _set("d.lawful_basis.art6", ["A6_9_Z"]), _set("d.lawful_basis.art6", ["A6_1_C"])),
    (
        "unknown_code",
        _set("s.risk_items.0.category", "NOT_A_CATEGORY"),
        _set("s.risk_items.0.category", "PARENTAL_CAPACITY"),
    ),
    ("unknown_code", _set("s.risk_items.0.subcategory", "CSE"), _set("s.risk_items.0.subcategory", "PARENTAL_LD")),
    (
        "explicit_consent_with_p18",
        _both(_explicit_consent_basis, _set("d.lawful_basis.dpa_condition", "SCH1_P18")),
        _explicit_consent_basis,
    ),
    ("p18_needs_reason_and_apd", _set("d.lawful_basis.apd_ref", ""), _set("d.lawful_basis.apd_ref", "APD-1")),
    (
        "art9g_needs_part2_condition",
        _set("d.lawful_basis.dpa_condition", "SCH1_P2"),
        _set("d.lawful_basis.dpa_condition", "SCH1_P18"),
    ),
    ("override_ground_missing", _set("d.override_grounds", []), _set("d.override_grounds", ["RISK_TO_OTHERS"])),
    ("subject_informed_missing", _set("d.subject_informed", ""), _set("d.subject_informed", "INFORMED_AFTER")),
    (
        "proportionality_missing",
        _set("d.necessity_proportionality", ""),
        _set("d.necessity_proportionality", "Only the change in risk."),
    ),
    (
        "capacity_refs_missing",
        _consent("CANNOT_GIVE_LACKS_CAPACITY"),
        _both(
            _consent("CANNOT_GIVE_LACKS_CAPACITY"),
            _set("d.capacity_assessment_ref", "MCA-1"),
            _set("d.best_interests_ref", "BI-1"),
        ),
    ),
    (  # both references, not either
        "capacity_refs_missing",
        _both(_consent("CANNOT_GIVE_LACKS_CAPACITY"), _set("d.capacity_assessment_ref", "MCA-1")),
        _both(
            _consent("CANNOT_GIVE_LACKS_CAPACITY"),
            _set("d.capacity_assessment_ref", "MCA-1"),
            _set("d.best_interests_ref", "BI-1"),
        ),
    ),
    ("no_risk_items", _set("s.risk_items", []), lambda s, d: None),
    ("category_missing", _set("s.risk_items.0.category", ""), _set("s.risk_items.0.category", "PARENTAL_CAPACITY")),
    ("direction_missing", _set("s.risk_items.0.direction", ""), _set("s.risk_items.0.direction", "DECREASED")),
    ("basis_missing", _set("s.risk_items.0.basis", ""), _set("s.risk_items.0.basis", "DISCLOSURE")),
    (
        "currency_missing",
        _set("s.risk_items.0.currency", pb.CURRENCY_UNSPECIFIED),
        _set("s.risk_items.0.currency", pb.CURRENCY_CURRENT),
    ),
    ("currency_missing", _set("s.risk_items.0.currency", 9), _set("s.risk_items.0.currency", pb.CURRENCY_CURRENT)),
    ("review_date_passed", _set("s.review_date.year", 2025), lambda s, d: None),  # decided on 2026-01-01
    (
        "historical_needs_dates",
        _set("s.risk_items.1.period", None),
        _set("s.risk_items.1.historical_relevance", "STILL_RELEVANT"),
    ),
    (
        "historical_needs_dates",
        _set("s.risk_items.1.historical_relevance", ""),
        _set("s.risk_items.1.historical_relevance", "CONTEXT_ONLY"),
    ),
    (
        "level_without_scale",
        _set("s.risk_items.0.level.scale", ""),
        _set("s.risk_items.0.level.scale", "PRACTITIONER_JUDGEMENT"),
    ),
    ("level_not_on_scale", _set("s.risk_items.0.level.value", "SEVERE"), _set("s.risk_items.0.level.value", "LOW")),
    (
        "judgement_without_rationale",
        _set("s.risk_items.0.level.rationale", ""),
        _set("s.risk_items.0.level.rationale", "Missed two appointments."),
    ),
    (
        "suicide_risk_banded",
        _both(
            _set("s.risk_items.0.category", "MENTAL_HEALTH_CRISIS"), _set("s.risk_items.0.subcategory", "SUICIDE_RISK")
        ),
        _both(
            _set("s.risk_items.0.category", "MENTAL_HEALTH_CRISIS"),
            _set("s.risk_items.0.subcategory", "SUICIDE_RISK"),
            _set("s.risk_items.0.level", None),
            _set("s.risk_items.0.previous_level", None),
        ),
    ),
    ("review_date_missing", _set("s.review_date", None), lambda s, d: None),
    # Only current risk needs a review date: the story's second item is historical.
    ("review_date_missing", _set("s.review_date", None), _both(_set("s.review_date", None), _historical_only)),
    (
        "other_needs_text",
        _both(
            _set("s.risk_items.0.category", "OTHER"),
            _set("s.risk_items.0.subcategory", ""),
            _set("s.risk_items.0.narrative", ""),
        ),
        _both(_set("s.risk_items.0.category", "OTHER"), _set("s.risk_items.0.subcategory", "")),
    ),
    ("approval_required", _set("d.approved_by", None), lambda s, d: None),
    ("text_too_long", _set("s.risk_items.0.narrative", "x" * 2001), _set("s.risk_items.0.narrative", "x" * 2000)),
    ("text_too_long", _set("s.headline", "x" * 301), _set("s.headline", "Short and plain.")),
    # Tab and line ends are a practitioner's; an escape or carriage return alone is not.
    ("text_control_character", _set("s.headline", "HIGH\rLOW"), _set("s.headline", "HIGH\r\nthen\tLOW")),
    ("text_control_character", _set("s.risk_items.0.narrative", "x\x1b[2J"), _set("s.risk_items.0.narrative", "x")),
    ("text_control_character", _set("d.rationale", "\x00"), _set("d.rationale", "Plain words.")),
    (
        "not_informed_reason_missing",
        _set("d.subject_informed", "NOT_INFORMED_OTHER"),
        _both(_set("d.subject_informed", "NOT_INFORMED_OTHER"), _set("d.subject_not_informed_reason", "Unreachable.")),
    ),
    ("legitimate_interest_public_authority", _set("d.lawful_basis.art6", ["A6_1_F"]), lambda s, d: None),
    # Handling conditions (domain.md §4.1 and §6 rule 14): known codes, and code C's conditions in words.
    (
        "unknown_code",
        _set("d.handling_conditions", ["NO_ONWARD"]),
        _set("d.handling_conditions", ["NO_ONWARD_SHARING"]),
    ),
    (
        "handling_instructions_missing",
        _set("d.handling_conditions", ["OFFICIAL_SENSITIVE", "POLICE_HANDLING_C"]),
        _both(
            _set("d.handling_conditions", ["OFFICIAL_SENSITIVE", "POLICE_HANDLING_C"]),
            _set("d.handling_instructions", "Share with the child's social worker only; not with the family."),
        ),
    ),
    ("text_too_long", _set("d.handling_instructions", "x" * 2001), _set("d.handling_instructions", "x" * 2000)),
    ("text_too_long", _set("d.rationale", "x" * 2001), _set("d.rationale", "x" * 2000)),
    (
        "text_too_long",
        _set("d.necessity_proportionality", "x" * 2001),
        _set("d.necessity_proportionality", "x" * 2000),
    ),
    (
        "unknown_code",
        _set("s.risk_items.0.level.scale", "GUT_FEELING"),
        _set("s.risk_items.0.level.scale", "PRACTITIONER_JUDGEMENT"),
    ),
    (
        "unknown_code",
        _set("s.closure_intent", pb.ClosureIntent(intent="WANDERED_OFF")),
        _set("s.closure_intent", pb.ClosureIntent(intent="PLANNED_CLOSURE")),
    ),
    ("too_many_items", _more_items(MAX_ITEMS + 1), _more_items(MAX_ITEMS)),
    # Police law-enforcement processing (DPA 2018 Part 3): a Schedule 8 condition, not an Article 6 basis.
    (
        "part3_condition_missing",
        _set("d.lawful_basis.dp_regime", "DPA2018_PART3"),
        _both(_set("d.lawful_basis.dp_regime", "DPA2018_PART3"), _set("d.lawful_basis.dpa_condition", "SCH8_P4")),
    ),
    (
        "regime_mismatch",
        _set("d.lawful_basis.dpa_condition", "SCH8_P4"),
        _set("d.lawful_basis.dpa_condition", "SCH1_P18"),
    ),
    (
        "part3_handling_unstated",
        _set("d.lawful_basis.dp_regime", "DPA2018_PART3"),
        _both(_set("d.lawful_basis.dp_regime", "DPA2018_PART3"), _set("d.handling_conditions", ["NO_ONWARD_SHARING"])),
    ),
]


@pytest.mark.parametrize(("code", "breaks", "satisfies"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rule_fails_and_passes_with_its_reason_code(code: str, breaks: Mutation, satisfies: Mutation) -> None:
    summary, decision = stories.parent_risk_change(PARENT, CHILD), stories.override_decision()
    breaks(summary, decision)
    failed = run(request(summary, decision))
    assert code in codes(failed)
    severity = {f.code: f.severity for f in failed.findings}[code]
    if code == "approval_required":
        assert failed.outcome == pb.DECISION_OUTCOME_DEFERRED  # waits for a manager, not refused
    elif severity == "error":
        assert failed.outcome == pb.DECISION_OUTCOME_NOT_SHARED
        assert code in failed.decision.rationale  # the recorded decision says why
    summary, decision = stories.parent_risk_change(PARENT, CHILD), stories.override_decision()
    satisfies(summary, decision)
    passed = run(request(summary, decision))
    assert code not in codes(passed), passed.findings


def test_a_public_task_request_basis_holds_only_in_answer_to_a_request() -> None:
    """domain.md §6 rule 5: A6_1_EA_PUBLIC_TASK_REQUEST is disclosure on a body's request
    stating its public task; shared unasked, it is refused with its reason code."""
    decision = stories.override_decision()
    decision.lawful_basis.art6.append("A6_1_EA_PUBLIC_TASK_REQUEST")
    unasked = run(request(decision=decision))
    assert "public_task_request_unanswered" in codes(unasked)
    assert unasked.outcome == pb.DECISION_OUTCOME_NOT_SHARED
    answering = run(dataclasses.replace(request(decision=decision), answering_request=True))
    assert "public_task_request_unanswered" not in codes(answering)


def test_police_information_under_part3_is_shared_on_a_schedule_8_condition_without_article_6() -> None:
    decision = stories.override_decision()
    basis = decision.lawful_basis
    basis.dp_regime, basis.dpa_condition, basis.art9 = "DPA2018_PART3", "SCH8_P4", ""
    del basis.art6[:]
    decision.handling_conditions.append("POLICE_HANDLING_C")
    decision.handling_instructions = "Adult social care's safeguarding team only; not to the visitor."
    result = run(request(decision=decision))
    assert not [f for f in result.findings if f.severity == "error"], result.findings
    assert result.outcome != pb.DECISION_OUTCOME_NOT_SHARED


@pytest.mark.parametrize(
    ("breaks", "said"),
    [
        (_set("s.review_date", pb.Date(year=2026, month=13, day=16)), "the review date (2026-13-16) is not a date"),
        (_set("s.risk_items.1.period.to.day", 31), "risk item 2's end (2021-06-31) is not a date on the calendar"),
        (_set("s.actions", [pb.Action(action="Visit", due=pb.Date(day=3))]), "action 1's due date (0000-00-03)"),
        (_set("s.risk_items.1.period.to.year", 2018), "risk item 2's period ends before it starts"),
    ],
)
def test_an_assessments_dates_are_on_the_calendar_and_in_order(breaks: Mutation, said: str) -> None:
    summary = stories.parent_risk_change(PARENT, CHILD)
    assert date_problems(summary) == []
    breaks(summary, pb.ShareDecision())
    assert [said in problem for problem in date_problems(summary)] == [True]


def test_a_risk_over_a_single_day_is_a_period_in_order() -> None:
    summary = stories.parent_risk_change(PARENT, CHILD)
    period = summary.risk_items[1].period
    period.to.CopyFrom(getattr(period, "from"))
    assert date_problems(summary) == []


def test_the_stories_reviews_and_actions_lie_ahead_whenever_they_run() -> None:
    """The demo and the tests share the stories: a review date or an action due that has
    passed would draw warnings and "passed" flags that depend on the day they run."""
    token = b"\x01" * 32
    told = [
        stories.parent_risk_change(PARENT, CHILD),
        stories.fire_home_visit(token),
        stories.police_welfare_concern(token),
        stories.age_uk_support(token),
    ]
    today = dates.today(SystemClock().now_ms())
    day = (today.year, today.month, today.day)
    for summary in told:
        assert date_problems(summary) == []
        assert list(review_rules(summary, today)) == []
        assessed = summary.assessment.assessed_on
        assert (assessed.year, assessed.month, assessed.day) <= day
        for due in [summary.review_date, *(a.due for a in summary.actions)]:
            assert (due.year, due.month, due.day) > day, dates.iso(due)


def test_missing_approval_defers_rather_than_refuses() -> None:
    decision = stories.override_decision()
    decision.ClearField("approved_by")
    result = run(request(decision=decision))
    assert result.outcome == pb.DECISION_OUTCOME_DEFERRED
    assert not result.payloads


def test_an_agreement_silent_on_approval_asks_none_when_consent_is_absent() -> None:
    packaged = document(None, "dsa.toml")
    del packaged["approval"]
    context = dataclasses.replace(CONTEXT, agreement=Agreement.from_document(packaged))
    decision = stories.override_decision()
    decision.ClearField("approved_by")
    result = run(request(decision=decision), context)
    assert result.outcome == pb.DECISION_OUTCOME_SHARED, codes(result)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Parent now under CAMHS review.", {"unexplained_acronym"}),
        ("Parent referred to CAMHS (child and adolescent mental health services).", set()),
        ("Concern about disguised compliance at home visits.", {"jargon"}),
        ("Low mood reported; missed two appointments.", set()),
        ("Camhs in lower case is a word, not the acronym.", set()),
        ("CAMHS review booked.", {"unexplained_acronym"}),  # at the very start
        ("Seen by (CAMHS).", {"unexplained_acronym"}),
        ("A post-CAMHS plan.", set()),  # part of a hyphenated word
        ("A CAMHS-led plan.", set()),
        ("Code XCAMHS and CAMHSX are not the acronym.", set()),
    ],
)
def test_plain_language_warnings(text: str, expected: set[str]) -> None:
    summary = stories.parent_risk_change(PARENT, CHILD)
    summary.risk_items[0].narrative = text
    result = run(request(summary))
    found = codes(result) & {"unexplained_acronym", "jargon"}
    assert found == expected
    assert result.outcome == pb.DECISION_OUTCOME_SHARED  # warnings never stop a share


@pytest.mark.parametrize("count", [50, 51])
def test_a_share_goes_to_at_most_fifty_agencies(count: int) -> None:
    from node.policy import RecipientInfo

    many = [RecipientInfo(f"n{i}", "POLICE") for i in range(count)]
    result = run(request(recipients=many))
    assert ("too_many_recipients" in codes(result)) == (count > 50)
    assert (result.outcome == pb.DECISION_OUTCOME_NOT_SHARED) == (count > 50)


def test_a_summary_the_agreement_lets_no_linked_agency_have_is_not_shared_and_says_why() -> None:
    summary = stories.parent_risk_change(PARENT, CHILD)
    for item in summary.risk_items:  # a category the agreement keeps from schools
        item.category = "FIRE_RISK"
        item.ClearField("subcategory")
    result = run(request(summary, recipients=[SCHOOL]))
    assert result.outcome == pb.DECISION_OUTCOME_NOT_SHARED and not result.payloads
    assert [(f.code, f.severity) for f in result.findings] == [("nothing_permitted", "error")]
    (school,) = result.decision.recipients
    assert list(school.withheld) == [
        "risk item 1 (FIRE_RISK): not within the agreement for SCHOOL",
        "risk item 2 (FIRE_RISK): not within the agreement for SCHOOL",
        "nothing in this summary may go to this recipient under the agreement",
    ]
    assert result.decision.rationale.endswith(
        "[not shared by policy: nothing_permitted: The agreement lets none of this summary go to the linked agencies.]"
    )


@pytest.mark.parametrize("outcome", [pb.DECISION_OUTCOME_NOT_SHARED, pb.DECISION_OUTCOME_DEFERRED])
def test_a_practitioners_own_decision_not_to_share_keeps_their_reasons_as_written(
    outcome: pb.DecisionOutcome.ValueType,
) -> None:
    decision = stories.override_decision()
    decision.outcome = outcome
    result = run(request(decision=decision))
    assert result.outcome == outcome and not result.findings and not result.payloads
    assert result.decision.rationale == decision.rationale  # only a refusal by policy adds its reasons


TERMS = sorted(CONTEXT.glossary.terms)


def _alone(text: str, start: int, end: int) -> bool:
    """Nothing that continues a word on either side: no letter, digit, underscore or hyphen."""
    return all(not (0 <= i < len(text)) or not (text[i].isalnum() or text[i] in "_-") for i in (start - 1, end))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([*TERMS, "camhs", "X", "1", "é", "-", "_", " ", "(", ".", "\n"]), max_size=10))
def test_an_acronym_is_flagged_exactly_where_it_stands_alone(parts: list[str]) -> None:
    text = "".join(parts)
    alone = {t for t in TERMS if any(_alone(text, m.start(), m.end()) for m in re.finditer(re.escape(t), text))}
    flagged = {t for t in TERMS for f in CONTEXT.glossary.findings("Text", text) if f"'{t}'" in f.message}
    assert flagged == alone


def _leaving_out(*left: tuple[str, str]) -> pb.ShareDecision:
    decision = stories.override_decision()
    for node_id, reason in left:
        decision.not_shared_with.add(node_id=node_id, reason=reason)
    return decision


def test_a_linked_agency_left_out_gets_nothing_and_the_others_do_not_learn_of_it() -> None:
    why = "The school needs nothing of the parent's treatment to keep the child safe at school."
    result = run(request(decision=_leaving_out(("school", why)), recipients=[CSC, SCHOOL]))
    assert result.outcome == pb.DECISION_OUTCOME_SHARED_PARTIAL and not result.errors
    assert sorted(result.payloads) == ["csc"]
    school = next(r for r in result.decision.recipients if r.node_id == "school")
    assert (list(school.withheld), list(school.fields)) == ([f"left out by the practitioner: {why}"], [])
    told = result.payloads["csc"].decision  # signed into the copy csc gets
    assert [r.node_id for r in told.recipients] == ["csc"] and not told.not_shared_with
    assert told.rationale == result.decision.rationale


@pytest.mark.parametrize(
    ("left", "must_reach", "code"),
    [
        (("police", "Not involved."), frozenset(), "left_out_not_reached"),
        (("school", "  "), frozenset(), "left_out_reason_missing"),
        (("school", "x" * 2_001), frozenset(), "text_too_long"),
        (("school", "It had the first version."), frozenset({"school"}), "left_out_must_be_told"),
    ],
)
def test_leaving_an_agency_out_needs_a_reason_and_an_agency_it_may_leave_out(
    left: tuple[str, str], must_reach: frozenset[str], code: str
) -> None:
    asked = dataclasses.replace(request(decision=_leaving_out(left), recipients=[CSC, SCHOOL]), must_reach=must_reach)
    result = run(asked)
    assert result.outcome == pb.DECISION_OUTCOME_NOT_SHARED and not result.payloads
    assert code in {f.code for f in result.errors}


def test_leaving_every_agency_out_is_a_recorded_decision_not_to_share() -> None:
    result = run(request(decision=_leaving_out(("csc", "Already knows, from the strategy meeting.")), recipients=[CSC]))
    assert result.outcome == pb.DECISION_OUTCOME_NOT_SHARED and not result.payloads and not result.errors
    assert [f.code for f in result.findings if f.severity == "warning"] == ["all_left_out"]
    assert result.decision.rationale == stories.override_decision().rationale  # a decision, not a refusal


def _advised(role: str = "DSL", words: str = "Share it; leave out the clinical detail.", on: str = "") -> Mutation:
    def mutate(s: pb.RiskSummary, d: pb.ShareDecision) -> None:
        advice = d.advice_sought.add(from_role=role, advice=words)
        advice.adviser.name = "Sam Example"
        if on:
            advice.on.year, advice.on.month, advice.on.day = (int(p) for p in on.split("-"))

    return mutate


@pytest.mark.parametrize(
    ("advised", "code"),
    [
        (_advised(role=""), "advice_role_missing"),
        (_advised(role="NEIGHBOUR"), "unknown_code"),
        (_advised(words=" "), "advice_missing"),
        (_advised(on="2026-02-30"), "advice_date_invalid"),
        (_advised(words="x" * 2_001), "text_too_long"),
    ],
)
def test_advice_sought_says_from_whom_and_what_it_was(advised: Mutation, code: str) -> None:
    summary, decision = stories.parent_risk_change(PARENT, CHILD), stories.override_decision()
    advised(summary, decision)
    assert code in {f.code for f in run(request(summary, decision)).errors}


def test_advice_sought_is_kept_in_the_decision_and_not_sent() -> None:
    summary, decision = stories.parent_risk_change(PARENT, CHILD), stories.override_decision()
    _advised(on="2026-12-01")(summary, decision)
    result = run(request(summary, decision))
    assert not result.errors and [a.from_role for a in result.decision.advice_sought] == ["DSL"]
    assert not result.payloads["csc"].decision.advice_sought

    decision.outcome = pb.DECISION_OUTCOME_NOT_SHARED  # a decision not to share keeps its advice too
    decision.advice_sought[0].from_role = "NEIGHBOUR"
    assert "unknown_code" in {f.code for f in run(request(summary, decision)).errors}
