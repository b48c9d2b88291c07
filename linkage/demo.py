"""`linkage demo`: a local federation in separate processes, and a Think-Family
story from the guidance seeds played through the nodes' API.

Everything is synthetic. The demo creates a federation in a fresh folder,
starts a gateway and four agency nodes on loopback, and tells what happens
at each step: who shared what with whom, current or historical, and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from linkage import stories
from linkage.clock import SystemClock
from linkage.federation import enrol_gateway, enrol_node, init_federation, publish_directory
from linkage.transport import LINK_HEALTH_SERVICE, api_channel
from linkage.v1 import envelope_pb2, node_api_pb2, node_api_pb2_grpc, summary_pb2, workflow_pb2

FEDERATION_ID = "demo.linkage.example"
STEP_TIMEOUT_S = 30

NODES = {
    "amh": ("Adult Mental Health Trust", "NHS_MENTAL_HEALTH", "Care coordinator"),
    "csc": ("Children's Social Care", "LA_CHILDRENS_SOCIAL_CARE", "Duty social worker"),
    "school": ("Oak Primary School", "SCHOOL", "Designated safeguarding lead"),
    "police": ("County Police", "POLICE", "Public protection unit"),
    "fire": ("County Fire and Rescue", "FIRE_RESCUE", "Safe and Well officer"),
    "ageuk": ("Age UK Solihull", "VCS_OLDER_PEOPLE", "Information and advice team"),
    "asc": ("Adult Social Care", "LA_ADULT_SOCIAL_CARE", "Safeguarding adults team"),
}
PRACTITIONERS = {
    "amh": stories.practitioner("amh-114", "Jordan Example", "Care coordinator"),
    "csc": stories.practitioner("csc-207", "Riley Example", "Social worker"),
    "school": stories.practitioner("sch-031", "Morgan Example", "Designated safeguarding lead"),
    "police": stories.practitioner("pol-552", "Casey Example", "Detective constable"),
    "fire": stories.practitioner("fire-031", "Jamie Example", "Safe and Well officer"),
    "ageuk": stories.practitioner("auk-007", "Robin Example", "Volunteer coordinator"),
    "asc": stories.practitioner("asc-118", "Avery Example", "Social worker"),
}


def say(text: str = "") -> None:
    print(text, flush=True)


@dataclass
class Process:
    name: str
    proc: asyncio.subprocess.Process

    async def first_line(self, marker: str) -> str:
        """The first stdout line containing `marker`: the process is ready."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(STEP_TIMEOUT_S):
            while line := (await self.proc.stdout.readline()).decode():
                if marker in line:
                    return line.strip()
        raise RuntimeError(f"{self.name} exited before it was ready (exit code {await self.proc.wait()})")

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(10):
                    return await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
        return await self.proc.wait()


async def spawn(name: str, args: list[str], log_file: Path, env: dict[str, str] | None = None) -> Process:
    with log_file.open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "linkage",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            env={**os.environ, **(env or {})},
        )
    return Process(name, proc)


def _token(token: bytes) -> str:
    return token.hex()[:10] + "..."


def _date(d: summary_pb2.Date) -> str:
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}" if d.year else "?"


def describe_item(item: summary_pb2.RiskItem) -> str:
    currency = summary_pb2.Currency.Name(item.currency).removeprefix("CURRENCY_")
    what = f"{item.category}/{item.subcategory}" if item.subcategory else item.category
    text = f"{currency:<10} {what}, {item.direction.lower()}"
    if item.HasField("level"):
        text += f", {item.level.value} on the {item.level.scale} scale"
    if item.currency == summary_pb2.CURRENCY_HISTORICAL:
        text += f", {_date(getattr(item.period, 'from'))} to {_date(item.period.to)} ({item.historical_relevance})"
    return text + f" [{item.basis.lower().replace('_', ' ')}]"


class Demo:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.processes: list[Process] = []
        self.channels: dict[str, grpc.aio.Channel] = {}

    def api(self, node: str) -> node_api_pb2_grpc.NodeApiAsyncStub:
        return node_api_pb2_grpc.NodeApiStub(self.channels[node])

    async def setup(self) -> None:
        now = SystemClock().now_ms()
        fed = init_federation(self.root / "federation", FEDERATION_ID, now)
        enrol_gateway(fed, "gateway", self.root / "gateway", "127.0.0.1:0", now)
        for node_id, (name, agency_type, contact) in NODES.items():
            enrol_node(fed, node_id, name, agency_type, self.root / node_id, "127.0.0.1:0", now, contact_role=contact)
        directory = publish_directory(fed, now, copy_to=(self.root / "gateway", *(self.root / n for n in NODES)))
        say(f"[1] Federation {FEDERATION_ID} created: a CA, a directory signing key and a linkage key.")
        say(
            f"    Enrolled a gateway and {len(NODES)} agencies; directory version {directory.version} signed, "
            "valid for 7 days."
        )
        self._federation = fed

    async def start(self) -> None:
        gateway = await spawn(
            "gateway",
            ["gateway", "serve", "--config", str(self.root / "gateway" / "gateway.toml")],
            self.root / "gateway" / "gateway.log",
        )
        self.processes.append(gateway)
        port = (await gateway.first_line("listening on port")).rsplit(" ", 1)[-1]
        env = {"LINKAGE_GATEWAY_ADDRESS": f"127.0.0.1:{port}"}
        for node_id in NODES:
            node_dir = self.root / node_id
            self.processes.append(
                await spawn(
                    node_id, ["node", "serve", "--config", str(node_dir / "node.toml")], node_dir / "node.log", env
                )
            )
        for process in self.processes[1:]:
            await process.first_line("serving its API")
            self.channels[process.name] = api_channel(self.root / process.name / "api.sock")
            await self._wait_linked(process.name)
        pids = ", ".join(f"{p.name} (pid {p.proc.pid})" for p in self.processes)
        say(f"[2] Started {pids}.")
        say("    Each node holds one mutual-TLS stream to the gateway on 127.0.0.1:" + port + ".")

    async def _wait_linked(self, node: str) -> None:
        """Until the node reports its gateway stream up (health watch: an event, not a poll)."""
        stub = health_pb2_grpc.HealthStub(self.channels[node])
        watch = stub.Watch(  # type: ignore[attr-defined]
            health_pb2.HealthCheckRequest(service=LINK_HEALTH_SERVICE)
        )
        async with asyncio.timeout(STEP_TIMEOUT_S):
            async for update in watch:
                if update.status == health_pb2.HealthCheckResponse.SERVING:
                    watch.cancel()
                    return

    async def open_case(
        self, node: str, people: list[node_api_pb2.PersonIdentifier], who: str, number: int = 42
    ) -> node_api_pb2.OpenCaseResponse:
        """Open the node's case `number` (its case system's reference) for `people`."""
        response = await self.api(node).OpenCase(
            node_api_pb2.OpenCaseRequest(
                actor=PRACTITIONERS[node], case_ref=f"{node.upper()}-{number:04}", people=people
            )
        )
        tokens = ", ".join(_token(p.link_token) for p in response.people)
        say(f"    {NODES[node][0]:<26} opens a case for {who}: link tokens {tokens}")
        return response

    async def story(self) -> None:
        family = stories.think_family_people()
        say("[3] Cases opened. Identifiers become keyed link tokens at each node; the gateway sees only tokens.")
        amh_case = await self.open_case("amh", family, "the parent and the child")
        csc_case = await self.open_case("csc", family, "the child and the parent")
        await self.open_case("school", [family[1]], "the child")
        await self.open_case(
            "police",
            [node_api_pb2.PersonIdentifier(scheme="nhs", value=stories.UNRELATED_NHS, role_in_risk="AT_RISK")],
            "someone unrelated",
        )
        parent, child = (p.link_token for p in amh_case.people)
        amh = self.api("amh")
        recorded = await amh.RecordAssessment(
            node_api_pb2.RecordAssessmentRequest(
                actor=PRACTITIONERS["amh"],
                case_id=amh_case.case_id,
                assessment=stories.parent_risk_change(parent, child),
            )
        )
        decision = stories.override_decision()
        shared = await amh.ShareSummary(
            node_api_pb2.ShareSummaryRequest(
                actor=PRACTITIONERS["amh"], assessment_id=recorded.assessment_id, decision=decision
            )
        )
        basis = decision.lawful_basis
        say("[4] The adult mental-health service shares a change in the parent's risk (seed 000, Think Family).")
        say(f"    Decision: {summary_pb2.DecisionOutcome.Name(shared.outcome).removeprefix('DECISION_OUTCOME_')}")
        say(f"    Why: {decision.rationale}")
        say(
            f"    Consent: {decision.consent_status}, overridden on {', '.join(decision.override_grounds)}; "
            f"lawful basis {', '.join(basis.art6)} + {basis.art9} + {basis.dpa_condition}"
        )
        names = ", ".join(NODES[r.node_id][0] for r in shared.recipients)
        say(f"    Recipients, found by family link at the gateway: {names}")
        approver = decision.approved_by
        say(f"    Approved by {approver.name} ({approver.role}), as the agreement asks when consent is absent.")
        for record in shared.decision.recipients:
            narrative = "with" if {"risk_items", "risk_items.narrative"} & set(record.fields) else "without"
            say(
                f"    {NODES[record.node_id][0]} gets {', '.join(record.data_categories)} data, {narrative} "
                f"the clinical narrative (agreement {shared.decision.agreement_version})"
            )
            for reason in record.withheld:
                say(f"      withheld: {reason}")

        say("[5] Delivery: sealed end to end for each recipient; each returns a signed receipt.")
        for r in (await self.settled("amh", shared.share_id)).recipients:
            say(f"    {NODES[r.node_id][0]:<26} {r.state} (message ...{r.message_id[-12:]}, receipt signed)")

        say("[6] What the recipients see, after checking the sender's signature and that it was sealed to them:")
        for node in ("csc", "school"):
            items = (
                await self.api(node).ListReceived(node_api_pb2.ListReceivedRequest(actor=PRACTITIONERS[node]))
            ).items
            for item in (i for i in items if i.kind == envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE):
                say(f'    {NODES[node][0]} received from {item.sender_agency_name}: "{item.summary.headline}"')
                for risk in item.summary.risk_items:
                    say(f"      - {describe_item(risk)}")
                say(
                    f"      Review by {_date(item.summary.review_date)}; ground: {item.summary.decision.consent_status}"
                    f" overridden ({', '.join(item.summary.decision.override_grounds)})"
                )
        police = await self.api("police").ListReceived(node_api_pb2.ListReceivedRequest(actor=PRACTITIONERS["police"]))
        if any(i.kind == envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE for i in police.items):
            raise RuntimeError("the police node received a summary about a family it is not linked to")
        say("    County Police received nothing: it is not linked to this family.")
        await self.challenge(csc_case.case_id)
        await self.wrong_person(amh_case.case_id, recorded.summary_id, parent, child)

    async def challenge(self, csc_case: str) -> None:
        """Seed 003: a disagreement between agencies goes through the local escalation policy."""
        say("[7] Children's social care disagrees with the level, and challenges it under the escalation policy:")
        shared = await self.next_item("csc", envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE)
        raise_it = node_api_pb2.RaiseChallengeRequest(
            actor=PRACTITIONERS["csc"],
            case_id=csc_case,
            to_node="amh",
            stage="PRACTITIONER",
            subject="RISK_ASSESSMENT",
            about_message_id=shared.message_id,
            concern="The school reports the child is often alone after school; we think the risk is higher.",
            outcome_sought="Review the assessment with us this week.",
            respond_by=stories.days_from_today(2),
        )
        await self.api("csc").RaiseChallenge(raise_it)
        first = await self.next_item("amh", envelope_pb2.MESSAGE_KIND_CHALLENGE)
        say(f"    At the PRACTITIONER stage: {first.body.challenge.concern}")
        due = await self.api("amh").ListDue(node_api_pb2.DueRequest(actor=PRACTITIONERS["amh"]))
        (listed,) = [i for i in due.items if i.message_id == first.message_id]
        say(f"[8] Adult mental health's duty view (`linkage due`) lists it, to answer by {_date(listed.due)}:")
        seq = await self.answer_challenge(
            first, workflow_pb2.CHALLENGE_ANSWER_MAINTAINED, "Seen twice this week at home; HIGH holds until review."
        )
        raise_it.stage, raise_it.escalates_message_id = "LINE_MANAGER", first.message_id
        raise_it.concern = "Still concerned: the school's reports continue."
        raise_it.outcome_sought, raise_it.about_message_id = "The line managers meet this week.", ""
        await self.api("csc").RaiseChallenge(raise_it)
        second = await self.next_item("amh", envelope_pb2.MESSAGE_KIND_CHALLENGE, after=first.seq)
        say("    Not resolved: children's social care raises it again, at the LINE_MANAGER stage.")
        await self.answer_challenge(
            second, workflow_pb2.CHALLENGE_ANSWER_ACCEPTED, "Agreed: we will review it jointly on Thursday.", seq
        )

    async def answer_challenge(
        self,
        challenge: node_api_pb2.ReceivedSummary,
        answer: workflow_pb2.ChallengeAnswer.ValueType,
        why: str,
        after: int = 0,
    ) -> int:
        """Adult mental health answers a challenge; the inbox position of the answer at csc."""
        await self.api("amh").RespondToChallenge(
            node_api_pb2.ChallengeReplyRequest(
                actor=PRACTITIONERS["amh"], challenge_message_id=challenge.message_id, answer=answer, response=why
            )
        )
        reply = await self.next_item("csc", envelope_pb2.MESSAGE_KIND_CHALLENGE_RESPONSE, after=after)
        verb = workflow_pb2.ChallengeAnswer.Name(answer).removeprefix("CHALLENGE_ANSWER_").lower()
        say(f"    Adult mental health {verb} it: {reply.body.challenge_response.response}")
        return reply.seq

    async def wrong_person(self, amh_case: str, summary_id: str, parent: bytes, child: bytes) -> None:
        """Another person's data in a summary: every recipient erases it (UK GDPR Arts 17 and 19),
        each signed receipt confirming it, and a corrected summary goes out."""
        say("[9] Adult mental health finds the alcohol history is another patient's, merged into the record in error:")
        amh = self.api("amh")
        withdrawn = await amh.WithdrawSummary(
            node_api_pb2.WithdrawSummaryRequest(
                actor=PRACTITIONERS["amh"],
                summary_id=summary_id,
                ground="WRONG_PERSON",
                reason="The alcohol history is another patient's, merged into this record in error.",
            )
        )
        say("    It withdraws the summary as WRONG_PERSON; each recipient erases every version before it receipts:")
        await self.say_erased("amh", withdrawn.share_id)
        if any(f.code == "breach_to_assess" for f in withdrawn.findings):
            say("    The practitioner is told it is a personal data breach for IG to assess (the ICO within 72 hours).")
        corrected = stories.parent_risk_change(parent, child)
        del corrected.risk_items[1:]  # without the other patient's history
        recorded = await amh.RecordAssessment(
            node_api_pb2.RecordAssessmentRequest(actor=PRACTITIONERS["amh"], case_id=amh_case, assessment=corrected)
        )
        shared = await amh.ShareSummary(
            node_api_pb2.ShareSummaryRequest(
                actor=PRACTITIONERS["amh"], assessment_id=recorded.assessment_id, decision=stories.override_decision()
            )
        )
        names = ", ".join(NODES[r.node_id][0] for r in (await self.settled("amh", shared.share_id)).recipients)
        say(f"    A corrected summary, without it, is delivered to {names}.")
        case = node_api_pb2.CaseRequest(actor=PRACTITIONERS["amh"], case_id=amh_case)
        state = {a.summary_id: a.state for a in (await amh.ListAssessments(case)).assessments}
        say(
            f"    Its own record (linkage case assessments): the first assessment {state[summary_id]}, never to be"
            f" shared again; the correction {state[recorded.summary_id]}."
        )

    async def recall_from_age_uk(self, summary_id: str) -> None:
        """Sent to one agency in error: recalled from that agency alone, which erases it; the
        others keep it (domain.md §3.8)."""
        say("[13] The police find their summary went too far: code C keeps it to statutory partners, and Age UK")
        say("     is a charity. They recall it from Age UK alone, as SHARED_IN_ERROR:")
        withdrawn = await self.api("police").WithdrawSummary(
            node_api_pb2.WithdrawSummaryRequest(
                actor=PRACTITIONERS["police"],
                summary_id=summary_id,
                ground="SHARED_IN_ERROR",
                reason="Handling code C: statutory safeguarding partners only; Age UK is not one.",
                recipients=["ageuk"],
            )
        )
        await self.say_erased("police", withdrawn.share_id)
        kept = "Adult Social Care keeps it"
        if any(f.code == "breach_to_assess" for f in withdrawn.findings):
            kept += "; the police's IG officer is told to assess the breach"
        say(f"    {kept}.")

    async def say_erased(self, node: str, withdrawal_id: str) -> None:
        """Each recipient of a withdrawal that erases, once its signed receipt is in."""
        for r in (await self.settled(node, withdrawal_id)).recipients:
            said = "erased it (withdrawal delivered, receipt signed)" if r.state == "delivered" else r.reason
            say(f"    {NODES[r.node_id][0]:<26} {said}")

    async def settled(self, node: str, share_id: str) -> node_api_pb2.ShareStatus:
        """A share's status once every recipient's copy is delivered or undeliverable."""
        stream = self.api(node).WatchShareStatus(
            node_api_pb2.ShareStatusRequest(actor=PRACTITIONERS[node], share_id=share_id)
        )
        final: node_api_pb2.ShareStatus | None = None
        async with asyncio.timeout(STEP_TIMEOUT_S):
            async for status in stream:
                final = status
        assert final is not None and final.settled
        return final

    async def next_item(self, node: str, kind: int, after: int = 0) -> node_api_pb2.ReceivedSummary:
        stream = self.api(node).WatchReceived(
            node_api_pb2.WatchReceivedRequest(actor=PRACTITIONERS[node], after_seq=after)
        )
        async with asyncio.timeout(STEP_TIMEOUT_S):
            async for item in stream:
                if item.kind == kind:
                    stream.cancel()
                    return item
        raise RuntimeError(f"{node} received nothing of kind {kind}")

    async def ms_b(self) -> None:
        say()
        say("Story 2 (seed 004): Ms B lives alone with extreme hoarding. Police, the fire service and Age UK")
        say("each know part of the picture; Age UK has supported her for two years, unknown to the others.")
        say("[10] Each agency opens its own case; each later one is announced to those already linked:")
        cases = {}
        for node in ("fire", "police", "ageuk"):
            # Age UK has the NHS number Ms B gave it, and no way to trace it.
            ms_b = stories.ms_b("STATED" if node == "ageuk" else "VERIFIED_NATIONAL")
            cases[node] = await self.open_case(node, ms_b, "Ms B", number=43)
        notice = await self.next_item("fire", envelope_pb2.MESSAGE_KIND_INVOLVEMENT_NOTICE)
        say(
            f"    County Fire and Rescue is told: {notice.body.involvement.agency_name} has joined "
            f"(contact: {notice.body.involvement.contact_role})."
        )

        say("[11] Adult social care receives a referral and asks who else is involved (think beyond the obvious):")
        cases["asc"] = await self.open_case("asc", stories.ms_b(), "Ms B", number=43)
        found = await self.api("asc").DiscoverInvolvement(
            node_api_pb2.CaseRequest(actor=PRACTITIONERS["asc"], case_id=cases["asc"].case_id)
        )
        for agency in found.agencies:
            say(f"    {agency.agency_name} ({agency.agency_type}) - contact the {agency.contact_role}")

        token = cases["fire"].people[0].link_token
        say("[12] The fire service, the police and Age UK share what they know with the agencies linked to Ms B:")
        for node, assessment, decision in (
            ("fire", stories.fire_home_visit(token), stories.fire_decision()),
            ("police", stories.police_welfare_concern(token), stories.police_decision()),
            ("ageuk", stories.age_uk_support(token), stories.age_uk_decision()),
        ):
            recorded = await self.api(node).RecordAssessment(
                node_api_pb2.RecordAssessmentRequest(
                    actor=PRACTITIONERS[node], case_id=cases[node].case_id, assessment=assessment
                )
            )
            shared = await self.api(node).ShareSummary(
                node_api_pb2.ShareSummaryRequest(
                    actor=PRACTITIONERS[node], assessment_id=recorded.assessment_id, decision=decision
                )
            )
            to = ", ".join(NODES[r.node_id][0] for r in shared.recipients)
            grounds = f"consent {decision.consent_status}" + (
                f", overridden on {', '.join(decision.override_grounds)}" if decision.override_grounds else ""
            )
            say(f'    {NODES[node][0]} -> {to}: "{assessment.headline}" ({grounds})')
            for record in (r for r in shared.decision.recipients if r.withheld):
                say(f"      withheld from {NODES[record.node_id][0]}: {record.withheld[0]}")
        concern = await self.next_item("asc", envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE)
        while concern.sender_node != "police":
            concern = await self.next_item("asc", envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE, concern.seq)
        handling = concern.summary.decision
        say(
            f"    Adult social care sees first how it may use the police's summary (DPA 2018 Part 3, "
            f"{handling.lawful_basis.dpa_condition}): {', '.join(handling.handling_conditions)}"
        )
        say(f"      {handling.handling_instructions}")

        item = await self.next_item("asc", envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE)
        while item.sender_node != "ageuk":
            item = await self.next_item("asc", envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE, item.seq)
        await self.api("asc").OpenReceived(
            node_api_pb2.OpenReceivedRequest(actor=PRACTITIONERS["asc"], message_id=item.message_id)
        )
        read = await self.next_item("ageuk", envelope_pb2.MESSAGE_KIND_READ_NOTIFICATION)
        say(f"    Age UK learns its summary was read by adult social care's {read.body.read.reader_role}.")
        linked_by = item.summary.people[0].identity_basis
        say(f"    Age UK linked Ms B by the NHS number she gave ({linked_by}): adult social care confirms it is")
        say("    her before acting, and would challenge a wrong link (IDENTITY_MATCH).")
        await self.recall_from_age_uk(concern.summary.summary_id)

        say("[14] Adult social care asks Age UK for clarification, threaded to what Age UK sent:")
        question = "How often do you visit, and would she let your volunteer help plan the clearance?"
        await self.api("asc").AskClarification(
            node_api_pb2.AskClarificationRequest(
                actor=PRACTITIONERS["asc"], about_message_id=item.message_id, question=question
            )
        )
        asked = await self.next_item("ageuk", envelope_pb2.MESSAGE_KIND_CLARIFICATION_REQUEST)
        await self.api("ageuk").AnswerClarification(
            node_api_pb2.AnswerClarificationRequest(
                actor=PRACTITIONERS["ageuk"],
                request_message_id=asked.message_id,
                answer="Every Tuesday; yes, she has asked for her volunteer to be there.",
            )
        )
        answer = await self.next_item("asc", envelope_pb2.MESSAGE_KIND_CLARIFICATION_RESPONSE)
        say(f"    Q: {question}")
        say(f"    A: {answer.body.clarification_response.answer}")

        say("[15] After the clearance, adult social care proposes to close and asks the others first:")
        await self.api("asc").ProposeClosure(
            node_api_pb2.ProposeClosureRequest(
                actor=PRACTITIONERS["asc"],
                case_id=cases["asc"].case_id,
                intent=summary_pb2.ClosureIntent(
                    intent="STEP_DOWN", to_service="Age UK befriending", reason_code="RISK_REDUCED_GOALS_MET"
                ),
                respond_by=stories.days_from_today(14),
                note="Home cleared and she is back home; step down to Age UK befriending.",
            )
        )
        answers = {
            "police": (workflow_pb2.CLOSURE_ANSWER_AGREE, ""),
            "ageuk": (workflow_pb2.CLOSURE_ANSWER_AGREE, ""),
            "fire": (
                workflow_pb2.CLOSURE_ANSWER_OBJECT,
                "The smoke alarms are not fitted yet; the visit to fit them is booked for next week.",
            ),
        }
        for node, (answer_code, reason) in answers.items():
            intent = await self.next_item(node, envelope_pb2.MESSAGE_KIND_CLOSURE_INTENT)
            await self.api(node).RespondToClosure(
                node_api_pb2.RespondToClosureRequest(
                    actor=PRACTITIONERS[node], intent_message_id=intent.message_id, answer=answer_code, reason=reason
                )
            )
        seq = 0
        for _ in answers:
            seq = (await self.next_item("asc", envelope_pb2.MESSAGE_KIND_CLOSURE_RESPONSE, seq)).seq
        status = await self.api("asc").GetClosure(
            node_api_pb2.CaseRequest(actor=PRACTITIONERS["asc"], case_id=cases["asc"].case_id)
        )
        for reply in status.replies:
            verdict = "agrees" if reply.answer == workflow_pb2.CLOSURE_ANSWER_AGREE else f"objects: {reply.reason}"
            say(f"    {reply.agency_name} {verdict}")
        try:
            await self.api("asc").CloseCase(
                node_api_pb2.CloseCaseRequest(actor=PRACTITIONERS["asc"], case_id=cases["asc"].case_id)
            )
        except grpc.aio.AioRpcError as exc:
            say(f"    Closing now is refused: {exc.details()}")
        say("    The case stays open until the alarms are fitted: nobody closes silently.")

    async def stop(self) -> list[int]:
        for channel in self.channels.values():
            await channel.close()
        codes = []
        for process in reversed(self.processes):
            codes.append(await process.stop())
        return codes

    async def verify_audit(self, node_id: str) -> None:
        """What an IG officer runs: the node's log against the checkpoint the witness cosigned
        (lodged as the node stopped)."""
        say(f"[18] An information governance officer verifies {NODES[node_id][0]}'s audit log:")
        command = ["audit", "verify", "--config", str(self.root / node_id / "node.toml")]
        verify = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "linkage", *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await verify.communicate()
        say(f"    $ linkage {' '.join(command[:3])} {node_id}/node.toml")
        for line in out.decode().splitlines():
            say(f"    {line.strip()}")

    def where(self) -> None:
        say("[16] Where the data lives:")
        say(f"    Federation (CA, keys, directory; keep off-line): {self.root / 'federation'}")
        say(f"    Gateway (tokens, witness, metadata; no content): {self.root / 'gateway' / 'gateway.sqlite'}")
        for node_id in NODES:
            say(f"    {NODES[node_id][0] + ' store':<48} {self.root / node_id / 'store.sqlite'}")
        say(f"    Logs (JSON lines, no personal data):             {self.root}/*/*.log")


def run_demo(keep: Path | None = None) -> int:
    """The demo in `keep`, left there; or in a temporary folder, removed when it ends."""
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="linkage-demo-", ignore_cleanup_errors=True) as temporary:
            return asyncio.run(_run_demo(Path(temporary), kept=False))
    keep.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_run_demo(keep, kept=True))


async def _run_demo(root: Path, kept: bool) -> int:
    started = time.monotonic()
    say("Linkage demo: linking risk assessments across agencies (all people and data are synthetic).")
    say(f"Working folder: {root}" + ("" if kept else " (removed at the end; --keep DIR keeps one)"))
    demo = Demo(root)
    told = False
    try:
        await demo.setup()
        await demo.start()
        await demo.story()
        await demo.ms_b()
        demo.where()
        told = True
    finally:
        with contextlib.suppress(Exception):
            codes = await demo.stop()
            say(f"[17] Stopped {len(codes)} processes (exit codes {sorted(set(codes))}).")
    if told:
        await demo.verify_audit("csc")
        if kept:
            say(f"Everything stays in {root}; run that check yourself:")
            say(f"    linkage audit verify --config {root / 'csc' / 'node.toml'}")
            say("and read adult social care's register of sharing (what came from whom, on what ground):")
            say(f"    linkage audit register --config {root / 'asc' / 'node.toml'}")
            say("To run the federation again, start its gateway on a port, then each node with that address")
            say("(the configs leave the port open, as the demo chose a free one; 7700 here, any free one will do):")
            gateway_toml = root / "gateway" / "gateway.toml"
            say(f"    LINKAGE_GATEWAY_LISTEN=127.0.0.1:7700 linkage gateway serve --config {gateway_toml}")
            say(f"    LINKAGE_GATEWAY_ADDRESS=127.0.0.1:7700 linkage node serve --config {root / 'csc' / 'node.toml'}")
        else:  # the paths above are about to go
            say(f"Removing {root}: `linkage demo --keep DIR` keeps the stores and logs, to look at them yourself.")
    say(f"Demo finished in {time.monotonic() - started:.1f} s.")
    return 0
