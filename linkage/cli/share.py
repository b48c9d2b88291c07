"""`linkage share`: preview, send, withdraw and follow a share through your node."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterable
from pathlib import Path

from linkage.cli.api_client import (
    FOLLOW_UP,
    actor,
    add_connection_arguments,
    add_request_id_argument,
    call,
    emit_json,
    emit_json_line,
    follow,
    print_queued,
    read_decision,
    report_queued,
)
from linkage.cli.values import count
from linkage.clock import utc_minute
from linkage.v1 import envelope_pb2, node_api_pb2, node_api_pb2_grpc, summary_pb2


def _share_request(args: argparse.Namespace) -> node_api_pb2.ShareSummaryRequest:
    return node_api_pb2.ShareSummaryRequest(
        actor=actor(args),
        assessment_id=args.assessment,
        decision=read_decision(args.decision),
        kind=envelope_pb2.MessageKind.Value(f"MESSAGE_KIND_{args.kind}"),
        request_id=args.request_id,
    )


def _outcome(value: int) -> str:
    return summary_pb2.DecisionOutcome.Name(value).removeprefix("DECISION_OUTCOME_")  # type: ignore[arg-type]


def _print_findings(findings: list[node_api_pb2.PolicyFinding]) -> None:
    for f in findings:
        print(f"  {f.severity}: {f.message} [{f.code}]")


def _print_recipients(records: list[summary_pb2.RecipientRecord]) -> None:
    for r in records:
        print(f"  {r.node_id} ({r.agency_type})")
        print(f"    fields: {', '.join(r.fields) or 'none'}")
        print(f"    data categories: {', '.join(r.data_categories) or 'none'}")
        for w in r.withheld:
            print(f"    withheld: {w}")


def share_preview(args: argparse.Namespace) -> int:
    request = _share_request(args)
    preview = call(args, lambda api: api.PreviewShare(request))
    if args.json:
        emit_json(preview)
        return 0
    print(f"If you share now: {_outcome(preview.outcome)} (nothing has been sent)")
    _print_recipients(list(preview.recipients))
    _print_findings(list(preview.findings))
    return 0


def share_send(args: argparse.Namespace) -> int:
    request = _share_request(args)
    response = call(args, lambda api: api.ShareSummary(request))
    if args.json:
        emit_json(response)
        return 0
    print(f"Decision {response.share_id}: {_outcome(response.outcome)}")
    _print_recipients(list(response.decision.recipients))
    print_queued(list(response.recipients))
    _print_findings(list(response.findings))
    return 0


def share_withdraw(args: argparse.Namespace) -> int:
    request = node_api_pb2.WithdrawSummaryRequest(
        actor=actor(args),
        summary_id=args.summary_id,
        reason=args.reason,
        ground=args.ground,
        recipients=args.only,
        request_id=args.request_id,
    )
    response = call(args, lambda api: api.WithdrawSummary(request))
    report_queued(args, response, f"Withdrawal {response.share_id}", list(response.recipients))
    if not args.json:
        _print_findings(list(response.findings))
    return 0


def share_status(args: argparse.Namespace) -> int:
    request = node_api_pb2.ShareStatusRequest(actor=actor(args), share_id=args.share_id)
    status = call(args, lambda api: api.GetShareStatus(request))
    if args.json:
        emit_json(status)
        return 0
    settled = " (settled)" if status.settled else ""
    if status.withdrawal_ground:
        erased = "; each recipient erases it: delivered means erased there" if status.erase else ""
        print(f"Withdrawal {status.share_id} ({status.withdrawal_ground}{erased}){settled}")
    else:
        print(f"Share {status.share_id}: {_outcome(status.outcome)}{settled}")
    for r in status.recipients:
        extra = f", receipt at {utc_minute(r.delivered_at_ms)}" if r.delivered_at_ms else ""  # the recipient's time
        extra += f", {r.reason}" if r.reason else ""
        print(f"  {r.node_id}: {r.state} after {r.attempts} attempt(s){extra}")
        if r.withdrawn_by:
            print(f"    withdrawn from it since: linkage share status {r.withdrawn_by}")
        if r.follow_up:
            print(f"    followed up {utc_minute(r.followed_up_at_ms)}: {r.follow_up}")
        elif r.state == "undeliverable":
            print(f"    {FOLLOW_UP.format(r.message_id)}")
    return 0


def share_watch(args: argparse.Namespace) -> int:
    who = actor(args)

    def watch(api: node_api_pb2_grpc.NodeApiAsyncStub, after: int) -> AsyncIterable[node_api_pb2.DeliveryEvent]:
        return api.WatchDeliveries(node_api_pb2.WatchDeliveriesRequest(actor=who, after_seq=after))

    follow(args, watch, emit_json_line if args.json else _print_event)
    return 0


def _print_event(event: node_api_pb2.DeliveryEvent) -> None:
    s, why = event.status, f": {event.status.reason}" if event.status.reason else ""
    at = utc_minute(event.at_ms)
    print(f"#{event.seq} {at} {s.node_id} {s.state} (message {s.message_id}, share {event.share_id}){why}")


def share_queues(args: argparse.Namespace) -> int:
    request = node_api_pb2.DeliveryQueuesRequest(actor=actor(args))
    answer = call(args, lambda api: api.ListDeliveryQueues(request))
    if args.json:
        emit_json(answer)
        return 0
    print("Connected to the gateway." if answer.connected else "NOT connected to the gateway: nothing goes out.")
    if not answer.queues:
        print("Nothing waits to be delivered.")
    for q in answer.queues:
        print(
            f"  {q.agency_name or q.node_id} ({q.node_id}): {q.to_send} to send, {q.awaiting_receipt} awaiting "
            f"a receipt; waiting since {utc_minute(q.oldest_waiting_since_ms)}, up to {q.most_attempts} attempt(s)"
        )
        if q.away:
            why = "its node is away (the gateway tells this node when it returns)"
        else:
            why = "the gateway said BUSY" if q.held else ""
        if why or q.next_attempt_at_ms:
            next_try = utc_minute(q.next_attempt_at_ms) if q.next_attempt_at_ms else "now"
            print(f"    {why or 'waiting'}; next try {next_try}")
    return 0


def share_follow_up(args: argparse.Namespace) -> int:
    request = node_api_pb2.FollowUpRequest(
        actor=actor(args), message_id=args.message_id, note=args.note, request_id=args.request_id
    )
    status = call(args, lambda api: api.RecordFollowUp(request))
    if args.json:
        emit_json(status)
        return 0
    print(f"Followed up: {status.node_id}, message {status.message_id} ({status.reason})")
    return 0


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    share = commands.add_parser("share", help="preview, send and follow shares through your node")
    sub = share.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    for name, handler, text in (
        ("preview", share_preview, "dry run: who would get which fields, which rules fail or warn"),
        ("send", share_send, "share a summary of an assessment with the agencies linked to the family"),
    ):
        p = sub.add_parser(name, help=text)
        add_connection_arguments(p)
        p.add_argument("--assessment", required=True, help="assessment id (from RecordAssessment)")
        p.add_argument("--decision", required=True, type=Path, help="JSON ShareDecision: rationale, consent...")
        p.add_argument(
            "--kind",
            default="SUMMARY_SHARE",
            choices=["SUMMARY_SHARE", "RISK_CHANGE_NOTICE", "HISTORICAL_UPDATE", "CORRECTION"],
            help="a change notice, historical update or correction also goes to every earlier recipient",
        )
        add_request_id_argument(p)
        p.set_defaults(handler=handler)
    p = sub.add_parser("withdraw", help="recall a summary from every agency that holds it, or from some")
    add_connection_arguments(p)
    p.add_argument("summary_id")
    p.add_argument("--reason", required=True)
    p.add_argument(
        "--ground",
        required=True,
        help="why (withdrawal_ground code): NOT_TO_BE_RELIED_ON keeps it marked withdrawn at each recipient; "
        "CONSENT_WITHDRAWN, WRONG_PERSON, SHARED_IN_ERROR and NO_LAWFUL_BASIS have them erase it",
    )
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NODE",
        help="recall it from this agency alone (repeatable): one it went to in error; the others keep it",
    )
    add_request_id_argument(p)
    p.set_defaults(handler=share_withdraw)
    p = sub.add_parser("status", help="where each recipient's copy of a share is")
    add_connection_arguments(p)
    p.add_argument("share_id")
    p.set_defaults(handler=share_status)
    p = sub.add_parser(
        "watch", help="follow delivery as it happens: each message queued, sent, deferred, delivered or not"
    )
    add_connection_arguments(p)
    p.add_argument("--after", type=count(2**63 - 1), default=0, help="only events after this one (#N, as shown)")
    p.set_defaults(handler=share_watch)
    p = sub.add_parser("queues", help="what your node still has to deliver, per agency, and why it waits")
    add_connection_arguments(p)
    p.set_defaults(handler=share_queues)
    p = sub.add_parser("follow-up", help="record what was done instead for a message that could not be delivered")
    add_connection_arguments(p)
    p.add_argument("message_id")
    p.add_argument("--note", required=True, help="who was told, and how (a telephone call, secure email)")
    add_request_id_argument(p)
    p.set_defaults(handler=share_follow_up)
