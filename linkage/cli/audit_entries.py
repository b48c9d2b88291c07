"""Reading a node's audit log and what it refers to, for the IG officer's tools: which
entries, when, which agency, and the summary a received message carried."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from linkage.config import ConfigError, GatewayConfig, NodeConfig, load_directory_key
from linkage.content import carried_summary
from linkage.directory import DirectoryView, TrustedDirectory, read_signed
from linkage.reasons import Rejected
from linkage.v1 import audit_pb2, directory_pb2, envelope_pb2, summary_pb2


def federation_directory(config: NodeConfig | GatewayConfig) -> DirectoryView:
    """The federation directory, signature checked; expiry is no reason to ignore history."""
    try:
        signed = read_signed(config.federation.directory)
        body = directory_pb2.Directory.FromString(signed.directory)
        # Read only: a directory key's handovers are followed here, never written to the bundle.
        trust = TrustedDirectory(
            config.federation.federation_id, load_directory_key(config.federation.directory_public_key)
        )
        return trust.accept(signed, body.issued_at_ms)
    except (Rejected, DecodeError) as exc:
        raise ConfigError(f"[federation] directory: cannot read {config.federation.directory} ({exc})") from None


def millis(option: str, text: str | None) -> int | None:
    if not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(
            f"linkage: {option}: {text!r} is not a date or time, e.g. 2026-11-01 or 2026-11-01T09:30"
        ) from None
    return int((when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp() * 1000)


@dataclass(frozen=True)
class EntryFilter:
    """Which audit entries to read; None matches anything."""

    token: str | None = None  # hex, as entries hold it
    event: str | tuple[str, ...] | None = None  # a prefix, or any of several: "share." matches every share event
    counterpart: str | None = None
    decision: str | None = None  # a substring, any case
    since: int | None = None  # ms
    until: int | None = None
    share_id: str | None = None  # the share (or withdrawal, or thread) an entry's detail names
    node: str | None = None  # the node that made the entry's call, or its counterpart (the gateway's log)


def find_entries(db: sqlite3.Connection, wanted: EntryFilter, table: str = "audit") -> Iterator[dict[str, Any]]:
    """The audit entries `wanted` names, in order: of a node's log, or of the gateway's
    metadata log (`table` "metalog"), whose entries have the same form.

    SQLite first keeps only entries whose text holds what a match must hold, as canonical
    JSON writes it: most of a large log is never parsed (a person's entries among a
    million: 0.5 s against 4.2). That narrows on the entry text alone, the bytes the hash
    chain covers, never on the table's side columns, which nothing verifies; every
    condition is then checked on the parsed entry."""
    needles = [json.dumps(n, ensure_ascii=False)[1:-1] for n in (wanted.token, wanted.counterpart, wanted.node) if n]
    if wanted.share_id:
        needles.append(json.dumps(wanted.share_id, ensure_ascii=False))
    where = ["instr(entry, ?) > 0" for _ in needles]
    events = (wanted.event,) if isinstance(wanted.event, str) else wanted.event or ()
    if events:  # any one of them: a single scan of the log for several kinds of entry
        needles += ['"event":' + json.dumps(event, ensure_ascii=False)[:-1] for event in events]
        where.append("(" + " OR ".join("instr(entry, ?) > 0" for _ in events) + ")")
    sql = f"SELECT entry FROM {table} WHERE {' AND '.join(where) or '1'} ORDER BY seq"
    for (entry,) in db.execute(sql, needles):
        e = json.loads(entry)
        if wanted.token and wanted.token not in e["tokens"]:
            continue
        if (wanted.since is not None and e["ts_ms"] < wanted.since) or (
            wanted.until is not None and e["ts_ms"] > wanted.until
        ):
            continue
        if events and not e["event"].startswith(events):
            continue
        if wanted.counterpart and wanted.counterpart not in e["counterpart"].split(","):
            continue
        if wanted.node and wanted.node != e["actor"].get("id") and wanted.node not in e["counterpart"].split(","):
            continue
        if wanted.decision and wanted.decision.upper() not in e["decision"].upper():
            continue
        if wanted.share_id and e["detail"].get("share_id") != wanted.share_id:
            continue
        yield e


def received_summary(db: sqlite3.Connection, message_id: str) -> summary_pb2.RiskSummary | None:
    """The summary a received message carried, if it carried one (and is still held)."""
    row = db.execute(
        "SELECT b.signed FROM inbox i JOIN inbox_bodies b ON b.seq = i.seq WHERE i.message_id = ?", (message_id,)
    ).fetchone()
    if row is None:
        return None
    return carried_summary(envelope_pb2.MessageBody.FromString(envelope_pb2.SignedMessage.FromString(row[0]).body))


def why_not_held(db: sqlite3.Connection, sender: str, message_id: str) -> str:
    """Why a summary received is no longer held: erased at its sender's request (its row
    kept, marked), or purged under the retention rule (its row gone)."""
    row = db.execute("SELECT state FROM inbox WHERE sender = ? AND message_id = ?", (sender, message_id)).fetchone()
    erased = row is not None and row[0] == "erased"
    return "no longer held here: " + ("erased at its sender's request" if erased else "purged under the retention rule")


def agency_name(directory: DirectoryView, node_id: str) -> str:
    entry = directory.nodes.get(node_id)
    return entry.agency_name if entry else node_id


def cosigned_held(db: sqlite3.Connection) -> tuple[audit_pb2.SignedCheckpoint, audit_pb2.Cosignature] | None:
    """The latest checkpoint the witness cosigned, as the node kept it; None if it keeps none."""
    try:
        row = db.execute("SELECT checkpoint, cosignature FROM witnessed WHERE id = 1").fetchone()
    except sqlite3.OperationalError:
        return None  # a store from before the witness cosigned
    if row is None or row[1] is None:
        return None
    return audit_pb2.SignedCheckpoint.FromString(row[0]), audit_pb2.Cosignature.FromString(row[1])
