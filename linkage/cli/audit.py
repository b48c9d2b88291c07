"""`linkage audit ...`: the information governance officer's tools. They read a
node's store directly (read-only), so they work on a copy or a backup too."""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import html
import json
import sqlite3
import textwrap
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from linkage.auditlog import check_cosignature, metalog_anchor, open_checkpoint, verify_metalog, verify_store
from linkage.cli import challenge_figures, share_register
from linkage.cli.audit_entries import (
    EntryFilter,
    agency_name,
    cosigned_held,
    federation_directory,
    find_entries,
    millis,
    received_summary,
    why_not_held,
)
from linkage.cli.spreadsheet import SpreadsheetWriter
from linkage.cli.store_files import attach_read_only, read_only_store
from linkage.cli.terminal import harmless
from linkage.cli.values import count, link_token
from linkage.clock import utc_cell, utc_minute, utc_second
from linkage.config import GatewayConfig, NodeConfig
from linkage.directory import DirectoryView
from linkage.files import written_whole
from linkage.reasons import Rejected
from linkage.tokens import IdentifierError, LinkageKey
from linkage.transport import secure_channel
from linkage.v1 import audit_pb2, envelope_pb2, gateway_pb2, gateway_pb2_grpc, summary_pb2
from node.audit_events import MEANING

# -- verify ---------------------------------------------------------------------------


def _read_checkpoints(paths: list[Path]) -> list[audit_pb2.SignedCheckpoint]:
    """The checkpoints in files as `linkage audit checkpoints` writes them: a JSON object per line."""
    found = []
    for path in paths:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                signed = base64.b64decode(json.loads(line)["signed"], validate=True)
                found.append(audit_pb2.SignedCheckpoint.FromString(signed))
            except (ValueError, KeyError, TypeError, DecodeError):
                raise SystemExit(
                    f"linkage: --checkpoints: line {n} of {path} is not a checkpoint as `linkage audit checkpoints` "
                    "writes them (a JSON object with its signed checkpoint in `signed`)"
                ) from None
    return found


def _from_gateway(config: NodeConfig) -> gateway_pb2.WitnessedCheckpoints:
    async def fetch() -> gateway_pb2.WitnessedCheckpoints:
        async with secure_channel(config.gateway_address, config.tls, config.gateway_server_name) as channel:
            request = gateway_pb2.GetCheckpointsRequest(node_id=config.node_id)
            return await gateway_pb2_grpc.GatewayStub(channel).GetCheckpoints(request, timeout=10)

    try:
        return asyncio.run(fetch())
    except grpc.aio.AioRpcError as exc:
        raise SystemExit(f"linkage: cannot fetch checkpoints from the gateway: {exc.code().name}") from None


def _say_cosigned(
    signed: audit_pb2.SignedCheckpoint, cosignature: audit_pb2.Cosignature, directory: DirectoryView, which: str
) -> None:
    """Whether the witness's cosignature holds. One that does not proves nothing either way (the
    gateway's witness key may have changed since), so it is reported, and the checkpoint is
    checked as any other."""
    size = audit_pb2.Checkpoint.FromString(signed.checkpoint).tree_size
    try:
        check_cosignature(cosignature, signed, directory)
    except Rejected as exc:
        print(f"  ignored the cosignature of {which} ({size} entries): {exc}")
        return
    print(
        f"  {which} ({size} entries) was cosigned by the witness, gateway "
        f"{cosignature.gateway_id}, at {utc_second(cosignature.at_ms)}"
    )


def verify(args: argparse.Namespace) -> int:
    if args.gateway_config:
        gw = GatewayConfig.load(args.gateway_config)
        with closing(read_only_store(gw.store_path)) as db:
            anchor = metalog_anchor(db)
            result = verify_metalog(db, anchor)
        print(("OK" if result.ok else "FAILED") + f": gateway metadata log, {result.entries} entries checked")
        if anchor:
            print(
                f"  entries 1-{anchor[0]} (to {utc_second(anchor[1])}) were purged by retention "
                f"([retention] metalog_days); the rest chain on from entry {anchor[0]}'s hash"
            )
        if not result.ok:
            print(f"  first bad entry: {result.first_bad_seq}: {result.problem}")
        return 0 if result.ok else 1
    config = NodeConfig.load(args.config)
    directory = federation_directory(config)
    signed = _read_checkpoints(args.checkpoints)
    with closing(read_only_store(config.store_path)) as db:
        held = cosigned_held(db)
    if held is not None:
        signed.append(held[0])
        _say_cosigned(*held, directory, "the checkpoint this store keeps")
    elif any(g.witness_public_key for g in directory.directory.gateways) and not args.from_gateway:
        print("  this store holds no checkpoint cosigned by the witness: --from-gateway checks what the gateway holds")
    if args.from_gateway:
        witnessed = _from_gateway(config)
        signed += ([witnessed.latest] if witnessed.HasField("latest") else []) + list(witnessed.breaks)
        if witnessed.HasField("latest_cosignature"):
            _say_cosigned(witnessed.latest, witnessed.latest_cosignature, directory, "the gateway's latest checkpoint")
        if witnessed.breaks:
            print(
                f"  the gateway recorded {len(witnessed.breaks)} break(s): a checkpoint of this log it held, "
                "then one that did not extend it (each is checked below)"
            )
    lodged: dict[bytes, audit_pb2.Checkpoint] = {}  # each once, however many verified copies of it came
    for item in {s.SerializeToString(): s for s in signed}.values():  # identical copies: said once
        try:
            checkpoint = open_checkpoint(item, directory)
        except Rejected as exc:  # said even if another copy of the same checkpoint verifies
            print(f"  ignored a checkpoint: {exc}")
            continue
        if checkpoint.node_id == config.node_id:
            lodged.setdefault(item.checkpoint, checkpoint)
    checkpoints = list(lodged.values())
    report = verify_store(config.store_path, checkpoints, args.jobs)
    if report.ok:
        print(f"OK: {report.entries} entries; root {report.root.hex()}")
        print(
            f"  consistent with {len(report.confirmed)} of {len(checkpoints)} lodged checkpoints"
            + (f" (largest {max(report.confirmed)} entries)" if report.confirmed else "")
        )
        return 0
    print(f"FAILED: {report.entries} entries; first bad entry: {report.first_bad_seq}")
    for problem in report.problems:
        print(f"  {problem}")
    return 1


def checkpoints_held(args: argparse.Namespace) -> int:
    """Checkpoints of another node's log that this node holds in its receipts."""
    config = NodeConfig.load(args.config)
    with closing(read_only_store(config.store_path)) as db, written_whole(args.out) as out:
        count = 0
        for (receipt,) in db.execute(
            "SELECT receipt FROM outbox WHERE receipt IS NOT NULL AND recipient = ?", (args.of,)
        ):
            body = envelope_pb2.ReceiptBody.FromString(envelope_pb2.Receipt.FromString(receipt).body)
            if body.HasField("checkpoint"):
                out.write(json.dumps({"signed": base64.b64encode(body.checkpoint.SerializeToString()).decode()}) + "\n")
                count += 1
        if not count:  # no file: an empty one would pass for what the other node's IG officer asked for
            held = [r for (r,) in db.execute("SELECT DISTINCT recipient FROM outbox WHERE receipt IS NOT NULL")]
            raise SystemExit(
                f"linkage: this node holds no checkpoint of the audit log of {args.of!r} (no receipt from that node "
                f"carries one); it holds receipts from {', '.join(sorted(held)) or 'no agency yet'}"
            )
    print(f"wrote {count} checkpoints of {args.of}'s audit log to {args.out}")
    return 0


# -- list, export, report --------------------------------------------------------------


def _token(config: NodeConfig, person: str) -> str:
    scheme, _, value = person.partition(":")
    try:
        return LinkageKey.load(config.linkage_key).token(scheme, value).hex()
    except IdentifierError as exc:
        raise SystemExit(f"linkage: --person: {exc}") from None


@contextmanager
def _entries(args: argparse.Namespace) -> Iterator[Iterator[dict[str, Any]]]:
    """The entries the command's filters name, read one at a time: a node's whole log can
    run to millions, more than an IG officer's machine should hold at once. With
    --gateway-config, those of the gateway's metadata log, for the federation's operator."""
    given: bytes | None = args.token
    if args.gateway_config:
        if args.person or given:
            raise SystemExit(
                "linkage: --person and --token read a node's log: the gateway's metadata log holds no link "
                "tokens and nothing about a person (list a node's with --config)"
            )
        path, table, token = GatewayConfig.load(args.gateway_config).store_path, "metalog", None
    else:
        if args.node:
            raise SystemExit("linkage: --node reads the gateway's metadata log; for a node's, give --counterpart")
        config = NodeConfig.load(args.config)
        path, table = config.store_path, "audit"
        token = _token(config, args.person) if args.person else given.hex() if given else None
    wanted = EntryFilter(
        token=token,
        event=args.event,
        counterpart=args.counterpart,
        decision=args.decision,
        since=millis("--since", args.since),
        until=millis("--until", args.until),
        node=args.node,
    )
    with closing(read_only_store(path)) as db:
        yield find_entries(db, wanted, table)


# `audit list`'s columns, as wide as what a node's log holds needs (a longer value pushes the
# rest of its line along). At the gateway every caller is a node, and no entry has a rationale:
# which node, and which message, say more.
LIST_COLUMNS = (("seq", 6), ("time", 23), ("event", max(map(len, MEANING))), ("by", 24), ("with", 12), ("decision", 14))
WHY_WIDTH = 60  # the rationale's first words; `--json` holds it whole
GATEWAY_HEADINGS = ("seq", "time", "event", "node", "sent to", "outcome", "message")


def _one_line(text: str, width: int) -> str:
    """A text on one line of at most `width` characters (`...` says where it was cut)."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _list_line(cells: Iterable[str]) -> str:
    (seq, *rest), widths = cells, [width for _, width in LIST_COLUMNS]
    line = f"{seq:>{widths[0]}}"
    for cell, width in zip(rest, [*widths[1:], 0], strict=True):
        line += f" {cell:<{width}}"
    return line.rstrip()


def audit_list(args: argparse.Namespace) -> int:
    listed = 0
    with _entries(args) as entries:
        for e in entries:
            listed += 1
            if args.json:
                print(json.dumps(e, sort_keys=True))
                continue
            if listed == 1:
                headings = GATEWAY_HEADINGS if args.gateway_config else (*(h for h, _ in LIST_COLUMNS), "why")
                print(_list_line(headings))
            if args.gateway_config:
                who, why = e["actor"].get("id"), e["message_id"]
            else:
                who, why = e["actor"].get("role") or e["actor"].get("id"), _one_line(e["rationale"], WHY_WIDTH)
            decision = e["decision"].removeprefix("DECISION_OUTCOME_")
            cells = (e["seq"], utc_second(e["ts_ms"]), e["event"], who, e["counterpart"], decision, why)
            print(_list_line(str(c) or "-" for c in cells))
    if not listed and not args.json:  # else a mistyped filter (an event's name, say) looks like an empty log
        log = "the gateway's metadata log" if args.gateway_config else "this node's audit log"
        given = _filters_given(args)
        print(f"no entry of {log} matches {given}" if given else f"{log} is empty")
    return 0


# As `filters` adds them.
FILTERS = ("since", "until", "person", "token", "event", "counterpart", "node", "decision")


def _event_kinds() -> str:
    """What each kind of entry in a node's log means, for `--event`."""
    width = max(map(len, MEANING))
    kinds = "\n".join(
        textwrap.fill(meaning, 78, initial_indent=f"  {event:<{width}}  ", subsequent_indent=" " * (width + 4))
        for event, meaning in MEANING.items()
    )
    return f"the kinds of entry a node's audit log holds, for --event:\n{kinds}"


def _filters_given(args: argparse.Namespace) -> str:
    """The filters as the command was given them, to say what matched nothing."""
    given = [(name, getattr(args, name, None)) for name in FILTERS]
    return " ".join(f"--{name} {value.hex() if isinstance(value, bytes) else value}" for name, value in given if value)


COLUMNS = [
    "seq",
    "ts_ms",
    "time_utc",
    "event",
    "meaning",  # the event in plain words (a node's; the gateway's are left blank)
    "actor_id",
    "actor_name",
    "actor_role",
    "counterpart",
    "summary_id",
    "message_id",
    "decision",
    "lawful_ground",
    "rationale",
    "tokens",
    "detail",
]


def _flat(e: dict[str, Any]) -> dict[str, Any]:
    return {
        "seq": e["seq"],
        "ts_ms": e["ts_ms"],
        "time_utc": utc_cell(e["ts_ms"]),
        "event": e["event"],
        "meaning": MEANING.get(e["event"], ""),
        "actor_id": e["actor"].get("id", ""),
        "actor_name": e["actor"].get("name", ""),
        "actor_role": e["actor"].get("role", ""),
        "counterpart": e["counterpart"],
        "summary_id": e["summary_id"],
        "message_id": e["message_id"],
        "decision": e["decision"],
        "lawful_ground": e["lawful_ground"],
        "rationale": e["rationale"],
        "tokens": " ".join(e["tokens"]),
        "detail": json.dumps(e["detail"], sort_keys=True),
    }


JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".json")  # an --out named so, with no --format, gets JSON lines


def export(args: argparse.Namespace) -> int:
    form = args.format or ("jsonl" if args.out.suffix.lower() in JSON_LINES_SUFFIXES else "csv")
    written = 0
    with _entries(args) as entries, written_whole(args.out) as out:
        if form == "csv":
            writer = SpreadsheetWriter(out, fieldnames=COLUMNS)
            writer.writeheader()
        for e in entries:
            if form == "csv":
                writer.writerow(_flat(e))
            else:
                out.write(json.dumps(e, sort_keys=True) + "\n")
            written += 1
    print(f"exported {written} entries to {args.out} ({'JSON lines' if form == 'jsonl' else 'CSV'})")
    return 0


# A withdrawal's entries, with what its erasure meant at this node.
ERASURE = {
    "summary.withdrawn": "every recipient erases it",
    "summary.withdrawn_by_sender": "erased here",
    "summary.erased": "",  # its label says so
}


def report_rows(config: NodeConfig, person: str) -> list[dict[str, str]]:
    """Everything shared or received about one person: what, with whom, when, why, on what ground."""
    directory = federation_directory(config)
    token = _token(config, person)
    rows = []
    with closing(read_only_store(config.store_path)) as db:
        for e in find_entries(db, EntryFilter(token=token)):
            what = MEANING.get(e["event"], e["event"])
            detail = e["detail"]
            counterparts = [c for c in e["counterpart"].split(",") if c]
            if e["event"] == "share.decision":
                parts = [
                    f"{agency_name(directory, r['node'])}: {', '.join(r['data_categories']) or 'nothing'}"
                    + (f" (withheld: {'; '.join(r['withheld'])})" if r["withheld"] else "")
                    for r in detail.get("recipients", [])
                ]
                what += " - " + ("; ".join(parts) if parts else "nothing sent") + _handling(detail.get("handling", []))
                counterparts = [r["node"] for r in detail.get("recipients", []) if r["fields"]]  # who got something
            elif e["event"] == "message.received" and (summary := received_summary(db, e["message_id"])):
                categories = ", ".join(sorted({i.category for i in summary.risk_items}))
                what += f' - "{summary.headline}" ({categories})' + _handling(summary.decision.handling_conditions)
                what += _exemptions(summary)
            elif e["event"] == "message.received" and e["summary_id"] and e["decision"]:  # a summary since gone
                categories = ", ".join(detail.get("data_categories", [])) or "its data categories not recorded"
                what += f" ({categories}; {why_not_held(db, e['counterpart'], e['message_id'])})"
            elif e["event"] in ERASURE:  # on what ground, and whether it is erased
                erased = f"; {ERASURE[e['event']]}" if detail.get("erase") else ""
                what += f" ({detail.get('ground') or 'no ground given'}{erased})"
            elif isinstance(kind := detail.get("kind"), str):  # what kind of message: a notice, a question...
                told = e["event"] == "message.read" and detail.get("sender_told")  # a summary's first read
                what += f"{', its sender told' if told else ''} ({kind.replace('_', ' ')})"
            rows.append(
                {
                    "when": utc_second(e["ts_ms"]),
                    "what": what,
                    "with": ", ".join(agency_name(directory, c) for c in counterparts) or "-",
                    "by": f"{e['actor'].get('name') or e['actor'].get('id')} ({e['actor'].get('role')})",
                    "why": e["rationale"] or "-",
                    "ground": (e["lawful_ground"] or e["decision"] or "-")
                    + (f"; law of {detail['jurisdiction']}" if detail.get("jurisdiction") else ""),
                }
            )
    return rows


def _exemptions(summary: summary_pb2.RiskSummary) -> str:
    """The exemptions its sender asks whoever answers a subject access request to consider, by item."""
    items = enumerate(summary.risk_items, 1)
    tagged = [f"item {n} {', '.join(i.sar_exemptions)}" for n, i in items if i.sar_exemptions]
    return f" [exemptions to consider: {'; '.join(tagged)}]" if tagged else ""


def _handling(conditions: Iterable[str]) -> str:
    """The sender's handling conditions, for whoever answers a subject access request:
    DO_NOT_DISCLOSE_TO_SUBJECT asks them to consider exemptions first."""
    listed = ", ".join(conditions)
    return f" [handling: {listed}]" if listed else ""


def _html(config: NodeConfig, person: str, rows: list[dict[str, str]]) -> str:
    me = federation_directory(config).nodes.get(config.node_id)
    title = f"Subject access report: {me.agency_name if me else config.node_id}"
    cells = "\n".join(
        "<tr>"
        + "".join(f"<td>{html.escape(harmless(r[k]))}</td>" for k in ("when", "what", "with", "by", "why", "ground"))
        + "</tr>"
        for r in rows
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #1b1b1b; }}
h1 {{ font-size: 1.4rem; }} table {{ border-collapse: collapse; width: 100%; }}
th, td {{ border: 1px solid #bbb; padding: .4rem .6rem; text-align: left; vertical-align: top; font-size: .9rem; }}
th {{ background: #eef2f5; }} .note {{ color: #555; font-size: .85rem; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="note">Everything this node shared or received about the person identified as
{html.escape(person.split(":", 1)[0])} number ending {html.escape(person[-4:])}: what, with whom, when, why and on
what ground. {len(rows)} entries, generated {utc_minute(int(dt.datetime.now(dt.UTC).timestamp() * 1000))} from the
node's audit log.</p>
<table id="entries"><thead><tr><th>When</th><th>What</th><th>With</th><th>By</th><th>Why</th>
<th>Ground</th></tr></thead>
<tbody>
{cells}
</tbody></table></body></html>
"""


def report(args: argparse.Namespace) -> int:
    config = NodeConfig.load(args.config)
    rows = report_rows(config, args.person)
    if args.html:
        with written_whole(args.html) as out:
            out.write(_html(config, args.person, rows))
        print(f"wrote {len(rows)} entries to {args.html}")
        return 0
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no entry of this node's audit log is about {args.person}")
    for r in rows:
        print(
            f"{r['when']}  {r['what']}\n    with: {r['with']}; by: {r['by']}\n    why: {r['why']}\n"
            f"    ground: {r['ground']}"
        )
    return 0


# -- cross-check ------------------------------------------------------------------------


def cross_check(args: argparse.Namespace) -> int:
    """Compare what a node says it sent and had delivered with the gateway's metadata log.

    SQLite joins the two stores, so neither is held in memory: a year of a busy node's
    messages, and of the gateway's for every node, runs to millions."""
    config = NodeConfig.load(args.config)
    with closing(read_only_store(args.gateway_db)) as db:
        anchor = metalog_anchor(db)
        attach_read_only(db, config.store_path, "node")
        # The gateway's record of what was sent before its log's retention horizon may be gone.
        horizon_ms = anchor[1] if anchor else -1
        # What the gateway forwarded from this node, read from its entries (the bytes the chain
        # covers, not the side columns), the last record of a message kept: a temporary table,
        # which SQLite moves to disk when large.
        db.execute("CREATE TEMP TABLE forwarded(message_id TEXT PRIMARY KEY, recipient TEXT NOT NULL)")
        db.execute(
            "INSERT OR REPLACE INTO forwarded SELECT json_extract(entry, '$.message_id'), "
            "json_extract(entry, '$.counterpart') FROM metalog WHERE instr(entry, '\"envelope.forwarded\"') > 0 "
            "AND json_extract(entry, '$.event') = 'envelope.forwarded' AND json_extract(entry, '$.actor.id') = ? "
            "ORDER BY seq",
            (config.node_id,),
        )
        problems = 0
        for line in _disagreements(db, horizon_ms):
            problems += 1
            print(f"  {line}")
        if problems:
            print(f"DISAGREE: {problems} problems, above")
            return 1
        ((compared,),) = db.execute("SELECT count(*) FROM node.outbox WHERE created_at_ms > ?", (horizon_ms,))
        ((older,),) = db.execute("SELECT count(*) FROM node.outbox WHERE created_at_ms <= ?", (horizon_ms,))
        ((forwarded,),) = db.execute("SELECT count(*) FROM forwarded")
    print(f"AGREE: {compared} outgoing messages, {forwarded} forwarded by the gateway")
    if older:
        print(f"  {older} sent before the gateway's retention horizon ({utc_second(horizon_ms)}) not compared")
    return 0


def _disagreements(db: sqlite3.Connection, horizon_ms: int) -> Iterator[str]:
    """Each way the node's outbox (schema `node`) and the gateway's `forwarded` differ, by message."""
    for message_id, recipient, state, unreceipted, forwarded_to in db.execute(
        "SELECT o.message_id, o.recipient, o.state, o.receipt IS NULL, f.recipient "
        "FROM node.outbox o LEFT JOIN forwarded f USING (message_id) WHERE o.created_at_ms > ? "
        "AND ((o.state IN ('sent', 'delivered') AND f.message_id IS NULL) OR f.recipient != o.recipient "
        "OR (o.state = 'delivered' AND o.receipt IS NULL)) ORDER BY o.message_id",
        (horizon_ms,),
    ):
        if state in ("sent", "delivered") and forwarded_to is None:
            yield f"{message_id}: the node says {state}, the gateway has no record of forwarding it"
        if forwarded_to is not None and forwarded_to != recipient:
            yield f"{message_id}: forwarded to {forwarded_to}, addressed to {recipient}"
        if state == "delivered" and unreceipted:
            yield f"{message_id}: delivered without a stored receipt"
    for (message_id,) in db.execute(
        "SELECT message_id FROM forwarded f WHERE NOT EXISTS "
        "(SELECT 1 FROM node.outbox o WHERE o.message_id = f.message_id) ORDER BY message_id"
    ):
        yield f"{message_id}: the gateway forwarded it from this node, the node has no record of it"


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    audit = commands.add_parser("audit", help="information governance: verify, list, export and report the audit log")
    sub = audit.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser("verify", help="check the audit log has not been edited, cut or rewritten")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, help="the node's node.toml")
    where.add_argument("--gateway-config", type=Path, help="verify the gateway's metadata log instead")
    p.add_argument(
        "--checkpoints",
        type=Path,
        action="append",
        default=[],
        help="checkpoint file(s) held by others (see 'audit checkpoints')",
    )
    p.add_argument("--from-gateway", action="store_true", help="also fetch the checkpoints lodged with the gateway")
    p.add_argument(
        "--jobs",
        type=count(64),
        default=0,
        help="processes checking the node's log at once: 0 (the default) for one per CPU, 1 on a host busy serving",
    )
    p.set_defaults(handler=verify)

    p = sub.add_parser("checkpoints", help="export the checkpoints of another node's log held in this node's receipts")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--of", required=True, help="the node whose checkpoints to export")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(handler=checkpoints_held)

    def filters(q: argparse.ArgumentParser) -> None:
        log = q.add_mutually_exclusive_group(required=True)
        log.add_argument("--config", type=Path, help="the node's node.toml")
        log.add_argument(
            "--gateway-config", type=Path, help="the gateway's gateway.toml: its metadata log instead (no content)"
        )
        q.add_argument("--since", help="ISO time, e.g. 2026-11-01")
        q.add_argument("--until", help="ISO time")
        q.add_argument("--person", help="an identifier, e.g. nhs:9434765919 (turned into its link token)")
        q.add_argument("--token", type=link_token, help="a link token (hex)")
        q.add_argument(
            "--event",
            help="event kind or prefix, e.g. share. or message.received (gateway: envelope.); "
            "`audit list --help` lists the kinds",
        )
        q.add_argument("--counterpart", help="the other agency's node id (at the gateway: the node sent to)")
        q.add_argument("--node", help="the gateway's log: entries a node made, or that were sent to it")
        q.add_argument("--decision", help="e.g. NOT_SHARED (at the gateway: an outcome, e.g. diverged)")

    p = sub.add_parser(
        "list",
        help="list audit entries, filtered",
        epilog=_event_kinds(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    filters(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=audit_list)

    p = sub.add_parser("export", help="export audit entries to CSV or JSON lines")
    filters(p)
    p.add_argument(
        "--format",
        choices=["csv", "jsonl"],
        help="default: JSON lines for an --out named .jsonl, .ndjson or .json, else CSV",
    )
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(handler=export)

    p = sub.add_parser("report", help="everything shared or received about one person (subject access)")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--person", required=True, help="e.g. nhs:9434765919")
    p.add_argument("--html", type=Path, help="write a self-contained HTML report here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=report)

    challenge_figures.register(sub)
    share_register.register(sub)

    p = sub.add_parser("cross-check", help="compare the node's log with the gateway's metadata log")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--gateway-db", type=Path, required=True, help="a copy of the gateway's gateway.sqlite")
    p.set_defaults(handler=cross_check)
