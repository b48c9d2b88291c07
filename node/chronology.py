"""A family's chronology, computed here and never centrally: this node's own assessments
and what it received about the family's people, each risk item an entry, in one timeline.

Entries are derived once from each received summary and stored framed as the answer
carries them. A call derives its own family's new summaries before it reads, so it never
waits for the rest of the node's; the rest are derived by a pass in the background, as the
node starts (what arrived before it stopped, or what a migration left to derive again) and
after a call that finds anything arrived since."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from typing import Any

from linkage import logs
from linkage.codelists import CodeLists
from linkage.v1 import node_api_pb2, summary_pb2
from node import own_assessments
from node.context import NodeContext
from node.errors import invalid, not_found
from node.inbox import ITEM_COLUMNS, ITEMS
from node.store import FetchAll, FetchOne, Tx

log = logs.get("node.chronology")

DERIVE_BATCH = 500  # inbox items to a transaction: each insert holds the loop a few ms at most
# What marks an inbox row derived (its risk items are items 0, 1, ...): DERIVED by the
# node-wide pass, which has done every row up to where it got; AHEAD by a call, for its
# family's rows past that point, which the pass then leaves as they are.
DERIVED, AHEAD = -1, -2
Row = tuple[int, int, int, str, str, bytes]  # inbox seq, item, at, source node, summary id, entry
MAX_PAGE = 10_000  # entries to a page: about 2.3 MB, inside gRPC's 4 MiB default for a message
# Own entries' item numbers: after every received entry's (0, 1, ...) at the same place, and
# each the same however many more are recorded, so a page token keeps its place among them.
OWN_ITEM = 1 << 40


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


def _token(case_id: str, s: int, i: int) -> str:
    """Where a page ended: opaque to the case system, and good for this case only."""
    return base64.urlsafe_b64encode(json.dumps([case_id, s, i]).encode()).decode()


def _read_token(token: str, case_id: str) -> tuple[int, int]:
    try:
        case, s, i = json.loads(base64.urlsafe_b64decode(token.encode()))
        place = (s, i)
        # As this node writes them: integers, in SQLite's range (not 1e400, nor "12", nor true).
        if not all(type(v) is int and -(1 << 63) <= v < 1 << 63 for v in place):
            raise ValueError(place)
    except (ValueError, TypeError):
        raise invalid("page_token is not one this node gave: pass next_page_token as it came, or none") from None
    if case != case_id:
        raise invalid("page_token belongs to another case's chronology: start this one without it")
    return place


def _framed(entry: bytes) -> bytes:
    """A serialised entry as the chronology's answer carries it: repeated field 1."""
    return _field(1, entry)


def _hand_over_gil() -> None:
    """To whatever waits for it (the loop), at once: Python otherwise lets a thread that
    computes keep the GIL 5 ms at a time, and every call and message waits that long. A
    sleep of nothing is Python's way to let go of it; it costs the thread the kernel's timer
    slack (50 µs or so), so only what runs in the background does it."""
    time.sleep(0)


class Chronologies:
    def __init__(self, ctx: NodeContext, item: Callable[[Any], node_api_pb2.ReceivedSummary]) -> None:
        self.ctx = ctx
        self._item = item  # an inbox row (ITEM_COLUMNS) as the case system sees it
        self._passing = asyncio.Lock()
        self._derived_to: int | None = None  # the inbox seq up to which the pass has derived every row
        self._behind = asyncio.Event()  # a call found rows the pass has not reached

    async def assemble(
        self, case_id: str, actor: summary_pb2.Practitioner, page_size: int = 0, page_token: str = ""
    ) -> bytes:
        """This case's people in one timeline, as a serialised ChronologyResponse: own
        assessments by when they were recorded, received summaries in the order they
        arrived, each risk item an entry; all of it, or a page of up to `page_size` (at
        most MAX_PAGE) after where `page_token`'s ended. Who viewed it is audited before it
        is returned: it gathers what every agency shared about them."""
        after = _read_token(page_token, case_id) if page_token else None
        tokens = [
            bytes(r[0])
            for r in await self.ctx.store.fetchall("SELECT token FROM case_people WHERE case_id = ?", (case_id,))
        ]
        if not tokens:
            raise not_found(f"no case {case_id!r} at this node")
        behind = await self._derive_family(tokens)
        marks = ",".join("?" * len(tokens))
        own = await self._own_entries(case_id)
        # Entries are stored framed and go out as they are: never made a message each, nor
        # parsed only for gRPC to serialise them again. Received entries come in the order
        # they arrived; each of this node's own goes after the last summary received before
        # its time (the inbox's index by age finds it), as a merge by time would place it.
        # (s, i) orders them all, and is each entry's place for good: what arrives or is
        # recorded later goes after it, so a page token's place is never passed over.
        placed = ""
        params: list[object] = list(tokens)
        if own:
            spans, offset = [], 1
            for at, framed in own:
                spans.append((at, offset, len(framed)))
                offset += len(framed)
            placed = (
                "UNION ALL SELECT coalesce((SELECT seq FROM inbox WHERE received_at_ms < e.value ->> 0 "
                "ORDER BY received_at_ms DESC, seq DESC LIMIT 1), 0), e.key + ?, "
                "substr(?, e.value ->> 1, e.value ->> 2) FROM json_each(?) e "
            )
            params += [OWN_ITEM, b"".join(framed for _, framed in own), json.dumps(spans)]
        timeline = (
            "SELECT inbox_seq AS s, item AS i, framed AS f FROM chronology WHERE inbox_seq IN "
            f"(SELECT inbox_seq FROM inbox_tokens WHERE token IN ({marks})) AND item >= 0 {placed}"
        )

        async def read(fetchone: FetchOne, fetchall: FetchAll) -> tuple[bytes, int]:
            if page_size or after:
                size = min(page_size or MAX_PAGE, MAX_PAGE)
                return await _page(fetchone, fetchall, timeline, params, case_id, size, after)
            # The whole timeline in one value from SQLite: it keeps a FROM subquery's ORDER BY
            # when group_concat aggregates it (select.c: the ORDER BY "may not be safely
            # omitted" when the outer query uses an aggregate other than count(), min() or max()).
            count, joined = await fetchone(
                f"SELECT count(*), CAST(group_concat(f, '') AS BLOB) FROM ({timeline}ORDER BY s, i)", params
            )
            return joined or b"", count

        store = self.ctx.store
        committed = store.erasures_committed
        response, count = await read(store.fetchone, store.fetchall)
        async with store.tx() as tx:
            # An erasure written since the read began, or before it but not yet committed (it may
            # commit with this transaction): the read may hold what it erased. Read again, here.
            if store.erasures != committed:
                response, count = await read(tx.fetchone, tx.fetchall)
            await tx.audit(
                "chronology.viewed",
                actor,
                tokens=tokens,
                detail={"case_id": case_id, "entries": count, **({"paged": True} if page_size or after else {})},
            )
        if behind:
            self._behind.set()  # the pass, for what arrived about every other family
        return response

    async def _own_entries(self, case_id: str) -> list[tuple[int, bytes]]:
        me, codes = self.ctx.me(), self.ctx.policy.codes
        state, params = own_assessments.state_of(codes)
        own = []
        for recorded_at, body, now in await self.ctx.store.fetchall(
            f"SELECT a.recorded_at_ms, a.body, {state} FROM assessments a WHERE a.case_id = ? "
            "ORDER BY a.recorded_at_ms, a.rowid",
            (*params, case_id),
        ):
            summary = summary_pb2.RiskSummary.FromString(body)
            entries = _entries(recorded_at, self.ctx.node_id, me.agency_name, me.agency_type, 0, summary, codes, now)
            for e in entries:
                e.own = True
                own.append((e.at_ms, _framed(e.SerializeToString())))
        return own

    async def follow_code_lists(self, tx: Tx) -> int:
        """Each entry names who in it was linked on a basis the code lists do not count as
        verified: entries derived under other identity-basis codes than the node's now (a
        federation's extension changed, or a release before this kept no record) are
        dropped, to be derived again by the pass that follows the start. How many were."""
        bases = self.ctx.policy.codes.digest("identity_basis")
        if await tx.fetchone("SELECT 1 FROM chronology_basis WHERE identity_bases = ?", (bases,)):
            return 0
        dropped = (await tx.execute("DELETE FROM chronology")).rowcount
        await tx.execute("DELETE FROM chronology_basis")
        await tx.execute("INSERT INTO chronology_basis(identity_bases) VALUES (?)", (bases,))
        return dropped

    async def keep_derived(self) -> None:
        """The node-wide pass, for the node's life: as it starts, then after each call that
        finds rows it has not reached."""
        cause = "start"
        while True:
            try:
                await self.derive_all(cause)
            except Exception as exc:  # a background task's: said here, and met again by a call on that family
                log.error("chronology.derive_failed", error=type(exc).__name__)
            await self._behind.wait()
            self._behind.clear()
            cause = "call"

    async def derive_all(self, cause: str = "call") -> None:
        """Derive the entries of every row received since the pass last ran, a batch at a
        time, leaving those a call derived ahead of it (one check of the newest inbox row
        when nothing is new)."""
        items = 0
        async with self._passing:
            newest, derived_to = self._newest(), await self._watermark()
            while derived_to < newest:
                batch = await self.ctx.store.fetchall(
                    "SELECT seq FROM inbox WHERE seq > ? ORDER BY seq LIMIT ?", (derived_to, DERIVE_BATCH)
                )
                if not batch:
                    break
                rows = await self.ctx.store.fetchall(
                    f"SELECT {ITEM_COLUMNS} FROM {ITEMS} WHERE i.seq BETWEEN ? AND ? AND NOT EXISTS "
                    f"(SELECT 1 FROM chronology c WHERE c.inbox_seq = i.seq AND c.item = {AHEAD}) ORDER BY i.seq",
                    (batch[0][0], batch[-1][0]),
                )
                items += await self._store(rows, DERIVED)
                self._derived_to = derived_to = int(batch[-1][0])
        if items:
            log.info("chronology.derived", items=items, cause=cause)

    async def _derive_family(self, tokens: list[bytes]) -> bool:
        """Derive the entries of this family's rows the pass has not reached, if no call has
        yet: a family's handful, where the pass may have a day's arrivals for every family
        to do (or, after an upgrade whose migration derives them again, all of them). Whether
        the pass has rows to reach."""
        derived_to, items = await self._watermark(), 0
        if self._newest() <= derived_to:
            return False  # nothing arrived since the pass last ran, about anyone
        marks = ",".join("?" * len(tokens))
        while True:
            rows = await self.ctx.store.fetchall(
                f"SELECT {ITEM_COLUMNS} FROM {ITEMS} WHERE i.seq IN (SELECT inbox_seq FROM inbox_tokens "
                f"WHERE token IN ({marks}) AND inbox_seq > ?) AND NOT EXISTS "
                "(SELECT 1 FROM chronology c WHERE c.inbox_seq = i.seq AND c.item < 0) ORDER BY i.seq LIMIT ?",
                (*tokens, derived_to, DERIVE_BATCH),
            )
            if not rows:
                break
            items += await self._store(rows, AHEAD)
            derived_to = int(rows[-1][0])
        if items:
            log.info("chronology.derived", items=items, cause="family")
        return True

    def _newest(self) -> int:
        """The newest inbox row's seq: the key's last entry, read on the loop."""
        return int(self.ctx.store.lookup("SELECT COALESCE(MAX(seq), 0) FROM inbox")[0])

    async def _watermark(self) -> int:
        if self._derived_to is None:  # at start: back from the newest row, past only what calls derived ahead
            row = await self.ctx.store.fetchone(
                f"SELECT inbox_seq FROM chronology WHERE item = {DERIVED} ORDER BY inbox_seq DESC LIMIT 1"
            )
            self._derived_to = int(row[0]) if row else 0
        return self._derived_to

    async def _store(self, rows: list[Any], marker: int) -> int:
        """These inbox rows' entries, derived and stored; how many rows."""
        if not rows:
            return 0
        # Parsing and building them is most of the work: in a thread, so the loop (every
        # other call, every message arriving) waits at most a GIL switch for it, not the batch.
        derived = await asyncio.to_thread(self._derived_all, rows, marker)
        async with self.ctx.store.tx() as tx:
            # Framed in the state each summary is in now, read where writes are serial: one
            # may have been superseded, withdrawn or erased while they were derived.
            states = dict(
                await tx.fetchall(
                    "SELECT seq, state FROM inbox WHERE seq IN (SELECT value FROM json_each(?))",
                    (json.dumps([row[0] for row in rows]),),
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
        return len(rows)

    def _derived_all(self, rows: list[Any], marker: int) -> list[Row]:
        derived: list[Row] = []
        for row in rows:
            derived += self._derived(row, marker)
            if marker == DERIVED:  # the pass, in the background, gives way; a call's caller waits for it
                _hand_over_gil()
        return derived

    def _derived(self, row: Any, marker: int) -> list[Row]:
        """An inbox row's chronology rows, each entry serialised without its state (framed with
        it as stored): `marker` marks the row derived; summaries add one per risk item."""
        item = self._item(row)
        summary_id = item.summary.summary_id
        derived = [(item.seq, marker, item.received_at_ms, item.sender_node, summary_id, b"")]
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


async def _page(
    fetchone: FetchOne,
    fetchall: FetchAll,
    timeline: str,
    params: list[object],
    case_id: str,
    size: int,
    after: tuple[int, int] | None,
) -> tuple[bytes, int]:
    """Up to `size` entries after `after`, and the token for the rest if any remain."""
    where = "WHERE (s, i) > (?, ?) " if after else ""
    ordered = f"FROM ({timeline}) {where}ORDER BY s, i"
    bound = [*params, *(after or ())]
    # The page joined in SQLite, as the whole timeline is (a row at a time into Python
    # cost more than the whole); then the page's last place, and whether one follows it.
    count, joined = await fetchone(
        f"SELECT count(*), CAST(group_concat(f, '') AS BLOB) FROM (SELECT f {ordered} LIMIT ?)", [*bound, size]
    )
    response = joined or b""
    if count == size:
        ends = await fetchall(f"SELECT s, i {ordered} LIMIT 2 OFFSET ?", [*bound, size - 1])
        if len(ends) == 2:
            last_s, last_i = ends[0]
            response += _field(2, _token(case_id, last_s, last_i).encode())
    return response, count


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
    """A summary's entries, one per risk item, in `state` (a received one's "new" and "read"
    are both current)."""
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
            state="current" if state in ("new", "read") else state,
            handling_conditions=summary.decision.handling_conditions,
            sar_exemptions=item.sar_exemptions,
            unverified_link_tokens=unverified,
        )
        for item in summary.risk_items
    ]
