"""R5: the network between the nodes and the gateway misbehaves. Through a proxy that
delays every byte, cuts connections in the middle of a burst and goes silent, everything
shared arrives once and only once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from linkage.clock import ManualClock
from tests.faulty_proxy import FaultyProxy
from tests.harness import Cluster, make_federation, running, wait_delivered
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
