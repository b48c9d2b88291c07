"""Professional challenge from the CLI: raise one with another agency (`linkage case
challenge`, at a stage of the local escalation policy, or a later stage with --escalates),
answer one received (`linkage inbox respond`), and follow them (`linkage case challenges`)."""

from __future__ import annotations

import argparse

from linkage.cli.api_client import (
    actor,
    add_connection_arguments,
    add_request_id_argument,
    call,
    emit_json,
    report_queued,
)
from linkage.cli.values import calendar_date, iso_day, word
from linkage.clock import utc_minute
from linkage.v1 import envelope_pb2, node_api_pb2, workflow_pb2

ANSWERS = {"accept": workflow_pb2.CHALLENGE_ANSWER_ACCEPTED, "maintain": workflow_pb2.CHALLENGE_ANSWER_MAINTAINED}
ANSWER_WITH = "linkage inbox respond {} accept|maintain --response"  # the command that answers one


def raise_challenge(args: argparse.Namespace) -> int:
    request = node_api_pb2.RaiseChallengeRequest(
        actor=actor(args),
        case_id=args.case_id,
        to_node=args.to,
        stage=args.stage,
        subject=args.subject,
        about_message_id=args.about or "",
        concern=args.concern,
        outcome_sought=args.outcome_sought,
        respond_by=args.respond_by,
        escalates_message_id=args.escalates or "",
        request_id=args.request_id,
    )
    sent = call(args, lambda api: api.RaiseChallenge(request))
    return report_queued(args, sent, "Challenge raised", list(sent.recipients))


def respond(args: argparse.Namespace) -> int:
    request = node_api_pb2.ChallengeReplyRequest(
        actor=actor(args),
        challenge_message_id=args.message_id,
        answer=ANSWERS[args.answer],
        response=args.response,
        request_id=args.request_id,
    )
    sent = call(args, lambda api: api.RespondToChallenge(request))
    return report_queued(args, sent, "Answer sent", list(sent.recipients))


def answer_word(value: int) -> str:
    return word(workflow_pb2.ChallengeAnswer.DESCRIPTOR, value)


def challenges(args: argparse.Namespace) -> int:
    request = node_api_pb2.CaseRequest(actor=actor(args), case_id=args.case_id)
    listed = call(args, lambda api: api.ListChallenges(request))
    if args.json:
        emit_json(listed)
        return 0
    if not listed.raised and not listed.received:
        print("No professional challenge about this family has been raised or received here.")
    for c in listed.raised:
        print(f"Raised with {c.agency_name} {utc_minute(c.at_ms)} at {c.stage} ({c.subject}): {c.concern}")
        _print_answer(c, "They")
        if c.escalated_by:
            print(f"  Escalated by {c.escalated_by}")
        elif c.answer == workflow_pb2.CHALLENGE_ANSWER_MAINTAINED or c.overdue:
            print(f"  Not resolved? linkage case challenge {args.case_id} --escalates {c.message_id} --stage ...")
    for c in listed.received:
        print(f"{c.agency_name} challenged {utc_minute(c.at_ms)} at {c.stage} ({c.subject}): {c.concern}")
        if c.escalates_message_id:
            print(f"  Escalates {c.escalates_message_id}, not resolved at the stage before")
        print(f"  Outcome sought: {c.outcome_sought}")
        if not _print_answer(c, "You"):
            print(f"  Answer with: {ANSWER_WITH.format(c.message_id)} ...")
    return 0


def _print_answer(c: node_api_pb2.ListedChallenge, who: str) -> bool:
    if c.answer:
        print(f"  {who} {answer_word(c.answer)} it {utc_minute(c.answered_at_ms)}: {c.response or '-'}")
        return True
    respond_by = f", respond by {iso_day(c.respond_by)}" if c.respond_by.year else ""
    delivery = f" ({c.delivery})" if c.delivery else ""
    print(f"  No answer yet{delivery}{respond_by}{' OVERDUE' if c.overdue else ''}")
    return False


def print_content(body: envelope_pb2.MessageBody) -> None:
    """A challenge or its answer, for `linkage inbox open`."""
    if body.HasField("challenge"):
        c = body.challenge
        print(f"  Stage: {c.stage}; about: {c.subject}{f' (item {c.about_message_id})' if c.about_message_id else ''}")
        if c.escalates_message_id:
            print(f"  Escalates challenge {c.escalates_message_id}, not resolved at the stage before")
        print(f"  Concern: {c.concern}")
        print(f"  Outcome sought: {c.outcome_sought}")
        print(f"  Respond by: {iso_day(c.respond_by)}")
        print(f"  Answer with: {ANSWER_WITH.format(body.message_id)} ...")
    else:
        r = body.challenge_response
        print(f"  Answer to challenge {r.challenge_message_id}: {answer_word(r.answer)}")
        print(f"  {r.response}")


def gist(body: envelope_pb2.MessageBody) -> str:
    if body.HasField("challenge"):
        return f"at {body.challenge.stage}: {body.challenge.concern}"
    return f"{answer_word(body.challenge_response.answer)}: {body.challenge_response.response}"


def register_case(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("challenge", help="raise a professional challenge with another agency about the family")
    add_connection_arguments(p)
    p.add_argument("case_id")
    p.add_argument("--to", required=True, help="the challenged agency's node id")
    p.add_argument("--stage", required=True, help="escalation_stage code, e.g. PRACTITIONER, LINE_MANAGER")
    p.add_argument("--subject", required=True, help="challenge_subject code, e.g. RISK_ASSESSMENT, CLOSURE")
    p.add_argument("--concern", required=True, help="what you disagree with, and why")
    p.add_argument("--outcome-sought", required=True, help="what you ask them to do")
    p.add_argument("--about", help="the message id of the item it is about (received from or sent to them)")
    p.add_argument("--respond-by", type=calendar_date, default=None, help="YYYY-MM-DD")
    p.add_argument("--escalates", help="raise your earlier challenge (its message id) at a later stage")
    add_request_id_argument(p)
    p.set_defaults(handler=raise_challenge)
    p = sub.add_parser("challenges", help="professional challenges about the family, raised and received")
    add_connection_arguments(p)
    p.add_argument("case_id")
    p.set_defaults(handler=challenges)


def register_inbox(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("respond", help="answer a professional challenge: accept it, or maintain your decision")
    add_connection_arguments(p)
    p.add_argument("message_id", help="the challenge's message id")
    p.add_argument("answer", choices=sorted(ANSWERS))
    p.add_argument("--response", required=True, help="what will change, or why the decision stands")
    add_request_id_argument(p)
    p.set_defaults(handler=respond)
