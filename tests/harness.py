"""A real federation for tests: CA, directory, gateway and nodes over mTLS on
loopback ports, with real SQLite files under the test's temporary folder."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.server import GatewayServer
from linkage.clock import Clock, SystemClock
from linkage.config import DeliverySettings, GatewayConfig, GatewayLimits, NodeConfig
from linkage.federation import Federation, enrol_gateway, enrol_node, init_federation, publish_directory, revoke_node
from linkage.transport import api_channel, secure_channel
from linkage.v1 import node_api_pb2, node_api_pb2_grpc, summary_pb2
from node.server import NodeServer
from node.store import Store, Tx

FEDERATION_ID = "test.linkage.example"

# node id -> (agency name, agency type); all synthetic.
AGENCIES: dict[str, tuple[str, str]] = {
    "amh": ("Adult Mental Health Trust", "NHS_MENTAL_HEALTH"),
    "csc": ("Children's Social Care", "LA_CHILDRENS_SOCIAL_CARE"),
    "school": ("Oak Primary School", "SCHOOL"),
    "police": ("County Police", "POLICE"),
}

PRACTITIONER = summary_pb2.Practitioner(id="p-001", name="Alex Example", role="Care coordinator")


@dataclass
class LocalFederation:
    root: Path
    fed: Federation
    gateway_config: GatewayConfig
    node_configs: dict[str, NodeConfig]


def make_federation(
    root: Path,
    clock: Clock,
    nodes: tuple[str, ...] = tuple(AGENCIES),
    validity_days: int = 7,
    suite: str = "classic",
    jurisdictions: dict[str, str] | None = None,
) -> LocalFederation:
    """`jurisdictions`: node id -> whose law it shares under, for those not in England."""
    now = clock.now_ms()
    fed = init_federation(root / "federation", FEDERATION_ID, now, suite)
    gw_conf = enrol_gateway(fed, "gateway", root / "gateway", "127.0.0.1:0", now)
    node_paths = {}
    for node_id in nodes:
        name, agency_type = AGENCIES[node_id]
        node_paths[node_id] = enrol_node(
            fed,
            node_id,
            name,
            agency_type,
            root / "nodes" / node_id,
            "127.0.0.1:0",
            now,
            contact_role="Duty team",
            jurisdiction=(jurisdictions or {}).get(node_id, "ENG"),
        )
    publish_directory(fed, now, validity_days, copy_to=(root / "gateway", *(p.parent for p in node_paths.values())))
    return LocalFederation(
        root=root,
        fed=fed,
        gateway_config=GatewayConfig.load(gw_conf),
        node_configs={n: NodeConfig.load(p) for n, p in node_paths.items()},
    )


@dataclass
class Cluster:
    federation: LocalFederation
    gateway: GatewayServer
    nodes: dict[str, NodeServer] = field(default_factory=dict)
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    def closes(self, channel: grpc.aio.Channel) -> grpc.aio.Channel:
        """`channel`, to be closed with the cluster."""
        self._channels.append(channel)
        return channel

    def api(self, node_id: str) -> node_api_pb2_grpc.NodeApiAsyncStub:
        return node_api_pb2_grpc.NodeApiStub(self.closes(api_channel(self.nodes[node_id].config.api_socket)))

    def gateway_channel(self, node_id: str) -> grpc.aio.Channel:
        """An mTLS channel to the gateway with a node's certificate."""
        tls = self.federation.node_configs[node_id].tls
        return self.closes(secure_channel(f"127.0.0.1:{self.gateway.port}", tls, "gateway"))

    async def start_node(
        self,
        node_id: str,
        clock: Clock | None = None,
        delivery: DeliverySettings | None = None,
        gateway_port: int | None = None,  # another way to the gateway, such as a faulty proxy
    ) -> NodeServer:
        config = dataclasses.replace(
            self.federation.node_configs[node_id],
            gateway_address=f"127.0.0.1:{gateway_port or self.gateway.port}",
            delivery=delivery or self.federation.node_configs[node_id].delivery,
        )
        node = NodeServer(config, clock or self.gateway.clock)
        await node.start()
        assert node.link is not None
        try:
            await node.link.connected.wait()
        except BaseException:  # a test that gave up waiting: stopped here, as the cluster does not hold it
            await node.stop(grace=0)
            raise
        self.nodes[node_id] = node
        return node

    async def stop_node(self, node_id: str) -> None:
        await self.nodes.pop(node_id).stop(grace=1)

    async def start_gateway(self, port: int, clock: Clock | None = None, limits: GatewayLimits | None = None) -> None:
        """The gateway, stopped, started again where the nodes dial it (on its clock, with its
        limits, unless told others)."""
        config = self.federation.gateway_config
        config = dataclasses.replace(config, listen=f"127.0.0.1:{port}", limits=limits or config.limits)
        self.gateway = GatewayServer(config, clock or self.gateway.clock)
        await self.gateway.start()

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        for node_id in list(self.nodes):
            await self.stop_node(node_id)
        await self.gateway.stop(grace=1)


async def wait_delivered(node: NodeServer, count: int, state: str = "delivered") -> None:
    """Until `count` outbox rows are in `state`."""
    await wait_count(node, "SELECT COUNT(*) FROM outbox WHERE state = ?", (state,), count)


async def wait_count(
    source: NodeServer | Store, sql: str, params: tuple[object, ...], count: int, timeout_s: float = 60
) -> None:
    """Until `sql` counts at least `count` in a node's (or a bare store's) store, awaiting its
    commits (no sleeping); a test waiting for what never comes fails, saying what it waited for."""
    store = source.store if isinstance(source, NodeServer) else source
    assert store is not None
    row = ("nothing yet",)
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                committed = store.next_commit()
                row = await store.fetchone(sql, params)
                if row[0] >= count:
                    return
                await committed.wait()
    except TimeoutError:
        raise AssertionError(f"after {timeout_s:g} s, {sql} {params} counts {row[0]}, not {count}") from None


async def settle(node: NodeServer) -> None:
    """Until everything this node has to send is sent and answered by the gateway."""
    while True:
        version = node.outbox.version
        if node.outbox.idle():
            return
        await node.outbox.wait_change(version)


@asynccontextmanager
async def running(
    federation: LocalFederation,
    nodes: tuple[str, ...] | None = None,
    clock: Clock | None = None,
    limits: GatewayLimits | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),  # the gateway's, such as a fault injected
) -> AsyncIterator[Cluster]:
    config = federation.gateway_config
    if limits is not None:
        config = dataclasses.replace(config, limits=limits)
    gateway = GatewayServer(config, clock or SystemClock(), interceptors)
    await gateway.start()
    cluster = Cluster(federation=federation, gateway=gateway)
    try:
        for node_id in nodes if nodes is not None else tuple(federation.node_configs):
            await cluster.start_node(node_id)
        yield cluster
    finally:
        await cluster.close()


async def next_item(
    cluster: Cluster, node: str, kind: int, after_seq: int = 0, timeout_s: float = 15
) -> node_api_pb2.ReceivedSummary:
    """The first item of `kind` in a node's inbox after `after_seq`, as its watch stream delivers it."""
    stream = cluster.api(node).WatchReceived(node_api_pb2.WatchReceivedRequest(actor=PRACTITIONER, after_seq=after_seq))
    async with asyncio.timeout(timeout_s):
        async for item in stream:
            if item.kind == kind:
                stream.cancel()
                return item
    raise AssertionError(f"{node} received no item of kind {kind}")


async def audit_events(source: NodeServer | Store, event: str = "") -> list[dict[str, Any]]:
    """A node's (or a bare store's) audit entries, in order; only those of `event`, if given."""
    store = source.store if isinstance(source, NodeServer) else source
    assert store is not None
    sql = "SELECT entry FROM audit WHERE event = ? OR ? = '' ORDER BY seq"
    return [json.loads(r[0]) for r in await store.fetchall(sql, (event, event))]


async def linkage(*args: str, **settings: str) -> tuple[int, str, str]:
    """`linkage ARGS` in a child process: exit code, standard output and error. It sees no
    LINKAGE_ setting from this environment, only those given (e.g. LINKAGE_GATEWAY_ADDRESS)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINKAGE_")} | settings
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "linkage", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def audit_verify_from_gateway(cluster: Cluster, node_id: str) -> tuple[int, str, str]:
    """An IG officer's `linkage audit verify --from-gateway` at `node_id`, as `linkage` runs it."""
    config = cluster.federation.node_configs[node_id].data_dir / "node.toml"
    address = f"127.0.0.1:{cluster.gateway.port}"
    return await linkage("audit", "verify", "--from-gateway", "--config", str(config), LINKAGE_GATEWAY_ADDRESS=address)


async def revoke(cluster: Cluster, node_id: str) -> None:
    """Revoke `node_id`, and have the gateway and every other node take the new directory."""
    revoke_node(cluster.federation.fed, node_id)
    publish_directory(
        cluster.federation.fed, SystemClock().now_ms(), copy_to=(cluster.federation.gateway_config.data_dir,)
    )
    await cluster.gateway.check_directory()
    for other, node in cluster.nodes.items():
        if other != node_id:
            await node.check_directory()


def looks_by_hand(*nodes: NodeServer) -> None:
    """These nodes look for a newer directory, and at their keys and TLS files, only when the
    test calls for it, as between their periodic looks: the gateway's word that it took a
    newer directory, on which each would look at once, is not acted on. For tests that make
    a look fail, or count what looks say."""
    for node in nodes:
        assert node.link is not None
        node.link.on_directory = lambda version: None


def written_first(monkeypatch: pytest.MonkeyPatch, store: Store, write: Callable[[Tx], Awaitable[object]]) -> None:
    """The next transaction `store` opens commits `write` just before its own: another call's
    write landing between a call's reads and its own write, the race made certain."""
    real_tx = store.tx

    @asynccontextmanager
    async def tx(linger_s: float = 0.0) -> AsyncIterator[Tx]:
        monkeypatch.setattr(store, "tx", real_tx)  # once
        async with real_tx() as first:
            await write(first)
        async with real_tx(linger_s) as own:
            yield own

    monkeypatch.setattr(store, "tx", tx)


@contextmanager
def store_refuses(node: NodeServer, write: str, table: str, when: str = "") -> Iterator[None]:
    """While inside, the node's store refuses one kind of write (`write`, INSERT or DELETE, on
    `table`, where `when` holds), as a disk failing at that write would: SQLite's own failure
    (a temporary trigger on the store's connection), for that write alone."""
    assert node.store is not None
    condition = f" WHEN {when}" if when else ""
    node.store.db.execute(
        f"CREATE TEMP TRIGGER refused BEFORE {write} ON {table}{condition}"
        " BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
    )
    try:
        yield
    finally:
        node.store.db.execute("DROP TRIGGER temp.refused")


@asynccontextmanager
async def reads_refused(store: Store, table: str, column: str = "") -> AsyncIterator[None]:
    """While inside, the store's reads (Store.fetchone, fetchall) refuse `table`, or only its
    `column`, as a disk failing at that read would: SQLite's own refusal (an authorizer on the
    reader's connection)."""

    def refuse(action: int, read: str | None, read_column: str | None, *_: object) -> int:
        hit = action == sqlite3.SQLITE_READ and read == table and column in ("", read_column)
        return sqlite3.SQLITE_DENY if hit else sqlite3.SQLITE_OK

    await store.reader.set_authorizer(refuse)
    try:
        yield
    finally:
        await store.reader.set_authorizer(None)


def drop_audit_guards(db: sqlite3.Connection) -> None:
    """What an insider with the store's file can do: drop the triggers that keep the audit
    log append-only, to edit or delete entries for a test to catch."""
    db.execute("DROP TRIGGER audit_append_only_update")
    db.execute("DROP TRIGGER audit_append_only_delete")


class CapturedLogs(io.StringIO):
    """A log stream a test reads back (the `captured_logs` fixture's: JSON, info and up)."""

    def records(self, *events: str) -> list[dict[str, Any]]:
        """Each line logged so far, parsed, in order; only those of `events`, if any are named."""
        parsed = [json.loads(line) for line in self.getvalue().splitlines()]
        return [r for r in parsed if r["event"] in events] if events else parsed


class LogWatch(CapturedLogs):
    """A log stream that sets `seen` at the first line holding `text`, and keeps that line."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.seen, self.line = text, asyncio.Event(), ""

    def write(self, data: str) -> int:
        if self.text in data and not self.seen.is_set():
            self.line = data
            self.seen.set()
        return super().write(data)
