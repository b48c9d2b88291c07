"""Requests for the pure policy tests: the Think-Family share and its variations."""

from __future__ import annotations

from linkage import stories
from linkage.config import PolicyFiles
from linkage.v1 import summary_pb2 as pb
from node.policy import PolicyContext, PolicyResult, RecipientInfo, ShareRequest, decide
from node.policy_files import load_policy

CONTEXT: PolicyContext = load_policy(PolicyFiles())
PARENT, CHILD, REFERRER = b"p" * 32, b"c" * 32, b"r" * 32
ACTOR = stories.practitioner("amh-114", "Jordan Example", "Care coordinator")
CSC = RecipientInfo("csc", "LA_CHILDRENS_SOCIAL_CARE")
SCHOOL = RecipientInfo("school", "SCHOOL")


def request(
    summary: pb.RiskSummary | None = None,
    decision: pb.ShareDecision | None = None,
    recipients: list[RecipientInfo] | None = None,
    sender_type: str = "NHS_MENTAL_HEALTH",
) -> ShareRequest:
    return ShareRequest(
        assessment=summary or stories.parent_risk_change(PARENT, CHILD),
        decision=decision or stories.override_decision(),
        actor=ACTOR,
        sender_agency_type=sender_type,
        recipients=[CSC] if recipients is None else recipients,
        decision_id="decision-1",
        now_ms=1_767_225_600_000,
    )


def run(req: ShareRequest, context: PolicyContext = CONTEXT) -> PolicyResult:
    return decide(req, context)


def codes(result: PolicyResult) -> set[str]:
    return {f.code for f in result.findings}
