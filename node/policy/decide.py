"""From a share request to a recorded decision and per-recipient payloads."""

from __future__ import annotations

from dataclasses import dataclass, field

from linkage.v1 import summary_pb2 as pb
from node.policy.minimise import minimise
from node.policy.rules import Finding, decision_rules, summary_rules


@dataclass(frozen=True)
class RecipientInfo:
    node_id: str
    agency_type: str


@dataclass(frozen=True)
class ShareRequest:
    assessment: pb.RiskSummary
    decision: pb.ShareDecision
    actor: pb.Practitioner
    recipients: list[RecipientInfo]
    decision_id: str
    now_ms: int


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


def decide(request: ShareRequest) -> PolicyResult:
    findings = [*decision_rules(request.decision), *summary_rules(request.assessment)]
    decision = pb.ShareDecision()
    decision.CopyFrom(request.decision)
    decision.decision_id = request.decision_id
    decision.decided_by.CopyFrom(request.actor)
    decision.decided_at_ms = request.now_ms
    del decision.recipients[:]
    if not request.recipients:
        findings.append(
            Finding("no_recipients", "No other agency is linked to this family yet; nothing was sent.", "warning")
        )
    errors = [f for f in findings if f.severity == "error"]
    if errors or not request.recipients:
        decision.outcome = pb.DECISION_OUTCOME_NOT_SHARED
        if errors:
            reasons = "; ".join(f"{f.code}: {f.message}" for f in errors)
            decision.rationale = f"{decision.rationale} [not shared by policy: {reasons}]".strip()
        return PolicyResult(decision=decision, findings=findings)
    payloads: dict[str, pb.RiskSummary] = {}
    for recipient in request.recipients:
        payload = minimise(request.assessment)
        decision.recipients.add(node_id=recipient.node_id, agency_type=recipient.agency_type)
        payloads[recipient.node_id] = payload
    decision.outcome = pb.DECISION_OUTCOME_SHARED
    for payload in payloads.values():
        payload.decision.CopyFrom(decision)
    return PolicyResult(decision=decision, findings=findings, payloads=payloads)
