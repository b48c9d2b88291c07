"""Scale figures: the gateway's subscription index, a family's chronology, and node
start-up and a retention purge over a large store. Each is measured on the real code
path (the gateway's `SubscriptionIndex`, the node's `Chronologies.assemble`, `linkage node
serve`, `retention.purge`) over synthetic data written the way the product writes it."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sqlite3
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from linkage import logs, stories
from linkage.cli.inbox import CHRONOLOGY_PAGE, chronology_pages
from linkage.content import SCHEMA_VERSION
from linkage.demo import spawn
from linkage.tokens import MAX_TOKENS_PER_CALL
from linkage.transport import api_channel
from linkage.v1 import envelope_pb2, node_api_pb2, node_api_pb2_grpc

if TYPE_CHECKING:
    from bench.run import Plan

Say = Callable[[str], None]
LOOKUPS = 20_000
FIRST_RECEIVED_MS = 1_767_225_600_000  # when fill_inbox's first summary was received
PURGED = 2_000  # received summaries the retention figure purges: several days' worth for a busy node
NODES_PER_TOKEN = 2


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _build_subscriptions(path: Path, count: int, nodes: int = 200) -> None:
    """`count` subscriptions, NODES_PER_TOKEN agencies per family token, as a gateway from before
    `subscription_counts` stored them (the gateway counts them as it opens the file: the upgrade's
    one-time cost, which the figures report). Made and sorted by SQLite and written in key order:
    at 1 M, 4 s against 9 for the same rows made in Python. Tokens are random, so each run's file
    differs; the figures read their probes back from it."""
    from gateway.db import SCHEMA

    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA cache_size = -262144")  # 256 MiB: a test file, built once
        db.executescript(SCHEMA)
        db.execute(
            # Each token's agencies are `first` and every `stride` after it: distinct, as they must be.
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?), "
            "k(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM k WHERE k + 1 < ?), "
            "family(token, first) AS MATERIALIZED (SELECT randomblob(32), abs(random() % ?) FROM n) "
            "INSERT INTO subscriptions(token, node_id) "
            "SELECT token, printf('node-%03d', first + ? * k) FROM family, k ORDER BY token, k",
            (count // NODES_PER_TOKEN, NODES_PER_TOKEN, nodes // NODES_PER_TOKEN, nodes // NODES_PER_TOKEN),
        )
        db.commit()


def _percentiles(timings_ns: list[int]) -> tuple[float, float]:
    """p50 and p99 in µs."""
    timings_ns.sort()
    return timings_ns[len(timings_ns) // 2] / 1000, timings_ns[int(len(timings_ns) * 0.99)] / 1000


def _timed(lookup: Callable[[bytes], object], probes: list[bytes]) -> tuple[float, float]:
    timings = []
    for token in probes:
        t0 = time.perf_counter_ns()
        lookup(token)
        timings.append(time.perf_counter_ns() - t0)
    return _percentiles(timings)


def _index_figures(path: str, queue: Any) -> None:
    """In a fresh process, so the resident-memory delta is the index's own. The baseline,
    in the same process over the same probes, is the obvious structure: a dict from each
    token to its subscribers, whose look-up tail shows what this machine's memory costs."""

    async def measure() -> dict[str, float]:
        from gateway.db import GatewayDb
        from gateway.subscriptions import SubscriptionIndex

        logs.configure("warning")  # not the index's own "loaded" line amid the bench's figures
        db = await GatewayDb.open(Path(path))
        async with db.db.execute("SELECT token FROM subscriptions ORDER BY random() LIMIT ?", (LOOKUPS,)) as cur:
            probes = [bytes(r[0]) for r in await cur.fetchall()]
        before = _rss_bytes()
        started = time.perf_counter()
        index = await SubscriptionIndex.open(db)
        open_s = time.perf_counter() - started
        # While it is packed, in a thread of this process, look-ups read SQLite, as a
        # gateway's do when it has just started: one now and then, each timed alone.
        while_packing = []
        for token in probes:
            if index.packed:
                break
            t0 = time.perf_counter_ns()
            index.subscribers([token])
            while_packing.append(time.perf_counter_ns() - t0)
            await asyncio.sleep(0.001)
        await index.built()
        load_s = time.perf_counter() - started
        grown = _rss_bytes() - before
        count = len(index)
        p50, p99 = _timed(lambda token: index.subscribers([token]), probes)
        packing_p50, packing_p99 = _percentiles(while_packing)
        # One node's own subscriptions, a page at a time, as a node whose total disagrees lists them.
        started, after, listed, pages = time.perf_counter(), b"", 0, 0
        while True:
            page = await index.held_by("node-000", after, MAX_TOKENS_PER_CALL)
            listed, pages = listed + len(page), pages + 1
            if len(page) < MAX_TOKENS_PER_CALL:
                break
            after = page[-1]
        list_s = time.perf_counter() - started
        await index.close()
        await db.close()

        before = _rss_bytes()
        naive: dict[bytes, list[str]] = {}
        with closing(sqlite3.connect(path)) as plain:
            for token, node_id in plain.execute("SELECT token, node_id FROM subscriptions"):
                naive.setdefault(token, []).append(node_id)
        naive_grown = _rss_bytes() - before
        naive_p50, naive_p99 = _timed(lambda token: set(naive.get(token, ())), probes)
        return {
            "subscriptions": count,
            "bytes_per_subscription": grown / count,
            "open_s": open_s,
            "load_s": load_s,
            "packing_lookups": len(while_packing),
            "packing_lookup_p50_us": packing_p50,
            "packing_lookup_p99_us": packing_p99,
            "lookup_p50_us": p50,
            "lookup_p99_us": p99,
            "dict_bytes_per_subscription": naive_grown / count,
            "dict_lookup_p50_us": naive_p50,
            "dict_lookup_p99_us": naive_p99,
            "listed": listed,
            "list_pages": pages,
            "list_s": list_s,
        }

    queue.put(asyncio.run(measure()))


async def _counted_on_open(path: Path) -> float:
    """Seconds for the gateway to open the file, counting each node's subscriptions once."""
    from gateway.db import GatewayDb

    started = time.perf_counter()
    db = await GatewayDb.open(path)
    elapsed = time.perf_counter() - started
    await db.close()
    return elapsed


def subscriptions(count: int, root: Path) -> dict[str, float]:
    path = root / f"subscriptions-{count}.sqlite"
    _build_subscriptions(path, count)
    upgrade_s = asyncio.run(_counted_on_open(path))  # here, so the index's process grows by the index alone
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_index_figures, args=(str(path), queue))
    process.start()
    figures: dict[str, float] = queue.get(timeout=1800)
    process.join()
    path.unlink()
    return figures | {"upgrade_s": upgrade_s}


def _signed_summaries(sender: str, recipient: str, parent: bytes, child: bytes) -> Iterator[tuple[str, bytes]]:
    """Received summaries as the inbox stores them (the verified signed body): one story, each
    with ids of its own. The story is built once (95 µs a summary when built for each)."""
    body = envelope_pb2.MessageBody(
        schema_version=SCHEMA_VERSION,
        sender_node=sender,
        recipient_node=recipient,
        kind=envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE,
        summary=stories.parent_risk_change(parent, child),
    )
    signed = envelope_pb2.SignedMessage(signing_key_id="k1")
    while True:
        body.message_id = body.share_id = str(uuid.uuid4())
        body.summary.summary_id = str(uuid.uuid4())
        signed.body, signed.signature = body.SerializeToString(), os.urandom(64)
        yield body.message_id, signed.SerializeToString()


def fill_inbox(store_path: Path, count: int, tokens: list[bytes], sender: str = "amh", recipient: str = "csc") -> None:
    """`count` received summaries about `tokens`, written straight into a node's store."""
    parent, child = tokens
    summaries = _signed_summaries(sender, recipient, parent, child)
    with sqlite3.connect(store_path) as db:
        db.execute("PRAGMA cache_size = -262144")  # 256 MiB: the inbox's indexes, written at random
        seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM inbox").fetchone()[0]
        for start in range(0, count, 10_000):
            rows, bodies, links = [], [], []
            for _ in range(min(10_000, count - start)):
                seq += 1
                message_id, signed = next(summaries)
                at_ms = FIRST_RECEIVED_MS + seq * 1000
                rows.append((seq, sender, message_id, os.urandom(32), at_ms, 1, message_id, message_id))
                bodies.append((seq, signed))
                links += [(parent, seq), (child, seq)]
            db.executemany(
                "INSERT INTO inbox(seq, sender, message_id, digest, received_at_ms, kind, share_id, summary_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            db.executemany("INSERT INTO inbox_bodies(seq, signed) VALUES (?, ?)", bodies)
            db.executemany("INSERT INTO inbox_tokens(token, inbox_seq) VALUES (?, ?)", links)


async def chronology(entries: int, root: Path) -> dict[str, float]:
    """A family whose chronology has `entries` entries (two risk items per received summary)."""
    from bench.e2e import ACTOR, RECIPIENT, make_federation
    from linkage.config import NodeConfig
    from node.server import NodeServer

    federation = make_federation(root / "chronology")
    logs.configure("error")  # no gateway runs here; the node's reconnect warnings are expected
    node = NodeServer(NodeConfig.load(federation.node_tomls[RECIPIENT]))
    await node.start()
    try:
        opened = await node.cases.open_case(
            node_api_pb2.OpenCaseRequest(actor=ACTOR, case_ref="chronology", people=stories.think_family_people())
        )
        tokens = [p.link_token for p in opened.people]
        fill_inbox(node.config.store_path, entries // 2, tokens)
        # The first call also derives its family's entries (here every summary's), once; the
        # figure is the family's chronology read after that, and after the node-wide pass the
        # call sets off (finding nothing here left to derive) has run.
        started = time.perf_counter()
        await node.chronology.assemble(opened.case_id, ACTOR)
        first_s = time.perf_counter() - started
        await node.chronology.derive_all()
        timings = []
        for _ in range(5):
            started = time.perf_counter()
            answer = await node.chronology.assemble(opened.case_id, ACTOR)  # what the API sends
            timings.append(time.perf_counter() - started)
        found = node_api_pb2.ChronologyResponse.FromString(answer).entries
        assert len(found) == entries, (len(found), entries)
        # And as a case system sees it: the call over the node's socket, the answer parsed.
        api_timings = []
        async with api_channel(node.config.api_socket) as channel:
            api = node_api_pb2_grpc.NodeApiStub(channel)
            request = node_api_pb2.ChronologyRequest(actor=ACTOR, case_id=opened.case_id)
            for _ in range(5):
                started = time.perf_counter()
                received = await api.Chronology(request)
                api_timings.append(time.perf_counter() - started)
            assert len(received.entries) == entries, (len(received.entries), entries)
            # In pages, as a case system reads a chronology too long for one message.
            paged_timings = []
            for _ in range(5):
                started = time.perf_counter()
                paged = [len(page.entries) async for page in chronology_pages(api, ACTOR, opened.case_id)]
                paged_timings.append(time.perf_counter() - started)
            assert sum(paged) == entries, (paged, entries)
    finally:
        await node.stop(grace=1)
        logs.configure("warning")
    return {
        "entries": entries,
        "median_ms": statistics.median(timings) * 1000,
        "max_ms": max(timings) * 1000,
        "first_with_derivation_ms": first_s * 1000,
        "api_median_ms": statistics.median(api_timings) * 1000,
        "page_entries": CHRONOLOGY_PAGE,
        "api_paged_median_ms": statistics.median(paged_timings) * 1000,
    }


async def _start_seconds(toml: Path, log_file: Path) -> float:
    started = time.perf_counter()
    process = await spawn("node", ["node", "serve", "--config", str(toml)], log_file)
    await process.first_line("serving its API")
    elapsed = time.perf_counter() - started
    await process.stop()
    return elapsed


async def startup(summaries: int, root: Path) -> dict[str, float]:
    """`linkage node serve` until its API is served: an empty store, then one holding `summaries`."""
    from bench.e2e import RECIPIENT, make_federation
    from linkage.config import NodeConfig

    federation = make_federation(root / "startup")
    toml = federation.node_tomls[RECIPIENT]
    log_file = root / "startup.log"
    empty_s = await _start_seconds(toml, log_file)  # also creates and migrates the store
    parent, child = os.urandom(32), os.urandom(32)
    fill_inbox(NodeConfig.load(toml).store_path, summaries, [parent, child])
    full_s = await _start_seconds(toml, log_file)
    return {"summaries": summaries, "empty_store_s": empty_s, "start_s": full_s} | await _purge(
        NodeConfig.load(toml).store_path, min(PURGED, summaries // 2)
    )


async def _purge(store_path: Path, count: int) -> dict[str, float]:
    """Retention's purge of the `count` oldest received summaries from the filled store (as
    its daily run would find them), and the longest the event loop went without a turn."""
    from linkage.clock import DAY_MS, ManualClock
    from node import retention
    from node.store import Store

    # fill_inbox spaces receptions a second apart: this clock makes the oldest `count` due.
    clock = ManualClock(FIRST_RECEIVED_MS + retention.MIN_KEEP_DAYS * DAY_MS + count * 1000 + 1)
    store = await Store.open(store_path, clock)
    longest = 0.0
    purging = True

    async def heartbeat() -> None:
        nonlocal longest
        last = time.perf_counter()
        while purging:
            await asyncio.sleep(0)
            now = time.perf_counter()
            longest, last = max(longest, now - last), now

    beating = asyncio.create_task(heartbeat())
    try:
        started = time.perf_counter()
        counts = await retention.purge(store, clock, retention.MIN_KEEP_DAYS)
        elapsed = time.perf_counter() - started
    finally:
        purging = False
        await beating
        await store.close()
    return {"purged": counts["received"], "purge_s": elapsed, "purge_longest_stall_ms": longest * 1000}


def measure_all(plan: Plan, root: Path, say: Say) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for count in plan.subscriptions:
        figures[f"subscriptions_{count}"] = s = subscriptions(count, root)
        say(
            f"gateway with {count:,} subscriptions: {s['bytes_per_subscription']:.0f} bytes each, "
            f"lookup p50 {s['lookup_p50_us']:.1f} µs p99 {s['lookup_p99_us']:.1f} µs; "
            f"serving after {s['open_s']:.3f} s, "
            f"packed after {s['load_s']:.1f} s (meanwhile from SQLite: p50 {s['packing_lookup_p50_us']:.0f} µs "
            f"p99 {s['packing_lookup_p99_us']:.0f} µs over {s['packing_lookups']:,} look-ups); "
            f"a dict of the same: {s['dict_bytes_per_subscription']:.0f} bytes each, "
            f"p50 {s['dict_lookup_p50_us']:.1f} µs p99 {s['dict_lookup_p99_us']:.1f} µs; "
            f"counting each node's subscriptions on the first start after the upgrade: {s['upgrade_s']:.1f} s; "
            f"listing one node's {s['listed']:,} in {s['list_pages']} pages: {s['list_s']:.1f} s"
        )
    figures["chronology"] = c = asyncio.run(chronology(plan.chronology_entries, root))
    say(
        f"chronology of {c['entries']:,} entries: median {c['median_ms']:.1f} ms, max {c['max_ms']:.1f} ms "
        f"(first call, deriving every entry once: {c['first_with_derivation_ms']:.0f} ms); "
        f"over the API, the answer parsed: median {c['api_median_ms']:.1f} ms; "
        f"in pages of {c['page_entries']:,}: {c['api_paged_median_ms']:.1f} ms"
    )
    figures["startup"] = u = asyncio.run(startup(plan.stored_summaries, root))
    say(
        f"node start-up with {u['summaries']:,} stored summaries: {u['start_s']:.2f} s "
        f"(empty store {u['empty_store_s']:.2f} s); retention purging its oldest {u['purged']:,}: "
        f"{u['purge_s']:.2f} s, the event loop held at most {u['purge_longest_stall_ms']:.0f} ms"
    )
    return figures
