"""From a share request to a recorded decision and per-recipient payloads."""

from __future__ import annotations

from dataclasses import dataclass, field

from linkage import jurisdictions
from linkage.codelists import CodeLists
from linkage.v1 import summary_pb2 as pb
from node import dates
from node.policy.agreement import Agreement
from node.policy.findings import Finding
from node.policy.glossary import Glossary
from node.policy.minimise import Payload, payload_for
from node.policy.rules import (
    advice_rules,
    consent_absent,
    decision_rules,
    left_out_rules,
    review_rules,
    summary_rules,
)

MAX_RECIPIENTS = 50
PRACTITIONER_OUTCOMES = (pb.DECISION_OUTCOME_NOT_SHARED, pb.DECISION_OUTCOME_DEFERRED)


@dataclass(frozen=True)
class PolicyContext:
    """The federation's rules this node applies: code lists, agreement, glossary."""

    codes: CodeLists
    agreement: Agreement
    glossary: Glossary


@dataclass(frozen=True)
class RecipientInfo:
    node_id: str
    agency_type: str


@dataclass(frozen=True)
class ShareRequest:
    assessment: pb.RiskSummary
    decision: pb.ShareDecision
    actor: pb.Practitioner
    sender_agency_type: str
    recipients: list[RecipientInfo]
    decision_id: str
    now_ms: int
    answering_request: bool = False  # in answer to another agency's information request
    must_reach: frozenset[str] = frozenset()  # had an earlier version: not to be left out of this one


@dataclass(frozen=True)
class PolicyResult:
    decision: pb.ShareDecision
    findings: list[Finding]
    payloads: dict[str, pb.RiskSummary] = field(default_factory=dict)

    @property
    def outcome(self) -> pb.DecisionOutcome.ValueType:
        return self.decision.outcome

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]


def _plain_language(request: ShareRequest, glossary: Glossary) -> list[Finding]:
    summary, out = request.assessment, list[Finding]()
    texts = [
        ("Headline", summary.headline),
        ("Strengths", summary.strengths),
        ("Rationale", request.decision.rationale),
    ]
    texts += [(f"Risk item {n} narrative", i.narrative) for n, i in enumerate(summary.risk_items, 1)]
    texts += [(f"Risk item {n} relevance", i.relevance) for n, i in enumerate(summary.risk_items, 1)]
    texts += [(f"Protective factor {n}", p.text) for n, p in enumerate(summary.protective_factors, 1)]
    texts += [(f"Action {n}", a.action) for n, a in enumerate(summary.actions, 1)]
    for where, text in texts:
        out.extend(glossary.findings(where, text))
    return out


def _finish(decision: pb.ShareDecision, outcome: pb.DecisionOutcome.ValueType, findings: list[Finding]) -> None:
    decision.outcome = outcome
    errors = [f for f in findings if f.severity == "error"]
    if errors and outcome == pb.DECISION_OUTCOME_NOT_SHARED:
        reasons = "; ".join(f"{f.code}: {f.message}" for f in errors)
        decision.rationale = f"{decision.rationale} [not shared by policy: {reasons}]".strip()


def decide(request: ShareRequest, context: PolicyContext) -> PolicyResult:
    decision = pb.ShareDecision()
    decision.CopyFrom(request.decision)
    decision.decision_id = request.decision_id
    decision.decided_by.CopyFrom(request.actor)
    decision.decided_at_ms = request.now_ms
    decision.agreement_version = context.agreement.version
    decision.codelists_version = context.codes.version
    del decision.recipients[:]
    findings: list[Finding] = []
    if not decision.rationale.strip():
        findings.append(Finding("rationale_missing", "Say why: every decision, to share or not, needs its reasons."))
    if request.decision.advice_sought:  # most decisions record none, and the rules are on every share's path
        findings += advice_rules(request.decision, context.codes)

    # A practitioner's own decision not to share (or to wait) is recorded as made.
    if request.decision.outcome in PRACTITIONER_OUTCOMES:
        _finish(decision, request.decision.outcome, findings)
        return PolicyResult(decision=decision, findings=findings)

    findings += decision_rules(
        request.decision,
        context.codes,
        request.sender_agency_type,
        jurisdictions.of_summary(request.assessment),
        request.answering_request,
    )
    if request.decision.not_shared_with:
        findings += left_out_rules(request.decision, {r.node_id for r in request.recipients}, request.must_reach)
    findings += summary_rules(request.assessment, context.codes)
    findings += review_rules(request.assessment, dates.today(request.now_ms))
    findings += _plain_language(request, context.glossary)
    if len(request.recipients) > MAX_RECIPIENTS:
        findings.append(
            Finding("too_many_recipients", f"A share goes to at most {MAX_RECIPIENTS} agencies; check the family link.")
        )
    if not request.recipients:
        findings.append(
            Finding("no_recipients", "No other agency is linked to this family yet; nothing was sent.", "warning")
        )
    if any(f.severity == "error" for f in findings) or not request.recipients:
        _finish(decision, pb.DECISION_OUTCOME_NOT_SHARED, findings)
        return PolicyResult(decision=decision, findings=findings)
    if context.agreement.approval_when_consent_absent and consent_absent(decision) and not decision.approved_by.id:
        findings.append(
            Finding(
                "approval_required",
                "Sharing without consent needs approval under the agreement: name who approved it "
                "(manager, designated safeguarding lead or Caldicott guardian).",
            )
        )
        _finish(decision, pb.DECISION_OUTCOME_DEFERRED, findings)
        return PolicyResult(decision=decision, findings=findings)

    left_out = {left.node_id: left.reason for left in decision.not_shared_with}
    payloads: dict[str, Payload] = {}
    for recipient in request.recipients:
        if recipient.node_id in left_out:
            decision.recipients.add(
                node_id=recipient.node_id,
                agency_type=recipient.agency_type,
                withheld=[f"left out by the practitioner: {left_out[recipient.node_id]}"],
            )
            continue
        rules = context.agreement.rules_for(recipient.agency_type)
        payload = payload_for(request.assessment, rules, context.codes, recipient.agency_type)
        record = decision.recipients.add(
            node_id=recipient.node_id,
            agency_type=recipient.agency_type,
            data_categories=payload.data_categories,
            fields=payload.fields if payload.summary.risk_items else [],
            withheld=payload.withheld,
        )
        if payload.summary.risk_items:
            payloads[recipient.node_id] = payload
        else:
            record.withheld.append("nothing in this summary may go to this recipient under the agreement")
    if not payloads and len(left_out) == len(request.recipients):
        findings.append(
            Finding("all_left_out", "Every agency this share would reach is left out: nothing was sent.", "warning")
        )
        _finish(decision, pb.DECISION_OUTCOME_NOT_SHARED, findings)
        return PolicyResult(decision=decision, findings=findings)
    if not payloads:
        findings.append(
            Finding("nothing_permitted", "The agreement lets none of this summary go to the linked agencies.")
        )
        _finish(decision, pb.DECISION_OUTCOME_NOT_SHARED, findings)
        return PolicyResult(decision=decision, findings=findings)
    partial = len(payloads) < len(request.recipients) or any(p.items_withheld for p in payloads.values())
    if partial:
        findings.append(
            Finding(
                "shared_in_part",
                "Some of this summary was withheld from some recipients; see each recipient.",
                "warning",
            )
        )
    _finish(decision, pb.DECISION_OUTCOME_SHARED_PARTIAL if partial else pb.DECISION_OUTCOME_SHARED, findings)
    told = _as_recipients_see_it(decision, left_out)
    for payload in payloads.values():
        payload.summary.decision.CopyFrom(told)
    return PolicyResult(decision=decision, findings=findings, payloads={n: p.summary for n, p in payloads.items()})


def _as_recipients_see_it(decision: pb.ShareDecision, left_out: dict[str, str]) -> pb.ShareDecision:
    """The decision as it travels: without the agencies left out, or why, and without the
    advice sought (the sender's log keeps both)."""
    if not left_out and not decision.advice_sought:
        return decision
    told = pb.ShareDecision()
    told.CopyFrom(decision)
    del told.not_shared_with[:]
    del told.advice_sought[:]
    kept = [r for r in told.recipients if r.node_id not in left_out]
    del told.recipients[:]
    told.recipients.extend(kept)
    return told
