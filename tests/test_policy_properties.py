"""Property tests: whatever the summary and the agreement, no recipient payload holds a
field or category its agreement forbids, nor anything about a protect-identity person."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from linkage.v1 import summary_pb2 as pb
from node.policy import Agreement, RecipientInfo, RecipientRules, decide
from node.policy.decide import PolicyContext
from node.policy.minimise import ALWAYS, payload_for
from tests.policy_fixtures import CONTEXT, request

CATEGORIES = CONTEXT.codes.codes("risk_category")
TOP_FIELDS = [
    "headline",
    "people",
    "risk_items",
    "protective_factors",
    "strengths",
    "voice",
    "access_needs",
    "assessment",
    "lead_professional",
    "contacts",
    "actions",
    "review_date",
    "closure_intent",
]
ITEM_FIELDS = [f.name for f in pb.RiskItem.DESCRIPTOR.fields]
VOICE_FIELDS = [f.name for f in pb.Voice.DESCRIPTOR.fields]
PATHS = TOP_FIELDS + [f"risk_items.{f}" for f in ITEM_FIELDS] + [f"voice.{f}" for f in VOICE_FIELDS]
text = st.text(alphabet="abcdefgh ", min_size=1, max_size=12)


@st.composite
def summaries(draw: st.DrawFn) -> pb.RiskSummary:
    count = draw(st.integers(1, 5))
    people = [
        pb.Person(link_token=bytes([n + 1]) * 32, role_in_risk="AT_RISK", protect_identity=draw(st.booleans()))
        for n in range(count)
    ]
    items = []
    for _ in range(draw(st.integers(1, 4))):
        concerns = draw(st.lists(st.sampled_from([p.link_token for p in people]), max_size=3, unique=True))
        items.append(
            pb.RiskItem(
                category=draw(st.sampled_from(CATEGORIES)),
                direction=draw(st.sampled_from(["NEW", "INCREASED", "DECREASED", "RESOLVED"])),
                currency=draw(st.sampled_from([pb.CURRENCY_CURRENT, pb.CURRENCY_HISTORICAL])),
                narrative=draw(st.one_of(st.just(""), text)),
                relevance=draw(st.one_of(st.just(""), text)),
                basis="FACT_OBSERVED",
                who_at_risk="SUBJECT",
                level=pb.RiskLevel(scale="PRACTITIONER_JUDGEMENT", value="LOW", rationale="r"),
                concerns=concerns,
            )
        )
    summary = pb.RiskSummary(
        summary_id="s",
        people=people,
        risk_items=items,
        headline=draw(text),
        strengths=draw(text),
        voice=pb.Voice(child_wishes_feelings=draw(text), adult_views_wishes=draw(text)),
        protective_factors=[pb.ProtectiveFactor(text=draw(text))],
        lead_professional=pb.Contact(name="Lead", role="Social worker"),
        actions=[pb.Action(action=draw(text), owner_agency="csc")],
    )
    summary.review_date.year = 2027
    return summary


@st.composite
def rules(draw: st.DrawFn) -> RecipientRules:
    categories = draw(st.one_of(st.none(), st.frozensets(st.sampled_from(CATEGORIES))))
    return RecipientRules(
        fields=draw(st.frozensets(st.sampled_from(PATHS))),
        categories=categories,
        relevance_required=draw(st.frozensets(st.sampled_from(CATEGORIES), max_size=6)),
    )


def _allowed(path: str, allowed: frozenset[str]) -> bool:
    head = path.split(".")[0]
    return path in allowed or head in allowed


def always_items(rule: RecipientRules) -> set[str]:
    """What goes with every item sent: its category, and its relevance when one was required."""
    return {"risk_items.category"} | ({"risk_items.relevance"} if rule.relevance_required else set())


def check_payload(original: pb.RiskSummary, payload: pb.RiskSummary, rule: RecipientRules) -> None:
    for field, value in payload.ListFields():
        if field.name in ALWAYS:
            continue
        if field.name in rule.fields:
            continue
        assert field.message_type is not None, f"{field.name} is not allowed"
        children = value if field.is_repeated else [value]
        for child in children:
            for sub, _ in child.ListFields():
                path = f"{field.name}.{sub.name}"
                assert _allowed(path, rule.fields) or path in always_items(rule), path
    for item in payload.risk_items:
        assert rule.allows_category(item.category)
        if item.category in rule.relevance_required:
            assert item.relevance.strip()
    data = payload.SerializeToString()
    for person in original.people:
        if person.protect_identity:
            assert person.link_token not in data


@settings(max_examples=300, deadline=None)
@given(summary=summaries(), rule=rules())
def test_payload_never_exceeds_the_agreement(summary: pb.RiskSummary, rule: RecipientRules) -> None:
    payload = payload_for(summary, rule, CONTEXT.codes, "ANY")
    check_payload(summary, payload.summary, rule)
    assert set(payload.fields) <= {p for p in PATHS if _allowed(p, rule.fields)} | always_items(rule)


@settings(max_examples=100, deadline=None)
@given(summary=summaries(), school=rules(), police=rules())
def test_decisions_send_only_what_each_recipients_agreement_allows(
    summary: pb.RiskSummary, school: RecipientRules, police: RecipientRules
) -> None:
    agreement = Agreement(version="prop", title="", default=police, by_type={"SCHOOL": school})
    context = PolicyContext(codes=CONTEXT.codes, agreement=agreement, glossary=CONTEXT.glossary)
    recipients = [RecipientInfo("school", "SCHOOL"), RecipientInfo("police", "POLICE")]
    result = decide(request(summary, recipients=recipients), context)
    for node_id, payload in result.payloads.items():
        check_payload(summary, payload, school if node_id == "school" else police)
    assert set(result.payloads) <= {"school", "police"}
    recorded = {r.node_id for r in result.decision.recipients}
    assert set(result.payloads) <= recorded


def test_an_agreement_may_allow_one_field_inside_a_field_of_an_item() -> None:
    summary = pb.RiskSummary(
        summary_id="s",
        risk_items=[
            pb.RiskItem(
                category=CATEGORIES[0],
                narrative="kept from this recipient",
                level=pb.RiskLevel(scale="PRACTITIONER_JUDGEMENT", value="LOW", rationale="kept back"),
                period=pb.Period(approximate=True),
            )
        ],
    )
    summary.risk_items[0].period.to.year = 2026
    summary.risk_items[0].period.to.month = 3
    rule = RecipientRules(fields=frozenset({"risk_items.level.value", "risk_items.period.to"}), categories=None)
    payload = payload_for(summary, rule, CONTEXT.codes, "ANY")
    (item,) = payload.summary.risk_items
    assert item == pb.RiskItem(
        category=CATEGORIES[0], level=pb.RiskLevel(value="LOW"), period=pb.Period(to=pb.Date(year=2026, month=3))
    )
    assert payload.fields == ["risk_items.category", "risk_items.level.value", "risk_items.period.to"]
