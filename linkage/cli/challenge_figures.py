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
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path
from typing import Any

from linkage.cli.store_files import read_only_store
from linkage.cli.values import calendar_date, word
from linkage.config import NodeConfig
from linkage.v1 import envelope_pb2, workflow_pb2

Row = tuple[str, str, str, int, str]  # the other agency, stage, subject, answer, respond_by ("" if none)


def figures(rows: Iterable[Row], escalations: int, today: str) -> dict[str, Any]:
    rows = list(rows)
    answers = Counter(word(workflow_pb2.ChallengeAnswer.DESCRIPTOR, answer) for _, _, _, answer, _ in rows)
    return {
        "total": len(rows),
        "answered": {a: n for a, n in sorted(answers.items()) if a != "unspecified"},
        "unanswered": answers["unspecified"],
        "overdue": sum(not answer and bool(by) and by < today for _, _, _, answer, by in rows),
        "escalations": escalations,
        "by_stage": dict(Counter(stage for _, stage, _, _, _ in rows).most_common()),
        "by_subject": dict(Counter(subject for _, _, subject, _, _ in rows).most_common()),
        "by_agency": dict(Counter(node for node, _, _, _, _ in rows).most_common()),
    }


def challenge_figures(config: NodeConfig, since_ms: int, today: str) -> dict[str, Any]:
    with closing(read_only_store(config.store_path)) as db:
        raised = db.execute(
            "SELECT node_id, stage, subject, answer, respond_by, escalates_message_id FROM challenges "
            "WHERE sent_at_ms >= ?",
            (since_ms,),
        ).fetchall()
        received = []
        for sender, answer, signed in db.execute(
            "SELECT i.sender, i.answer, b.signed FROM inbox i JOIN inbox_bodies b ON b.seq = i.seq "
            "WHERE i.kind = ? AND i.received_at_ms >= ?",
            (envelope_pb2.MESSAGE_KIND_CHALLENGE, since_ms),
        ):
            c = envelope_pb2.MessageBody.FromString(envelope_pb2.SignedMessage.FromString(signed).body).challenge
            respond_by = f"{c.respond_by.year:04d}-{c.respond_by.month:02d}-{c.respond_by.day:02d}"
            received.append((sender, c.stage, c.subject, answer, respond_by if c.respond_by.year else "", c))
    return {
        "raised": figures((r[:5] for r in raised), sum(bool(r[5]) for r in raised), today),
        "received": figures((r[:5] for r in received), sum(bool(r[5].escalates_message_id) for r in received), today),
    }


def show(args: argparse.Namespace) -> int:
    config = NodeConfig.load(args.config)
    since = dt.date(args.since.year, args.since.month, args.since.day) if args.since else None
    since_ms = int(dt.datetime.combine(since, dt.time(), dt.UTC).timestamp() * 1000) if since else 0
    found = challenge_figures(config, since_ms, dt.datetime.now(dt.UTC).date().isoformat())
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    print(f"Professional challenges at {config.node_id}{f', since {since}' if since else ''}:")
    for side in ("raised", "received"):
        f = found[side]
        answered = ", ".join(f"{a} {n}" for a, n in f["answered"].items()) or "none"
        print(
            f"  {side.capitalize()}: {f['total']}; answered: {answered}; unanswered {f['unanswered']} "
            f"(overdue {f['overdue']}); escalations among them: {f['escalations']}"
        )
        for by in ("stage", "subject", "agency"):
            if f[f"by_{by}"]:
                print(f"    by {by}: " + ", ".join(f"{k} {n}" for k, n in f[f"by_{by}"].items()))
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("challenges", help="how professional challenges went: by stage, subject, agency and answer")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--since", type=calendar_date, default=None, help="YYYY-MM-DD (default: all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=show)
