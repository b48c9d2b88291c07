"""CLI commands that talk to a running node's API (for practitioners and agency IT):
`linkage share ...`. Human-readable by default, `--json` for scripts."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from linkage.config import NodeConfig
from linkage.v1 import envelope_pb2, node_api_pb2, node_api_pb2_grpc, summary_pb2, workflow_pb2

T = TypeVar("T")


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, help="the node's node.toml (its API socket is found from it)")
    where.add_argument("--socket", type=Path, help="the node's API socket")
    parser.add_argument("--actor-id", default=os.environ.get("LINKAGE_ACTOR_ID"), help="your practitioner id")
    parser.add_argument("--actor-name", default=os.environ.get("LINKAGE_ACTOR_NAME", ""), help="your name")
    parser.add_argument("--actor-role", default=os.environ.get("LINKAGE_ACTOR_ROLE"), help="your role")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def actor(args: argparse.Namespace) -> summary_pb2.Practitioner:
    if not args.actor_id or not args.actor_role:
        raise SystemExit("linkage: say who is acting: --actor-id and --actor-role (or LINKAGE_ACTOR_ID/_ROLE)")
    return summary_pb2.Practitioner(id=args.actor_id, name=args.actor_name, role=args.actor_role)


def count(most: int) -> Callable[[str], int]:
    """An argument that counts or numbers something: a whole number from 0 to `most`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = -1
        if not 0 <= value <= most:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 0 to {most}")
        return value

    return parse


def socket_of(args: argparse.Namespace) -> Path:
    return NodeConfig.load(args.config).api_socket if args.config else Path(args.socket)


def call(args: argparse.Namespace, work: Callable[[node_api_pb2_grpc.NodeApiAsyncStub], Awaitable[T]]) -> T:
    async def run() -> T:
        async with grpc.aio.insecure_channel(f"unix:{socket_of(args)}") as channel:
            return await work(node_api_pb2_grpc.NodeApiStub(channel))

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE and not socket_of(args).exists():
            raise SystemExit(
                f"linkage: no node is serving at {socket_of(args)} (is `linkage node serve` running?)"
            ) from None
        raise SystemExit(f"linkage: {exc.code().name}: {exc.details()}") from None


def emit_json(message: Message) -> None:
    print(json_format.MessageToJson(message, preserving_proto_field_name=True, indent=2))


def _share_request(args: argparse.Namespace) -> node_api_pb2.ShareSummaryRequest:
    decision = summary_pb2.ShareDecision()
    try:
        json_format.Parse(Path(args.decision).read_text(), decision)
    except (OSError, json_format.ParseError, json.JSONDecodeError) as exc:
        raise SystemExit(f"linkage: cannot read the decision file {args.decision}: {exc}") from None
    return node_api_pb2.ShareSummaryRequest(
        actor=actor(args),
        assessment_id=args.assessment,
        decision=decision,
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
    _print_queued(list(response.recipients))
    _print_findings(list(response.findings))
    return 0


def _print_queued(statuses: list[node_api_pb2.DeliveryStatus]) -> None:
    """Each recipient's message as the call left it: queued, or not sent and why."""
    for r in statuses:
        print(f"  {r.node_id}: {r.state} (message {r.message_id}){': ' + r.reason if r.reason else ''}")


def share_withdraw(args: argparse.Namespace) -> int:
    request = node_api_pb2.WithdrawSummaryRequest(actor=actor(args), summary_id=args.summary_id, reason=args.reason)
    response = call(args, lambda api: api.WithdrawSummary(request))
    if args.json:
        emit_json(response)
        return 0
    print(f"Withdrawal {response.share_id}:")
    _print_queued(list(response.recipients))
    return 0


def share_status(args: argparse.Namespace) -> int:
    request = node_api_pb2.ShareStatusRequest(actor=actor(args), share_id=args.share_id)
    status = call(args, lambda api: api.GetShareStatus(request))
    if args.json:
        emit_json(status)
        return 0
    print(f"Share {status.share_id}: {_outcome(status.outcome)}{' (settled)' if status.settled else ''}")
    for r in status.recipients:
        extra = f", receipt at {r.delivered_at_ms}" if r.delivered_at_ms else ""
        extra += f", {r.reason}" if r.reason else ""
        print(f"  {r.node_id}: {r.state} after {r.attempts} attempt(s){extra}")
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
        p.add_argument(
            "--request-id",
            default="",
            help="any id of yours: sending again with the same one answers as the first time, sharing nothing more",
        )
        p.set_defaults(handler=handler)
    p = sub.add_parser("withdraw", help="recall a summary from every agency that received it")
    add_connection_arguments(p)
    p.add_argument("summary_id")
    p.add_argument("--reason", required=True)
    p.set_defaults(handler=share_withdraw)
    p = sub.add_parser("status", help="where each recipient's copy of a share is")
    add_connection_arguments(p)
    p.add_argument("share_id")
    p.set_defaults(handler=share_status)


# -- cases ---------------------------------------------------------------------------


def _person(text: str) -> node_api_pb2.PersonIdentifier:
    """'nhs:9434765919 role=AT_RISK type=CHILD rel=child protect' -> a PersonIdentifier."""
    first, *rest = text.split()
    scheme, _, value = first.partition(":")
    if not value:
        raise SystemExit(f"linkage: a person starts with SCHEME:VALUE, e.g. nhs:9434765919 (got {first!r})")
    person = node_api_pb2.PersonIdentifier(scheme=scheme, value=value)
    for part in rest:
        key, _, val = part.partition("=")
        if key == "protect":
            person.protect_identity = True
        elif key in ("role", "type", "rel"):
            setattr(person, {"role": "role_in_risk", "type": "person_type", "rel": "relationship"}[key], val)
        else:
            raise SystemExit(f"linkage: unknown person attribute {key!r} (use role=, type=, rel=, protect)")
    return person


def _print_people(response: node_api_pb2.OpenCaseResponse) -> None:
    print(f"Case {response.case_id}")
    for p in response.people:
        flags = " (identity protected)" if p.protect_identity else ""
        print(f"  {p.link_token.hex()[:16]}...  {p.relationship or '-'} {p.role_in_risk} {p.person_type}{flags}")


def case_open(args: argparse.Namespace) -> int:
    request = node_api_pb2.OpenCaseRequest(
        actor=actor(args), case_ref=args.case_ref, people=[_person(p) for p in args.person]
    )
    response = call(args, lambda api: api.OpenCase(request))
    emit_json(response) if args.json else _print_people(response)
    return 0


def case_add_person(args: argparse.Namespace) -> int:
    request = node_api_pb2.AddPersonRequest(actor=actor(args), case_id=args.case_id, person=_person(args.person))
    response = call(args, lambda api: api.AddPerson(request))
    emit_json(response) if args.json else _print_people(response)
    return 0


def case_remove_person(args: argparse.Namespace) -> int:
    request = node_api_pb2.RemovePersonRequest(
        actor=actor(args), case_id=args.case_id, link_token=bytes.fromhex(args.token)
    )
    response = call(args, lambda api: api.RemovePerson(request))
    emit_json(response) if args.json else _print_people(response)
    return 0


def _print_closure(status: node_api_pb2.ClosureStatus) -> None:
    print(f"Case {status.case_id}: closure {status.state}")
    if status.state == "none":
        return
    print(f"  respond by {status.respond_by.year:04d}-{status.respond_by.month:02d}-{status.respond_by.day:02d}")
    for r in status.replies:
        answer = workflow_pb2.ClosureAnswer.Name(r.answer).removeprefix("CLOSURE_ANSWER_").lower()
        print(f"  {r.agency_name}: {answer}{': ' + r.reason if r.reason else ''}")
    for n in status.awaiting:
        print(f"  {n}: no answer yet")
    if status.objection_outstanding:
        print("  An objection is outstanding.")


def case_propose_closure(args: argparse.Namespace) -> int:
    y, m, d = (int(x) for x in args.respond_by.split("-"))
    request = node_api_pb2.ProposeClosureRequest(
        actor=actor(args),
        case_id=args.case_id,
        note=args.note,
        intent=summary_pb2.ClosureIntent(intent=args.intent, reason_code=args.reason_code),
        respond_by=summary_pb2.Date(year=y, month=m, day=d),
    )
    status = call(args, lambda api: api.ProposeClosure(request))
    emit_json(status) if args.json else _print_closure(status)
    return 0


def case_closure(args: argparse.Namespace) -> int:
    request = node_api_pb2.CaseRequest(actor=actor(args), case_id=args.case_id)
    status = call(args, lambda api: api.GetClosure(request))
    emit_json(status) if args.json else _print_closure(status)
    return 0


def case_respond(args: argparse.Namespace) -> int:
    answer = workflow_pb2.CLOSURE_ANSWER_OBJECT if args.object else workflow_pb2.CLOSURE_ANSWER_AGREE
    request = node_api_pb2.RespondToClosureRequest(
        actor=actor(args), intent_message_id=args.intent_message_id, answer=answer, reason=args.reason
    )
    response = call(args, lambda api: api.RespondToClosure(request))
    emit_json(response) if args.json else print(f"Answer sent (message {response.message_id})")
    return 0


def case_close(args: argparse.Namespace) -> int:
    request = node_api_pb2.CloseCaseRequest(
        actor=actor(args), case_id=args.case_id, note=args.note, override_objections_reason=args.override_objections
    )
    status = call(args, lambda api: api.CloseCase(request))
    emit_json(status) if args.json else _print_closure(status)
    return 0


def involvement(args: argparse.Namespace) -> int:
    request = node_api_pb2.CaseRequest(actor=actor(args), case_id=args.case_id)
    response = call(args, lambda api: api.DiscoverInvolvement(request))
    if args.json:
        emit_json(response)
        return 0
    if not response.agencies:
        print("No other agency is linked to this family.")
    for a in response.agencies:
        print(
            f"{a.agency_name} ({a.agency_type}), contact: {a.contact_role or '-'}; linked to {len(a.link_tokens)} "
            "of the family's people"
        )
    return 0


# -- inbox and chronology ----------------------------------------------------------


def _kind(value: int) -> str:
    return envelope_pb2.MessageKind.Name(value).removeprefix("MESSAGE_KIND_").lower()  # type: ignore[arg-type]


def _print_item(item: node_api_pb2.ReceivedSummary) -> None:
    title = item.summary.headline or _kind(item.kind).replace("_", " ")
    print(f"#{item.seq} {item.message_id} [{item.state}] {_kind(item.kind)} from {item.sender_agency_name}: {title}")


def inbox_list(args: argparse.Namespace) -> int:
    request = node_api_pb2.ListReceivedRequest(actor=actor(args), after_seq=args.after, limit=args.limit)
    response = call(args, lambda api: api.ListReceived(request))
    if args.json:
        emit_json(response)
    for item in [] if args.json else response.items:
        _print_item(item)
    return 0


def inbox_watch(args: argparse.Namespace) -> int:
    async def watch(api: node_api_pb2_grpc.NodeApiAsyncStub) -> None:
        async for item in api.WatchReceived(node_api_pb2.WatchReceivedRequest(actor=actor(args), after_seq=args.after)):
            emit_json(item) if args.json else _print_item(item)

    call(args, watch)
    return 0


def inbox_open(args: argparse.Namespace) -> int:
    request = node_api_pb2.OpenReceivedRequest(
        actor=actor(args), message_id=args.message_id, silent_read_reason=args.silent_reason
    )
    item = call(args, lambda api: api.OpenReceived(request))
    if args.json:
        emit_json(item)
        return 0
    _print_item(item)
    for risk in item.summary.risk_items:
        currency = summary_pb2.Currency.Name(risk.currency).removeprefix("CURRENCY_").lower()
        print(f"  - {risk.category} {risk.direction.lower()} ({currency}) {risk.level.value} {risk.level.scale}")
    if item.summary.decision.rationale:
        print(f"  Why shared: {item.summary.decision.rationale}")
    return 0


def chronology(args: argparse.Namespace) -> int:
    request = node_api_pb2.ChronologyRequest(actor=actor(args), case_id=args.case_id)
    response = call(args, lambda api: api.Chronology(request))
    if args.json:
        emit_json(response)
        return 0
    for e in response.entries:
        when = datetime.datetime.fromtimestamp(e.at_ms / 1000, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M")
        currency = summary_pb2.Currency.Name(e.currency).removeprefix("CURRENCY_").lower()
        source = "this agency" if e.own else e.source_agency
        print(f"{when}  {source:<28} {e.category:<24} {currency:<10} {e.direction.lower():<10} {e.level} [{e.state}]")
    return 0


def register_casework(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    case = commands.add_parser("case", help="open, change and close cases for families")
    sub = case.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    p = sub.add_parser("open", help="open a case with the people of a family (identifiers become link tokens)")
    add_connection_arguments(p)
    p.add_argument("--case-ref", required=True, help="your case system's reference")
    p.add_argument(
        "--person",
        action="append",
        required=True,
        help="'nhs:9434765919 role=AT_RISK type=CHILD rel=child [protect]' (repeat per person)",
    )
    p.set_defaults(handler=case_open)
    p = sub.add_parser("add-person", help="link one more person to a case")
    add_connection_arguments(p)
    p.add_argument("case_id")
    p.add_argument("--person", required=True)
    p.set_defaults(handler=case_add_person)
    p = sub.add_parser("remove-person", help="unlink a person (by link token, hex)")
    add_connection_arguments(p)
    p.add_argument("case_id")
    p.add_argument("--token", required=True)
    p.set_defaults(handler=case_remove_person)
    p = sub.add_parser("propose-closure", help="alert every co-involved agency before closing")
    add_connection_arguments(p)
    p.add_argument("case_id")
    p.add_argument("--respond-by", required=True, help="YYYY-MM-DD")
    p.add_argument("--intent", default="PLANNED_CLOSURE", help="PLANNED_CLOSURE, STEP_DOWN, STEP_UP, TRANSFER")
    p.add_argument("--reason-code", default="", help="closure_reason code, e.g. RISK_REDUCED_GOALS_MET")
    p.add_argument("--note", default="", help="why, in plain words")
    p.set_defaults(handler=case_propose_closure)
    p = sub.add_parser("closure", help="the answers to a proposed closure")
    add_connection_arguments(p)
    p.add_argument("case_id")
    p.set_defaults(handler=case_closure)
    p = sub.add_parser("respond", help="agree or object to another agency's closure intent")
    add_connection_arguments(p)
    p.add_argument("intent_message_id")
    p.add_argument("--object", action="store_true", help="object (give --reason)")
    p.add_argument("--reason", default="")
    p.set_defaults(handler=case_respond)
    p = sub.add_parser("close", help="close after the closure intent (refused while answers are due)")
    add_connection_arguments(p)
    p.add_argument("case_id")
    p.add_argument("--note", default="")
    p.add_argument("--override-objections", default="", help="why you close despite an objection")
    p.set_defaults(handler=case_close)

    p = commands.add_parser("involvement", help="which agencies are linked to a case's family")
    add_connection_arguments(p)
    p.add_argument("case_id")
    p.set_defaults(handler=involvement)

    inbox = commands.add_parser("inbox", help="what your node has received")
    sub = inbox.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    for name, handler, text in (
        ("list", inbox_list, "list received items"),
        ("watch", inbox_watch, "follow new items"),
    ):
        p = sub.add_parser(name, help=text)
        add_connection_arguments(p)
        p.add_argument("--after", type=count(2**63 - 1), default=0, help="only items after this sequence number")
        if name == "list":
            p.add_argument("--limit", type=count(2**32 - 1), default=100, help="at most this many items (default 100)")
        p.set_defaults(handler=handler)
    p = sub.add_parser("open", help="open an item (the sender is told, unless --silent-reason)")
    add_connection_arguments(p)
    p.add_argument("message_id")
    p.add_argument("--silent-reason", default="", help="why the sender should not be told (audited)")
    p.set_defaults(handler=inbox_open)

    p = commands.add_parser("chronology", help="a family's chronology: own and received assessments in order")
    add_connection_arguments(p)
    p.add_argument("case_id")
    p.set_defaults(handler=chronology)
