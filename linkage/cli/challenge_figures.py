"""`linkage audit challenges`: how a node's professional challenges went, for whoever
reviews the use of the local escalation policy (a safeguarding partnership audits it):
how many were raised and received, at which stage, about what, with which agencies, how
they were answered, how many were escalated and how many are overdue. Counts only, read
from the store without changing it."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

from linkage import calendar
from linkage.cli.audit_entries import agency_name, federation_directory
from linkage.cli.store_files import read_only_store
from linkage.cli.values import calendar_date, iso_day, word
from linkage.clock import SystemClock
from linkage.config import NodeConfig
from linkage.v1 import envelope_pb2, workflow_pb2

# The other agency, stage, subject, answer, respond_by ("" if none), the challenge it escalates ("" if none).
Row = tuple[str, str, str, int, str, str]


def figures(rows: list[Row], today: str) -> dict[str, Any]:
    answers = Counter(word(workflow_pb2.ChallengeAnswer.DESCRIPTOR, answer) for _, _, _, answer, _, _ in rows)
    return {
        "total": len(rows),
        "answered": {a: n for a, n in sorted(answers.items()) if a != "unspecified"},
        "unanswered": answers["unspecified"],
        "overdue": sum(not answer and bool(by) and by < today for _, _, _, answer, by, _ in rows),
        "escalations": sum(bool(escalates) for *_, escalates in rows),
        "by_stage": dict(Counter(stage for _, stage, *_ in rows).most_common()),
        "by_subject": dict(Counter(subject for _, _, subject, *_ in rows).most_common()),
        "by_agency": dict(Counter(node for node, *_ in rows).most_common()),
    }


def challenge_figures(config: NodeConfig, since_ms: int, today: str) -> dict[str, Any]:
    with closing(read_only_store(config.store_path)) as db:
        raised = db.execute(
            "SELECT node_id, stage, subject, answer, respond_by, escalates_message_id FROM challenges "
            "WHERE sent_at_ms >= ?",
            (since_ms,),
        ).fetchall()
        received: list[Row] = []
        for sender, answer, signed in db.execute(
            "SELECT i.sender, i.answer, b.signed FROM inbox i JOIN inbox_bodies b ON b.seq = i.seq "
            "WHERE i.kind = ? AND i.received_at_ms >= ?",
            (envelope_pb2.MESSAGE_KIND_CHALLENGE, since_ms),
        ):
            c = envelope_pb2.MessageBody.FromString(envelope_pb2.SignedMessage.FromString(signed).body).challenge
            respond_by = iso_day(c.respond_by) if c.respond_by.year else ""
            received.append((sender, c.stage, c.subject, answer, respond_by, c.escalates_message_id))
    return {"raised": figures(raised, today), "received": figures(received, today)}


def show(args: argparse.Namespace) -> int:
    config = NodeConfig.load(args.config)
    since = dt.date(args.since.year, args.since.month, args.since.day) if args.since else None
    since_ms = int(dt.datetime.combine(since, dt.time(), calendar.UK).timestamp() * 1000) if since else 0
    found = challenge_figures(config, since_ms, iso_day(calendar.today(SystemClock().now_ms())))
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    # Agencies by name, as the register of sharing gives them (the JSON keeps their ids).
    directory = federation_directory(config)
    print(f"Professional challenges at {agency_name(directory, config.node_id)} ({config.node_id})", end="")
    print(f"{f', since {since}' if since else ''}:")
    for side in ("raised", "received"):
        f = found[side]
        answered = ", ".join(f"{a} {n}" for a, n in f["answered"].items()) or "none"
        print(
            f"  {side.capitalize()}: {f['total']}; answered: {answered}; unanswered {f['unanswered']} "
            f"(overdue {f['overdue']}); escalations among them: {f['escalations']}"
        )
        for by in ("stage", "subject", "agency"):
            if f[f"by_{by}"]:
                named = ((agency_name(directory, k) if by == "agency" else k, n) for k, n in f[f"by_{by}"].items())
                print(f"    by {by}: " + ", ".join(f"{k} {n}" for k, n in named))
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("challenges", help="how professional challenges went: by stage, subject, agency and answer")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--since", type=calendar_date, default=None, help="YYYY-MM-DD (default: all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=show)
