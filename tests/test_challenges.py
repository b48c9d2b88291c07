"""Professional challenge between agencies (domain.md §3.8 ESCALATION; seed 003's local
resolution and escalation policy), end to end across a gateway and real nodes: raised
about what one agency sent another, answered, escalated to a later stage, followed by
both, refused when it cannot be acted on; and from the CLI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import grpc
import pytest

from linkage.clock import DAY_MS, ManualClock
from linkage.v1 import envelope_pb2 as env
from linkage.v1 import node_api_pb2, summary_pb2, workflow_pb2
from node import dates
from node.store import Tx
from tests.harness import (
    PRACTITIONER,
    Cluster,
    LocalFederation,
    audit_events,
    linkage,
    next_item,
    running,
    written_first,
)
from tests.test_federation import _case_id
from tests.test_workflows import CSC_WORKER, events, s47_request, shared_with_both

MAINTAINED, ACCEPTED = workflow_pb2.CHALLENGE_ANSWER_MAINTAINED, workflow_pb2.CHALLENGE_ANSWER_ACCEPTED


async def challenge(cluster: Cluster, **fields: object) -> node_api_pb2.MessageSent:
    """csc challenges amh's assessment (fields change the call)."""
    request = node_api_pb2.RaiseChallengeRequest(
        actor=CSC_WORKER,
        case_id=str(fields.pop("case_id")) if "case_id" in fields else await _case_id(cluster, "csc"),
        to_node="amh",
        stage="PRACTITIONER",
        subject="RISK_ASSESSMENT",
        concern="The school reports the child is often left alone; we think the risk is higher than HIGH.",
        outcome_sought="Review the assessment with us this week.",
    )
    for name, value in fields.items():
        if isinstance(value, summary_pb2.Date):
            getattr(request, name).CopyFrom(value)
        else:
            setattr(request, name, value)
    return await cluster.api("csc").RaiseChallenge(request)


async def listed(cluster: Cluster, node: str) -> node_api_pb2.Challenges:
    case = node_api_pb2.CaseRequest(actor=CSC_WORKER, case_id=await _case_id(cluster, node))
    return await cluster.api(node).ListChallenges(case)


async def respond(cluster: Cluster, message_id: str, answer: int, response: str) -> node_api_pb2.MessageSent:
    return await cluster.api("amh").RespondToChallenge(
        node_api_pb2.ChallengeReplyRequest(
            actor=PRACTITIONER,
            challenge_message_id=message_id,
            answer=answer,  # type: ignore[arg-type]
            response=response,
        )
    )


async def test_a_challenge_is_answered_escalated_and_followed_at_both_agencies(federation: LocalFederation) -> None:
    clock = ManualClock()
    async with running(federation, clock=clock) as cluster:
        await shared_with_both(cluster)
        shared = await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)
        tomorrow = dates.add_days(dates.today(clock.now_ms()), 1)
        (first_sent,) = (await challenge(cluster, about_message_id=shared.message_id, respond_by=tomorrow)).recipients
        at_amh = await next_item(cluster, "amh", env.MESSAGE_KIND_CHALLENGE)
        assert at_amh.message_id == first_sent.message_id and at_amh.body.in_reply_to == shared.message_id
        assert at_amh.body.challenge.stage == "PRACTITIONER" and at_amh.body.challenge.respond_by == tomorrow

        clock.advance(DAY_MS)  # respond_by is today: not yet late
        assert not (await listed(cluster, "csc")).raised[0].overdue
        assert not (await listed(cluster, "amh")).received[0].overdue
        clock.advance(DAY_MS)  # past respond_by: late at both ends
        (raised,) = (await listed(cluster, "csc")).raised
        assert (raised.node_id, raised.answer, raised.overdue, raised.delivery) == ("amh", 0, True, "delivered")
        assert raised.answered_at_ms == 0
        assert raised.about_message_id == shared.message_id and raised.subject == "RISK_ASSESSMENT"
        (received,) = (await listed(cluster, "amh")).received
        assert (received.message_id, received.node_id, received.overdue) == (at_amh.message_id, "csc", True)
        assert received.concern == raised.concern and received.outcome_sought == raised.outcome_sought
        assert received.answered_at_ms == 0

        await respond(cluster, at_amh.message_id, MAINTAINED, "Seen twice this week; HIGH holds until the review.")
        answer = await next_item(cluster, "csc", env.MESSAGE_KIND_CHALLENGE_RESPONSE)
        assert answer.body.in_reply_to == at_amh.message_id
        (raised,) = (await listed(cluster, "csc")).raised
        assert (raised.answer, raised.response, raised.overdue) == (
            MAINTAINED,
            "Seen twice this week; HIGH holds until the review.",
            False,
        )
        (received,) = (await listed(cluster, "amh")).received
        assert (received.answer, received.response) == (MAINTAINED, raised.response)
        assert raised.answered_at_ms == received.answered_at_ms == clock.now_ms()  # answered, and heard, now

        # Not resolved: csc raises it again, between line managers, naming the first.
        (second_sent,) = (
            await challenge(cluster, stage="LINE_MANAGER", escalates_message_id=raised.message_id)
        ).recipients
        second_at_amh = await next_item(cluster, "amh", env.MESSAGE_KIND_CHALLENGE, after_seq=at_amh.seq)
        assert second_at_amh.body.challenge.escalates_message_id == raised.message_id
        second, first = (await listed(cluster, "csc")).raised  # newest first
        assert (second.message_id, second.escalates_message_id) == (second_sent.message_id, first.message_id)
        assert first.escalated_by == second.message_id and not second.escalated_by
        await respond(cluster, second_at_amh.message_id, ACCEPTED, "We will review it jointly on Thursday.")
        await next_item(cluster, "csc", env.MESSAGE_KIND_CHALLENGE_RESPONSE, after_seq=answer.seq)
        assert (await listed(cluster, "csc")).raised[0].answer == ACCEPTED

        raised_entries = events(await audit_events(cluster.nodes["csc"]), "challenge.raised")
        assert [e["detail"]["stage"] for e in raised_entries] == ["PRACTITIONER", "LINE_MANAGER"]
        assert raised_entries[1]["detail"]["escalates"] == first.message_id
        answered = events(await audit_events(cluster.nodes["amh"]), "challenge.answered")
        assert [e["decision"] for e in answered] == ["MAINTAINED", "ACCEPTED"]
        assert events(await audit_events(cluster.nodes["amh"]), "challenges.viewed")


async def test_a_challenge_that_cannot_be_acted_on_is_refused_saying_why(federation: LocalFederation) -> None:
    clock = ManualClock()
    async with running(federation, clock=clock) as cluster:
        await shared_with_both(cluster)
        shared = await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)
        yesterday = dates.add_days(dates.today(clock.now_ms()), -1)
        refusals: list[tuple[dict[str, object], grpc.StatusCode, str]] = [
            ({"stage": "ASK_NICELY"}, grpc.StatusCode.INVALID_ARGUMENT, "not an escalation_stage code"),
            ({"subject": "TONE"}, grpc.StatusCode.INVALID_ARGUMENT, "not a challenge_subject code"),
            ({"concern": " "}, grpc.StatusCode.INVALID_ARGUMENT, "needs its concern and the outcome sought"),
            ({"concern": "x" * 2001}, grpc.StatusCode.INVALID_ARGUMENT, "concern is 2,001 characters"),
            ({"respond_by": yesterday}, grpc.StatusCode.INVALID_ARGUMENT, "has passed"),
            ({"to_node": ""}, grpc.StatusCode.INVALID_ARGUMENT, "name the agency challenged"),
            ({"to_node": "csc"}, grpc.StatusCode.INVALID_ARGUMENT, "names this node itself"),
            ({"case_id": "no-such-case"}, grpc.StatusCode.NOT_FOUND, "no-such-case"),
            # What it is about was exchanged with amh, not the school.
            ({"to_node": "school", "about_message_id": shared.message_id}, grpc.StatusCode.NOT_FOUND, "'school'"),
            ({"escalates_message_id": "m-none"}, grpc.StatusCode.NOT_FOUND, "no challenge 'm-none'"),
        ]
        for fields, code, said in refusals:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await challenge(cluster, **fields)
            assert refused.value.code() == code and said in (refused.value.details() or ""), (fields, refused.value)

        (first,) = (await challenge(cluster)).recipients
        (second,) = (await challenge(cluster, stage="LINE_MANAGER", escalates_message_id=first.message_id)).recipients
        refusals = [
            (
                {"stage": "LINE_MANAGER", "escalates_message_id": second.message_id},
                grpc.StatusCode.INVALID_ARGUMENT,
                "was raised at LINE_MANAGER: escalating it takes a later stage, not LINE_MANAGER",
            ),
            (
                {"stage": "SENIOR_MANAGER", "escalates_message_id": first.message_id},
                grpc.StatusCode.FAILED_PRECONDITION,
                f"already escalated, by {second.message_id!r}",
            ),
            (
                {"stage": "SENIOR_MANAGER", "to_node": "school", "escalates_message_id": second.message_id},
                grpc.StatusCode.INVALID_ARGUMENT,
                "was raised with 'amh' in case",
            ),
        ]
        for fields, code, said in refusals:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await challenge(cluster, **fields)
            assert refused.value.code() == code and said in (refused.value.details() or ""), (fields, refused.value)

        # Two escalations of one challenge at once: one goes, the other is told it was escalated.
        (third,) = (await challenge(cluster)).recipients

        async def escalate() -> grpc.StatusCode:
            try:
                await challenge(cluster, stage="LINE_MANAGER", escalates_message_id=third.message_id)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        raced = await asyncio.gather(escalate(), escalate())
        assert sorted(raced, key=lambda c: c.value[0]) == [grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION]

        at_amh = await next_item(cluster, "amh", env.MESSAGE_KIND_CHALLENGE)
        for message_id, answer, response, code, said in [
            (at_amh.message_id, 0, "Fine.", grpc.StatusCode.INVALID_ARGUMENT, "ACCEPTED or MAINTAINED"),
            (at_amh.message_id, ACCEPTED, "", grpc.StatusCode.INVALID_ARGUMENT, "response is empty"),
            ("m-none", ACCEPTED, "Fine.", grpc.StatusCode.NOT_FOUND, "no such item"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await respond(cluster, message_id, answer, response)
            assert refused.value.code() == code and said in (refused.value.details() or ""), refused.value
        assert len((await listed(cluster, "csc")).raised) == 4  # nothing refused was recorded


async def test_a_challenge_from_the_cli(federation: LocalFederation) -> None:
    async with running(federation) as cluster:
        await shared_with_both(cluster)
        shared = await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)

        def who(node: str) -> tuple[str, ...]:
            socket = str(cluster.nodes[node].config.api_socket)
            return ("--actor-id", f"{node}-1", "--actor-role", "Social worker", "--socket", socket)

        csc_case = await _case_id(cluster, "csc")
        code, out, err = await linkage(
            "case", "challenge", csc_case, "--to", "amh", "--stage", "PRACTITIONER", "--subject", "RISK_ASSESSMENT",
            "--concern", "Left alone often.", "--outcome-sought", "Review it with us.", "--about", shared.message_id,
            *who("csc"),
        )  # fmt: skip
        assert code == 0 and "Challenge raised:" in out and "amh" in out, err
        at_amh = await next_item(cluster, "amh", env.MESSAGE_KIND_CHALLENGE)
        code, out, err = await linkage("inbox", "list", *who("amh"))
        assert "challenge from Children's Social Care: at PRACTITIONER: Left alone often." in out, out
        code, out, err = await linkage("inbox", "open", at_amh.message_id, *who("amh"))
        assert code == 0 and "  Concern: Left alone often." in out, err
        assert f"  Answer with: linkage inbox respond {at_amh.message_id} accept|maintain --response ..." in out
        code, out, err = await linkage(
            "inbox", "respond", at_amh.message_id, "maintain", "--response", "HIGH holds.", *who("amh")
        )
        assert code == 0 and "Answer sent:" in out, err
        answer = await next_item(cluster, "csc", env.MESSAGE_KIND_CHALLENGE_RESPONSE)
        code, out, err = await linkage("inbox", "list", *who("csc"))
        assert code == 0 and "challenge_response from Adult Mental Health Trust: maintained: HIGH holds." in out, out
        code, out, err = await linkage("inbox", "open", answer.message_id, *who("csc"))
        assert code == 0, err
        assert f"  Answer to challenge {at_amh.message_id}: maintained\n  HIGH holds.\n" in out, out
        code, out, err = await linkage("case", "challenges", csc_case, *who("csc"), "--json")
        assert code == 0, err
        (raised,) = json.loads(out)["raised"]
        assert (raised["message_id"], raised["answer"]) == (at_amh.message_id, "CHALLENGE_ANSWER_MAINTAINED")
        code, out, err = await linkage("case", "challenges", csc_case, *who("csc"))
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].endswith("at PRACTITIONER (RISK_ASSESSMENT): Left alone often.") and "Raised with" in lines[0]
        assert "  They maintained it " in lines[1] and lines[1].endswith(": HIGH holds.")
        assert (
            lines[2] == f"  Not resolved? linkage case challenge {csc_case} --escalates {at_amh.message_id} --stage ..."
        )
        code, out, err = await linkage(
            "case", "challenge", csc_case, "--to", "amh", "--stage", "NOPE", "--subject", "RISK_ASSESSMENT",
            "--concern", "c", "--outcome-sought", "o", *who("csc"),
        )  # fmt: skip
        assert code != 0 and "INVALID_ARGUMENT" in err and "Traceback" not in err, err
        code, out, err = await linkage(
            "case", "challenge", csc_case, "--to", "amh", "--stage", "LINE_MANAGER", "--subject", "RISK_ASSESSMENT",
            "--concern", "Still left alone.", "--outcome-sought", "Managers meet.", "--escalates", at_amh.message_id,
            *who("csc"),
        )  # fmt: skip
        assert code == 0, err
        again = await next_item(cluster, "amh", env.MESSAGE_KIND_CHALLENGE, after_seq=at_amh.seq)
        code, out, err = await linkage("inbox", "open", again.message_id, *who("amh"))
        assert code == 0 and "  Stage: LINE_MANAGER; about: RISK_ASSESSMENT\n" in out, (out, err)
        assert f"  Escalates challenge {at_amh.message_id}, not resolved at the stage before\n" in out
        code, out, err = await linkage("case", "challenges", csc_case, *who("csc"))
        newest = out.split("Raised with")[1]  # newest first: no answer yet, and not late, so nothing to escalate
        assert "No answer yet (" in newest and "Not resolved?" not in newest
        assert f"Escalated by {again.message_id}" in out
        code, out, err = await linkage("case", "challenges", await _case_id(cluster, "amh"), *who("amh"))
        assert f"  Escalates {at_amh.message_id}, not resolved at the stage before" in out, out

        # How the challenges went, for a review of the escalation policy: counts, read from each store.
        figures = {}
        for node in ("csc", "amh"):
            toml = str(federation.node_configs[node].data_dir / "node.toml")
            code, out, err = await linkage("audit", "challenges", "--config", toml, "--json")
            assert code == 0, err
            figures[node] = json.loads(out)
        raised, received = figures["csc"]["raised"], figures["amh"]["received"]
        for f in (raised, received):
            assert (f["total"], f["answered"], f["unanswered"], f["escalations"]) == (2, {"maintained": 1}, 1, 1)
            assert f["by_stage"] == {"PRACTITIONER": 1, "LINE_MANAGER": 1}
        assert raised["by_agency"] == {"amh": 2} and received["by_agency"] == {"csc": 2}
        assert figures["csc"]["received"]["total"] == 0
        code, out, err = await linkage("audit", "challenges", "--config", toml, "--since", "2026-01-01")
        assert "Received: 2; answered: maintained 1; unanswered 1 (overdue 0); escalations among them: 1" in out, out
        assert out.startswith("Professional challenges at Adult Mental Health Trust (amh), since 2026-01-01:\n")
        assert "    by agency: Children's Social Care 2\n" in out, out  # by name, as the register names them
        code, out, err = await linkage("audit", "challenges", "--config", toml, "--since", "2999-01-01", "--json")
        assert json.loads(out)["received"]["total"] == 0, err


async def test_nothing_is_asked_of_the_others_about_a_case_closed_while_the_call_was_made(
    federation: LocalFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An information request or a challenge found its case open, and was written after a
    close committed: refused, so no agency is asked about a family this one no longer works."""
    async with running(federation) as cluster:
        await shared_with_both(cluster)
        store = cluster.nodes["csc"].store
        assert store is not None
        case_id = await _case_id(cluster, "csc")

        async def set_status(tx: Tx, status: str = "closed") -> None:
            await tx.execute("UPDATE cases SET status = ? WHERE case_id = ?", (status, case_id))

        calls: list[Callable[[], Awaitable[node_api_pb2.MessageSent]]] = [
            lambda: cluster.api("csc").RequestInformation(s47_request(case_id, "amh")),
            lambda: challenge(cluster, case_id=case_id),
        ]
        for call in calls:
            async with store.tx() as tx:
                await set_status(tx, "open")
            written_first(monkeypatch, store, set_status)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call()
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "is closed" in (refused.value.details() or "")
        sent = await store.fetchone(
            "SELECT COUNT(*) FROM outbox WHERE kind IN (?, ?)",
            (env.MESSAGE_KIND_INFORMATION_REQUEST, env.MESSAGE_KIND_CHALLENGE),
        )
        assert sent == (0,)
