"""CLI commands for practitioners and agency IT, through their node's API: `linkage share`,
`case`, `involvement`, `inbox` and `chronology`. Human-readable by default, `--json` for scripts."""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from linkage import jurisdictions
from linkage.cli import asking, challenging
from linkage.cli.api_client import (
    FOLLOW_UP,
    actor,
    add_connection_arguments,
    call,
    emit_json,
    print_queued,
    read_decision,
    report_queued,
)
from linkage.cli.values import calendar_date, count, iso_day, link_token, when, word
from linkage.codelists import CodeLists
from linkage.v1 import envelope_pb2, node_api_pb2, node_api_pb2_grpc, summary_pb2, workflow_pb2


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
        actor=actor(args), summary_id=args.summary_id, reason=args.reason, ground=args.ground
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
    print(f"Share {status.share_id}: {_outcome(status.outcome)}{' (settled)' if status.settled else ''}")
    for r in status.recipients:
        extra = f", receipt at {r.delivered_at_ms}" if r.delivered_at_ms else ""
        extra += f", {r.reason}" if r.reason else ""
        print(f"  {r.node_id}: {r.state} after {r.attempts} attempt(s){extra}")
        if r.follow_up:
            print(f"    followed up {when(r.followed_up_at_ms)}: {r.follow_up}")
        elif r.state == "undeliverable":
            print(f"    {FOLLOW_UP.format(r.message_id)}")
    return 0


def share_follow_up(args: argparse.Namespace) -> int:
    request = node_api_pb2.FollowUpRequest(actor=actor(args), message_id=args.message_id, note=args.note)
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
    p.add_argument(
        "--ground",
        required=True,
        help="why (withdrawal_ground code): NOT_TO_BE_RELIED_ON keeps it marked withdrawn at each recipient; "
        "CONSENT_WITHDRAWN, WRONG_PERSON, SHARED_IN_ERROR and NO_LAWFUL_BASIS have them erase it",
    )
    p.set_defaults(handler=share_withdraw)
    p = sub.add_parser("status", help="where each recipient's copy of a share is")
    add_connection_arguments(p)
    p.add_argument("share_id")
    p.set_defaults(handler=share_status)
    p = sub.add_parser("follow-up", help="record what was done instead for a message that could not be delivered")
    add_connection_arguments(p)
    p.add_argument("message_id")
    p.add_argument("--note", required=True, help="who was told, and how (a telephone call, secure email)")
    p.set_defaults(handler=share_follow_up)


# -- cases ---------------------------------------------------------------------------


PERSON_ATTRIBUTES = {"role": "role_in_risk", "type": "person_type", "rel": "relationship", "basis": "identity_basis"}


def _person(text: str) -> node_api_pb2.PersonIdentifier:
    """'nhs:9434765919 role=AT_RISK type=CHILD rel=child basis=VERIFIED_NATIONAL protect' -> a PersonIdentifier."""
    first, *rest = text.split()
    scheme, _, value = first.partition(":")
    if not value:
        raise SystemExit(f"linkage: a person starts with SCHEME:VALUE, e.g. nhs:9434765919 (got {first!r})")
    person = node_api_pb2.PersonIdentifier(scheme=scheme, value=value)
    for part in rest:
        key, _, val = part.partition("=")
        if key == "protect":
            person.protect_identity = True
        elif key in PERSON_ATTRIBUTES:
            setattr(person, PERSON_ATTRIBUTES[key], val)
        else:
            raise SystemExit(f"linkage: unknown person attribute {key!r} (use role=, type=, rel=, basis=, protect)")
    return person


def _print_people(response: node_api_pb2.OpenCaseResponse | node_api_pb2.FoundCase, heading: str = "") -> None:
    print(f"Case {response.case_id}{heading}")
    for p in response.people:
        flags = " (identity protected)" if p.protect_identity else ""
        basis = f", linked by {p.identity_basis}" if p.identity_basis else ""
        print(f"  {p.link_token.hex()}  {p.relationship or '-'} {p.role_in_risk} {p.person_type}{basis}{flags}")


def case_open(args: argparse.Namespace) -> int:
    request = node_api_pb2.OpenCaseRequest(
        actor=actor(args), case_ref=args.case_ref, people=[_person(p) for p in args.person]
    )
    response = call(args, lambda api: api.OpenCase(request))
    emit_json(response) if args.json else _print_people(response)
    return 0


def case_find(args: argparse.Namespace) -> int:
    request = node_api_pb2.FindCasesRequest(
        actor=actor(args),
        case_id=getattr(args, "case_id", ""),
        case_ref=args.ref or "",
        person=_person(args.person) if args.person else None,
        include_closed=args.closed,
        limit=args.limit,
        before_case_id=args.before or "",
    )
    found = call(args, lambda api: api.FindCases(request))
    if args.json:
        emit_json(found)
        return 0
    if not found.cases:
        print(f"No {'' if args.closed else 'open '}case found.")
    for case in found.cases:
        _print_people(case, f"  {case.case_ref}  opened {when(case.opened_at_ms)}  {case.status}")
    if found.next_before:
        print(f"More: linkage case list --before {found.next_before} ...")
    return 0


def case_add_person(args: argparse.Namespace) -> int:
    request = node_api_pb2.AddPersonRequest(actor=actor(args), case_id=args.case_id, person=_person(args.person))
    response = call(args, lambda api: api.AddPerson(request))
    emit_json(response) if args.json else _print_people(response)
    return 0


def case_remove_person(args: argparse.Namespace) -> int:
    request = node_api_pb2.RemovePersonRequest(actor=actor(args), case_id=args.case_id, link_token=args.token)
    response = call(args, lambda api: api.RemovePerson(request))
    emit_json(response) if args.json else _print_people(response)
    return 0


_TOKEN_FIELDS = ("link_token", "linkToken", "concerns")


def _tokens_from_hex(value: Any) -> Any:
    """The JSON with each link token given as hex (as `case open` prints it) put in base64,
    as protobuf's JSON reads bytes: 64 hex digits are never a 32-byte token in base64."""
    if isinstance(value, list):
        return [_tokens_from_hex(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, v in value.items():
        if key in _TOKEN_FIELDS:
            out[key] = [_as_base64(t) for t in v] if isinstance(v, list) else _as_base64(v)
        else:
            out[key] = _tokens_from_hex(v)
    return out


def _as_base64(text: object) -> object:
    """A link token in hex, in base64; anything else (a token already in base64) as it is."""
    if isinstance(text, str):
        with contextlib.suppress(argparse.ArgumentTypeError):
            return base64.b64encode(link_token(text)).decode()
    return text


def case_record(args: argparse.Namespace) -> int:
    try:
        written = json.loads(args.assessment.read_text())
        if not isinstance(written, dict):
            raise json_format.ParseError("it holds no JSON object")
        assessment = json_format.ParseDict(_tokens_from_hex(written), summary_pb2.RiskSummary())
    except (OSError, json.JSONDecodeError, json_format.ParseError) as exc:
        raise SystemExit(f"linkage: cannot read the assessment file {args.assessment}: {exc}") from None
    request = node_api_pb2.RecordAssessmentRequest(actor=actor(args), case_id=args.case_id, assessment=assessment)
    response = call(args, lambda api: api.RecordAssessment(request))
    if args.json:
        emit_json(response)
        return 0
    print(f"Assessment {response.assessment_id} recorded: summary {response.summary_id}, version {response.version}")
    print(f"  Share it with: linkage share preview --assessment {response.assessment_id} --decision ...")
    return 0


def _print_closure(status: node_api_pb2.ClosureStatus) -> None:
    print(f"Case {status.case_id}: closure {status.state}")
    if status.state == "none":
        return
    print(f"  respond by {iso_day(status.respond_by)}")
    for r in status.replies:
        print(f"  {r.agency_name}: {_closure_answer(r.answer, r.reason)}")
    for n in status.awaiting:
        print(f"  {n}: no answer yet")
    if status.objection_outstanding:
        print("  An objection is outstanding.")


def _closure_answer(answer: int, reason: str) -> str:
    return word(workflow_pb2.ClosureAnswer.DESCRIPTOR, answer) + (f": {reason}" if reason else "")


def case_propose_closure(args: argparse.Namespace) -> int:
    request = node_api_pb2.ProposeClosureRequest(
        actor=actor(args),
        case_id=args.case_id,
        note=args.note,
        intent=summary_pb2.ClosureIntent(intent=args.intent, reason_code=args.reason_code),
        respond_by=args.respond_by,
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
            f"{a.agency_name} ({a.agency_type}{f'; law of {a.jurisdiction}' if a.jurisdiction else ''}), "
            f"contact: {a.contact_role or '-'}; linked to {len(a.link_tokens)} "
            "of the family's people"
        )
    return 0


# -- inbox and chronology ----------------------------------------------------------


RESPOND_WITH = "linkage case respond {}"  # the command that answers a closure proposal


def _kind(value: int) -> str:
    return word(envelope_pb2.MessageKind.DESCRIPTOR, value)


def _print_item(item: node_api_pb2.ReceivedSummary) -> None:
    title = _gist(item.body) or item.summary.headline or _kind(item.kind).replace("_", " ")
    print(f"#{item.seq} {item.message_id} [{item.state}] {_kind(item.kind)} from {item.sender_agency_name}: {title}")


def _gist(body: envelope_pb2.MessageBody, most: int = 100) -> str:
    """What an item says, in one line for a list (a summary's is its headline)."""
    match body.WhichOneof("content"):
        case "withdrawal":
            said = f"withdraws a summary: {body.withdrawal.reason}"
        case "involvement":
            said = f"{body.involvement.agency_name} {'joined' if body.involvement.joined else 'left'}"
        case "closure_intent":
            intent = body.closure_intent
            said = f"proposes to close ({intent.intent.intent}), answer by {iso_day(intent.respond_by)}"
        case "closure_response":
            said = _closure_answer(body.closure_response.answer, body.closure_response.reason)
        case "closure_notice":
            said = f"closed on {iso_day(body.closure_notice.closed_on)}"
        case "clarification_request":
            said = body.clarification_request.question
        case "clarification_response":
            said = body.clarification_response.answer
        case "information_request":
            said = f"{body.information_request.purpose} (needed by {iso_day(body.information_request.needed_by)})"
        case "information_response":
            said = asking.answer_word(body.information_response.answer)
        case "read":
            said = f"opened by their {body.read.reader_role}"
        case "challenge" | "challenge_response":
            said = challenging.gist(body)
        case _:
            return ""
    line = " ".join(said.split())
    return line if len(line) <= most else line[: most - 3] + "..."


def inbox_list(args: argparse.Namespace) -> int:
    request = node_api_pb2.ListReceivedRequest(
        actor=actor(args), after_seq=args.after, limit=args.limit, link_token=args.token or b""
    )
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
    _print_content(item.body)
    return 0


def _print_content(body: envelope_pb2.MessageBody) -> None:
    """What an item says, by its kind, for a person reading it."""
    match body.WhichOneof("content"):
        case "summary":
            _print_summary(body.summary)
        case "withdrawal":
            w = body.withdrawal
            print(f"  Withdraws summary {w.summary_id} ({w.ground or 'no ground given'}): {w.reason}")
            if w.erase:  # this node erased its copies before it receipted the withdrawal
                print("  Erased here at the sender's request; erase it from your case records too.")
        case "involvement":
            n = body.involvement
            print(f"  {n.agency_name} {'joined' if n.joined else 'left'}; contact: {n.contact_role or '-'}")
        case "closure_intent":
            c = body.closure_intent
            print(
                f"  {c.intent.intent} ({c.intent.reason_code or 'no reason code'}); respond by {iso_day(c.respond_by)}"
            )
            print(f"  Note: {c.note or '-'}")
            print(f"  Answer with: {RESPOND_WITH.format(body.message_id)} [--object --reason ...]")
        case "closure_response":
            r = body.closure_response
            print(f"  Answer: {_closure_answer(r.answer, r.reason)}")
        case "closure_notice":
            print(f"  Closed on {iso_day(body.closure_notice.closed_on)}: {body.closure_notice.note or '-'}")
        case "clarification_request":
            print(f"  About {body.clarification_request.about_message_id}: {body.clarification_request.question}")
            print(f"  Answer with: linkage inbox answer {body.message_id} --answer ...")
        case "clarification_response":
            print(f"  Answer to {body.in_reply_to}: {body.clarification_response.answer}")
        case "information_request":
            q = body.information_request
            basis = q.lawful_basis
            grounds = [*basis.art6, basis.art9, basis.dpa_condition, *basis.statutory_gateway]
            print(f"  Purpose: {q.purpose}")
            print(f"  Asks for: {q.what}")
            print(f"  Needed by: {iso_day(q.needed_by)}; lawful basis: {', '.join(g for g in grounds if g)}")
            print(f"  Answer with: {asking.REPLY_WITH.format(body.message_id)} ...")
        case "information_response":
            a = body.information_response
            print(f"  Answer to {a.request_message_id}: {asking.answer_word(a.answer)}")
            if a.decision.rationale:  # a decline's reasons; what is provided carries its own
                print(f"  Why: {a.decision.rationale}")
            _print_summary(a.summary)
        case "read":
            print(f"  Item {body.read.read_message_id} was opened by {body.read.reader_role}")
        case "challenge" | "challenge_response":
            challenging.print_content(body)


def _consider(sar_exemptions: Iterable[str]) -> str:
    return f"Before disclosing it to the person it is about, consider: {', '.join(sar_exemptions)}"


def _print_summary(summary: summary_pb2.RiskSummary) -> None:
    handling = summary.decision.handling_conditions
    if handling:  # first: it governs what may be done with the rest
        print(f"  Handling: {', '.join(handling)}")
        if summary.decision.handling_instructions:
            print(f"    {summary.decision.handling_instructions}")
    codes = CodeLists.load()
    for person in summary.people:  # a link not verified may be the wrong person
        if codes.unverified_link(person.identity_basis):
            print(
                f"  Check identity: the sender linked the {person.relationship or 'person'} by "
                f"{person.identity_basis}; confirm it is the same person before acting "
                "(a wrong link: linkage case challenge --subject IDENTITY_MATCH)"
            )
    for risk in summary.risk_items:
        currency = word(summary_pb2.Currency.DESCRIPTOR, risk.currency)
        level = f" {risk.level.value} {risk.level.scale}" if risk.level.scale else ""
        print(f"  - {risk.category} {risk.direction.lower()} ({currency}){level}")
        if risk.sar_exemptions:  # for whoever answers a subject access request
            print(f"    {_consider(risk.sar_exemptions)}")
    if summary.decision.rationale:
        print(f"  Why shared: {summary.decision.rationale}")
    if summary.jurisdiction:  # whose law its lawful basis and powers are
        powers = summary.decision.lawful_basis.statutory_gateway
        law = jurisdictions.name(codes, summary.jurisdiction)
        print(f"  Under the law of {law}" + (f": {', '.join(powers)}" if powers else ""))
    if summary.review_date.year:  # domain.md §6 rule 12: an overdue review is flagged to recipients
        review = iso_day(summary.review_date)
        late = review < datetime.date.today().isoformat() and any(
            r.currency == summary_pb2.CURRENCY_CURRENT for r in summary.risk_items
        )
        print(f"  Review by {review}{' (passed: ask the sender whether it still holds)' if late else ''}")


def chronology(args: argparse.Namespace) -> int:
    request = node_api_pb2.ChronologyRequest(actor=actor(args), case_id=args.case_id)
    response = call(args, lambda api: api.Chronology(request))
    if args.json:
        emit_json(response)
        return 0
    for e in response.entries:
        currency = word(summary_pb2.Currency.DESCRIPTOR, e.currency)
        source = "this agency" if e.own else e.source_agency
        at, direction = when(e.at_ms), e.direction.lower()
        print(f"{at}  {source:<28} {e.category:<24} {currency:<10} {direction:<10} {e.level} [{e.state}]")
        if e.handling_conditions:
            print(f"  Handling: {', '.join(e.handling_conditions)}")
        if e.sar_exemptions:
            print(f"  {_consider(e.sar_exemptions)}")
        if e.unverified_link_tokens:
            print(
                f"  Check identity: {len(e.unverified_link_tokens)} of the people in it linked on a basis not "
                "verified; confirm it is the same person before relying on it "
                f"({'case show' if e.own else 'inbox open'} says how each was linked)"
            )
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
        help="'nhs:9434765919 role=AT_RISK type=CHILD rel=child basis=VERIFIED_NATIONAL [protect]' (repeat per "
        "person; basis: how you know the identifier is theirs)",
    )
    p.set_defaults(handler=case_open)
    p = sub.add_parser("list", help="find your cases: by --ref, by --person, or every open one (newest first)")
    add_connection_arguments(p)
    p.add_argument("--ref", help="your case system's reference")
    p.add_argument("--person", help="'nhs:9434765919': the cases this person is in")
    p.add_argument("--closed", action="store_true", help="closed cases too")
    p.add_argument("--limit", type=count(500), default=0, help="cases per page (default 50)")
    p.add_argument("--before", help="the next page: the case id `More:` printed")
    p.set_defaults(handler=case_find)
    p = sub.add_parser("show", help="a case's people (their link tokens, in hex) and status")
    add_connection_arguments(p)
    p.add_argument("case_id")
    p.set_defaults(handler=case_find, ref=None, person=None, closed=True, limit=0, before=None)
    p = sub.add_parser("add-person", help="link one more person to a case")
    add_connection_arguments(p)
    p.add_argument("case_id")
    p.add_argument("--person", required=True)
    p.set_defaults(handler=case_add_person)
    p = sub.add_parser("remove-person", help="unlink a person (by link token, hex)")
    add_connection_arguments(p)
    p.add_argument("case_id")
    p.add_argument("--token", required=True, type=link_token, help="the person's link token (hex)")
    p.set_defaults(handler=case_remove_person)
    p = sub.add_parser("record", help="record an assessment of the case, to share with `linkage share`")
    add_connection_arguments(p)
    p.add_argument("case_id")
    p.add_argument(
        "--assessment",
        required=True,
        type=Path,
        help="JSON RiskSummary; people by their link tokens (hex, as `case open` prints them)",
    )
    p.set_defaults(handler=case_record)
    asking.register_case(sub)
    challenging.register_case(sub)
    p = sub.add_parser("propose-closure", help="alert every co-involved agency before closing")
    add_connection_arguments(p)
    p.add_argument("case_id")
    p.add_argument("--respond-by", required=True, type=calendar_date, help="YYYY-MM-DD")
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
            p.add_argument("--token", type=link_token, help="only items about this person (link token, hex)")
        p.set_defaults(handler=handler)
    p = sub.add_parser("open", help="open an item (the sender is told, unless --silent-reason)")
    add_connection_arguments(p)
    p.add_argument("message_id")
    p.add_argument("--silent-reason", default="", help="why the sender should not be told (audited)")
    p.set_defaults(handler=inbox_open)
    asking.register_inbox(sub)
    challenging.register_inbox(sub)

    p = commands.add_parser("chronology", help="a family's chronology: own and received assessments in order")
    add_connection_arguments(p)
    p.add_argument("case_id")
    p.set_defaults(handler=chronology)
