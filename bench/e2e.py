"""Linkage end to end: sender node -> gateway -> recipient node, with everything on.

The sender node runs inside the benchmark process, and the load is its case
system's calls made in-process (the same `Sharing.share` the API servicer calls),
so no local-API hop is counted that the bare relay's client does not have.
The gateway and the recipient node are separate `linkage ... serve` processes,
exactly as deployed: mTLS on both hops, SQLite with synchronous=FULL, every share
decided by the policy, signed, sealed, queued in the outbox, routed, verified,
opened, stored once in the inbox, audited on both sides and receipted (signed).

A message counts when its signed receipt has been verified and committed at the
sender: the latency is share request -> delivered, the round trip the bare
relay's client measures (send -> acknowledgement back through the relay).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from bench.cpu import CpuMeter
from bench.load import OneMessage, closed_loop, paced
from bench.results import Result, summarise
from linkage import logs, stories
from linkage.clock import SystemClock
from linkage.config import GatewayConfig, NodeConfig
from linkage.demo import Process, spawn
from linkage.federation import enrol_gateway, enrol_node, init_federation, publish_directory
from linkage.runtime import settle_heap
from linkage.transport import TlsFiles, api_channel
from linkage.v1 import node_api_pb2, node_api_pb2_grpc
from node.server import NodeServer

SENDER, RECIPIENT = "amh", "csc"
AGENCIES = {
    SENDER: ("Adult Mental Health Trust", "NHS_MENTAL_HEALTH"),
    RECIPIENT: ("Children's Social Care", "LA_CHILDRENS_SOCIAL_CARE"),
}
ACTOR = stories.practitioner("bench-1", "Bench Example", "Care coordinator")
FAMILIES = 16  # shares rotate over this many synthetic families, each with its own assessment
# A message not delivered by then fails the run instead of hanging it: a broken build must
# not pass for a slow one (the slowest settles in well under a second, even at the knee).
SETTLE_TIMEOUT_S = 60.0
# The gateway's per-node envelope and resolve limits are raised for the benchmark:
# they are back-pressure settings for a misbehaving node, not part of the work measured.
GATEWAY_ENV = {
    "LINKAGE_LIMITS_ENVELOPES_PER_SECOND": "1000000",
    "LINKAGE_LIMITS_ENVELOPE_BURST": "1000000",
    "LINKAGE_LIMITS_RESOLVE_PER_SECOND": "1000000",
    "LINKAGE_LIMITS_RESOLVE_BURST": "1000000",
}


@dataclass
class Federation:
    root: Path
    gateway_toml: Path
    node_tomls: dict[str, Path]

    def node_tls(self, node_id: str) -> TlsFiles:
        return NodeConfig.load(self.node_tomls[node_id]).tls

    def gateway_tls(self) -> TlsFiles:
        return GatewayConfig.load(self.gateway_toml).tls


def make_federation(root: Path) -> Federation:
    now = SystemClock().now_ms()
    fed = init_federation(root / "federation", "bench.linkage.example", now)
    gateway_toml = enrol_gateway(fed, "gateway", root / "gateway", "127.0.0.1:0", now)
    tomls = {
        node_id: enrol_node(fed, node_id, name, kind, root / node_id, "127.0.0.1:0", now, contact_role="Duty team")
        for node_id, (name, kind) in AGENCIES.items()
    }
    publish_directory(fed, now, copy_to=(root / "gateway", *(root / n for n in AGENCIES)))
    return Federation(root, gateway_toml, tomls)


def _family(n: int) -> list[node_api_pb2.PersonIdentifier]:
    """Synthetic family `n`: local case-system identifiers (no NHS numbers needed)."""
    people = stories.think_family_people()
    for person in people:
        person.scheme, person.value = "local", f"bench-{n}-{person.relationship}"
    return people


class LinkageRun:
    """A gateway and a recipient process, and the sender node in this process."""

    def __init__(self, federation: Federation) -> None:
        self.federation = federation
        self.processes: list[Process] = []
        self.sender: NodeServer | None = None
        self.requests: list[node_api_pb2.ShareSummaryRequest] = []
        self._next = 0
        self._log: TextIO | None = None

    async def __aenter__(self) -> LinkageRun:
        fed = self.federation
        gateway = await spawn(
            "gateway", ["gateway", "serve", "--config", str(fed.gateway_toml)], fed.root / "gateway.log", GATEWAY_ENV
        )
        self.processes.append(gateway)
        port = (await gateway.first_line("listening on port")).rsplit(" ", 1)[-1]
        env = {"LINKAGE_GATEWAY_ADDRESS": f"127.0.0.1:{port}"}
        recipient = await spawn(
            "recipient", ["node", "serve", "--config", str(fed.node_tomls[RECIPIENT])], fed.root / "recipient.log", env
        )
        self.processes.append(recipient)
        await recipient.first_line("serving its API")
        config = dataclasses.replace(NodeConfig.load(fed.node_tomls[SENDER]), gateway_address=f"127.0.0.1:{port}")
        # It logs as `linkage node serve` would (a line per share at info), to a file of its own.
        self._log = (fed.root / "sender.log").open("w")
        logs.configure(config.log_level, self._log, node=config.node_id)
        self.sender = NodeServer(config)
        await self.sender.start()
        assert self.sender.link is not None
        await self.sender.link.connected.wait()
        async with api_channel(fed.node_tomls[RECIPIENT].parent / "api.sock") as channel:
            recipient_api = node_api_pb2_grpc.NodeApiStub(channel)
            for n in range(FAMILIES):
                await self._prepare(recipient_api, n)
        settle_heap()  # as `linkage node serve` does once started
        return self

    async def _prepare(self, recipient_api: node_api_pb2_grpc.NodeApiAsyncStub, n: int) -> None:
        """Both agencies open a case for family `n`; the sender records an assessment to share."""
        assert self.sender is not None
        family = _family(n)
        opened = await self.sender.cases.open_case(
            node_api_pb2.OpenCaseRequest(actor=ACTOR, case_ref=f"bench-{n}", people=family)
        )
        await recipient_api.OpenCase(node_api_pb2.OpenCaseRequest(actor=ACTOR, case_ref=f"bench-{n}", people=family))
        parent, child = (p.link_token for p in opened.people)
        recorded = await self.sender.cases.record_assessment(
            node_api_pb2.RecordAssessmentRequest(
                actor=ACTOR, case_id=opened.case_id, assessment=stories.parent_risk_change(parent, child)
            )
        )
        self.requests.append(
            node_api_pb2.ShareSummaryRequest(
                actor=ACTOR, assessment_id=recorded.assessment_id, decision=stories.override_decision()
            )
        )

    async def __aexit__(self, *exc: object) -> None:
        if self.sender is not None:
            await self.sender.stop(grace=2)
        for process in reversed(self.processes):
            await process.stop()
        if self._log is not None:
            logs.configure("warning")  # not into the closed file
            self._log.close()

    def pids(self) -> dict[str, int]:
        gateway, recipient = self.processes
        return {"sender": os.getpid(), "gateway": gateway.proc.pid, "recipient": recipient.proc.pid}

    async def share_once(self) -> float:
        """One share, to delivered: its round-trip time in seconds."""
        assert self.sender is not None
        request = self.requests[self._next % len(self.requests)]
        self._next += 1
        started = time.perf_counter()
        response = await self.sender.sharing.share(request)
        (recipient,) = response.recipients
        try:
            async with asyncio.timeout(SETTLE_TIMEOUT_S):
                state = await self.sender.outbox.settled(recipient.message_id)
        except TimeoutError:
            (now,) = (await self.sender.sharing.share_status(response.share_id)).recipients
            raise RuntimeError(
                f"share {response.share_id} was not delivered within {SETTLE_TIMEOUT_S:g} s "
                f"(its message is {now.state} after {now.attempts} attempt{'' if now.attempts == 1 else 's'})"
            ) from None
        if state != "delivered":
            raise RuntimeError(f"share {response.share_id} ended {state}")
        return time.perf_counter() - started

    async def envelope_bytes(self) -> int:
        """The mean size of what went on the wire, for the bare relay's payload."""
        assert self.sender is not None and self.sender.store is not None
        row = await self.sender.store.fetchone("SELECT AVG(LENGTH(envelope)) FROM outbox_bodies")
        return int(row[0] or 0)

    async def _run(self, schedule: Callable[[OneMessage], Awaitable[list[float]]]) -> Result:
        meter = CpuMeter(self.pids())
        meter.start()
        started = time.perf_counter()
        latencies = await schedule(self.share_once)
        return summarise(latencies, time.perf_counter() - started, meter)

    async def closed_loop(self, count: int, window: int) -> Result:
        return await self._run(lambda one: closed_loop(one, count, window))

    async def paced(self, rate: float, seconds: float) -> Result:
        return await self._run(lambda one: paced(one, rate, seconds))
