"""R11 and R12: a sender, a gateway and a recipient as real processes under a steady 50
shares a second for two minutes, a tenth of the calls given up on by their case system (a
5 ms deadline, or cancelled in flight) and a delivery watch opened and dropped with every
tenth share. Nothing the case system was told was shared is lost or doubled, and after a
minute's warm-up no process grows by more than 10 MB or holds more open files. (The
latency is printed, not asserted: timings are the benchmark's.)"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import grpc
import pytest

from linkage import stories
from linkage.clock import SystemClock
from linkage.v1 import node_api_pb2
from tests.harness import PRACTITIONER, make_federation
from tests.process_cluster import ProcessCluster, process_cluster
from tests.test_crash import check_exactly_once, drain, prepare
from tests.test_gateway_process import rss_kib

RATE = 50  # shares a second, open loop
WARM_UP_S = 60
MEASURED_S = 60
GIVE_UP_EVERY = 10  # every tenth call: a 5 ms deadline, or cancelled in flight, in turn
RSS_GROWTH_KIB = 10 * 1024
FD_GROWTH = 5


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Load:
    """Shares at RATE from amh, some given up on, with delivery watches opened and dropped."""

    def __init__(self, cluster: ProcessCluster, assessment_id: str) -> None:
        self.api = cluster.api("amh")
        self.request = node_api_pb2.ShareSummaryRequest(
            actor=PRACTITIONER, assessment_id=assessment_id, decision=stories.override_decision()
        )
        self.accepted: set[str] = set()
        self.errors: list[str] = []
        self.latencies: list[float] = []
        self.given_up = 0
        self._sent = 0
        self._calls: set[asyncio.Task[None]] = set()

    async def run(self, seconds: float) -> None:
        began = time.perf_counter()
        for n in range(int(RATE * seconds)):
            await asyncio.sleep(max(0.0, began + n / RATE - time.perf_counter()))  # the load's pace
            call = asyncio.create_task(self._one())
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)
        await asyncio.gather(*self._calls)

    async def _one(self) -> None:
        self._sent += 1
        n, started = self._sent, time.perf_counter()
        if n % GIVE_UP_EVERY == 0:
            await self._give_up(n // GIVE_UP_EVERY % 2 == 0)
            return
        try:
            response = await self.api.ShareSummary(self.request, timeout=30)
        except grpc.aio.AioRpcError as exc:
            self.errors.append(f"{exc.code().name}: {exc.details()}")
            return
        self.accepted.add(response.share_id)
        self.latencies.append(time.perf_counter() - started)
        if n % GIVE_UP_EVERY == 1:
            await self._watch_and_drop()

    async def _give_up(self, by_deadline: bool) -> None:
        """A call its case system stops waiting for: whether it was shared, the sender's store says."""
        self.given_up += 1
        call = self.api.ShareSummary(self.request, timeout=0.005 if by_deadline else 30)
        if not by_deadline:
            await asyncio.sleep(0)  # on its way
            call.cancel()
        try:
            response = await call
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            return
        self.accepted.add(response.share_id)

    async def _watch_and_drop(self) -> None:
        watch = self.api.WatchDeliveries(node_api_pb2.WatchDeliveriesRequest(actor=PRACTITIONER))
        try:
            await watch.read()
        finally:
            watch.cancel()


def _snapshot(cluster: ProcessCluster) -> dict[str, tuple[int, int]]:
    return {name: (rss_kib(p.proc.pid), open_files(p.proc.pid)) for name, p in cluster.processes.items()}


@pytest.mark.soak
@pytest.mark.timeout(900)
async def test_r11_r12_steady_load_with_calls_given_up_loses_nothing_and_leaks_neither_memory_nor_files(
    tmp_path: Path,
) -> None:
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh", "csc"))
    async with process_cluster(federation, ("amh", "csc")) as cluster:
        load = Load(cluster, await prepare(cluster))
        await load.run(WARM_UP_S)
        warm = _snapshot(cluster)
        await load.run(MEASURED_S)
        await drain(cluster)
        end = _snapshot(cluster)
        check_exactly_once(cluster, load.accepted)
        codes = await cluster.stop()
    assert set(codes.values()) == {0}, codes
    assert not load.errors, load.errors[:5]
    latencies = sorted(load.latencies)
    print(
        f"\nR11/R12: {len(load.accepted)} shared, {load.given_up} given up on; share call p50 "
        f"{latencies[len(latencies) // 2] * 1000:.1f} ms, p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms"
    )
    for name, (rss, fds) in end.items():
        grown_rss, grown_fds = rss - warm[name][0], fds - warm[name][1]
        print(f"  {name}: RSS {warm[name][0]:,} -> {rss:,} KiB ({grown_rss:+,}), open files {warm[name][1]} -> {fds}")
        assert grown_rss < RSS_GROWTH_KIB, f"{name} grew by {grown_rss:,} KiB after warming up"
        assert grown_fds <= FD_GROWTH, f"{name} holds {grown_fds} more open files"
