"""R5: the network between the nodes and the gateway misbehaves. Through a proxy that
delays every byte, cuts connections in the middle of a burst and goes silent, everything
shared arrives once and only once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from gateway.sessions import Session
from linkage.clock import ManualClock
from tests.faulty_proxy import FaultyProxy
from tests.harness import CapturedLogs, Cluster, make_federation, running, wait_delivered
from tests.test_delivery import family_assessment, inbox, share

LATENCY_S = 0.03  # each way, at each proxy: a round trip through the gateway crosses four


@asynccontextmanager
async def proxied(tmp_path: Path) -> AsyncIterator[tuple[Cluster, dict[str, FaultyProxy], str]]:
    """amh and csc each reach the gateway through a proxy of their own; amh's assessment for
    a family both are linked to is recorded."""
    clock = ManualClock()
    async with running(make_federation(tmp_path, clock, nodes=("amh", "csc")), nodes=(), clock=clock) as cluster:
        proxies = {n: await FaultyProxy(cluster.gateway.port, LATENCY_S).start() for n in ("amh", "csc")}
        try:
            for node_id, proxy in proxies.items():
                await cluster.start_node(node_id, gateway_port=proxy.port)
            yield cluster, proxies, await family_assessment(cluster)
        finally:
            for proxy in proxies.values():
                await proxy.close()


async def test_r5_latency_and_connections_cut_mid_burst_lose_and_repeat_nothing(tmp_path: Path) -> None:
    async with proxied(tmp_path) as (cluster, proxies, assessment_id):
        for n in range(60):
            await share(cluster, assessment_id)
            if n in (19, 39):
                proxies["amh"].cut()  # the sender's, with messages and acks in flight
            if n == 29:
                proxies["csc"].cut()  # the recipient's, with deliveries and receipts in flight
        await wait_delivered(cluster.nodes["amh"], 60)
        received = await inbox(cluster, "csc")
        assert len(received) == len(set(received)) == 60
        assert proxies["amh"].connections >= 3 and proxies["csc"].connections >= 2  # each cut was a new stream


@pytest.mark.soak
async def test_r5_a_silent_network_is_noticed_by_keepalive_and_the_node_connects_again(tmp_path: Path) -> None:
    """A blackhole closes nothing and answers nothing: only gRPC's keepalive (a ping every
    30 s, to be answered within 10) tells the node its stream is dead, so it dials again.
    It went unnoticed for over a minute, as gRPC waited that long for a ping's answer. The
    stream is idle past two pings first, as one that only waits for deliveries is."""
    async with proxied(tmp_path) as (cluster, proxies, assessment_id):
        proxy = proxies["amh"]
        dialled = proxy.connections
        await asyncio.sleep(65)  # the condition under test: nothing on the stream for two pings
        proxy.blackhole(True)
        async with asyncio.timeout(60):  # a failure, not a hang: keepalive takes at most 40 s
            await proxy.connection(dialled + 1)
        proxy.blackhole(False)
        await share(cluster, assessment_id)
        await wait_delivered(cluster.nodes["amh"], 1)
        assert len(await inbox(cluster, "csc")) == 1


async def test_r5_a_node_the_gateway_served_dials_again_at_once_however_often_it_is_cut_off(
    tmp_path: Path, captured_logs: CapturedLogs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream cut short (a gateway restarted, crashed, or the network cut) counted as a
    failed dial unless it had stood ten seconds, whatever it had carried. So a gateway
    restarted a few times in a minute, under load, was dialled ever more slowly, until the
    node waited half a minute to come back while its messages waited. Now a stream the
    gateway had sent something on is dialled again from the base each time it is cut off.
    (`attempt` is the failures before each connection.)"""
    async with proxied(tmp_path) as (cluster, proxies, assessment_id):
        amh = cluster.nodes["amh"]
        opened: asyncio.Queue[str] = asyncio.Queue()
        open_session = cluster.gateway.sessions.open

        def opens(node_id: str, certificate: bytes = b"") -> Session:
            if node_id == "amh":
                opened.put_nowait(node_id)
            return open_session(node_id, certificate)

        monkeypatch.setattr(cluster.gateway.sessions, "open", opens)
        for cut in range(1, 4):
            await share(cluster, assessment_id)
            await wait_delivered(amh, cut)  # answered on the stream: the gateway served it
            proxies["amh"].cut()
            async with asyncio.timeout(15):
                await opened.get()
    # amh and csc as they started, then amh after each cut (csc's stream stood throughout).
    assert [e["attempt"] for e in captured_logs.records("gateway.connected")] == [0, 0, 1, 1, 1]
