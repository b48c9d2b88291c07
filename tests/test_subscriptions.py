"""The gateway's packed subscription index against a plain model, across restarts and rebuilds."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gateway.subscriptions as subscriptions
from gateway.db import GatewayDb
from gateway.subscriptions import PackedRoutes, SubscriptionIndex
from linkage.tokens import TOKEN_LEN

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
    a, b = bytes(range(32)), bytes(range(32, 64))
    straddle = a[16:] + b[:16]
    routes = PackedRoutes.build([(a, 0), (b, 1)])
    assert list(routes.find(straddle)) == []
    assert list(routes.find(a)) == [0] and list(routes.find(b)) == [1]


def test_every_token_is_found_through_a_directory_of_many_buckets() -> None:
    rng = random.Random(3)
    tokens = sorted({_token(rng) for _ in range(5_000)})
    routes = PackedRoutes.build((t, n % 7) for n, t in enumerate(tokens))
    assert routes.bits > 8  # sized from the count, beyond the smallest directory
    assert all(list(routes.find(t)) == [n % 7] for n, t in enumerate(tokens))
    assert all(list(routes.find(_token(rng))) == [] for _ in range(1_000))


async def test_index_follows_changes_through_rebuilds_and_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subscriptions, "REBUILD_AFTER", 25)  # rebuild often while changes keep coming
    rng = random.Random(5)
    tokens = [_token(rng) for _ in range(80)]
    model: dict[str, set[bytes]] = {n: set() for n in NODES}
    db = await GatewayDb.open(tmp_path / "gateway.sqlite")
    index = await SubscriptionIndex.load(db)
    try:
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
                await index.close()  # let a running rebuild land, then keep checking
            for token in rng.sample(tokens, 5):
                assert index.subscribers([token]) == {n for n in NODES if token in model[n]}
        for n in NODES:
            assert index.count(n) == len(model[n])
        await index.close()
        reloaded = await SubscriptionIndex.load(db)  # a restarted gateway
        assert len(reloaded) == sum(len(t) for t in model.values())
        for token in tokens:
            expected = {n for n in NODES if token in model[n]}
            assert reloaded.subscribers([token]) == expected
            assert all(reloaded.is_subscribed(n, token) == (n in expected) for n in NODES)
    finally:
        await index.close()
        await db.close()
