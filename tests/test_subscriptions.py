"""The gateway's packed subscription index against a plain model, across restarts and rebuilds;
and a starting gateway that serves from SQLite while the index is packed."""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import mmap
import random
import threading
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gateway.subscriptions as subscriptions
from gateway.db import GatewayDb
from gateway.subscriptions import NodeNumbers, PackedRoutes, SubscriptionIndex
from linkage.tokens import TOKEN_LEN
from linkage.v1 import envelope_pb2 as env
from tests.harness import CapturedLogs, LocalFederation, next_item, running
from tests.test_link_changes import amh_and_csc_linked, recipients
from tests.test_workflows import share

NODES = [f"node-{n}" for n in range(6)]


def _token(rng: random.Random) -> bytes:
    return rng.randbytes(TOKEN_LEN)


@given(st.lists(st.tuples(st.binary(min_size=TOKEN_LEN, max_size=TOKEN_LEN), st.integers(0, 5)), max_size=60))
@settings(max_examples=200, deadline=None)
def test_packed_routes_find_exactly_the_subscribers(rows: list[tuple[bytes, int]]) -> None:
    expected: dict[bytes, set[int]] = {}
    for token, node in rows:
        expected.setdefault(token, set()).add(node)
    routes = PackedRoutes.build(sorted({(t, n) for t, n in rows}))
    for token, nodes in expected.items():
        assert set(routes.find(token)) == nodes
    assert list(routes.find(b"\xff" * TOKEN_LEN)) == [] or b"\xff" * TOKEN_LEN in expected


def test_a_match_straddling_two_tokens_is_not_a_match() -> None:
    """The tokens are searched as one run of bytes: the second half of one and the first of
    the next can spell a token nobody holds. All three share their first byte, so the search
    runs over both (a bucket is read by its tokens' top bits)."""
    a, b = bytes([6] + [0] * 15 + [6] * 16), bytes([6] * 16 + [9] * 16)
    straddle = a[16:] + b[:16]
    routes = PackedRoutes.build([(a, 0), (b, 1)])
    assert bytes(routes.tokens).find(straddle) == 16  # there, but across the two
    assert list(routes.find(straddle)) == []
    assert list(routes.find(a)) == [0] and list(routes.find(b)) == [1]


def test_a_straddle_one_byte_into_the_first_token_is_not_a_match() -> None:
    """At the very start of the run: offset 1, not 0, is a straddle too."""
    a, b = bytes([0] * 31 + [7]), bytes([0] + [5] * 31)
    straddle = a[1:] + b[:1]
    routes = PackedRoutes.build([(a, 0), (b, 1)])
    assert bytes(routes.tokens).find(straddle) == 1
    assert list(routes.find(straddle)) == []


def test_a_token_right_after_a_straddle_that_spells_it_is_found() -> None:
    """The search goes on from the byte after a straddle, so a token that starts there (the
    straddle one byte before it) is not stepped over."""
    before, token = bytes([1] + [0] * 30 + [1]), bytes([1] * TOKEN_LEN)
    routes = PackedRoutes.build([(before, 0), (token, 1)])
    assert bytes(routes.tokens).find(token) == TOKEN_LEN - 1  # the last byte of one, the first 31 of the next
    assert list(routes.find(token)) == [1]


def test_node_numbers_stop_at_what_two_bytes_hold() -> None:
    numbers = NodeNumbers()
    for n in range(1 << 16):
        assert numbers.number(f"n{n}") == n
    assert numbers.number("n0") == 0  # a node already numbered keeps its number
    with pytest.raises(OverflowError, match="65,536"):
        numbers.number("one-more")


def test_every_token_is_found_through_a_directory_of_many_buckets() -> None:
    rng = random.Random(3)
    tokens = sorted({_token(rng) for _ in range(5_000)})
    routes = PackedRoutes.build((t, n % 7) for n, t in enumerate(tokens))
    assert routes.bits > 8  # sized from the count, beyond the smallest directory
    assert all(list(routes.find(t)) == [n % 7] for n, t in enumerate(tokens))
    assert all(list(routes.find(_token(rng))) == [] for _ in range(1_000))


def _advice(address: int) -> list[str]:
    """The kernel's flags on the mapping that holds `address` (proc(5), smaps' VmFlags)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        first = line.split(" ", 1)[0]
        if "-" in first:  # a mapping's own line, "start-end perms ...", before its fields
            start, end = (int(part, 16) for part in first.split("-"))
            inside = start <= address < end
        elif inside and first == "VmFlags:":
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(
    not hasattr(mmap, "MADV_HUGEPAGE") or not Path("/sys/kernel/mm/transparent_hugepage").exists(),
    reason="no transparent huge pages to ask for",
)
def test_the_packed_tokens_are_offered_huge_pages() -> None:
    rng = random.Random(4)
    routes = PackedRoutes.build((t, 0) for t in sorted({_token(rng) for _ in range(1_000)}))
    assert isinstance(routes.tokens, mmap.mmap)
    address = ctypes.addressof(ctypes.c_char.from_buffer(routes.tokens))
    assert "hg" in _advice(address)  # MADV_HUGEPAGE taken


def test_without_huge_pages_the_routes_are_plain_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(mmap, "MADV_HUGEPAGE", raising=False)
    rng = random.Random(5)
    tokens = sorted({_token(rng) for _ in range(1_000)})
    routes = PackedRoutes.build((t, n % 3) for n, t in enumerate(tokens))
    assert isinstance(routes.tokens, bytes)
    assert all(list(routes.find(t)) == [n % 3] for n, t in enumerate(tokens))
    assert list(routes.find(_token(rng))) == []


@asynccontextmanager
async def opened(db: GatewayDb) -> AsyncIterator[SubscriptionIndex]:
    index = await SubscriptionIndex.open(db)
    try:
        yield index
    finally:
        await index.close()


async def test_index_follows_changes_through_rebuilds_and_restarts(
    gateway_db: GatewayDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subscriptions, "REBUILD_AFTER", 25)  # rebuild often while changes keep coming
    rng = random.Random(5)
    tokens = [_token(rng) for _ in range(80)]
    model: dict[str, set[bytes]] = {n: set() for n in NODES}
    async with opened(gateway_db) as index:
        for step in range(300):
            node = rng.choice(NODES)
            chosen = rng.sample(tokens, rng.randint(1, 4))
            if rng.random() < 0.65:
                assert set(await index.add(node, chosen)) == set(chosen) - model[node]
                model[node] |= set(chosen)
            else:
                assert set(await index.remove(node, chosen)) == set(chosen) & model[node]
                model[node] -= set(chosen)
            if step % 50 == 0:
                await index.built()  # let a running rebuild land, then keep checking
                assert index.packed
            for token in rng.sample(tokens, 5):
                assert index.subscribers([token]) == {n for n in NODES if token in model[n]}
        for n in NODES:
            assert index.count(n) == len(model[n])
    async with opened(gateway_db) as reloaded:  # a restarted gateway
        await reloaded.built()
        assert len(reloaded) == sum(len(t) for t in model.values())
        for token in tokens:
            expected = {n for n in NODES if token in model[n]}
            assert reloaded.subscribers([token]) == expected
            assert all(reloaded.is_subscribed(n, token) == (n in expected) for n in NODES)


async def test_the_overlay_is_packed_into_a_new_base_once_it_holds_enough_changes(
    gateway_db: GatewayDb, monkeypatch: pytest.MonkeyPatch, captured_logs: CapturedLogs
) -> None:
    """Changes since the base was built are kept apart in memory, and are folded into a newly
    packed base after REBUILD_AFTER of them, so the overlay a busy gateway carries stays small."""
    monkeypatch.setattr(subscriptions, "REBUILD_AFTER", 5)
    rng = random.Random(6)
    async with opened(gateway_db) as index:
        await index.built()
        for _ in range(4):
            await index.add("node-0", [_token(rng)])
            await index.built()
        assert "subscriptions.rebuilt" not in captured_logs.getvalue()
        await index.add("node-0", [_token(rng)])
        await index.built()
        assert captured_logs.getvalue().count("subscriptions.rebuilt") == 1
        assert index.count("node-0") == 5


async def test_the_same_change_asked_twice_at_once_is_made_and_counted_once(gateway_db: GatewayDb) -> None:
    """A node's calls may overlap (its re-subscription on connecting, and a case opened):
    each change is made, reported and counted by one of them, not both."""
    rng = random.Random(11)
    tokens = [_token(rng) for _ in range(3)]
    node = NODES[0]
    async with opened(gateway_db) as index:
        added = await asyncio.gather(index.add(node, tokens), index.add(node, tokens[:2]))
        assert sorted(t for a in added for t in a) == sorted(tokens)
        assert index.count(node) == 3
        removed = await asyncio.gather(index.remove(node, tokens), index.remove(node, tokens[1:]))
        assert sorted(t for r in removed for t in r) == sorted(tokens)
        assert index.count(node) == 0
        await index.built()
    async with opened(gateway_db) as reloaded:
        assert reloaded.count(node) == 0 and len(reloaded) == 0


class HeldBuild:
    """Holds the index's packing thread until released: what a gateway starting on millions of
    subscriptions meets for 15 to 25 s. The rest of the index runs as it is."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.release = threading.Event()
        load = subscriptions._load

        def held(path: Path, numbers: NodeNumbers, stopping: threading.Event) -> PackedRoutes:
            self.release.wait()
            return load(path, numbers, stopping)

        monkeypatch.setattr(subscriptions, "_load", held)


async def test_a_starting_index_answers_from_sqlite_until_it_is_packed(
    gateway_db: GatewayDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(9)
    tokens = [_token(rng) for _ in range(40)]
    model: dict[str, set[bytes]] = {n: set(rng.sample(tokens, 10)) for n in NODES[:4]}
    async with opened(gateway_db) as index:
        for node, mine in model.items():
            await index.add(node, mine)

    def agrees(index: SubscriptionIndex) -> None:
        assert len(index) == sum(len(t) for t in model.values())
        for token in tokens:
            expected = {n for n in model if token in model[n]}
            assert index.subscribers([token]) == expected
            assert all(index.is_subscribed(n, token) == (n in expected) for n in NODES)
        assert all(index.count(n) == len(model.get(n, ())) for n in NODES)

    held = HeldBuild(monkeypatch)
    try:
        async with opened(gateway_db) as index:  # a restarted gateway: ready before it is packed
            assert not index.packed
            agrees(index)  # each node's total from the counts kept beside the subscriptions
            for node in NODES:  # changes while the build is held: a node new to the index among them
                chosen = rng.sample(tokens, 6)
                if node in model and rng.random() < 0.5:
                    assert set(await index.remove(node, chosen)) == set(chosen) & model[node]
                    model[node] -= set(chosen)
                else:
                    assert set(await index.add(node, chosen)) == set(chosen) - model.get(node, set())
                    model[node] = model.get(node, set()) | set(chosen)
            agrees(index)
            held.release.set()
            await index.built()
            assert index.packed
            agrees(index)  # the packed base and the changes made while it was built
    finally:
        held.release.set()
    async with opened(gateway_db) as reopened:
        agrees(reopened)  # the totals kept by the triggers


async def test_a_gateway_that_is_stopped_abandons_the_packing(
    gateway_db: GatewayDb, monkeypatch: pytest.MonkeyPatch, captured_logs: CapturedLogs
) -> None:
    rng = random.Random(11)
    async with opened(gateway_db) as index:
        await index.add("node-0", [_token(rng) for _ in range(3_000)])

    # The build reads its first row and then waits until the gateway is stopping; SQLite is
    # asked whether to go on every 10 instructions, so the rest of the read is abandoned.
    stopping_seen: list[threading.Event] = []
    load, build = subscriptions._load, PackedRoutes.build

    def watched(path: Path, numbers: NodeNumbers, stopping: threading.Event) -> PackedRoutes:
        stopping_seen.append(stopping)
        return load(path, numbers, stopping)

    def slow(rows: Iterable[tuple[bytes, int]]) -> PackedRoutes:
        rows = iter(rows)
        first = next(rows)
        stopping_seen[0].wait()
        return build(itertools.chain([first], rows))

    monkeypatch.setattr(subscriptions, "_load", watched)
    monkeypatch.setattr(PackedRoutes, "build", staticmethod(slow))
    monkeypatch.setattr(subscriptions, "CHECK_STOP_EVERY", 10)
    async with opened(gateway_db) as index:
        assert index.count("node-0") == 3_000
    assert not index.packed
    assert "subscriptions.build_failed" not in captured_logs.getvalue()  # stopping is no failure


async def test_a_gateway_routes_while_its_index_is_packed(
    federation: LocalFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldBuild(monkeypatch)
    try:
        async with running(federation, nodes=("amh", "csc")) as cluster:
            index = cluster.gateway._index
            assert index is not None and not index.packed
            *_, assessment_id = await amh_and_csc_linked(cluster)
            assert recipients(await share(cluster, assessment_id)) == ["csc"]
            first = await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)
            assert not index.packed  # routed, and the look-ups were answered, from SQLite

            held.release.set()
            await index.built()
            assert index.packed
            assert recipients(await share(cluster, assessment_id)) == ["csc"]
            await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE, after_seq=first.seq)
    finally:
        held.release.set()
