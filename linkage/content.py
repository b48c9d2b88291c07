"""What each kind of message must carry for its recipient to act on it, checked once its
signature holds. A message that fails is refused as malformed, and its sender is told so
by the receipt: a message a node cannot act on (a kind or an answer newer than its own
software, a summary with no id that would supersede every other) is never stored half
understood, nor failed at storing and sent again and again until it expires."""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from linkage.calendar import given, on_calendar
from linkage.ids import is_uuid7
from linkage.reasons import Reason, Rejected
from linkage.v1 import directory_pb2, summary_pb2, workflow_pb2
from linkage.v1 import envelope_pb2 as pb

# The message format this node writes, and the newest it reads. A later one may carry what
# this node would drop unread (protobuf keeps quiet about fields it does not know), so it
# is refused with a code of its own that tells both agencies' IT an upgrade is due.
SCHEMA_VERSION = 1
# The field of the body's `content` that each kind of message carries.
CONTENT: dict[int, str] = {
    pb.MESSAGE_KIND_SUMMARY_SHARE: "summary",
    pb.MESSAGE_KIND_RISK_CHANGE_NOTICE: "summary",
    pb.MESSAGE_KIND_HISTORICAL_UPDATE: "summary",
    pb.MESSAGE_KIND_CORRECTION: "summary",
    pb.MESSAGE_KIND_WITHDRAWAL: "withdrawal",
    pb.MESSAGE_KIND_INVOLVEMENT_NOTICE: "involvement",
    pb.MESSAGE_KIND_CLOSURE_INTENT: "closure_intent",
    pb.MESSAGE_KIND_CLOSURE_RESPONSE: "closure_response",
    pb.MESSAGE_KIND_CLOSURE_NOTICE: "closure_notice",
    pb.MESSAGE_KIND_CLARIFICATION_REQUEST: "clarification_request",
    pb.MESSAGE_KIND_CLARIFICATION_RESPONSE: "clarification_response",
    pb.MESSAGE_KIND_INFORMATION_REQUEST: "information_request",
    pb.MESSAGE_KIND_INFORMATION_RESPONSE: "information_response",
    pb.MESSAGE_KIND_READ_NOTIFICATION: "read",
    pb.MESSAGE_KIND_CHALLENGE: "challenge",
    pb.MESSAGE_KIND_CHALLENGE_RESPONSE: "challenge_response",
    pb.MESSAGE_KIND_REDELIVERY_REQUEST: "redelivery",
    pb.MESSAGE_KIND_RETURNED_COPIES: "returned",
}
# The kinds about no family (a restore, and its answer): the gateway routes them by node
# alone, and refuses one that carries a link token, which would only tie a restore to families.
ABOUT_NO_FAMILY = frozenset({pb.MESSAGE_KIND_REDELIVERY_REQUEST, pb.MESSAGE_KIND_RETURNED_COPIES})
OUTCOMES = frozenset(summary_pb2.DecisionOutcome.values()) - {summary_pb2.DECISION_OUTCOME_UNSPECIFIED}
CLOSURE_ANSWERS = frozenset({workflow_pb2.CLOSURE_ANSWER_AGREE, workflow_pb2.CLOSURE_ANSWER_OBJECT})
PROVIDING = frozenset({workflow_pb2.INFORMATION_ANSWER_PROVIDED, workflow_pb2.INFORMATION_ANSWER_PARTIAL})
CHALLENGE_ANSWERS = frozenset({workflow_pb2.CHALLENGE_ANSWER_ACCEPTED, workflow_pb2.CHALLENGE_ANSWER_MAINTAINED})


def carried_summary(body: pb.MessageBody) -> summary_pb2.RiskSummary | None:
    """The version of a summary a message carries: its own, or one provided in answer to an
    information request (a decline carries none). Either is corrected and withdrawn alike."""
    if body.HasField("summary"):
        return body.summary
    if body.information_response.HasField("summary"):
        return body.information_response.summary
    return None


def check_content(body: pb.MessageBody, sender: directory_pb2.NodeEntry) -> None:
    """Raise Rejected(MALFORMED) unless `body` carries what its kind needs, in values this
    node knows, says of its agency what the directory lists for `sender`, and each date it
    gives is a day on the calendar; UNSUPPORTED_SCHEMA if it is written in a format newer
    than this node reads."""
    if body.schema_version == 0:
        raise Rejected(Reason.MALFORMED, "the message names no schema version")
    if body.schema_version > SCHEMA_VERSION:
        raise Rejected(
            Reason.UNSUPPORTED_SCHEMA,
            f"schema version {body.schema_version} is newer than the {SCHEMA_VERSION} this node reads: upgrade it",
        )
    field = CONTENT.get(body.kind)
    if field is None:
        raise Rejected(Reason.MALFORMED, f"message kind {body.kind} is not one this node knows")
    content: Message = getattr(body, field)
    if body.WhichOneof("content") != field:
        raise Rejected(Reason.MALFORMED, f"the message does not carry its {field}")
    if problem := _problem(body, sender) or _date_problem(content):
        raise Rejected(Reason.MALFORMED, problem)


def _problem(body: pb.MessageBody, sender: directory_pb2.NodeEntry) -> str:
    field = CONTENT[body.kind]
    if field == "summary":
        return _summary_problem(body.summary, sender)
    if field == "withdrawal":
        return "" if body.withdrawal.summary_id else "the withdrawal names no summary"
    if field == "closure_response":
        reply = body.closure_response
        if not reply.closure_id:
            return "the closure response names no closure"
        return "" if reply.answer in CLOSURE_ANSWERS else f"closure answer {reply.answer} is not one this node knows"
    if field == "information_response":
        response = body.information_response
        if response.answer == workflow_pb2.INFORMATION_ANSWER_DECLINED:
            return "" if response.decision.outcome in OUTCOMES else "the decline carries no decision this node knows"
        if response.answer not in PROVIDING:
            return f"information answer {response.answer} is not one this node knows"
        if not response.HasField("summary"):
            return "information provided without its summary"
        return _summary_problem(response.summary, sender)
    if field == "involvement":
        return _involvement_problem(body.involvement, sender)
    if field == "challenge":
        return "" if body.challenge.stage and body.challenge.concern else "the challenge has no stage or concern"
    if field == "challenge_response":
        answer = body.challenge_response
        if not answer.challenge_message_id:
            return "the challenge response names no challenge"
        known = answer.answer in CHALLENGE_ANSWERS
        return "" if known else f"challenge answer {answer.answer} is not one this node knows"
    # A restore is named by the id its node made for it (a UUIDv7): that, and nothing else,
    # goes into this node's records and operational log.
    if field == "redelivery":
        asked = body.redelivery
        return (
            "" if is_uuid7(asked.restore_id) and asked.since_ms > 0 else "the redelivery request has no restore or time"
        )
    if field == "returned":
        returned = body.returned
        whole = is_uuid7(returned.restore_id) and returned.copies and all(c.signed for c in returned.copies)
        return "" if whole else "the returned copies name no restore, or a copy is empty"
    return ""


def _type_problem(what: str, given_type: str, sender: directory_pb2.NodeEntry) -> str:
    """An agency's type is fixed when it is enrolled, and tells whoever reads what it says
    what kind of agency is saying it: the type a message gives must be the one the directory
    lists for its sender. Only the directory's is said, as the given one is the sender's own
    text."""
    if given_type == sender.agency_type:
        return ""
    return f"the {what} gives another agency type than its sender's in the directory ({sender.agency_type})"


def _involvement_problem(notice: workflow_pb2.InvolvementNotice, sender: directory_pb2.NodeEntry) -> str:
    """A notice tells the other agencies who has joined a family and whom there to contact:
    its name and contact role, like its type, are fixed at enrolment and must be those the
    directory lists, or one member could send the others to another agency's door."""
    if problem := _type_problem("involvement notice", notice.agency_type, sender):
        return problem
    other = "the involvement notice gives another {} than its sender's in the directory ({})"
    if notice.agency_name != sender.agency_name:
        return other.format("agency name", sender.agency_name)
    if notice.contact_role != sender.contact_role:
        return other.format("contact role", sender.contact_role or "none")
    return ""


def _date_problem(content: Message) -> str:
    """The first date in `content` that is given but is no day on the calendar: stored, it
    would fail every view that reads it (a chronology, a duty list, a case's challenges)."""
    stack = [content]
    while stack:
        message = stack.pop()
        if isinstance(message, summary_pb2.Date):
            if given(message) and not on_calendar(message):
                return f"a date in it is not on the calendar ({message.year}-{message.month}-{message.day})"
            continue
        if (toward := _TOWARD_DATES.get(type(message))) is None:
            toward = _TOWARD_DATES[type(message)] = _toward_dates(message.DESCRIPTOR)
        for name, repeated in toward:
            if repeated:
                stack.extend(getattr(message, name))
            elif message.HasField(name):
                stack.append(getattr(message, name))
    return ""


# Per message class: the fields that hold a Date, or a message that may, as (name, repeated).
# Walking only these reads a summary's dates in under 10 µs, not every field it has.
_TOWARD_DATES: dict[type, tuple[tuple[str, bool], ...]] = {}


def _toward_dates(descriptor: Any) -> tuple[tuple[str, bool], ...]:
    return tuple((fd.name, fd.is_repeated) for fd in descriptor.fields if _holds_date(fd.message_type, frozenset()))


def _holds_date(descriptor: Any, seen: frozenset[str]) -> bool:
    if descriptor is None or descriptor.full_name in seen:
        return False
    if descriptor.full_name == summary_pb2.Date.DESCRIPTOR.full_name:
        return True
    inner = seen | {descriptor.full_name}
    return any(_holds_date(fd.message_type, inner) for fd in descriptor.fields)


def _summary_problem(summary: summary_pb2.RiskSummary, sender: directory_pb2.NodeEntry) -> str:
    if not summary.summary_id:
        return "the summary has no id"
    # An agency shares only its own summaries; one naming another as its origin would have
    # the recipient's case system credit that agency with what it never said.
    if summary.originating_node != sender.node_id:
        return "the summary names another agency as its origin, not the one that sent it"
    if problem := _type_problem("summary", summary.agency_type, sender):
        return problem
    if summary.decision.outcome not in OUTCOMES:
        return f"the summary's decision outcome {summary.decision.outcome} is not one this node knows"
    return ""
