"""A family's chronology as the case system receives it: whole however long it grows,
in order, each entry in its summary's present state."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import wrappers_pb2

from bench.scale import fill_inbox
from linkage import stories
from linkage.clock import ManualClock
from linkage.transport import MAX_MESSAGE_BYTES
from linkage.v1 import node_api_pb2
from node.chronology import _STATES, AHEAD, DERIVED, Chronologies, Row, _field, _framed
from node.store.schema import MIGRATIONS
from tests.harness import Cluster, LocalFederation, make_federation, running
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


async def _held_while_stopped(cluster: Cluster, count: int) -> Path:
    """csc stopped, and `count` summaries put in its store meanwhile, as if received before."""
    store_path = cluster.nodes["csc"].config.store_path
    await cluster.stop_node("csc")
    fill_inbox(store_path, count, [os.urandom(32), os.urandom(32)])
    return store_path


def _events(captured: io.StringIO, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in captured.getvalue().splitlines() if f'"{name}"' in line]


async def test_a_node_derives_the_entries_of_what_it_holds_as_it_starts(
    federation: LocalFederation, captured_logs: io.StringIO
) -> None:
    """Summaries received before the node last stopped (or whose entries a migration left to
    derive again) have their entries derived as it starts, not on a practitioner's first call."""
    async with running(federation, nodes=("csc",)) as cluster:
        store_path = await _held_while_stopped(cluster, 600)  # two batches' worth
        node = await cluster.start_node("csc")  # its derivation under way as it connected
        await node.chronology.derive_all()  # waits for that one (they take turns), then finds nothing new
        with closing(sqlite3.connect(store_path)) as db:
            assert db.execute("SELECT count(*) FROM chronology WHERE item >= 0").fetchone() == (1200,)
    assert [(d["items"], d["cause"]) for d in _events(captured_logs, "chronology.derived")] == [(600, "start")]


async def test_a_call_derives_its_familys_summaries_without_waiting_for_the_nodes(
    federation: LocalFederation, monkeypatch: pytest.MonkeyPatch, captured_logs: io.StringIO
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
    assert [(d["items"], d["cause"]) for d in _events(captured_logs, "chronology.derived")] == [
        (3, "family"),
        (600, "start"),
    ]


async def test_a_derivation_that_fails_as_the_node_starts_is_logged_and_the_node_serves_and_stops(
    federation: LocalFederation, monkeypatch: pytest.MonkeyPatch, captured_logs: io.StringIO
) -> None:
    async with running(federation, nodes=("csc",)) as cluster:
        await _held_while_stopped(cluster, 1)

        def fails(rows: list[object], marker: int) -> list[Row]:
            raise ValueError("a body the derivation cannot read")

        monkeypatch.setattr("node.chronology.Chronologies._derived_all", staticmethod(fails))
        node = await cluster.start_node("csc")
        with pytest.raises(ValueError):  # after the one started with the node (they take turns), as a call meets it
            await node.chronology.derive_all()
    (failed,) = _events(captured_logs, "chronology.derive_failed")
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


@pytest.mark.parametrize("size", [1, 127, 128, 300, 1_023, 1_024, 16_383, 16_384, 2_097_152])
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
