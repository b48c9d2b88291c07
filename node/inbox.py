"""What a node has received: listing and watching its inbox, opening an item (with a
read notification to the sender unless a silent read is justified), and the
chronology of a family computed here, never centrally."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from linkage import logs
from linkage.codelists import CodeLists
from linkage.content import carried_summary
from linkage.v1 import envelope_pb2, node_api_pb2, summary_pb2, workflow_pb2
from node.context import NodeContext
from node.erasure import erased_note
from node.errors import check_notes, not_found
from node.messaging import kind_name
from node.store import FetchOne


def _header(number: int, length: int) -> bytes:
    """The tag and length of a length-delimited protobuf field (how repeated entries and a
    string field are laid out); entries are a few hundred bytes, so two length bytes."""
    if length < 0x80:
        return bytes((number << 3 | 2, length))
    if length < 0x4000:
        return bytes((number << 3 | 2, length & 0x7F | 0x80, length >> 7))
    header = bytearray([number << 3 | 2])
    while length > 0x7F:
        header.append(length & 0x7F | 0x80)
        length >>= 7
    header.append(length)
    return bytes(header)


def _field(number: int, payload: bytes) -> bytes:
    return _header(number, len(payload)) + payload


# Each state's state field (13) of a received entry: an entry is stored framed, with the
# state its summary had then, and the store frames it again as that state changes
# (migration 32's trigger, which writes these same bytes).
_STATES = {
    s: _field(13, ("current" if s in ("new", "read") else s).encode())
    for s in ("new", "read", "superseded", "withdrawn")
}


def _framed(entry: bytes) -> bytes:
    """A serialised entry as the chronology's answer carries it: repeated field 1."""
    return _field(1, entry)


log = logs.get("node.inbox")

DERIVE_BATCH = 500  # inbox items to a transaction: each insert holds the loop a few ms at most
ITEM_COLUMNS = "i.seq, i.sender, i.message_id, i.received_at_ms, i.kind, i.share_id, b.signed, i.state"
ITEMS = "inbox i JOIN inbox_bodies b ON b.seq = i.seq"  # what ITEM_COLUMNS are read from


class Inbox:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self._deriving = asyncio.Lock()
        self._derived_to: int | None = None  # inbox seq up to which chronology entries exist

    def _item(self, row: Any) -> node_api_pb2.ReceivedSummary:
        seq, sender, message_id, received_at, kind, share_id, signed, state = row
        body = envelope_pb2.MessageBody.FromString(envelope_pb2.SignedMessage.FromString(signed).body)
        entry = self.ctx.agency(sender)
        summary = carried_summary(body) or summary_pb2.RiskSummary()
        return node_api_pb2.ReceivedSummary(
            seq=seq,
            message_id=message_id,
            sender_node=sender,
            sender_agency_name=entry.agency_name,
            sender_agency_type=entry.agency_type,
            received_at_ms=received_at,
            kind=kind,
            share_id=share_id,
            summary=summary,
            body=body,
            state=state,
        )

    async def received(
        self, actor: summary_pb2.Practitioner, via: str, after_seq: int, limit: int, token: bytes = b""
    ) -> list[node_api_pb2.ReceivedSummary]:
        """Received items after `after_seq`, for the case system. Handing them over is audited
        before they are returned (who, through which call, which messages, about whom), as a
        read is: it passes everything they say into the agency's own records."""
        if token:
            rows = await self.ctx.store.fetchall(
                f"SELECT {ITEM_COLUMNS} FROM {ITEMS} JOIN inbox_tokens t ON t.inbox_seq = i.seq "
                "WHERE t.token = ? AND i.seq > ? ORDER BY i.seq LIMIT ?",
                (token, after_seq, limit),
            )
        else:
            rows = await self.ctx.store.fetchall(
                f"SELECT {ITEM_COLUMNS} FROM {ITEMS} WHERE i.seq > ? ORDER BY i.seq LIMIT ?", (after_seq, limit)
            )
        items = [self._item(r) for r in rows]
        if items:  # an empty poll hands over nothing, and is not recorded
            tokens = await self._tokens([item.seq for item in items])
            async with self.ctx.store.tx() as tx:
                await tx.audit(
                    "received.exported",
                    actor,
                    tokens=tokens,
                    detail={"via": via, "items": len(items), "message_ids": [item.message_id for item in items]},
                )
        return items

    async def open(self, request: node_api_pb2.OpenReceivedRequest) -> node_api_pb2.ReceivedSummary:
        check_notes(silent_read_reason=request.silent_read_reason)
        row = await self.ctx.store.fetchone(
            f"SELECT {ITEM_COLUMNS} FROM {ITEMS} WHERE i.message_id = ?", (request.message_id,)
        )
        if row is None:
            erased = await erased_note(self.ctx.store.fetchone, request.message_id)
            raise not_found(erased or f"no item {request.message_id!r} in this node's inbox")
        item = self._item(row)
        tokens = await self._tokens([item.seq])
        silent = request.silent_read_reason.strip()
        notify = (
            not silent and bool(item.summary.summary_id) and not await self._sender_told(self.ctx.store.fetchone, item)
        )
        sealed = []
        if notify:
            read = workflow_pb2.ReadNotification(
                read_message_id=item.message_id, read_at_ms=self.ctx.clock.now_ms(), reader_role=request.actor.role
            )
            sealed = await self.ctx.messenger.seal_each(
                [item.sender_node],
                envelope_pb2.MESSAGE_KIND_READ_NOTIFICATION,
                tokens,
                item.share_id,
                lambda _: lambda body: body.read.CopyFrom(read),
                request.actor,
                in_reply_to=item.message_id,
            )
        async with self.ctx.store.tx() as tx:
            if sealed and await self._sender_told(tx.fetchone, item):  # by a read racing this one
                sealed, notify = [], False
            await tx.execute("UPDATE inbox SET state = 'read' WHERE seq = ? AND state = 'new'", (item.seq,))
            await tx.audit(
                "message.silent_read" if silent else "message.read",
                request.actor,
                tokens=tokens,
                summary_id=item.summary.summary_id,
                message_id=item.message_id,
                counterpart=item.sender_node,
                rationale=silent,
                detail={"kind": kind_name(item.kind), "sender_told": notify},
            )
            if sealed:
                await self.ctx.messenger.queue(tx, sealed, item.share_id, request.actor)
        if sealed:
            await self.ctx.changed()
        return item if item.state != "new" else self._with_state(item, "read")

    @staticmethod
    async def _sender_told(fetchone: FetchOne, item: node_api_pb2.ReceivedSummary) -> bool:
        """Whether an earlier read of this item told its sender: the first read tells, once."""
        row = await fetchone(
            "SELECT 1 FROM outbox WHERE share_id = ? AND recipient = ? AND kind = ?",
            (item.share_id, item.sender_node, envelope_pb2.MESSAGE_KIND_READ_NOTIFICATION),
        )
        return row is not None

    @staticmethod
    def _with_state(item: node_api_pb2.ReceivedSummary, state: str) -> node_api_pb2.ReceivedSummary:
        copy = node_api_pb2.ReceivedSummary()
        copy.CopyFrom(item)
        copy.state = state
        return copy

    async def _tokens(self, seqs: list[int]) -> list[bytes]:
        """The link tokens of these inbox rows, each once."""
        rows = await self.ctx.store.fetchall(
            f"SELECT DISTINCT token FROM inbox_tokens WHERE inbox_seq IN ({','.join('?' * len(seqs))}) ORDER BY token",
            seqs,
        )
        return [bytes(r[0]) for r in rows]

    async def chronology(self, case_id: str, actor: summary_pb2.Practitioner) -> bytes:
        """This case's people in one timeline, as a serialised ChronologyResponse: own
        assessments by when they were recorded, received summaries in the order they
        arrived, each risk item an entry. Who viewed it is audited before it is returned:
        it gathers what every agency shared about them."""
        tokens = [
            bytes(r[0])
            for r in await self.ctx.store.fetchall("SELECT token FROM case_people WHERE case_id = ?", (case_id,))
        ]
        if not tokens:
            raise not_found(f"no case {case_id!r} at this node")
        await self.derive_entries()
        marks = ",".join("?" * len(tokens))
        own = await self._own_entries(case_id)
        # Entries are stored framed and go out as they are, in one value from SQLite: never
        # made a row object each, nor parsed only for gRPC to serialise them again. It keeps
        # a FROM subquery's ORDER BY when group_concat aggregates it (select.c: the ORDER BY
        # "may not be safely omitted" when the outer query uses an aggregate other than
        # count(), min() or max()). Received entries come in the order they arrived; each of
        # this node's own goes before the first summary received at or after its time (the
        # inbox's index by age finds it), as a merge by time would place it.
        placed = ""
        params: list[object] = list(tokens)
        if own:
            spans, offset = [], 1
            for at, framed in own:
                spans.append((at, offset, len(framed)))
                offset += len(framed)
            placed = (
                "UNION ALL SELECT coalesce((SELECT seq FROM inbox WHERE received_at_ms >= e.value ->> 0 "
                "ORDER BY received_at_ms, seq LIMIT 1), 9223372036854775807), e.key - ?, "
                "substr(?, e.value ->> 1, e.value ->> 2) FROM json_each(?) e "
            )
            params += [len(own), b"".join(framed for _, framed in own), json.dumps(spans)]
        count, joined = await self.ctx.store.fetchone(
            "SELECT count(*), CAST(group_concat(f, '') AS BLOB) FROM (SELECT inbox_seq AS s, item AS i, framed AS f "
            f"FROM chronology WHERE inbox_seq IN (SELECT inbox_seq FROM inbox_tokens WHERE token IN ({marks})) "
            f"AND item >= 0 {placed}ORDER BY s, i)",
            params,
        )
        response = joined or b""
        async with self.ctx.store.tx() as tx:
            await tx.audit(
                "chronology.viewed",
                actor,
                tokens=tokens,
                detail={"case_id": case_id, "entries": count},
            )
        return response

    async def _own_entries(self, case_id: str) -> list[tuple[int, bytes]]:
        me, codes = self.ctx.me(), self.ctx.policy.codes
        own = []
        for recorded_at, body in await self.ctx.store.fetchall(
            "SELECT recorded_at_ms, body FROM assessments WHERE case_id = ? ORDER BY recorded_at_ms", (case_id,)
        ):
            summary = summary_pb2.RiskSummary.FromString(body)
            for e in _entries(recorded_at, self.ctx.node_id, me.agency_name, me.agency_type, 0, summary, codes, "own"):
                own.append((e.at_ms, _framed(e.SerializeToString())))
        return own

    async def derive_entries(self, cause: str = "call") -> None:
        """Derive, once, the chronology entries of everything received since the last time
        (for every family: one check of the newest inbox row when nothing is new). The node
        does so as it starts, for what a migration left to derive again (as 32 does) or what
        arrived before it last stopped, so that no practitioner's first call waits for it
        (`cause` "start"; "call" when a chronology is asked for)."""
        items = 0
        async with self._deriving:
            newest = (await self.ctx.store.fetchone("SELECT COALESCE(MAX(seq), 0) FROM inbox"))[0]
            if self._derived_to is None:
                row = await self.ctx.store.fetchone("SELECT COALESCE(MAX(inbox_seq), 0) FROM chronology")
                self._derived_to = int(row[0])
            while self._derived_to < newest:
                rows = await self.ctx.store.fetchall(
                    f"SELECT {ITEM_COLUMNS} FROM {ITEMS} WHERE i.seq > ? ORDER BY i.seq LIMIT ?",
                    (self._derived_to, DERIVE_BATCH),
                )
                if not rows:
                    break
                # Parsing and building them is most of the work: in a thread, so the loop (every
                # other call, every message arriving) waits at most a GIL switch for it, not the batch.
                derived = await asyncio.to_thread(self._derived_all, rows)
                async with self.ctx.store.tx() as tx:
                    # Framed in the state each summary is in now, read where writes are serial:
                    # one may have been superseded, withdrawn or erased while they were derived.
                    states = dict(
                        await tx.fetchall(
                            "SELECT seq, state FROM inbox WHERE seq BETWEEN ? AND ?", (rows[0][0], rows[-1][0])
                        )
                    )
                    await tx.executemany(
                        "INSERT OR IGNORE INTO chronology(inbox_seq, item, at_ms, source_node, summary_id, state, "
                        "framed) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [
                            (seq, n, at, node, summary_id, state, _framed(entry + _STATES[state]) if n >= 0 else b"")
                            for seq, n, at, node, summary_id, entry in derived
                            if (state := states.get(seq)) in _STATES  # erased, or purged: nothing to show
                        ],
                    )
                self._derived_to = int(rows[-1][0])
                items += len(rows)
        if items:
            log.info("chronology.derived", items=items, cause=cause)

    def _derived_all(self, rows: list[Any]) -> list[tuple[int, int, int, str, str, bytes]]:
        return [d for row in rows for d in self._derived(row)]

    def _derived(self, row: Any) -> list[tuple[int, int, int, str, str, bytes]]:
        """An inbox row's chronology rows, each entry serialised without its state (framed with
        it as stored): item -1 marks the row derived; summaries add one per risk item."""
        item = self._item(row)
        summary_id = item.summary.summary_id
        derived = [(item.seq, -1, item.received_at_ms, item.sender_node, summary_id, b"")]
        if not summary_id:  # nothing in the chronology but summaries (a decline carries none)
            return derived
        entries = _entries(
            item.received_at_ms,
            item.sender_node,
            item.sender_agency_name,
            item.sender_agency_type,
            item.kind,
            item.summary,
            self.ctx.policy.codes,
            item.state,
        )
        for n, entry in enumerate(entries):
            entry.ClearField("state")  # the summary's state when stored, put on by the store after
            derived.append((item.seq, n, entry.at_ms, entry.source_node, summary_id, entry.SerializeToString()))
        return derived


def _entries(
    at_ms: int,
    node: str,
    agency: str,
    agency_type: str,
    kind: int,
    summary: summary_pb2.RiskSummary,
    codes: CodeLists,
    state: str,
) -> list[node_api_pb2.ChronologyEntry]:
    """A summary's entries, one per risk item; `state` "own" for this node's own assessment."""
    unverified = [p.link_token for p in summary.people if codes.unverified_link(p.identity_basis)]
    return [
        node_api_pb2.ChronologyEntry(
            at_ms=at_ms,
            source_node=node,
            source_agency=agency,
            source_agency_type=agency_type,
            kind=kind,  # type: ignore[arg-type]
            summary_id=summary.summary_id,
            headline=summary.headline,
            category=item.category,
            currency=item.currency,
            direction=item.direction,
            level=f"{item.level.value} ({item.level.scale})" if item.level.scale else "",
            own=state == "own",
            state="current" if state in ("own", "new", "read") else state,
            handling_conditions=summary.decision.handling_conditions,
            sar_exemptions=item.sar_exemptions,
            unverified_link_tokens=unverified,
        )
        for item in summary.risk_items
    ]
