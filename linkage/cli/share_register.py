"""`linkage audit register`: a node's register of sharing, as a record of processing
(mission anchors §8 item 10; ICO data sharing code): every decision whether to share,
with what went to which agency, on what lawful ground, under whose law, with what
consent and why; every summary received, from whom and on the sender's ground; every
withdrawal made or received, on what ground and whether it was erased; what agencies gave
back after this node's store was put back to a copy; and the totals by agency type, data
category, ground and consent. Read from the audit log (whose entries `audit verify`
checks) and, for what was received, the summaries still held; a summary erased or purged
since is stated from its entry, which keeps what the register needs of it."""

from __future__ import annotations

import argparse
import json
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import closing, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from linkage.cli.audit_entries import (
    EntryFilter,
    agency_name,
    federation_directory,
    find_entries,
    millis,
    received_summary,
    why_not_held,
)
from linkage.cli.protection import protection
from linkage.cli.spreadsheet import SpreadsheetWriter
from linkage.cli.store_files import read_only_store
from linkage.clock import utc_cell, utc_second
from linkage.config import NodeConfig
from linkage.directory import DirectoryView
from linkage.files import written_whole
from linkage.grounds import terms_received

COLUMNS = [
    "direction",
    "time_utc",
    "id",
    "kind",
    "decision",
    "agencies",
    "data_categories",
    "lawful_ground",
    "jurisdiction",
    "consent_status",
    "approved_by",
    "handling",
    "by",
    "why",
    "note",
]
# The entries the register reads; "summary.withdrawn" is a prefix, and takes in
# summary.withdrawn_by_sender (a withdrawal received) too.
EVENTS = ("share.decision", "message.received", "summary.withdrawn", "message.recovered")
DIRECTIONS = ("sent", "received", "withdrawn", "recalled")
BREACH_NOTE = "possible personal data breach: assess it; tell the ICO within 72 hours unless unlikely to risk anyone"


def _agency_type(directory: DirectoryView, node_id: str) -> str:
    entry = directory.nodes.get(node_id)
    return entry.agency_type if entry else "unknown"


def _sent(e: dict[str, Any], directory: DirectoryView) -> dict[str, Any]:
    detail = e["detail"]
    got = [r for r in detail.get("recipients", []) if r["fields"]]  # who received something
    left_out: dict[str, str] = detail.get("left_out", {})  # linked agencies the practitioner decided against
    return {
        "direction": "sent",
        "ts_ms": e["ts_ms"],
        "time_utc": utc_cell(e["ts_ms"]),
        "id": detail.get("share_id", ""),
        "kind": detail.get("kind", ""),
        "decision": e["decision"].removeprefix("DECISION_OUTCOME_"),
        "agencies": [(r["node"], agency_name(directory, r["node"]), r["data_categories"]) for r in got],
        "lawful_ground": e["lawful_ground"],
        "jurisdiction": detail.get("jurisdiction", ""),
        "consent_status": detail.get("consent_status", ""),
        "approved_by": detail.get("approved_by", ""),
        "handling": detail.get("handling", []),
        "by": _by(e),
        "why": e["rationale"],
        "note": "; ".join(
            [f"left out: {agency_name(directory, n)} ({why})" for n, why in left_out.items()]
            + [_advised(a) for a in detail.get("advice", [])]
        ),
    }


def _advised(advice: dict[str, str]) -> str:
    by = ", ".join(part for part in (advice["by"], advice["on"]) if part)
    return f"advice sought from {advice['role']}" + (f" ({by})" if by else "") + f": {advice['advice']}"


def _by(e: dict[str, Any]) -> str:
    return f"{e['actor'].get('name') or e['actor'].get('id')} ({e['actor'].get('role')})"


def _erasures(db: sqlite3.Connection, directory: DirectoryView, share_id: str) -> str:
    """Each recipient's answer to an erasing withdrawal, from the log: its signed receipt is
    given only once it has erased the summary."""
    said = []
    for e in find_entries(db, EntryFilter(event="message.", share_id=share_id)):
        if e["event"] in ("message.delivered", "message.undeliverable"):
            name = agency_name(directory, e["counterpart"])
            if e["event"] == "message.delivered":
                said.append(f"{name} erased it ({utc_second(e['ts_ms'])})")
            else:
                said.append(f"{name} not told ({e['detail'].get('reason') or 'undeliverable'}): tell them another way")
    return "; ".join(sorted(said)) or "no recipient has confirmed yet"  # by agency, as receipts come in any order


def _withdrawal(e: dict[str, Any], directory: DirectoryView, db: sqlite3.Connection) -> dict[str, Any]:
    """A withdrawal this node made ("withdrawn"), or one an agency made of what it had sent
    here ("recalled"): on what ground, and whether its copies were to be erased."""
    detail, ours = e["detail"], e["event"] == "summary.withdrawn"
    nodes = detail.get("recipients", []) if ours else [e["counterpart"]]
    if not detail.get("erase"):
        note = "kept, marked withdrawn"
    elif ours:
        note = _erasures(db, directory, detail.get("share_id", "")) + (
            f"; {BREACH_NOTE}" if detail.get("breach") else ""
        )
    else:
        note = f"erased here ({len(detail.get('erased', []))} version(s))"
    if cancelled := detail.get("cancelled"):
        note += f"; {len(cancelled)} message(s) of it not yet sent were cancelled, never sent"
    return {
        "direction": "withdrawn" if ours else "recalled",
        "ts_ms": e["ts_ms"],
        "time_utc": utc_cell(e["ts_ms"]),
        "id": detail.get("share_id", "") if ours else e["message_id"],
        "kind": "WITHDRAWAL",
        "decision": detail.get("ground") or "(no ground)",
        "agencies": [(node, agency_name(directory, node), []) for node in nodes],
        "lawful_ground": "",
        "jurisdiction": "",
        "consent_status": "",
        "approved_by": "",
        "handling": [],
        "by": _by(e) if ours else "its sender",
        "why": e["rationale"],
        "note": note,
    }


def _received(
    e: dict[str, Any], config: NodeConfig, directory: DirectoryView, db: sqlite3.Connection
) -> dict[str, Any] | None:
    sender, detail = e["counterpart"], e["detail"]
    summary = received_summary(db, e["message_id"])
    if summary is not None:
        by = summary.decision.decided_by
        held = terms_received(summary, config.node_id) | {
            "by": f"{by.name or by.id} ({by.role}) at the sender",
            "note": "",
        }
    elif e["summary_id"] and e["decision"]:  # a summary no longer held: its entry says what it went on
        # An entry made before 2026-12-05 holds none of these but the ground.
        held = {key: detail.get(key, "") for key in ("jurisdiction", "consent_status", "approved_by")}
        held |= {
            "data_categories": detail.get("data_categories", ["(not recorded)"]),
            "handling": detail.get("handling", []),
            "by": "",
            "note": why_not_held(db, sender, e["message_id"]),
        }
    else:
        return None  # carried no summary: a notice, a question, a request declined
    return {
        "direction": "received",
        "ts_ms": e["ts_ms"],
        "time_utc": utc_cell(e["ts_ms"]),
        "id": e["message_id"],
        "kind": detail.get("kind", ""),
        "decision": "RECEIVED",
        "agencies": [(sender, agency_name(directory, sender), held.pop("data_categories"))],
        "lawful_ground": e["lawful_ground"],
        "why": e["rationale"],
        **held,
    }


def _recovered(e: dict[str, Any], directory: DirectoryView) -> dict[str, Any] | None:
    """A share or withdrawal this node made after the copy its store was put back to, as the
    agency it went to gave it back (node/returned_copies.py): one row per agency."""
    detail, holder = e["detail"], e["counterpart"]
    withdrawal = "ground" in detail
    if not withdrawal and "consent_status" not in detail:
        return None  # neither a summary nor a withdrawal
    name = agency_name(directory, holder)
    return {
        "direction": "withdrawn" if withdrawal else "sent",
        "ts_ms": e["ts_ms"],
        "time_utc": utc_cell(detail["created_at_ms"]),
        "id": detail["share_id"],
        "kind": detail["kind"],
        "decision": (detail["ground"] or "(no ground)")
        if withdrawal
        else e["decision"].removeprefix("DECISION_OUTCOME_"),
        "agencies": [(holder, name, detail.get("data_categories", []))],
        "lawful_ground": e["lawful_ground"],
        "jurisdiction": detail.get("jurisdiction", ""),
        "consent_status": detail.get("consent_status", ""),
        "approved_by": detail.get("approved_by", ""),
        "handling": detail.get("handling", []),
        "by": detail.get("decided_by", ""),
        "why": e["rationale"],
        "note": f"this node's own record was lost in restore {detail['restore_id']}; {name} gave it back "
        f"({utc_second(e['ts_ms'])})",
    }


@dataclass
class _Totals:
    """One direction's figures, counted row by row: what a record of processing states,
    which categories of data went to (or came from) which kinds of agency, on which
    grounds, and with what consent."""

    rows: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    categories: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    grounds: Counter[str] = field(default_factory=Counter)
    consent: Counter[str] = field(default_factory=Counter)
    jurisdictions: Counter[str] = field(default_factory=Counter)

    def add(self, row: dict[str, Any], directory: DirectoryView) -> None:
        self.rows += 1
        self.decisions[row["decision"]] += 1
        if not row["agencies"]:
            return  # a decision not to share moved nothing
        for node, _, data in row["agencies"]:
            self.categories[_agency_type(directory, node)].update(data or ["(none stated)"])
        self.grounds.update(g for g in row["lawful_ground"].split(",") if g)
        self.consent[row["consent_status"] or "(not recorded)"] += 1
        self.jurisdictions[row["jurisdiction"] or "(not recorded)"] += 1

    def figures(self) -> dict[str, Any]:
        return {
            "decisions": dict(self.decisions.most_common()),
            "data_categories_by_agency_type": {t: dict(c.most_common()) for t, c in sorted(self.categories.items())},
            "lawful_grounds": dict(self.grounds.most_common()),
            "consent": dict(self.consent.most_common()),
            "jurisdictions": dict(self.jurisdictions.most_common()),
        }


def _rows(
    db: sqlite3.Connection, config: NodeConfig, directory: DirectoryView, since: int | None, until: int | None
) -> Iterator[dict[str, Any]]:
    """The register's rows in the order the log recorded them, one at a time: a year of a
    busy node's decisions need not fit in memory."""
    for e in find_entries(db, EntryFilter(event=EVENTS, since=since, until=until)):
        if e["event"] == "share.decision":
            yield _sent(e, directory)
        elif e["event"] == "message.received":
            if (row := _received(e, config, directory, db)) is not None:
                yield row
        elif e["event"] == "message.recovered":
            if (row := _recovered(e, directory)) is not None:
                yield row
        else:
            yield _withdrawal(e, directory, db)


def _flat(row: dict[str, Any]) -> dict[str, str]:
    return {
        **{k: str(v) for k, v in row.items() if isinstance(v, str)},
        "agencies": "; ".join(name for _, name, _ in row["agencies"]),
        "data_categories": "; ".join(f"{name}: {', '.join(data)}" for _, name, data in row["agencies"]),
        "handling": ", ".join(row["handling"]),
    }


def show(args: argparse.Namespace) -> int:
    config = NodeConfig.load(args.config)
    directory = federation_directory(config)
    since, until = millis("--since", args.since), millis("--until", args.until)
    with closing(read_only_store(config.store_path)) as db:
        # Two passes, the totals and then the rows, over one snapshot of a store the node
        # may be writing to: the totals printed are the rows' totals.
        db.execute("BEGIN")
        totals = {direction: _Totals() for direction in DIRECTIONS}
        for row in _rows(db, config, directory, since, until):
            totals[row["direction"]].add(row, directory)
        with written_whole(args.csv) if args.csv else nullcontext() as out:
            writer = SpreadsheetWriter(out, fieldnames=COLUMNS) if out else None
            if writer:
                writer.writeheader()
            kept = protection(config, directory, db)
            if args.json:
                figures = {direction: t.figures() for direction, t in totals.items()}
                head = json.dumps({"totals": figures, "protection": kept})
                print(head[:-1] + ', "rows": [', end="")  # the rows follow, written one at a time
            else:
                _print_totals(config, directory, totals, f"{args.since or 'the start'} to {args.until or 'now'}")
                print("How it is kept and protected (UK GDPR Art. 30(1)(f) and (g)):")
                for heading, said in kept.items():
                    print(f"  {heading}: {said}")
            for n, row in enumerate(_rows(db, config, directory, since, until)):
                if writer:
                    writer.writerow(_flat(row))
                if args.json:
                    print(("," if n else "") + "\n" + json.dumps(_flat(row)), end="")
                else:
                    _print_row(row)
        if args.json:
            print("\n]}")
        elif args.csv:
            print(f"wrote {sum(t.rows for t in totals.values())} rows to {args.csv}")
    return 0


def _print_totals(config: NodeConfig, directory: DirectoryView, totals: dict[str, _Totals], period: str) -> None:
    me = directory.nodes.get(config.node_id)
    print(f"Register of sharing: {me.agency_name if me else config.node_id} ({config.node_id}), {period}")
    for side, heading in (("sent", "Decisions whether to share"), ("received", "Summaries received")):
        t = totals[side].figures()
        outcomes = f" ({_counts(t['decisions'])})" if side == "sent" and totals[side].rows else ""
        print(f"{heading}: {totals[side].rows}{outcomes}")
        for agency_type, data in t["data_categories_by_agency_type"].items():
            print(f"  {'to' if side == 'sent' else 'from'} {agency_type}: {_counts(data)}")
        for key, label in (("lawful_grounds", "grounds"), ("consent", "consent"), ("jurisdictions", "law of")):
            if t[key]:
                print(f"  {label}: {_counts(t[key])}")
    for side, heading in (("withdrawn", "Withdrawals made"), ("recalled", "Withdrawals received")):
        made = totals[side]
        print(f"{heading}: {made.rows}" + (f" ({_counts(made.figures()['decisions'])})" if made.rows else ""))


def _print_row(r: dict[str, Any]) -> None:
    print(f"{r['time_utc']} UTC  {r['direction']:<9} {r['decision']:<15} {r['kind']}  by {r['by'] or '-'}")
    for _, name, data in r["agencies"]:
        print(f"    {'to' if r['direction'] in ('sent', 'withdrawn') else 'from'} {name}: {', '.join(data) or '-'}")
    if r["kind"] != "WITHDRAWAL":
        consent = f"consent {r['consent_status'] or '-'}" + (
            f", approved by {r['approved_by']}" if r["approved_by"] else ""
        )
        law = f"; law of {r['jurisdiction']}" if r["jurisdiction"] else ""
        print(f"    ground: {r['lawful_ground'] or '-'}{law}; {consent}")
    if r["handling"]:
        print(f"    handling: {', '.join(r['handling'])}")
    print(f"    why: {r['why'] or '-'}")
    if r["note"]:
        print(f"    {r['note']}")


def _counts(counted: dict[str, int]) -> str:
    return ", ".join(f"{k} {n}" for k, n in counted.items())


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "register", help="the register of sharing: every decision and every summary received, with totals"
    )
    p.add_argument("--config", type=Path, required=True, help="the node's node.toml")
    p.add_argument("--since", help="ISO time, e.g. 2026-11-01")
    p.add_argument("--until", help="ISO time")
    p.add_argument("--csv", type=Path, help="also write one row per decision and per summary received here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=show)
