"""`linkage due`: the duty view, across every case. What this node must answer, by when
and with which command; its own assessments due for review; and what other agencies owe
it past its date, reviews of the summaries they sent it among them. `--json` feeds a
scheduled job that tells the duty team."""

from __future__ import annotations

import argparse

from linkage.cli import asking, casework, challenging
from linkage.cli.api_client import FOLLOW_UP, actor, add_connection_arguments, call, emit_json
from linkage.cli.values import count, iso_day, word
from linkage.v1 import envelope_pb2, node_api_pb2

# What each kind is called, and the command that answers it.
NAMES = {
    envelope_pb2.MESSAGE_KIND_INFORMATION_REQUEST: ("information request", asking.REPLY_WITH),
    envelope_pb2.MESSAGE_KIND_CHALLENGE: ("professional challenge", challenging.ANSWER_WITH),
    envelope_pb2.MESSAGE_KIND_CLOSURE_INTENT: ("closure proposal", casework.RESPOND_WITH),
}

# What to do about an agency left holding a summary withdrawn from the others as retracted.
WITHDRAW_FROM = "linkage share withdraw {} --only {} --ground GROUND --reason REASON"

# What to do about a received summary past its review date, until its sender reviews it.
ASK_WITH = "linkage inbox ask {} --question 'Its review date has passed: does it still hold?'"


def due(args: argparse.Namespace) -> int:
    request = node_api_pb2.DueRequest(actor=actor(args), within_days=args.within)
    listed = call(args, lambda api: api.ListDue(request))
    if args.json:
        emit_json(listed)
        return 0
    if not listed.items:
        print(f"Nothing to answer in the next {args.within or 7} days, and nothing owed to this agency is late.")
    for item in listed.items:
        when = f"{'OVERDUE ' if item.overdue else ''}{iso_day(item.due)}"
        if item.assessment_id:
            print(f"{when:<18} review your assessment {item.assessment_id} (case {item.case_id}): {item.what}")
            print(f"{'':<18} linkage case record {item.case_id} --assessment REVIEWED.json (same summary_id)")
            continue
        if item.undeliverable or item.delayed:
            kind = word(envelope_pb2.MessageKind.DESCRIPTOR, item.kind).replace("_", " ")
            status = "UNDELIVERABLE" if item.undeliverable else "NOT DELIVERED"
            print(f"{status:<18} your {kind} to {item.agency_name}: {item.what}")
            print(f"{'':<18} {FOLLOW_UP.format(item.message_id)}")
            continue
        if item.still_held:
            held = f"{item.agency_name} holds summary {item.summary_id} (case {item.case_id})"
            print(f"{'STILL HELD':<18} {held}: {item.what}")
            print(f"{'':<18} {WITHDRAW_FROM.format(item.summary_id, item.node_id)}")
            continue
        if item.review_owed:
            print(f"{when:<18} {item.agency_name}'s summary is past its review date (case {item.case_id}): {item.what}")
            print(f"{'':<18} {ASK_WITH.format(item.message_id)}")
            continue
        name, command = NAMES[item.kind]
        if item.to_answer:
            print(f"{when:<18} answer the {name} from {item.agency_name}: {item.what}")
            print(f"{'':<18} {command.format(item.message_id)} ...")
        else:
            print(f"{when:<18} {item.agency_name} has not answered your {name} (case {item.case_id}): {item.what}")
    if listed.more:
        print(f"... and more: only the first {len(listed.items)} are listed")
    return 0


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser("due", help="what this agency must answer, and what others owe it that is late")
    add_connection_arguments(p)
    p.add_argument("--within", type=count(366), default=0, help="days ahead to look (default 7, at most 366)")
    p.set_defaults(handler=due)
