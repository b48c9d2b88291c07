"""Cases opened, changed, proposed for closure and closed at random while the gateway goes
away and comes back, the node restarts, and its disk or the gateway's turns read-only and
is mended: once all is settled, the gateway holds exactly this node's subscriptions to the
people its open cases name (no more, so nothing about a person it no longer works with is
routed to it; no fewer, so nothing is missed), nothing waits to be sent or ended, and
every refusal on the way was one a person can act on. SEEDS=n runs n seeds (2 by default)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import random

import pytest

from linkage.clock import DAY_MS, ManualClock
from linkage.tokens import nhs_number_is_valid
from linkage.v1 import node_api_pb2, node_api_pb2_grpc, summary_pb2
from node import dates
from tests.federation_faults import Faults, take
from tests.harness import Cluster, LocalFederation, running
from tests.test_federation import open_case
from tests.test_workflows import CSC_WORKER

STEPS = 24
MOST_CLOSES = 3  # each moves the clock a day on; the harness's directory is valid for a week
# Seven synthetic people, by NHS numbers in the range kept for testing: six the random
# changes name, and one who joins and leaves at the end.
*POOL, LAST = [
    node_api_pb2.PersonIdentifier(scheme="nhs", value=number, role_in_risk="AT_RISK")
    for number in (f"999200{n:03d}{c}" for n in range(40) for c in "0123456789")
    if nhs_number_is_valid(number)
][:7]


@dataclasses.dataclass
class Run:
    cluster: Cluster
    clock: ManualClock
    rng: random.Random
    cases: list[str] = dataclasses.field(default_factory=list)
    tokens: list[bytes] = dataclasses.field(default_factory=list)  # of everyone in POOL
    closes: int = 0

    @property
    def api(self) -> node_api_pb2_grpc.NodeApiAsyncStub:
        return self.cluster.api("csc")

    async def open(self) -> None:
        people = self.rng.sample(POOL, self.rng.randint(1, 2))
        opened = await self.api.OpenCase(
            node_api_pb2.OpenCaseRequest(actor=CSC_WORKER, case_ref=f"c-{len(self.cases)}", people=people)
        )
        self.cases.append(opened.case_id)

    async def add(self) -> None:
        if self.cases:
            person = self.rng.choice(POOL)
            await self.api.AddPerson(
                node_api_pb2.AddPersonRequest(actor=CSC_WORKER, case_id=self.rng.choice(self.cases), person=person)
            )

    async def remove(self) -> None:
        """Someone the case names, most often."""
        if not self.cases:
            return
        case_id = self.rng.choice(self.cases)
        store = self.cluster.nodes["csc"].store
        assert store is not None
        named = [
            bytes(t) for (t,) in await store.fetchall("SELECT token FROM case_people WHERE case_id = ?", (case_id,))
        ]
        token = self.rng.choice(named or self.tokens)
        await self.api.RemovePerson(
            node_api_pb2.RemovePersonRequest(actor=CSC_WORKER, case_id=case_id, link_token=token)
        )

    async def close(self) -> None:
        if not self.cases or self.closes == MOST_CLOSES:
            return
        self.closes += 1
        case_id = self.rng.choice(self.cases)
        try:  # the others asked to answer today, and the day then passes unanswered
            await self.api.ProposeClosure(
                node_api_pb2.ProposeClosureRequest(
                    actor=CSC_WORKER,
                    case_id=case_id,
                    intent=summary_pb2.ClosureIntent(intent="PLANNED_CLOSURE", reason_code="RISK_REDUCED_GOALS_MET"),
                    respond_by=dates.today(self.clock.now_ms()),
                )
            )
        finally:
            self.clock.advance(DAY_MS)
        await self.api.CloseCase(node_api_pb2.CloseCaseRequest(actor=CSC_WORKER, case_id=case_id))


async def settled(cluster: Cluster, pool: list[bytes]) -> tuple[set[bytes], set[bytes], int]:
    """(the people csc's open cases name, those of the `pool` the gateway holds csc subscribed
    to, how many notices and subscriptions' ends wait) once the first two agree and nothing
    waits, or as they stand after 60 s."""
    csc = cluster.nodes["csc"]
    assert csc.store is not None and cluster.gateway._index is not None
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        committed = csc.store.next_commit()
        named = {
            bytes(t)
            for (t,) in await csc.store.fetchall(
                "SELECT DISTINCT p.token FROM case_people p JOIN cases c USING (case_id) WHERE c.status = 'open'"
            )
        }
        (waiting,) = await csc.store.fetchone(
            "SELECT (SELECT COUNT(*) FROM notices_to_send) + (SELECT COUNT(*) FROM subscriptions_to_end)"
        )
        held = {t for t in pool if cluster.gateway._index.is_subscribed("csc", t)}
        if (held == named and not waiting) or asyncio.get_running_loop().time() > deadline:
            return named, held, waiting
        # The gateway's index can change with no commit here after it (a subscription made
        # again): look again at the next commit, or in a second.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(committed.wait(), 1)


@pytest.mark.parametrize("seed", range(int(os.environ.get("SEEDS", "2"))))
async def test_case_changes_while_the_gateway_comes_and_goes_leave_the_gateway_holding_exactly_the_open_cases(
    federation: LocalFederation, seed: int
) -> None:
    clock = ManualClock()
    async with running(federation, nodes=("amh", "csc"), clock=clock) as cluster:
        tokens = await open_case(cluster, "amh", POOL)  # amh is linked to everyone: notices go somewhere
        run = Run(cluster, clock, random.Random(seed), tokens=tokens)
        faults = Faults(cluster, run.rng, ("csc",), cluster.gateway.port)
        refused: collections.Counter[str] = collections.Counter()
        steps = (
            [run.open] * 2
            + [run.add] * 2
            + [run.remove] * 4
            + [run.close, faults.gateway_away, faults.gateway_back, faults.restart]
            + [faults.disk_read_only, faults.gateway_disk_read_only, faults.disks_mended]
        )
        for _ in range(STEPS):
            step = run.rng.choice(steps)
            await take(step, refused)
        await faults.all_back()
        named, held, waiting = await settled(cluster, tokens)
        assert (held, waiting) == (named, 0), f"refused on the way: {dict(refused)}"

        # Then, the gateway there all along (nothing to set right as a node connects): someone
        # joins a case and is removed from it again.
        joined = await run.api.OpenCase(
            node_api_pb2.OpenCaseRequest(actor=CSC_WORKER, case_ref="last", people=[LAST, POOL[0]])
        )
        (last,) = (p.link_token for p in joined.people if p.link_token != tokens[0])
        await run.api.RemovePerson(
            node_api_pb2.RemovePersonRequest(actor=CSC_WORKER, case_id=joined.case_id, link_token=last)
        )
        named, held, waiting = await settled(cluster, [*tokens, last])
    assert last not in named and (held, waiting) == (named, 0)
