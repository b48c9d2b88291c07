"""`linkage inbox` and `linkage chronology`: what your node has received, opened for a
person to read, and a family's chronology."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterable, AsyncIterator, Iterable

from linkage import jurisdictions
from linkage.calendar import today
from linkage.cli import asking, challenging
from linkage.cli.api_client import (
    actor,
    add_connection_arguments,
    call,
    emit_json,
    emit_json_line,
    follow,
)
from linkage.cli.casework import RESPOND_WITH, closure_answer
from linkage.cli.values import count, iso_day, link_token, word
from linkage.clock import SystemClock, utc_minute
from linkage.codelists import CodeLists
from linkage.v1 import envelope_pb2, node_api_pb2, node_api_pb2_grpc, summary_pb2


def _kind(value: int) -> str:
    return word(envelope_pb2.MessageKind.DESCRIPTOR, value)


def _print_item(item: node_api_pb2.ReceivedSummary) -> None:
    title = _gist(item.body) or item.summary.headline or _kind(item.kind).replace("_", " ")
    print(f"#{item.seq} {item.message_id} [{item.state}] {_kind(item.kind)} from {item.sender_agency_name}: {title}")


def _gist(body: envelope_pb2.MessageBody, most: int = 100) -> str:
    """What an item says, in one line for a list (a summary's is its headline)."""
    match body.WhichOneof("content"):
        case "withdrawal":
            w = body.withdrawal
            erased = "; erased here" if w.erase else ""
            said = f"withdraws a summary ({w.ground or 'no ground given'}{erased}): {w.reason}"
        case "involvement":
            said = f"{body.involvement.agency_name} {'joined' if body.involvement.joined else 'left'}"
        case "closure_intent":
            intent = body.closure_intent
            said = f"proposes to close ({intent.intent.intent}), answer by {iso_day(intent.respond_by)}"
        case "closure_response":
            said = closure_answer(body.closure_response.answer, body.closure_response.reason)
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
        case "redelivery":
            said = (
                f"its store was put back to a copy: what it got since {utc_minute(body.redelivery.since_ms)} goes again"
            )
        case "returned":
            said = f"gave back {len(body.returned.copies)} message(s) this node sent it, lost here in a restore"
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
    if not args.json and not response.items:  # else a filter that matched nothing looks like a fault
        after = f" after item {args.after}" if args.after else ""
        print(f"Nothing received{after}{' about that person' if args.token else ''}.")
    return 0


def inbox_watch(args: argparse.Namespace) -> int:
    who = actor(args)

    def watch(api: node_api_pb2_grpc.NodeApiAsyncStub, after: int) -> AsyncIterable[node_api_pb2.ReceivedSummary]:
        return api.WatchReceived(node_api_pb2.WatchReceivedRequest(actor=who, after_seq=after))

    follow(args, watch, emit_json_line if args.json else _print_item)
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
            print(f"  Answer: {closure_answer(r.answer, r.reason)}")
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
        case "redelivery":
            asked = body.redelivery
            print(f"  Its store was put back to a copy made {utc_minute(asked.backup_taken_at_ms)} (a backup, say).")
            print(f"  What this node sent it since {utc_minute(asked.since_ms)} is being sent again, as it was;")
            print("  anything too old to send again is listed by `linkage due`, to tell the agency another way.")
            print("  What it sent this node since is given back to it, for its records.")
        case "returned":
            returned = body.returned
            print(f"  This node's store was put back to a copy (restore {returned.restore_id}); this agency gave")
            print(f"  back {len(returned.copies)} message(s) this node had sent it since. Each this node signed is")
            print("  recorded again as sent and delivered: see `linkage audit list --event message.recovered`")
            print("  and `linkage audit register`.")


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
        # The federation's days are the UK's, whatever zone this host keeps.
        late = review < iso_day(today(SystemClock().now_ms())) and any(
            r.currency == summary_pb2.CURRENCY_CURRENT for r in summary.risk_items
        )
        print(f"  Review by {review}{' (passed: ask the sender whether it still holds)' if late else ''}")


CHRONOLOGY_PAGE = 5_000  # entries a call: a long chronology comes in pages, each well inside 4 MiB


async def chronology_pages(
    api: node_api_pb2_grpc.NodeApiAsyncStub, actor: summary_pb2.Practitioner, case_id: str
) -> AsyncIterator[node_api_pb2.ChronologyResponse]:
    """A family's chronology, a page at a time, to its end."""
    request = node_api_pb2.ChronologyRequest(actor=actor, case_id=case_id, page_size=CHRONOLOGY_PAGE)
    while True:
        page = await api.Chronology(request)
        yield page
        if not page.next_page_token:
            return
        request.page_token = page.next_page_token


def chronology(args: argparse.Namespace) -> int:
    async def read(api: node_api_pb2_grpc.NodeApiAsyncStub) -> node_api_pb2.ChronologyResponse:
        whole = node_api_pb2.ChronologyResponse()
        async for page in chronology_pages(api, actor(args), args.case_id):
            whole.entries.extend(page.entries)
        return whole

    response = call(args, read)
    if args.json:
        emit_json(response)
        return 0
    if not response.entries:  # else it reads as a command that failed
        print("Nothing in this family's chronology yet: no assessment recorded here, and none received about them.")
    for e in response.entries:
        currency = word(summary_pb2.Currency.DESCRIPTOR, e.currency)
        source = "this agency" if e.own else e.source_agency
        at, direction = utc_minute(e.at_ms), e.direction.lower()
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


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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
