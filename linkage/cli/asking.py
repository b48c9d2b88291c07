"""Asking and answering from the CLI: clarification of a received item (`linkage inbox ask`,
`linkage inbox answer`) and information requests (`linkage case request-info`, answered
with `linkage inbox reply`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from linkage.cli.api_client import (
    actor,
    add_connection_arguments,
    add_request_id_argument,
    call,
    emit_json,
    read_decision,
    report_queued,
)
from linkage.cli.values import calendar_date, iso_day, word
from linkage.clock import utc_minute
from linkage.v1 import node_api_pb2, summary_pb2, workflow_pb2

REPLY_WITH = "linkage inbox reply {} provide|partial|decline"  # the command that answers a request
ANSWERS = {
    "provide": workflow_pb2.INFORMATION_ANSWER_PROVIDED,
    "partial": workflow_pb2.INFORMATION_ANSWER_PARTIAL,
    "decline": workflow_pb2.INFORMATION_ANSWER_DECLINED,
}


def _sent(args: argparse.Namespace, what: str, sent: node_api_pb2.MessageSent) -> int:
    return report_queued(args, sent, what, list(sent.recipients))


def ask(args: argparse.Namespace) -> int:
    request = node_api_pb2.AskClarificationRequest(
        actor=actor(args), about_message_id=args.message_id, question=args.question, request_id=args.request_id
    )
    return _sent(args, "Question sent", call(args, lambda api: api.AskClarification(request)))


def answer(args: argparse.Namespace) -> int:
    request = node_api_pb2.AnswerClarificationRequest(
        actor=actor(args), request_message_id=args.message_id, answer=args.answer, request_id=args.request_id
    )
    return _sent(args, "Answer sent", call(args, lambda api: api.AnswerClarification(request)))


def request_info(args: argparse.Namespace) -> int:
    request = node_api_pb2.RequestInformationRequest(
        actor=actor(args),
        case_id=args.case_id,
        purpose=args.purpose,
        what=args.what,
        lawful_basis=summary_pb2.LawfulBasis(
            dp_regime=args.dp_regime,
            art6=args.art6,
            art9=args.art9,
            dpa_condition=args.dpa_condition,
            statutory_gateway=args.statutory_gateway,
        ),
        needed_by=args.needed_by,
        to_nodes=args.to,
        request_id=args.request_id,
    )
    return _sent(args, "Request sent", call(args, lambda api: api.RequestInformation(request)))


def reply(args: argparse.Namespace) -> int:
    if args.decision is not None:
        decision = read_decision(args.decision)
    else:
        decision = summary_pb2.ShareDecision(rationale=args.reason)
    if args.answer != "decline" and not args.assessment:
        raise SystemExit(f"linkage: to {args.answer} information, name the assessment to send (--assessment)")
    request = node_api_pb2.InformationReplyRequest(
        actor=actor(args),
        request_message_id=args.message_id,
        answer=ANSWERS[args.answer],
        decision=decision,
        assessment_id=args.assessment or "",
        request_id=args.request_id,
    )
    return _sent(args, "Reply sent", call(args, lambda api: api.RespondToInformationRequest(request)))


def requests(args: argparse.Namespace) -> int:
    request = node_api_pb2.CaseRequest(actor=actor(args), case_id=args.case_id)
    listed = call(args, lambda api: api.ListInformationRequests(request))
    if args.json:
        emit_json(listed)
        return 0
    if not listed.sent and not listed.received:
        print("No information request about this family has been sent or received here.")
    for sent in listed.sent:
        print(f"Asked {utc_minute(sent.sent_at_ms)}: {sent.purpose} (needed by {iso_day(sent.needed_by)})")
        for a in sent.asked:
            if a.answer:
                state = f"{answer_word(a.answer)} {utc_minute(a.answered_at_ms)}"
                state += f" (message {a.answer_message_id})"
            else:
                state = f"no answer yet ({a.delivery}){' OVERDUE' if a.overdue else ''}"
            print(f"  {a.agency_name}: {state}")
    for r in listed.received:
        print(f"{r.from_agency} asked {utc_minute(r.received_at_ms)}: {r.purpose} (needed by {iso_day(r.needed_by)})")
        print(f"  Asks for: {r.what}")
        if r.answer:
            answered = word(workflow_pb2.InformationAnswer.DESCRIPTOR, r.answer)
            print(f"  You answered: {answered} {utc_minute(r.answered_at_ms)}")
        else:
            print(f"  Not answered yet{' and OVERDUE' if r.overdue else ''}: {REPLY_WITH.format(r.message_id)} ...")
    return 0


def answer_word(value: int) -> str:
    return word(workflow_pb2.InformationAnswer.DESCRIPTOR, value)


def register_case(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("request-info", help="ask the agencies linked to the family for information")
    add_connection_arguments(p)
    p.add_argument("case_id")
    p.add_argument("--purpose", required=True, help="why it is needed, in plain words")
    p.add_argument("--what", required=True, help="what is asked for, in plain words")
    p.add_argument("--art6", action="append", default=[], help="UK GDPR Article 6 basis, e.g. A6_1_E (repeat)")
    p.add_argument("--dp-regime", default="", help="DPA2018_PART3 for police law enforcement (then no --art6)")
    p.add_argument("--art9", default="", help="Article 9 condition, e.g. A9_2_G")
    p.add_argument("--dpa-condition", default="", help="DPA 2018 Schedule 1 or 8 condition, e.g. SCH1_P18, SCH8_P4")
    p.add_argument(
        "--statutory-gateway", action="append", default=[], help="the power relied on, e.g. CA1989_S47 (repeat)"
    )
    p.add_argument("--needed-by", type=calendar_date, default=None, help="YYYY-MM-DD")
    p.add_argument("--to", action="append", default=[], help="an agency's node id (repeat; default: every one linked)")
    add_request_id_argument(p)
    p.set_defaults(handler=request_info)
    p = sub.add_parser("requests", help="information requests about the family, sent and received, and their answers")
    add_connection_arguments(p)
    p.add_argument("case_id")
    p.set_defaults(handler=requests)


def register_inbox(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("ask", help="ask the sender of a received item to clarify it")
    add_connection_arguments(p)
    p.add_argument("message_id", help="the received item's message id")
    p.add_argument("--question", required=True)
    add_request_id_argument(p)
    p.set_defaults(handler=ask)
    p = sub.add_parser("answer", help="answer a clarification request you received")
    add_connection_arguments(p)
    p.add_argument("message_id", help="the clarification request's message id")
    p.add_argument("--answer", required=True)
    add_request_id_argument(p)
    p.set_defaults(handler=answer)
    p = sub.add_parser("reply", help="answer an information request: provide, provide in part, or decline")
    add_connection_arguments(p)
    p.add_argument("message_id", help="the information request's message id")
    p.add_argument("answer", choices=sorted(ANSWERS))
    p.add_argument("--assessment", help="the assessment to send when providing (in full or in part)")
    why = p.add_mutually_exclusive_group(required=True)
    why.add_argument("--decision", type=Path, help="JSON ShareDecision: rationale, consent, lawful basis...")
    why.add_argument("--reason", help="the reasons alone (enough to decline)")
    add_request_id_argument(p)
    p.set_defaults(handler=reply)
