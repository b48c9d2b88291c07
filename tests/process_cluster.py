"""A federation of separate processes for crash tests: `linkage gateway serve` and
`linkage node serve` children that a test can SIGKILL and restart."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from linkage.auditlog import ChainResult, verify_chain
from linkage.demo import Process, spawn
from linkage.readonly import connect_read_only
from linkage.transport import LINK_HEALTH_SERVICE, api_channel
from linkage.v1 import node_api_pb2_grpc
from tests.harness import LocalFederation

READY_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProcessCluster:
    def __init__(self, federation: LocalFederation) -> None:
        self.federation = federation
        self.port = free_port()
        self.processes: dict[str, Process] = {}
        self.channels: dict[str, grpc.aio.Channel] = {}

    def node_dir(self, node_id: str) -> Path:
        return self.federation.node_configs[node_id].data_dir

    async def start_gateway(self) -> None:
        config = self.federation.gateway_config
        path = config.data_dir / "gateway.toml"
        process = await spawn(
            "gateway",
            ["gateway", "serve", "--config", str(path)],
            config.data_dir / "gateway.log",
            {"LINKAGE_GATEWAY_LISTEN": f"127.0.0.1:{self.port}"},
        )
        await process.first_line("listening on port")
        self.processes["gateway"] = process

    async def start_node(self, node_id: str) -> None:
        folder = self.node_dir(node_id)
        process = await spawn(
            node_id,
            ["node", "serve", "--config", str(folder / "node.toml")],
            folder / "node.log",
            {"LINKAGE_GATEWAY_ADDRESS": f"127.0.0.1:{self.port}"},
        )
        await process.first_line("serving its API")
        self.processes[node_id] = process
        old = self.channels.pop(node_id, None)
        if old is not None:
            await old.close()
        self.channels[node_id] = api_channel(folder / "api.sock")
        await self.wait_linked(node_id)

    async def wait_linked(self, node_id: str) -> None:
        """Until the node's stream to the gateway is up (a health watch, not a poll)."""
        health: Any = health_pb2_grpc.HealthStub(self.channels[node_id])
        # wait_for_ready: a just-restarted node's socket may refuse the first attempt.
        watch = health.Watch(health_pb2.HealthCheckRequest(service=LINK_HEALTH_SERVICE), wait_for_ready=True)
        async with asyncio.timeout(READY_TIMEOUT_S):
            async for update in watch:
                if update.status == health_pb2.HealthCheckResponse.SERVING:
                    watch.cancel()
                    return

    def api(self, node_id: str) -> node_api_pb2_grpc.NodeApiAsyncStub:
        return node_api_pb2_grpc.NodeApiStub(self.channels[node_id])

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """SIGKILL a process; or another signal, such as SIGTERM, which stops it gracefully."""
        self.processes[name].proc.send_signal(sig)

    async def reap(self, name: str) -> int:
        return await self.processes.pop(name).proc.wait()

    async def stop(self) -> dict[str, int]:
        for channel in self.channels.values():
            await channel.close()
        codes = {}
        for name in [n for n in self.processes if n != "gateway"] + ["gateway"]:
            if name in self.processes:
                codes[name] = await self.processes.pop(name).stop()
        return codes

    def query(self, node_id: str, sql: str) -> list[Any]:
        """Read a node's store from outside, as an IG officer's tool would."""
        with closing(connect_read_only(self.node_dir(node_id) / "store.sqlite")) as db:
            return list(db.execute(sql).fetchall())

    def integrity(self, node_id: str) -> tuple[str, ChainResult]:
        check = self.query(node_id, "PRAGMA integrity_check")[0][0]
        chain = verify_chain(self.query(node_id, "SELECT seq, entry, hash FROM audit ORDER BY seq"))
        return check, chain


@asynccontextmanager
async def process_cluster(federation: LocalFederation, nodes: tuple[str, ...]) -> AsyncIterator[ProcessCluster]:
    cluster = ProcessCluster(federation)
    try:
        await cluster.start_gateway()
        for node_id in nodes:
            await cluster.start_node(node_id)
        yield cluster
    finally:
        await cluster.stop()
