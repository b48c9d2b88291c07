"""`linkage case` and `linkage involvement`: open, find, change and close cases for families,
record assessments, and see which agencies are involved."""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from linkage.cli import asking, challenging
from linkage.cli.api_client import (
    actor,
    add_connection_arguments,
    add_request_id_argument,
    call,
    emit_json,
)
from linkage.cli.values import calendar_date, count, iso_day, link_token, word
from linkage.clock import utc_minute
from linkage.v1 import node_api_pb2, summary_pb2, workflow_pb2

RESPOND_WITH = "linkage case respond {}"  # the command that answers a closure proposal
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
        actor=actor(args),
        case_ref=args.case_ref,
        people=[_person(p) for p in args.person],
        request_id=args.request_id,
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
    if request.case_id and not found.cases:  # `case show` of one this node does not have: a script must hear it
        print(f"linkage: no case {request.case_id!r} at this node (`linkage case list` finds yours)", file=sys.stderr)
        return 1
    if args.json:
        emit_json(found)
        return 0
    if not found.cases:
        print(f"No {'' if args.closed else 'open '}case found.")
    for case in found.cases:
        _print_people(case, f"  {case.case_ref}  opened {utc_minute(case.opened_at_ms)}  {case.status}")
    if found.next_before:
        print(f"More: linkage case list --before {found.next_before} ...")
    if request.case_id:
        print(f"  Its assessments: linkage case assessments {request.case_id}")
    return 0


def case_add_person(args: argparse.Namespace) -> int:
    request = node_api_pb2.AddPersonRequest(
        actor=actor(args), case_id=args.case_id, person=_person(args.person), request_id=args.request_id
    )
    response = call(args, lambda api: api.AddPerson(request))
    emit_json(response) if args.json else _print_people(response)
    return 0


def case_remove_person(args: argparse.Namespace) -> int:
    request = node_api_pb2.RemovePersonRequest(
        actor=actor(args), case_id=args.case_id, link_token=args.token, request_id=args.request_id
    )
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
    request = node_api_pb2.RecordAssessmentRequest(
        actor=actor(args), case_id=args.case_id, assessment=assessment, request_id=args.request_id
    )
    response = call(args, lambda api: api.RecordAssessment(request))
    if args.json:
        emit_json(response)
        return 0
    print(f"Assessment {response.assessment_id} recorded: summary {response.summary_id}, version {response.version}")
    print(f"  Share it with: linkage share preview --assessment {response.assessment_id} --decision ...")
    return 0


def case_assessments(args: argparse.Namespace) -> int:
    request = node_api_pb2.CaseRequest(actor=actor(args), case_id=args.case_id)
    listed = call(args, lambda api: api.ListAssessments(request))
    if args.json:
        emit_json(listed)
        return 0
    if not listed.assessments:
        print(f"No assessment recorded in case {args.case_id}: linkage case record {args.case_id} --assessment ...")
    for a in listed.assessments:
        review = f", review by {iso_day(a.review_date)}" if a.HasField("review_date") and a.state == "current" else ""
        print(f"{a.assessment_id}  {utc_minute(a.recorded_at_ms)}  version {a.version} of {a.summary_id}  {a.state}")
        print(f"    {a.headline}")
        print(f"    by {a.author.name or a.author.id} ({a.author.role}){review}")
        print(f"    shares: {', '.join(a.share_ids)}" if a.share_ids else "    not shared")
    return 0


def _print_closure(status: node_api_pb2.ClosureStatus) -> None:
    print(f"Case {status.case_id}: closure {status.state}")
    if status.state == "none":
        return
    print(f"  respond by {iso_day(status.respond_by)}")
    for r in status.replies:
        print(f"  {r.agency_name}: {closure_answer(r.answer, r.reason)}")
    for n in status.awaiting:
        print(f"  {n}: no answer yet")
    if status.objection_outstanding:
        print("  An objection is outstanding.")


def closure_answer(answer: int, reason: str) -> str:
    return word(workflow_pb2.ClosureAnswer.DESCRIPTOR, answer) + (f": {reason}" if reason else "")


def case_propose_closure(args: argparse.Namespace) -> int:
    request = node_api_pb2.ProposeClosureRequest(
        actor=actor(args),
        case_id=args.case_id,
        note=args.note,
        intent=summary_pb2.ClosureIntent(intent=args.intent, reason_code=args.reason_code),
        respond_by=args.respond_by,
        request_id=args.request_id,
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
        actor=actor(args),
        intent_message_id=args.intent_message_id,
        answer=answer,
        reason=args.reason,
        request_id=args.request_id,
    )
    response = call(args, lambda api: api.RespondToClosure(request))
    emit_json(response) if args.json else print(f"Answer sent (message {response.message_id})")
    return 0


def case_close(args: argparse.Namespace) -> int:
    request = node_api_pb2.CloseCaseRequest(
        actor=actor(args),
        case_id=args.case_id,
        note=args.note,
        override_objections_reason=args.override_objections,
        request_id=args.request_id,
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


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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
    add_request_id_argument(p)
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
    add_request_id_argument(p)
    p.set_defaults(handler=case_add_person)
    p = sub.add_parser("remove-person", help="unlink a person (by link token, hex)")
    add_connection_arguments(p)
    p.add_argument("case_id")
    p.add_argument("--token", required=True, type=link_token, help="the person's link token (hex)")
    add_request_id_argument(p)
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
    add_request_id_argument(p)
    p.set_defaults(handler=case_record)
    p = sub.add_parser(
        "assessments",
        help="the case's own assessments, newest first: where each stands (current, superseded or "
        "withdrawn; only a current one is shared), its review date and the shares made of it",
    )
    add_connection_arguments(p)
    p.add_argument("case_id")
    p.set_defaults(handler=case_assessments)
    asking.register_case(sub)
    challenging.register_case(sub)
    p = sub.add_parser("propose-closure", help="alert every co-involved agency before closing")
    add_connection_arguments(p)
    p.add_argument("case_id")
    p.add_argument("--respond-by", required=True, type=calendar_date, help="YYYY-MM-DD")
    p.add_argument("--intent", default="PLANNED_CLOSURE", help="PLANNED_CLOSURE, STEP_DOWN, STEP_UP, TRANSFER")
    p.add_argument("--reason-code", default="", help="closure_reason code, e.g. RISK_REDUCED_GOALS_MET")
    p.add_argument("--note", default="", help="why, in plain words")
    add_request_id_argument(p)
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
    add_request_id_argument(p)
    p.set_defaults(handler=case_respond)
    p = sub.add_parser("close", help="close after the closure intent (refused while answers are due)")
    add_connection_arguments(p)
    p.add_argument("case_id")
    p.add_argument("--note", default="")
    p.add_argument("--override-objections", default="", help="why you close despite an objection")
    add_request_id_argument(p)
    p.set_defaults(handler=case_close)

    p = commands.add_parser("involvement", help="which agencies are linked to a case's family")
    add_connection_arguments(p)
    p.add_argument("case_id")
    p.set_defaults(handler=involvement)
