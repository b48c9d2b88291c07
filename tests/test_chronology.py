"""A family's chronology as the case system receives it: whole however long it grows,
in order, each entry in its summary's present state."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format, wrappers_pb2

from bench.scale import fill_inbox
from linkage import stories
from linkage.clock import ManualClock
from linkage.transport import MAX_MESSAGE_BYTES
from linkage.v1 import node_api_pb2
from node.chronology import _STATES, AHEAD, DERIVED, MAX_PAGE, Chronologies, Row, _field, _framed
from node.store.schema import MIGRATIONS
from tests.harness import CapturedLogs, Cluster, LocalFederation, linkage, make_federation, running
from tests.test_workflows import CSC_WORKER


async def _open_case(cluster: Cluster) -> node_api_pb2.OpenCaseResponse:
    return await cluster.api("csc").OpenCase(
        node_api_pb2.OpenCaseRequest(actor=CSC_WORKER, case_ref="long", people=stories.think_family_people())
    )


async def _chronology(cluster: Cluster, case_id: str) -> list[node_api_pb2.ChronologyEntry]:
    answer = await cluster.api("csc").Chronology(node_api_pb2.ChronologyRequest(actor=CSC_WORKER, case_id=case_id))
    return list(answer.entries)


async def test_answers_larger_than_a_federation_frame_reach_the_case_system(federation: LocalFederation) -> None:
    """The API's answers are not held to the federation's frame limit (256 KiB): a page of
    500 received summaries, and a family's chronology of 2,000 entries, arrive whole."""
    async with running(federation, nodes=("csc",)) as cluster:
        api = cluster.api("csc")
        opened = await _open_case(cluster)
        fill_inbox(cluster.nodes["csc"].config.store_path, 1000, [p.link_token for p in opened.people])

        page = await api.ListReceived(node_api_pb2.ListReceivedRequest(actor=CSC_WORKER, limit=500))
        assert len(page.items) == 500
        assert page.ByteSize() > MAX_MESSAGE_BYTES

        chronology = await api.Chronology(node_api_pb2.ChronologyRequest(actor=CSC_WORKER, case_id=opened.case_id))
        assert len(chronology.entries) == 2000  # two risk items in each
        assert chronology.ByteSize() > MAX_MESSAGE_BYTES


async def test_own_assessments_take_their_place_among_received_entries(
    federation: LocalFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Received entries come in the order they arrived, read from the store as one value;
    an own assessment goes among them by when it was recorded, and they stay as they were."""
    async with running(federation, nodes=("csc",)) as cluster:
        opened = await _open_case(cluster)
        parent, child = [p.link_token for p in opened.people]
        store_path = cluster.nodes["csc"].config.store_path
        now_ms = time.time_ns() // 1_000_000
        monkeypatch.setattr("bench.scale.FIRST_RECEIVED_MS", now_ms - 60_000)
        fill_inbox(store_path, 2, [parent, child])  # received before the assessment is recorded
        monkeypatch.setattr("bench.scale.FIRST_RECEIVED_MS", now_ms + 60_000)
        fill_inbox(store_path, 2, [parent, child])  # and after it
        with closing(sqlite3.connect(store_path)) as db:
            arrived = [r[0] for r in db.execute("SELECT received_at_ms FROM inbox ORDER BY seq")]

        received = await _chronology(cluster, opened.case_id)
        assert [e.at_ms for e in received] == [at for at in arrived for _ in range(2)]  # two items each
        assert len({e.summary_id for e in received}) == 4
        assert not any(e.own for e in received)

        await cluster.api("csc").RecordAssessment(
            node_api_pb2.RecordAssessmentRequest(
                actor=CSC_WORKER, case_id=opened.case_id, assessment=stories.parent_risk_change(parent, child)
            )
        )
        merged = await _chronology(cluster, opened.case_id)
        assert [e.own for e in merged] == [False] * 4 + [True] * 2 + [False] * 4
        assert [e for e in merged if not e.own] == received
        assert [e.state for e in merged] == ["current"] * 10


async def test_an_own_assessment_goes_before_what_was_received_at_or_after_its_time(tmp_path: Path) -> None:
    """Before everything received, level with a summary's arrival (before it, as a merge by
    time puts the own one first), between two, and after everything."""
    clock = ManualClock(time.time_ns() // 1_000_000)
    start = clock.now_ms()
    federation = make_federation(tmp_path, clock, nodes=("csc",))
    async with running(federation, nodes=("csc",), clock=clock) as cluster:
        opened = await _open_case(cluster)
        parent, child = [p.link_token for p in opened.people]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("bench.scale.FIRST_RECEIVED_MS", start)
            fill_inbox(cluster.nodes["csc"].config.store_path, 3, [parent, child])  # at start + 1, 2 and 3 s
        for advance_ms in (0, 2_000, 500, 7_500):  # at start, start + 2 s, + 2.5 s and + 10 s
            clock.advance(advance_ms)
            await cluster.api("csc").RecordAssessment(
                node_api_pb2.RecordAssessmentRequest(
                    actor=CSC_WORKER, case_id=opened.case_id, assessment=stories.parent_risk_change(parent, child)
                )
            )
        entries = await _chronology(cluster, opened.case_id)
    own, received = ["own"] * 2, ["received"] * 2  # two risk items in each
    assert ["own" if e.own else "received" for e in entries] == (own + received + own + received + own + received + own)
    assert [e.at_ms - start for e in entries] == [0, 0, 1000, 1000, 2000, 2000, 2000, 2000, 2500, 2500, 3000, 3000] + [
        10_000
    ] * 2


async def _pages(cluster: Cluster, case_id: str, size: int, token: str = "") -> list[list[str]]:
    """Each page's entries (by summary and category) from `token` on, following next_page_token."""
    pages: list[list[str]] = []
    request = node_api_pb2.ChronologyRequest(actor=CSC_WORKER, case_id=case_id, page_size=size, page_token=token)
    while True:
        page = await cluster.api("csc").Chronology(request)
        pages.append([_named(e) for e in page.entries])
        if not page.next_page_token:
            return pages
        request.page_token = page.next_page_token


def _named(entry: node_api_pb2.ChronologyEntry) -> str:
    return f"{'own' if entry.own else 'received'} {entry.summary_id} {entry.category}"


async def _record(cluster: Cluster, case_id: str, people: list[bytes]) -> None:
    await cluster.api("csc").RecordAssessment(
        node_api_pb2.RecordAssessmentRequest(
            actor=CSC_WORKER, case_id=case_id, assessment=stories.parent_risk_change(*people)
        )
    )


def _received(store_path: Path, count: int, people: list[bytes], first_ms: int) -> None:
    """`count` summaries received about `people`, a second apart from `first_ms` + a second
    for each already in the inbox."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("bench.scale.FIRST_RECEIVED_MS", first_ms)
        fill_inbox(store_path, count, people)


@contextlib.asynccontextmanager
async def _family(tmp_path: Path) -> AsyncIterator[tuple[Cluster, ManualClock, str, list[bytes]]]:
    """csc on a clock the test moves, with a family's case open: its id and people."""
    clock = ManualClock(time.time_ns() // 1_000_000)
    federation = make_federation(tmp_path, clock, nodes=("csc",))
    async with running(federation, nodes=("csc",), clock=clock) as cluster:
        opened = await _open_case(cluster)
        yield cluster, clock, opened.case_id, [p.link_token for p in opened.people]


async def test_a_chronology_read_in_pages_is_the_whole_of_it_in_order_and_each_page_is_audited(
    tmp_path: Path,
) -> None:
    async with _family(tmp_path) as (cluster, clock, case_id, people):
        store_path = cluster.nodes["csc"].config.store_path
        _received(store_path, 3, people, clock.now_ms())  # at + 1, 2 and 3 s
        for advance_ms in (0, 2_500, 7_500):  # own ones before, among and after them
            clock.advance(advance_ms)
            await _record(cluster, case_id, people)
        whole = [_named(e) for e in await _chronology(cluster, case_id)]
        assert len(whole) == 12 and len(set(whole)) == 12
        pages = await _pages(cluster, case_id, 5)
        assert [len(p) for p in pages] == [5, 5, 2]
        assert [e for page in pages for e in page] == whole
        assert await _pages(cluster, case_id, 12) == [whole]  # an exact fit needs no second call

        with closing(sqlite3.connect(store_path)) as db:
            viewed = [
                json.loads(r[0])["detail"]
                for r in db.execute("SELECT entry FROM audit WHERE event = ? ORDER BY seq", ("chronology.viewed",))
            ]
    assert viewed == [
        {"case_id": case_id, "entries": 12},
        *({"case_id": case_id, "entries": n, "paged": True} for n in (5, 5, 2, 12)),
    ]


async def test_what_arrives_between_pages_comes_in_a_later_page_and_nothing_is_passed_over(tmp_path: Path) -> None:
    """A page ends among this node's own entries; then another is recorded and a summary
    received. The pages after hold everything after where the first ended, the new ones
    included, as the whole chronology now stands."""
    async with _family(tmp_path) as (cluster, clock, case_id, people):
        start = clock.now_ms()
        store_path = cluster.nodes["csc"].config.store_path
        _received(store_path, 2, people, start)  # at + 1 and 2 s
        for advance_ms in (5_000, 1_000):  # own ones at + 5 and 6 s, after both
            clock.advance(advance_ms)
            await _record(cluster, case_id, people)
        first = await cluster.api("csc").Chronology(
            node_api_pb2.ChronologyRequest(actor=CSC_WORKER, case_id=case_id, page_size=5)
        )
        assert [e.own for e in first.entries] == [False] * 4 + [True]

        clock.advance(1_000)
        await _record(cluster, case_id, people)  # at + 7 s
        _received(store_path, 1, people, start + 5_000)  # the third received, at + 8 s
        now = [_named(e) for e in await _chronology(cluster, case_id)]
        rest = await _pages(cluster, case_id, 5, first.next_page_token)
    assert now[:5] == [_named(e) for e in first.entries]
    assert [e for page in rest for e in page] == now[5:]
    assert [len(p) for p in rest] == [5, 2]
    assert [n.split()[0] for n in now] == ["received"] * 4 + ["own"] * 6 + ["received"] * 2


def _made_up_token(case_id: str, place: str) -> str:
    """A page token in the form this node gives, holding `place` (JSON) where its place goes."""
    return base64.urlsafe_b64encode(f'["{case_id}", {place}, 0]'.encode()).decode()


async def test_a_page_token_that_is_not_this_cases_is_refused_with_what_to_do(federation: LocalFederation) -> None:
    async with running(federation, nodes=("csc",)) as cluster:
        api = cluster.api("csc")
        opened = await _open_case(cluster)
        other = await api.OpenCase(
            node_api_pb2.OpenCaseRequest(actor=CSC_WORKER, case_ref="other", people=stories.think_family_people())
        )
        fill_inbox(cluster.nodes["csc"].config.store_path, 2, [p.link_token for p in opened.people])
        first = await api.Chronology(
            node_api_pb2.ChronologyRequest(actor=CSC_WORKER, case_id=opened.case_id, page_size=1)
        )
        for case_id, token, says in (
            (other.case_id, first.next_page_token, "belongs to another case's chronology"),
            (opened.case_id, "not-a-token", "is not one this node gave"),
            (opened.case_id, first.next_page_token[:-4], "is not one this node gave"),
            (opened.case_id, _made_up_token(opened.case_id, "1e400"), "is not one this node gave"),  # infinite
            (opened.case_id, _made_up_token(opened.case_id, "1, 2, 3"), "is not one this node gave"),
            *(  # not integers, or past SQLite's (a signed 64-bit number's)
                (opened.case_id, _made_up_token(opened.case_id, place), "is not one this node gave")
                for place in ("true", "1.5", '"12"', str(1 << 63), str(-(1 << 63) - 1))
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await api.Chronology(
                    node_api_pb2.ChronologyRequest(actor=CSC_WORKER, case_id=case_id, page_size=1, page_token=token)
                )
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert says in (refused.value.details() or "")
        for place in (str((1 << 63) - 1), str(-(1 << 63))):  # the ends of that range are places
            token = _made_up_token(opened.case_id, place)
            await api.Chronology(
                node_api_pb2.ChronologyRequest(actor=CSC_WORKER, case_id=opened.case_id, page_size=1, page_token=token)
            )


async def test_a_page_holds_at_most_ten_thousand_entries_and_the_command_reads_every_page(
    federation: LocalFederation,
) -> None:
    """Under gRPC's 4 MiB default for a message however large a page is asked for; `linkage
    chronology` reads the whole chronology a page at a time."""
    async with running(federation, nodes=("csc",)) as cluster:
        opened = await _open_case(cluster)
        who = ("--actor-id", "csc-1", "--actor-role", "Social worker")
        socket = ("--socket", str(cluster.nodes["csc"].config.api_socket))
        empty = await linkage("chronology", opened.case_id, *who, *socket)
        assert empty == (0, "Nothing in this family's chronology yet: no assessment recorded here, and none "
                         "received about them.\n", "")  # fmt: skip
        fill_inbox(cluster.nodes["csc"].config.store_path, 5_001, [p.link_token for p in opened.people])
        request = node_api_pb2.ChronologyRequest(actor=CSC_WORKER, case_id=opened.case_id, page_size=50_000)
        first = await cluster.api("csc").Chronology(request)
        assert len(first.entries) == MAX_PAGE and first.ByteSize() < 4 * 1024 * 1024
        request.page_token = first.next_page_token
        last = await cluster.api("csc").Chronology(request)
        assert len(last.entries) == 2 and not last.next_page_token

        code, out, err = await linkage("chronology", opened.case_id, "--json", *who, *socket)
    assert code == 0, err
    read = json.loads(out)
    assert len(read["entries"]) == 10_002 and "next_page_token" not in read
    assert (
        read["entries"][:MAX_PAGE]
        == json.loads(json_format.MessageToJson(first, preserving_proto_field_name=True))["entries"]
    )


async def _held_while_stopped(cluster: Cluster, count: int) -> Path:
    """csc stopped, and `count` summaries put in its store meanwhile, as if received before."""
    store_path = cluster.nodes["csc"].config.store_path
    await cluster.stop_node("csc")
    fill_inbox(store_path, count, [os.urandom(32), os.urandom(32)])
    return store_path


async def test_a_node_derives_the_entries_of_what_it_holds_as_it_starts(
    federation: LocalFederation, captured_logs: CapturedLogs
) -> None:
    """Summaries received before the node last stopped (or whose entries a migration left to
    derive again) have their entries derived as it starts, not on a practitioner's first call."""
    async with running(federation, nodes=("csc",)) as cluster:
        store_path = await _held_while_stopped(cluster, 600)  # two batches' worth
        node = await cluster.start_node("csc")  # its derivation under way as it connected
        await node.chronology.derive_all()  # waits for that one (they take turns), then finds nothing new
        with closing(sqlite3.connect(store_path)) as db:
            assert db.execute("SELECT count(*) FROM chronology WHERE item >= 0").fetchone() == (1200,)
    assert [(d["items"], d["cause"]) for d in captured_logs.records("chronology.derived")] == [(600, "start")]


async def test_a_call_derives_its_familys_summaries_without_waiting_for_the_nodes(
    federation: LocalFederation, monkeypatch: pytest.MonkeyPatch, captured_logs: CapturedLogs
) -> None:
    """A chronology call derives what its family's people have that the node-wide pass has not
    reached, and answers while the pass is still at every other family's (as after an upgrade
    whose migration derives them all again); a node stopped meanwhile derives the rest as it
    starts, and leaves the family's as they are."""
    held, release = threading.Event(), threading.Event()
    derive = Chronologies._derived_all

    def held_by_the_pass(self: Chronologies, rows: list[object], marker: int) -> list[Row]:
        if marker == DERIVED and not held.is_set():  # the pass's first batch, until released
            held.set()
            release.wait(timeout=30)
        return derive(self, rows, marker)

    monkeypatch.setattr(Chronologies, "_derived_all", held_by_the_pass)
    async with running(federation, nodes=("csc",)) as cluster:
        opened = await _open_case(cluster)
        store_path = await _held_while_stopped(cluster, 600)  # other families'
        fill_inbox(store_path, 3, [p.link_token for p in opened.people])  # this family's, after them
        await cluster.start_node("csc")
        try:
            await asyncio.to_thread(held.wait, 30)
            async with asyncio.timeout(10):  # the pass waits for `release` until then
                assert len(await _chronology(cluster, opened.case_id)) == 6
            await cluster.stop_node("csc")
        finally:
            release.set()
        node = await cluster.start_node("csc")
        await node.chronology.derive_all()  # after the one it started with (they take turns)
        assert len(await _chronology(cluster, opened.case_id)) == 6
        with closing(sqlite3.connect(store_path)) as db:
            markers = dict(db.execute("SELECT item, count(*) FROM chronology WHERE item < 0 GROUP BY item"))
            assert db.execute("SELECT count(*) FROM chronology WHERE item >= 0").fetchone() == (1206,)
    assert markers == {DERIVED: 600, AHEAD: 3}
    assert [(d["items"], d["cause"]) for d in captured_logs.records("chronology.derived")] == [
        (3, "family"),
        (600, "start"),
    ]


async def test_a_derivation_that_fails_as_the_node_starts_is_logged_and_the_node_serves_and_stops(
    federation: LocalFederation, monkeypatch: pytest.MonkeyPatch, captured_logs: CapturedLogs
) -> None:
    async with running(federation, nodes=("csc",)) as cluster:
        await _held_while_stopped(cluster, 1)

        def fails(rows: list[object], marker: int) -> list[Row]:
            raise ValueError("a body the derivation cannot read")

        monkeypatch.setattr("node.chronology.Chronologies._derived_all", staticmethod(fails))
        node = await cluster.start_node("csc")
        with pytest.raises(ValueError):  # after the one started with the node (they take turns), as a call meets it
            await node.chronology.derive_all()
    (failed,) = captured_logs.records("chronology.derive_failed")
    assert failed["error"] == "ValueError"


async def test_the_node_wide_pass_hands_the_gil_over_after_each_summary(
    federation: LocalFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The derivation's thread holds the GIL while it parses; without a handover Python lets
    it keep it 5 ms at a time, and the loop (every call, every message) waits: while a pass
    derived 20,000 summaries, a chronology call took 26 to 35 ms against 3.4 to 4.2 with one
    (docs/performance.md). A call's own derivation, which its caller waits for, goes on
    without. Timing has no place here; the handovers themselves are counted."""
    async with running(federation, nodes=("csc",)) as cluster:
        opened = await _open_case(cluster)
        store_path = cluster.nodes["csc"].config.store_path
        fill_inbox(store_path, 3, [os.urandom(32), os.urandom(32)])  # another family's: the pass's
        fill_inbox(store_path, 2, [p.link_token for p in opened.people])  # the call's
        handovers: list[None] = []
        monkeypatch.setattr("node.chronology._hand_over_gil", lambda: handovers.append(None))
        assert len(await _chronology(cluster, opened.case_id)) == 4
        await cluster.nodes["csc"].chronology.derive_all()  # after the pass the call set going
    assert len(handovers) == 3


async def test_an_entry_derived_as_its_summary_is_superseded_is_stored_superseded(
    federation: LocalFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries are derived off the loop, from rows read before; a newer version arriving in
    between changes the row's state, and the entries take the state it has when stored."""
    async with running(federation, nodes=("csc",)) as cluster:
        opened = await _open_case(cluster)
        store_path = cluster.nodes["csc"].config.store_path
        fill_inbox(store_path, 1, [p.link_token for p in opened.people])
        chronology = cluster.nodes["csc"].chronology
        derive = chronology._derived_all

        def superseded_meanwhile(rows: list[object], marker: int) -> list[Row]:
            with closing(sqlite3.connect(store_path)) as db, db:  # as the newer version's arrival does
                db.execute("UPDATE inbox SET state = 'superseded' WHERE seq = 1")
            return derive(rows, marker)

        monkeypatch.setattr(chronology, "_derived_all", superseded_meanwhile)
        assert [e.state for e in await _chronology(cluster, opened.case_id)] == ["superseded"] * 2


# About where protobuf's length takes another byte (128, 16,384, 2 MiB), and one whose last length byte is 0x7F.
@pytest.mark.parametrize("size", [1, 127, 128, 300, 1_023, 1_024, 16_383, 16_384, 0x7F << 14, 2_097_152])
def test_entries_are_framed_as_protobuf_frames_them(size: int) -> None:
    """The chronology is assembled from stored bytes, so its framing must be protobuf's own."""
    payload = bytes(size)
    framed = wrappers_pb2.BytesValue(value=payload).SerializeToString()
    assert _field(1, payload) == framed == _framed(payload)


@pytest.fixture
def store() -> Iterator[sqlite3.Connection]:
    """A store at the latest schema, holding one received message (seq 1)."""
    with closing(sqlite3.connect(":memory:", isolation_level=None)) as db:
        for script in MIGRATIONS:
            db.executescript(script)
        db.execute(
            "INSERT INTO inbox(seq, sender, message_id, digest, received_at_ms, kind, share_id) "
            "VALUES (1, 'amh', 'm1', x'00', 1, 1, 's')"
        )
        yield db


@pytest.mark.parametrize("state", sorted(_STATES))
def test_each_states_field_is_the_entrys_state_as_protobuf_reads_it(state: str) -> None:
    expected = "current" if state in ("new", "read") else state
    assert node_api_pb2.ChronologyEntry.FromString(_STATES[state]).state == expected


def test_the_store_frames_an_entry_again_byte_for_byte_as_its_summary_changes_state(
    store: sqlite3.Connection,
) -> None:
    """Migration 32's trigger takes an entry's state field off and puts the new one on, and
    frames it again, in SQL: for every state change, with every byte value in the entry (NUL
    too: SQLite's `||` is a text operator), at each length where the length's varint grows."""
    edges = [n - t for n in (128, 16_384) for t in range(8, 14)] + [n + 1 for n in (128, 16_384)]
    transitions = list(itertools.permutations(_STATES, 2))
    for size in [0, 1, 300, 100_000, *edges]:
        entry = (bytes(range(256)) * (size // 256 + 1))[:size]
        for before, after in transitions:
            store.execute("UPDATE inbox SET state = ? WHERE seq = 1", (before,))
            store.execute("DELETE FROM chronology")
            store.execute(
                "INSERT INTO chronology VALUES (1, -1, 1, 'amh', 's', ?, x''), (1, 0, 1, 'amh', 's', ?, ?)",
                (before, before, _framed(entry + _STATES[before])),
            )
            store.execute("UPDATE inbox SET state = ? WHERE seq = 1", (after,))
            rows = store.execute("SELECT item, state, framed FROM chronology ORDER BY item").fetchall()
            assert rows == [(-1, before, b""), (0, after, _framed(entry + _STATES[after]))], (size, before, after)


def test_erasing_a_summary_leaves_its_entries_for_the_erasure_to_delete(store: sqlite3.Connection) -> None:
    """'erased' has no state field: the trigger leaves the entries alone, and the erasure
    deletes them in the same transaction (node/erasure.py)."""
    framed = _framed(b"entry" + _STATES["new"])
    store.execute("INSERT INTO chronology VALUES (1, 0, 1, 'amh', 's', 'new', ?)", (framed,))
    store.execute("UPDATE inbox SET state = 'erased' WHERE seq = 1")
    assert store.execute("SELECT state, framed FROM chronology").fetchall() == [("new", framed)]
