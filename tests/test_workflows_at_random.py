"""Whole workflows at random across three agencies while the gateway and the nodes go away
and come back, disks turn read-only and are mended, the clock steps back, and a node's
store, or the gateway's, is backed up as it runs and later put back to that backup: amh records
versions of its assessment and shares them (as summaries, risk-change notices, historical
updates and corrections; consent overridden or given), withdraws them, and answers the
clarifications, information requests and challenges that csc and the school raise about
what they received and open; csc and the school take people out of their cases and put
them back, and propose to close them, every agency answers, and the days pass and they
close. Once all is settled:

- each node sent exactly what its case system was told went, and nothing of what it was
  refused (a refusal wrote nothing; an answer meant a commit), but for what a restore of its
  store took before it reached any agency (what reached one is given back);
- every message a node sent reached its recipient, once, and nothing else came from it
  (but the requests of a restore, which a later restore is not given back);
- the gateway holds each node subscribed to exactly the people its open cases name;
- each recipient holds the version of each summary its sender made last as the live one,
  and none once that summary was withdrawn;
- each request, challenge and closure proposal shows, where it was raised, the answer that
  reached it last, and at amh the answer it gave last, unless that never went; each request
  and challenge not answered is on its duty view;
- every node's audit log verifies;

and every refusal on the way was one a person can act on. SEEDS=n runs n seeds (2 by default),
from SEED_FROM (0 by default), and those in FOUND."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import random

import pytest

from linkage import stories
from linkage.clock import DAY_MS, ManualClock, SystemClock
from linkage.content import ABOUT_NO_FAMILY
from linkage.v1 import envelope_pb2 as env
from linkage.v1 import node_api_pb2, node_api_pb2_grpc, summary_pb2, workflow_pb2
from node import dates
from node.messaging import CARRIES_SUMMARY
from node.store import Store
from tests.federation_faults import Faults, take
from tests.harness import PRACTITIONER, Cluster, LocalFederation, linkage, running
from tests.test_federation import _case_id, open_case
from tests.test_workflows import CSC_WORKER, SCHOOL_DSL, s47_request

STEPS = 60
MOST_DAYS = 3  # the harness's directory is valid for a week
MOST_BACK_MS = 1_800_000  # all the clock steps back, from an hour past the directory's issue
NODES = ("amh", "csc", "school")
# Of what a node sends, what goes to a node that runs here (a restored node asks every agency
# the directory names, some not here): with NODES as its parameters.
TO_NODES = f"recipient IN ({', '.join('?' * len(NODES))})"
ACTORS = {"amh": PRACTITIONER, "csc": CSC_WORKER, "school": SCHOOL_DSL}
ASKERS = ("csc", "school")
# What a case system's call makes each node send, and answers with the message ids of: not
# what a node sends of itself (notices of involvement, and of a summary read), nor the alerts
# and notices of a closure, whose ids the calls that propose and close it do not return.
ASKING = frozenset(
    {env.MESSAGE_KIND_CLARIFICATION_REQUEST, env.MESSAGE_KIND_INFORMATION_REQUEST, env.MESSAGE_KIND_CHALLENGE}
)
ANSWERING = frozenset(
    {*CARRIES_SUMMARY, env.MESSAGE_KIND_WITHDRAWAL, env.MESSAGE_KIND_CLARIFICATION_RESPONSE}
    | {env.MESSAGE_KIND_CHALLENGE_RESPONSE}
)
CLOSURE_ANSWER = frozenset({env.MESSAGE_KIND_CLOSURE_RESPONSE})  # any agency may answer a closure proposal
ASKED = {"amh": ANSWERING | CLOSURE_ANSWER, **dict.fromkeys(ASKERS, ASKING | CLOSURE_ANSWER)}
SHARE_KINDS = (
    env.MESSAGE_KIND_SUMMARY_SHARE,
    env.MESSAGE_KIND_RISK_CHANGE_NOTICE,
    env.MESSAGE_KIND_HISTORICAL_UPDATE,
    env.MESSAGE_KIND_CORRECTION,
)
# Kept marked withdrawn; erased; erased, for a summary last shared on consent only.
GROUNDS = ("NOT_TO_BE_RELIED_ON", "SHARED_IN_ERROR", "CONSENT_WITHDRAWN")
# Consent refused and overridden on a recorded ground, or given.
DECISIONS = (stories.override_decision, lambda: stories.consented_decision("Shared with the parent's consent."))
LIVE = ("new", "read")
VERSIONS_AND_WITHDRAWALS = (*CARRIES_SUMMARY, env.MESSAGE_KIND_WITHDRAWAL)
ANSWERABLE = (env.MESSAGE_KIND_INFORMATION_REQUEST, env.MESSAGE_KIND_CHALLENGE)
PROVIDED, PARTIAL = workflow_pb2.INFORMATION_ANSWER_PROVIDED, workflow_pb2.INFORMATION_ANSWER_PARTIAL


def assessment(rng: random.Random, parent: bytes, child: bytes, summary_id: str) -> summary_pb2.RiskSummary:
    """amh's assessment of the parent's risk to the child, as it rose, fell or became history."""
    made = stories.parent_risk_change(parent, child)
    made.summary_id = summary_id
    change = rng.choice(("increased", "decreased", "historical"))
    first = made.risk_items[0]
    if change == "decreased":
        first.direction, first.level.value, first.previous_level.value = "DECREASED", "MEDIUM", "HIGH"
    elif change == "historical":
        first.currency = summary_pb2.CURRENCY_HISTORICAL
        first.period.to.CopyFrom(stories.days_from_today(-1))
        first.historical_relevance = "CONTEXT_ONLY"
        del made.risk_items[1:]
    return made


@dataclasses.dataclass
class Run:
    cluster: Cluster
    clock: ManualClock
    rng: random.Random
    faults: Faults
    parent: bytes
    child: bytes
    cases: dict[str, str]
    assessments: list[str] = dataclasses.field(default_factory=list)  # amh's, as recorded
    summaries: list[str] = dataclasses.field(default_factory=list)
    sent: dict[str, set[str]] = dataclasses.field(default_factory=lambda: {n: set() for n in NODES})
    # Request, challenge or closure proposal -> the answers given to it, in order: (message id, answer).
    answers: dict[str, list[tuple[str, int]]] = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
    days: int = 0  # the clock moved on a day at a time, for closures
    back_ms: int = 0  # and stepped back, in all
    # What each node's case system was told went that its store lost when put back to a
    # backup: still sent if it reached its recipient (who gives it back), else gone.
    lost: dict[str, set[str]] = dataclasses.field(default_factory=lambda: {n: set() for n in NODES})

    def api(self, node: str) -> node_api_pb2_grpc.NodeApiAsyncStub:
        return self.cluster.api(node)

    def store(self, node: str) -> Store:
        return self.faults.store(node)

    def went(self, node: str, sent: node_api_pb2.MessageSent | node_api_pb2.ShareSummaryResponse) -> None:
        self.sent[node] |= {r.message_id for r in sent.recipients}

    async def received(self, node: str, *kinds: int) -> list[tuple[str, str]]:
        """(message id, summary id) of what `node` holds of `kinds` from others, still live."""
        marks = ",".join("?" * len(kinds))
        rows = await self.store(node).fetchall(
            f"SELECT message_id, summary_id FROM inbox WHERE kind IN ({marks}) AND state != 'erased' ORDER BY seq",
            kinds,
        )
        return [(str(m), str(s)) for m, s in rows]

    # amh's practitioner

    async def record(self) -> None:
        """A new summary, or a new version of one recorded before."""
        summary_id = self.rng.choice(self.summaries) if self.summaries and self.rng.random() < 0.7 else ""
        recorded = await self.api("amh").RecordAssessment(
            node_api_pb2.RecordAssessmentRequest(
                actor=PRACTITIONER,
                case_id=self.cases["amh"],
                assessment=assessment(self.rng, self.parent, self.child, summary_id),
            )
        )
        self.assessments.append(recorded.assessment_id)
        if recorded.summary_id not in self.summaries:
            self.summaries.append(recorded.summary_id)

    async def share(self) -> None:
        if not self.assessments:
            return
        shared = await self.api("amh").ShareSummary(
            node_api_pb2.ShareSummaryRequest(
                actor=PRACTITIONER,
                # mostly the newest, at times one superseded since
                assessment_id=self.assessments[-1] if self.rng.random() < 0.5 else self.rng.choice(self.assessments),
                decision=self.rng.choice(DECISIONS)(),
                kind=self.rng.choice(SHARE_KINDS),
            )
        )
        self.went("amh", shared)

    async def withdraw(self) -> None:
        if not self.summaries:
            return
        withdrawn = await self.api("amh").WithdrawSummary(
            node_api_pb2.WithdrawSummaryRequest(
                actor=PRACTITIONER,
                summary_id=self.rng.choice(self.summaries),
                reason="Synthetic withdrawal",
                ground=self.rng.choice(GROUNDS),
            )
        )
        self.went("amh", withdrawn)

    async def clarify(self) -> None:
        if asked := await self.received("amh", env.MESSAGE_KIND_CLARIFICATION_REQUEST):
            message_id, _ = self.rng.choice(asked)
            answered = await self.api("amh").AnswerClarification(
                node_api_pb2.AnswerClarificationRequest(
                    actor=PRACTITIONER, request_message_id=message_id, answer="The grandparent stays over."
                )
            )
            self.went("amh", answered)

    async def inform(self) -> None:
        """Provide a summary of an assessment, or decline with reasons."""
        if not (asked := await self.received("amh", env.MESSAGE_KIND_INFORMATION_REQUEST)):
            return
        message_id, _ = self.rng.choice(asked)
        if self.assessments and self.rng.random() < 0.5:
            request = node_api_pb2.InformationReplyRequest(
                answer=PROVIDED,
                decision=stories.override_decision(),
                assessment_id=self.rng.choice(self.assessments[-3:]),
            )
        else:
            request = node_api_pb2.InformationReplyRequest(
                answer=workflow_pb2.INFORMATION_ANSWER_DECLINED,
                decision=summary_pb2.ShareDecision(rationale="Everything relevant was shared."),
            )
        request.actor.CopyFrom(PRACTITIONER)
        request.request_message_id = message_id
        answered = await self.api("amh").RespondToInformationRequest(request)
        self.went("amh", answered)
        self.answers[message_id].append((answered.recipients[0].message_id, request.answer))

    async def answer_challenge(self) -> None:
        if not (raised := await self.received("amh", env.MESSAGE_KIND_CHALLENGE)):
            return
        message_id, _ = self.rng.choice(raised)
        answer = self.rng.choice((workflow_pb2.CHALLENGE_ANSWER_ACCEPTED, workflow_pb2.CHALLENGE_ANSWER_MAINTAINED))
        answered = await self.api("amh").RespondToChallenge(
            node_api_pb2.ChallengeReplyRequest(
                actor=PRACTITIONER,
                challenge_message_id=message_id,
                answer=answer,
                response="We will review it together this week.",
            )
        )
        self.went("amh", answered)
        self.answers[message_id].append((answered.recipients[0].message_id, answer))

    # csc's and the school's practitioners

    def asker(self) -> str | None:
        return self.rng.choice([n for n in ASKERS if n not in self.faults.away] or [None])

    async def ask(self) -> None:
        if (node := self.asker()) and (held := await self.received(node, *CARRIES_SUMMARY)):
            message_id, _ = self.rng.choice(held)
            asked = await self.api(node).AskClarification(
                node_api_pb2.AskClarificationRequest(
                    actor=ACTORS[node], about_message_id=message_id, question="Who cares for the child at night?"
                )
            )
            self.went(node, asked)

    async def request(self) -> None:
        if node := self.asker():
            request = s47_request(self.cases[node], "amh")
            request.actor.CopyFrom(ACTORS[node])
            self.went(node, await self.api(node).RequestInformation(request))

    async def challenge(self) -> None:
        if node := self.asker():
            raised = await self.api(node).RaiseChallenge(
                node_api_pb2.RaiseChallengeRequest(
                    actor=ACTORS[node],
                    case_id=self.cases[node],
                    to_node="amh",
                    stage="PRACTITIONER",
                    subject="RISK_ASSESSMENT",
                    concern="We think the risk to the child is higher than assessed.",
                    outcome_sought="Review the assessment with us.",
                )
            )
            self.went(node, raised)

    async def relink(self) -> None:
        """csc takes the parent or the child out of its case, or the school the child, or puts
        them back: it leaves their link, or joins it again."""
        if not (node := self.asker()):
            return
        which = self.rng.randrange(2) if node == "csc" else 1
        person, token = stories.think_family_people()[which], (self.parent, self.child)[which]
        found = await self.api(node).FindCases(
            node_api_pb2.FindCasesRequest(actor=ACTORS[node], case_id=self.cases[node], include_closed=True)
        )
        if token in {p.link_token for c in found.cases for p in c.people}:
            await self.api(node).RemovePerson(
                node_api_pb2.RemovePersonRequest(actor=ACTORS[node], case_id=self.cases[node], link_token=token)
            )
        else:
            await self.api(node).AddPerson(
                node_api_pb2.AddPersonRequest(actor=ACTORS[node], case_id=self.cases[node], person=person)
            )

    async def propose(self) -> None:
        """csc or the school alerts the others that it means to close its case: answers by today."""
        if node := self.asker():
            await self.api(node).ProposeClosure(
                node_api_pb2.ProposeClosureRequest(
                    actor=ACTORS[node],
                    case_id=self.cases[node],
                    intent=summary_pb2.ClosureIntent(intent="PLANNED_CLOSURE", reason_code="RISK_REDUCED_GOALS_MET"),
                    respond_by=dates.today(self.clock.now_ms()),
                )
            )

    async def answer_closure(self) -> None:
        node = self.rng.choice([n for n in NODES if n not in self.faults.away] or [None])
        if node and (intents := await self.received(node, env.MESSAGE_KIND_CLOSURE_INTENT)):
            message_id, _ = self.rng.choice(intents)
            answer = self.rng.choice((workflow_pb2.CLOSURE_ANSWER_AGREE, workflow_pb2.CLOSURE_ANSWER_OBJECT))
            answered = await self.api(node).RespondToClosure(
                node_api_pb2.RespondToClosureRequest(
                    actor=ACTORS[node], intent_message_id=message_id, answer=answer, reason="Attendance has dropped."
                )
            )
            self.sent[node].add(answered.message_id)
            self.answers[message_id].append((answered.message_id, answer))

    async def close(self) -> None:
        """A day passes (at most MOST_DAYS), and csc or the school closes its case over any objection."""
        if node := self.asker():
            if self.days < MOST_DAYS:
                self.clock.advance(DAY_MS)
                self.days += 1
            await self.api(node).CloseCase(
                node_api_pb2.CloseCaseRequest(
                    actor=ACTORS[node],
                    case_id=self.cases[node],
                    override_objections_reason="Our part is done; the others go on working with the family.",
                )
            )

    async def restore(self) -> None:
        """A node's store put back to its last backup, as agency IT restores it."""
        if (restored := await self.faults.put_back()) is not None:
            node, held = restored
            self.lost[node] |= self.sent[node] - held

    async def clock_back(self) -> None:
        """The wall clock steps back (NTP, a host resumed), as every node sees it."""
        ms = self.rng.choice((2_000, 90_000, 600_000))
        if self.back_ms + ms <= MOST_BACK_MS:
            self.back_ms += ms
            self.clock.advance(-ms)

    async def open(self) -> None:
        """Open an item received: its sender is told it was read."""
        if (node := self.asker()) and (held := await self.received(node, *CARRIES_SUMMARY)):
            message_id, _ = self.rng.choice(held)
            await self.api(node).OpenReceived(
                node_api_pb2.OpenReceivedRequest(actor=ACTORS[node], message_id=message_id)
            )

    async def look(self) -> None:
        """The case system takes what arrived, and reads the family's chronology."""
        if node := self.asker():
            await self.api(node).ListReceived(node_api_pb2.ListReceivedRequest(actor=ACTORS[node]))
            await self.api(node).Chronology(
                node_api_pb2.ChronologyRequest(actor=ACTORS[node], case_id=self.cases[node])
            )


async def settled(run: Run) -> collections.Counter[str]:
    """Once no node has anything still to send, to hear back about or to tell the gateway,
    and the gateway holds each node subscribed to exactly the people its open cases name,
    or after 60 s: what still waits, by node. The clock moves on whenever nothing happens
    for a moment, so retries and receipts overdue come round."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    index = run.cluster.gateway._index
    assert index is not None
    while True:
        commits = [run.store(n).next_commit() for n in NODES]
        waiting: collections.Counter[str] = collections.Counter()
        for node in NODES:
            (count,) = await run.store(node).fetchone(
                f"SELECT (SELECT COUNT(*) FROM outbox WHERE state IN ('queued', 'sent') AND {TO_NODES}) "
                "+ (SELECT COUNT(*) FROM notices_to_send) + (SELECT COUNT(*) FROM subscriptions_to_end)",
                NODES,
            )
            named = {
                bytes(t)
                for (t,) in await run.store(node).fetchall(
                    "SELECT p.token FROM case_people p JOIN cases c USING (case_id) WHERE c.status = 'open'"
                )
            }
            held = {t for t in (run.parent, run.child) if index.is_subscribed(node, t)}
            waiting[node] = count + len(held ^ named)
        if not +waiting or loop.time() > deadline:
            return +waiting
        waits = [asyncio.ensure_future(c.wait()) for c in commits]
        done, _ = await asyncio.wait(waits, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
        if done:
            continue
        run.clock.advance(30_000)
        for node in NODES:
            run.cluster.nodes[node].outbox.wake.set()


async def still_waiting(run: Run) -> dict[str, list[object]]:
    """What each node still has to send or tell the gateway, for a failure to name."""
    found: dict[str, list[object]] = {}
    for node in NODES:
        store = run.store(node)
        found[node] = [
            *await store.fetchall(
                "SELECT message_id, recipient, kind, state, reason FROM outbox WHERE state IN ('queued', 'sent') "
                f"AND {TO_NODES}",
                NODES,
            ),
            *[("notice", *r) for r in await store.fetchall("SELECT * FROM notices_to_send")],
            *[
                ("unsubscribe", bytes(r[0]).hex()[:8])
                for r in await store.fetchall("SELECT token FROM subscriptions_to_end")
            ],
        ]
    return found


async def outbox(store: Store) -> list[tuple[str, str, int, str, str]]:
    """(message id, recipient, kind, summary id, state) of each message a node made to another here."""
    rows = await store.fetchall(
        f"SELECT message_id, recipient, kind, summary_id, state FROM outbox WHERE {TO_NODES} ORDER BY seq", NODES
    )
    return [(str(m), str(r), int(k), str(s), str(st)) for m, r, k, s, st in rows]


async def check_settled(run: Run) -> None:
    inboxes = {
        node: {
            (str(sender), str(m)): (int(k), str(s), str(st))
            for sender, m, k, s, st in await run.store(node).fetchall(
                "SELECT sender, message_id, kind, summary_id, state FROM inbox"
            )
        }
        for node in NODES
    }
    for node in NODES:
        made = await outbox(run.store(node))
        # What a restore lost comes back from an agency it reached, unless that agency erased it since.
        returnable = {
            m
            for inbox in inboxes.values()
            for (sender, m), (*_, st) in inbox.items()
            if sender == node and st != "erased"
        }
        expected = run.sent[node] - (run.lost[node] - returnable)
        assert {m for m, _, k, _, _ in made if k in ASKED[node]} == expected, node
        assert {st for *_, st in made} <= {"delivered", "cancelled"}, (node, collections.Counter(st for *_, st in made))
        for message_id, recipient, _, _, state in made:
            if state == "delivered":
                assert (node, message_id) in inboxes[recipient], (node, message_id, recipient)
        # Nothing came from a node but what it made: not counting a restore's own messages, and
        # what a restore took from it that the recipient had erased since, neither given back.
        for recipient in NODES:
            from_node = {m for (sender, m), _ in inboxes[recipient].items() if sender == node}
            from_node -= {m for (_, m), (k, *_) in inboxes[recipient].items() if k in ABOUT_NO_FAMILY}
            from_node -= {m for (_, m), (_, _, st) in inboxes[recipient].items() if st == "erased"} & run.lost[node]
            assert from_node <= {m for m, *_ in made}, (node, recipient)
    # The live version of each summary at each recipient is the one amh made last, unless that was its withdrawal.
    made = await outbox(run.store("amh"))
    for recipient in ASKERS:
        for summary_id in run.summaries:
            copies = sorted(
                (m, k)
                for m, r, k, s, st in made
                if r == recipient and s == summary_id and st == "delivered" and k in VERSIONS_AND_WITHDRAWALS
            )
            live = {
                m
                for (sender, m), (k, s, st) in inboxes[recipient].items()
                if sender == "amh" and s == summary_id and k in CARRIES_SUMMARY and st in LIVE
            }
            expected = {copies[-1][0]} if copies and copies[-1][1] != env.MESSAGE_KIND_WITHDRAWAL else set()
            assert live == expected, (recipient, summary_id, copies)
    # Each request and challenge shows, where it was raised, the answer amh gave last that went;
    # and at amh the answer it gave last, unless a withdrawal kept that from going (to answer
    # again). One a restore lost, that never went, was never given as the store now stands.
    states = {m: st for node in NODES for m, *_, st in await outbox(run.store(node))}

    def last(message_id: str, sent_only: bool) -> int:
        given = [(states[m], answer) for m, answer in run.answers[message_id] if m in states]
        if sent_only:
            given = [g for g in given if g[0] == "delivered"]
        return given[-1][1] if given and given[-1][0] != "cancelled" else 0

    for node in NODES:
        case = node_api_pb2.CaseRequest(actor=ACTORS[node], case_id=run.cases[node])
        requests = await run.api(node).ListInformationRequests(case)
        challenges = await run.api(node).ListChallenges(case)
        # A summary provided is told as partial when the policy left out some of it for this agency.
        shown: list[tuple[str, int, bool]] = [
            (a.message_id, PROVIDED if a.answer == PARTIAL else a.answer, True)
            for sent in requests.sent
            for a in sent.asked
        ]
        shown += [(r.message_id, PROVIDED if r.answer == PARTIAL else r.answer, False) for r in requests.received]
        shown += [(c.message_id, c.answer, True) for c in challenges.raised]
        shown += [(c.message_id, c.answer, False) for c in challenges.received]
        for message_id, answer, raised_here in shown:
            assert answer == last(message_id, raised_here), (node, message_id, run.answers[message_id])
    # Each request and challenge a node has not answered is on its duty view, and no other.
    for node in NODES:
        due = await run.api(node).ListDue(node_api_pb2.DueRequest(actor=ACTORS[node]))
        assert not due.more
        listed = {i.message_id for i in due.items if i.to_answer and i.kind in ANSWERABLE}
        received = {m for m, _ in await run.received(node, *ANSWERABLE)}
        assert listed == {m for m in received if not last(m, False)}, node
    # Each closure proposal shows, from each agency alerted, the answer it gave last that went.
    for node in ASKERS:
        status = await run.api(node).GetClosure(node_api_pb2.CaseRequest(actor=ACTORS[node], case_id=run.cases[node]))
        alerted = {r: m for m, r, k, _, _ in await outbox(run.store(node)) if k == env.MESSAGE_KIND_CLOSURE_INTENT}
        replies = {r.node_id: r.answer for r in status.replies}
        assert replies == {r: a for r, m in alerted.items() if (a := last(m, True))}, (node, alerted, run.answers)


FIRST_SEED = int(os.environ.get("SEED_FROM", "0"))
# Seeds that found a defect, run every time: 270, replies put back after the clock was set back.
FOUND = (270,)
SEEDS = sorted({*range(FIRST_SEED, FIRST_SEED + int(os.environ.get("SEEDS", "2"))), *FOUND})


@pytest.mark.parametrize("seed", SEEDS)
async def test_workflows_while_the_federation_fails_in_parts_deliver_everything_once_in_the_order_made(
    federation: LocalFederation, seed: int
) -> None:
    clock = ManualClock(SystemClock().now_ms() + 3_600_000)  # so a step back stays past the directory's issue
    refused: collections.Counter[str] = collections.Counter()
    async with running(federation, nodes=NODES, clock=clock) as cluster:
        family = stories.think_family_people()
        parent, child = await open_case(cluster, "amh", family)
        await open_case(cluster, "csc", family)
        await open_case(cluster, "school", [family[1]])
        cases = {n: await _case_id(cluster, n) for n in NODES}
        rng = random.Random(seed)
        faults = Faults(cluster, rng, NODES, cluster.gateway.port)
        run = Run(cluster, clock, rng, faults, parent, child, cases)
        amh_steps = (
            [run.record] * 3 + [run.share] * 5 + [run.withdraw] + [run.clarify, run.inform, run.answer_challenge] * 2
        )
        steps = (
            amh_steps
            + [run.ask, run.request, run.challenge, run.open] * 2
            + [run.look, run.relink, run.propose, run.answer_closure, run.answer_closure, run.close]
            + [faults.gateway_away, faults.node_away, faults.restart, faults.disk_read_only]
            + [faults.gateway_disk_read_only, run.clock_back]
            + [faults.back_up, run.restore] * 2
            + [faults.gateway_back_up, faults.gateway_put_back]
            + [faults.gateway_back, faults.node_back, faults.disks_mended] * 2
        )
        trail: list[str] = []  # the steps taken, a fault by what it did
        for _ in range(STEPS):
            step = run.rng.choice(steps)
            if step in amh_steps and "amh" in faults.away:
                continue
            faults_made = len(faults.done)
            await take(step, refused)
            trail.append(faults.done[-1] if len(faults.done) > faults_made else step.__name__)
        await faults.all_back()
        try:
            assert not await settled(run), f"refused on the way: {dict(refused)}; waiting: {await still_waiting(run)}"
            await check_settled(run)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nsteps: {', '.join(trail)}") from exc
    for node in NODES:
        config = federation.node_configs[node].data_dir / "node.toml"
        code, out, err = await linkage("audit", "verify", "--config", str(config))
        assert code == 0, (node, out, err)
