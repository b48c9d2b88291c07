"""Withdrawal with erasure (UK GDPR Arts 17 and 19; domain.md §3.8): a summary about the
wrong person, or sent in error, is erased at every agency that received it, each saying so
in its signed receipt; the sender's IG officer is told to assess a breach. A withdrawal on
another ground keeps the summary, marked withdrawn. Real nodes, gateway and stores."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import grpc
import pytest

from linkage import stories
from linkage.clock import DAY_MS, ManualClock
from linkage.ids import uuid7
from linkage.v1 import envelope_pb2 as env
from linkage.v1 import node_api_pb2, workflow_pb2
from node import retention
from node.erasure import erase_rows
from node.requests import Requests
from node.store import Store, Tx
from tests.harness import (
    PRACTITIONER,
    Cluster,
    LocalFederation,
    audit_events,
    make_federation,
    next_item,
    running,
    settle,
    wait_delivered,
    written_first,
)
from tests.harness import linkage as linkage_cli
from tests.test_audit_ig import PARENT, config, linkage
from tests.test_federation import _case_id
from tests.test_workflows import (
    CSC_WORKER,
    chronology_states,
    events,
    record_assessment,
    share,
    shared_with_both,
    think_family,
)


async def withdraw(cluster: Cluster, summary_id: str, ground: str) -> node_api_pb2.ShareSummaryResponse:
    response = await cluster.api("amh").WithdrawSummary(
        node_api_pb2.WithdrawSummaryRequest(
            actor=PRACTITIONER, summary_id=summary_id, reason="Linked to the wrong family.", ground=ground
        )
    )
    async for status in cluster.api("amh").WatchShareStatus(  # until every recipient has receipted it
        node_api_pb2.ShareStatusRequest(actor=PRACTITIONER, share_id=response.share_id), timeout=15
    ):
        last = status
    assert last.settled and {r.state for r in last.recipients} == {"delivered"}
    assert (last.withdrawal_ground, last.erase) == (ground, ground != "NOT_TO_BE_RELIED_ON")
    return response


def held(cluster: Cluster, node: str, summary_id: str) -> list[tuple[str, str, int, int, int]]:
    """Each version of the summary in a node's inbox: message id, state, and whether its
    body, link tokens and chronology entries are still held."""
    with closing(sqlite3.connect(cluster.nodes[node].config.store_path)) as db:
        return db.execute(
            "SELECT message_id, state, (SELECT COUNT(*) FROM inbox_bodies b WHERE b.seq = i.seq), "
            "(SELECT COUNT(*) FROM inbox_tokens t WHERE t.inbox_seq = i.seq), "
            "(SELECT COUNT(*) FROM chronology c WHERE c.inbox_seq = i.seq) "
            "FROM inbox i WHERE summary_id = ? AND kind != ? ORDER BY seq",
            (summary_id, env.MESSAGE_KIND_WITHDRAWAL),
        ).fetchall()


async def test_a_summary_about_the_wrong_person_is_erased_at_every_recipient(federation: LocalFederation) -> None:
    async with running(federation) as cluster:
        _, _, summary_id = await shared_with_both(cluster)
        amh = cluster.nodes["amh"]
        assert amh.store is not None
        (assessment_id,) = await amh.store.fetchone("SELECT assessment_id FROM assessments")
        await share(cluster, assessment_id, env.MESSAGE_KIND_CORRECTION)
        correction = await next_item(cluster, "csc", env.MESSAGE_KIND_CORRECTION)
        assert len(await chronology_states(cluster)) == 4  # two versions, two risk items each
        versions = [message_id for message_id, *_ in held(cluster, "csc", summary_id)]

        withdrawn = await withdraw(cluster, summary_id, "WRONG_PERSON")
        assert [f.code for f in withdrawn.findings] == ["breach_to_assess"]
        assert "the ICO must be told within 72 hours" in withdrawn.findings[0].message

        # The receipts came after the erasure committed: nothing of either version is held.
        assert held(cluster, "csc", summary_id) == [(m, "erased", 0, 0, 0) for m in versions]
        assert [state for *_, state, _, _, _ in held(cluster, "school", summary_id)] == ["erased", "erased"]
        assert await chronology_states(cluster) == []
        listed = (await cluster.api("csc").ListReceived(node_api_pb2.ListReceivedRequest(actor=CSC_WORKER))).items
        assert [
            (i.kind, i.body.withdrawal.ground, i.body.withdrawal.erase)
            for i in listed
            if i.kind != env.MESSAGE_KIND_INVOLVEMENT_NOTICE
        ] == [
            (env.MESSAGE_KIND_WITHDRAWAL, "WRONG_PERSON", True)  # what tells the case system to erase its copy
        ]
        socket = str(cluster.nodes["csc"].config.api_socket)
        who = ["--actor-id", CSC_WORKER.id, "--actor-role", CSC_WORKER.role, "--socket", socket]
        code, out, err = await linkage_cli("inbox", "list", *who)
        assert code == 0, err
        assert "withdrawal from Adult Mental Health Trust: withdraws a summary (WRONG_PERSON; erased here): " in out
        code, out, err = await linkage_cli("inbox", "open", listed[-1].message_id, *who)
        assert code == 0, err
        assert f"Withdraws summary {summary_id} (WRONG_PERSON): Linked to the wrong family." in out
        assert "Erased here at the sender's request; erase it from your case records too." in out
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await cluster.api("csc").OpenReceived(
                node_api_pb2.OpenReceivedRequest(actor=CSC_WORKER, message_id=correction.message_id)
            )
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        assert f"item {correction.message_id!r} was erased at its sender's request (WRONG_PERSON; withdrawal " in (
            raised.value.details() or ""
        )

        with pytest.raises(grpc.aio.AioRpcError) as raised:  # nor asked about
            await cluster.api("csc").AskClarification(
                node_api_pb2.AskClarificationRequest(
                    actor=CSC_WORKER, about_message_id=correction.message_id, question="Who is it about?"
                )
            )
        assert "was erased at its sender's request (WRONG_PERSON" in (raised.value.details() or "")

        (told,) = events(await audit_events(cluster.nodes["csc"]), "summary.withdrawn_by_sender")
        assert (told["detail"]["ground"], told["detail"]["erased"]) == ("WRONG_PERSON", versions)
        (made,) = events(await audit_events(amh), "summary.withdrawn")
        assert (made["detail"]["erase"], made["detail"]["breach"]) == (True, True)

        with pytest.raises(grpc.aio.AioRpcError) as raised:  # nothing more to erase: a repeat
            await withdraw(cluster, summary_id, "SHARED_IN_ERROR")
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        headline = correction.summary.headline.encode()

    # Stopped, the stores are checkpointed: the erased words are not in the file either.
    for node in ("csc", "school"):
        assert headline not in federation.node_configs[node].store_path.read_bytes()
    register = linkage("audit", "register", "--config", config(federation, "amh"))
    assert register.returncode == 0, register.stderr
    assert "Withdrawals made: 1 (WRONG_PERSON 1)" in register.stdout
    erased = [line.strip() for line in register.stdout.splitlines() if "erased it (" in line]
    assert len(erased) == 1 and erased[0].startswith("Children's Social Care erased it (")  # with their receipts' times
    assert "; Oak Primary School erased it (" in erased[0] and erased[0].endswith(
        "; possible personal data breach: assess it; tell the ICO within 72 hours unless unlikely to risk anyone"
    )
    report = json.loads(
        linkage("audit", "report", "--config", config(federation, "csc"), "--person", PARENT, "--json").stdout
    )
    assert "Summary withdrawn by its sender (WRONG_PERSON; erased here)" in [r["what"] for r in report]
    # Whoever answers a subject access request learns the summary came, and is held no more.
    gone = "Received from an agency (HEALTH, MENTAL_HEALTH; no longer held here: erased at its sender's request)"
    assert [r["what"] for r in report].count(gone) == 2, report
    recalled = json.loads(linkage("audit", "register", "--config", config(federation, "csc"), "--json").stdout)
    (row,) = [r for r in recalled["rows"] if r["direction"] == "recalled"]
    assert (row["decision"], row["agencies"], row["note"]) == (
        "WRONG_PERSON",
        "Adult Mental Health Trust",
        "erased here (2 version(s))",
    )
    # The register of processing still says both versions came, from whom and on what ground,
    # whether the summary was erased or, later, purged under the retention rule.
    _received_though_gone(recalled, "erased at its sender's request")
    clock = ManualClock()
    store = await Store.open(federation.node_configs["csc"].store_path, clock)
    try:
        clock.advance(400 * DAY_MS)
        assert (await retention.purge(store, clock, keep_days=365))["received"] >= 2
    finally:
        await store.close()
    purged = json.loads(linkage("audit", "register", "--config", config(federation, "csc"), "--json").stdout)
    _received_though_gone(purged, "purged under the retention rule")


def _received_though_gone(register: dict[str, Any], gone: str) -> None:
    got = [r for r in register["rows"] if r["direction"] == "received"]
    assert [r["note"] for r in got] == [f"no longer held here: {gone}"] * 2, got
    assert all(r["lawful_ground"] and r["consent_status"] and r["jurisdiction"] == "ENG" for r in got), got
    assert {r["data_categories"] for r in got} == {"Adult Mental Health Trust: HEALTH, MENTAL_HEALTH"}, got
    assert register["totals"]["received"]["jurisdictions"] == {"ENG": 2}


async def test_an_item_erased_while_it_was_opened_or_listed_is_not_handed_over(
    federation: LocalFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An erasure committed between a node's read of its inbox and the record of handing the
    item over (a read's audit entry, or a listing's) once let the item go to the case system
    all the same, after its sender had been told it was erased there. Now it goes as it would
    a moment later: an open is refused NOT_FOUND, saying it was erased; a listing leaves it out."""
    async with running(federation) as cluster:
        _, _, summary_id = await shared_with_both(cluster)
        for node, hand_over in (("csc", "open"), ("school", "list")):
            store = cluster.nodes[node].store
            assert store is not None
            seq, message_id = await store.fetchone(
                "SELECT seq, message_id FROM inbox WHERE summary_id = ?", (summary_id,)
            )

            async def erased(tx: Tx, seq: int = seq) -> None:  # a withdrawal asking erasure, committed first
                await erase_rows(tx, [seq])

            written_first(monkeypatch, store, erased)
            if hand_over == "open":
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await cluster.api(node).OpenReceived(
                        node_api_pb2.OpenReceivedRequest(actor=CSC_WORKER, message_id=message_id)
                    )
                assert raised.value.code() == grpc.StatusCode.NOT_FOUND
                assert f"item {message_id!r} was erased at its sender's request" in (raised.value.details() or "")
                read = events(await audit_events(cluster.nodes[node]), "message.read")
                assert message_id not in [e["message_id"] for e in read]
            else:
                listed = await cluster.api(node).ListReceived(node_api_pb2.ListReceivedRequest(actor=CSC_WORKER))
                assert message_id not in [item.message_id for item in listed.items]
                exported = events(await audit_events(cluster.nodes[node]), "received.exported")
                assert all(message_id not in e["detail"]["message_ids"] for e in exported)


@pytest.mark.parametrize("page_size", [0, 2])
@pytest.mark.parametrize("erasure", ["committed between", "committed with the viewing"])
async def test_a_chronology_read_as_an_erasure_commits_leaves_the_erased_summary_out(
    federation: LocalFederation, monkeypatch: pytest.MonkeyPatch, page_size: int, erasure: str
) -> None:
    """A chronology is read, then its viewing audited. An erasure committed between the two
    once let the erased summary's entries go to the case system all the same, after its
    sender had been told it was erased there; so did one written before the read but
    committed after it began, in the same COMMIT as the viewing. Now the chronology is read
    again, where writes are serial, when either may be: it goes as it would a moment later."""
    async with running(federation) as cluster:
        _, _, summary_id = await shared_with_both(cluster)
        csc = cluster.nodes["csc"]
        store = csc.store
        assert store is not None
        request = node_api_pb2.ChronologyRequest(
            actor=CSC_WORKER, case_id=await _case_id(cluster, "csc"), page_size=page_size
        )
        before = await cluster.api("csc").Chronology(request)  # its entries derived: no write but the audit's
        assert summary_id in [e.summary_id for e in before.entries]
        (seq,) = await store.fetchone("SELECT seq FROM inbox WHERE summary_id = ?", (summary_id,))

        async def erased(tx: Tx) -> None:  # a withdrawal asking erasure
            await erase_rows(tx, [seq])

        if erasure == "committed between":
            written_first(monkeypatch, store, erased)
            after = await cluster.api("csc").Chronology(request)
        else:  # the erasure's transaction is open as the chronology is read; the viewing queues behind it
            viewing_queued = asyncio.Event()
            acquire = store._acquire

            async def queued() -> None:
                viewing_queued.set()
                await acquire()

            async with store.tx() as tx:
                await erased(tx)
                monkeypatch.setattr(store, "_acquire", queued)
                viewing = asyncio.ensure_future(cluster.api("csc").Chronology(request))
                async with asyncio.timeout(15):
                    await viewing_queued.wait()  # read, and waiting to join this transaction's COMMIT
            after = await viewing
        assert (await store.fetchone("SELECT state FROM inbox WHERE seq = ?", (seq,))) == ("erased",)
        assert summary_id not in [e.summary_id for e in after.entries]
        (viewed, *_) = reversed(events(await audit_events(csc), "chronology.viewed"))
        assert viewed["detail"]["entries"] == len(after.entries)


async def test_a_watch_whose_newest_items_were_erased_as_they_came_waits_for_the_next(
    federation: LocalFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version that arrives after the withdrawal that erases it is stored erased: its row is
    the inbox's newest, and no listing shows it. A case system's watch then found nothing to
    hand over, yet the feed said something newer had come, so it asked again at once, and
    again, spinning a core until another item came. Now it waits from there for the next one."""
    async with running(federation) as cluster:
        _, _, summary_id = await shared_with_both(cluster)
        csc = cluster.nodes["csc"]
        assert csc.store is not None
        empty, polls = asyncio.Event(), []
        received = csc.inbox.received

        async def counted(*args: Any, **kwargs: Any) -> list[node_api_pb2.ReceivedSummary]:
            items = await received(*args, **kwargs)
            polls.append(len(items))
            if not items:
                empty.set()
            return items

        monkeypatch.setattr(csc.inbox, "received", counted)
        stream = cluster.api("csc").WatchReceived(
            node_api_pb2.WatchReceivedRequest(actor=CSC_WORKER, after_seq=csc.feed.last_seq)
        )
        async with asyncio.timeout(15):  # its first look, before the erased row: nothing yet
            await empty.wait()
        empty.clear()
        async with csc.store.tx() as tx:  # as reception leaves a version that came after its erasing withdrawal
            cursor = await tx.execute(
                "INSERT INTO inbox(sender, message_id, digest, received_at_ms, kind, share_id, summary_id) "
                "VALUES ('amh', ?, ?, ?, ?, ?, ?)",
                (uuid7(tx.now_ms), bytes(32), tx.now_ms, env.MESSAGE_KIND_CORRECTION, "share", summary_id),
            )
            erased_seq = int(cursor.lastrowid or 0)
            await erase_rows(tx, [erased_seq])
        await csc.feed.published(erased_seq)
        async with asyncio.timeout(15):
            await empty.wait()
            amh_store = cluster.nodes["amh"].store
            assert amh_store is not None
            (assessment_id,) = await amh_store.fetchone("SELECT assessment_id FROM assessments")
            await share(cluster, assessment_id, env.MESSAGE_KIND_CORRECTION)
            item = await stream.read()
        stream.cancel()
        assert isinstance(item, node_api_pb2.ReceivedSummary) and item.seq > erased_seq
        assert polls[:3] == [0, 0, 1]  # one look at the erased row that found nothing, then a wait for the next


async def test_a_summary_withdrawn_and_kept_may_later_be_erased(federation: LocalFederation) -> None:
    async with running(federation) as cluster:
        _, _, summary_id = await shared_with_both(cluster)
        kept = await withdraw(cluster, summary_id, "NOT_TO_BE_RELIED_ON")
        assert not kept.findings
        assert await chronology_states(cluster) == [(env.MESSAGE_KIND_SUMMARY_SHARE, "withdrawn")] * 2
        assert [row[1:] for row in held(cluster, "csc", summary_id)] == [("withdrawn", 1, 2, 3)]
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await withdraw(cluster, summary_id, "NOT_TO_BE_RELIED_ON")
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # Shared over a refusal, it cannot be recalled as consent withdrawn (no breach to assess)...
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await withdraw(cluster, summary_id, "CONSENT_WITHDRAWN")
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "was last shared with consent REFUSED, not on consent; if sharing it was wrong" in (
            raised.value.details() or ""
        )
        # ...but found since to be about someone else, erasure may follow a withdrawal that kept it.
        await withdraw(cluster, summary_id, "WRONG_PERSON")
        assert [row[1:] for row in held(cluster, "csc", summary_id)] == [("erased", 0, 0, 0)]


async def test_a_summary_shared_on_consent_is_erased_when_consent_is_withdrawn(federation: LocalFederation) -> None:
    async with running(federation) as cluster:
        *_, assessment_id = await think_family(cluster)
        shared = await cluster.api("amh").ShareSummary(
            node_api_pb2.ShareSummaryRequest(
                actor=PRACTITIONER,
                assessment_id=assessment_id,
                decision=stories.consented_decision("She asked us to tell the school and social care."),
            )
        )
        assert shared.recipients, [f.message for f in shared.findings]
        summary_id = (await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)).summary.summary_id
        withdrawn = await withdraw(cluster, summary_id, "CONSENT_WITHDRAWN")
        assert not withdrawn.findings  # erased, and no breach
        assert [row[1] for row in held(cluster, "csc", summary_id)] == ["erased"]


async def test_a_withdrawal_must_say_on_what_ground(federation: LocalFederation) -> None:
    async with running(federation) as cluster:
        _, _, summary_id = await shared_with_both(cluster)
        for ground in ("", "MISTAKE"):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await withdraw(cluster, summary_id, ground)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"ground {ground!r} is not a withdrawal ground; use one of ['CONSENT_WITHDRAWN', " in (
                raised.value.details() or ""
            )
        assert [row[1] for row in held(cluster, "csc", summary_id)] == ["new"]


async def test_the_senders_answers_about_an_erased_summary_are_erased_with_it(federation: LocalFederation) -> None:
    """What the sender said in answer to a clarification about the summary is about the same
    person: erased with it, whether the answer came before the withdrawal or after it. Asked to
    answer after it, the sender's practitioner is told the answer would be erased unread."""
    async with running(federation) as cluster:
        _, _, summary_id = await shared_with_both(cluster)
        shared = await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)

        async def ask(question: str) -> node_api_pb2.ReceivedSummary:
            await cluster.api("csc").AskClarification(
                node_api_pb2.AskClarificationRequest(
                    actor=CSC_WORKER, about_message_id=shared.message_id, question=question
                )
            )
            return await next_item(cluster, "amh", env.MESSAGE_KIND_CLARIFICATION_REQUEST, after_seq=asked_to)

        async def answer(question: node_api_pb2.ReceivedSummary) -> None:
            await cluster.api("amh").AnswerClarification(
                node_api_pb2.AnswerClarificationRequest(
                    actor=PRACTITIONER, request_message_id=question.message_id, answer="At the Elm Street clinic."
                )
            )

        asked_to = 0
        first = await ask("Where was the alcohol history recorded?")
        asked_to = first.seq
        second = await ask("And when?")
        await answer(first)
        before = await next_item(cluster, "csc", env.MESSAGE_KIND_CLARIFICATION_RESPONSE)
        await withdraw(cluster, summary_id, "WRONG_PERSON")
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # the practitioner learns it would go for nothing
            await answer(second)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"the question is about summary {summary_id!r}, which this node withdrew from csc for erasure" in (
            refused.value.details() or ""
        )
        # A sender that answers regardless (an older release): the answer is erased as it arrives.
        amh = cluster.nodes["amh"]
        regardless = Requests(amh.ctx, amh.cases, amh.sharing)
        _, _, tokens = await regardless.received(second.message_id, (env.MESSAGE_KIND_CLARIFICATION_REQUEST,))
        reply = workflow_pb2.ClarificationResponse(request_message_id=second.message_id, answer="On Monday.")
        await regardless.send(
            PRACTITIONER,
            ["csc"],
            env.MESSAGE_KIND_CLARIFICATION_RESPONSE,
            tokens,
            lambda body: body.clarification_response.CopyFrom(reply),
            second.message_id,
            "clarification.answered",
        )
        await wait_delivered(amh, 6)  # the share's two, the first answer, the withdrawal's two, this

        with closing(sqlite3.connect(cluster.nodes["csc"].config.store_path)) as db:
            answers = db.execute(
                "SELECT i.state, (SELECT COUNT(*) FROM inbox_bodies b WHERE b.seq = i.seq) FROM inbox i "
                "WHERE kind = ? ORDER BY seq",
                (env.MESSAGE_KIND_CLARIFICATION_RESPONSE,),
            ).fetchall()
        assert answers == [("erased", 0), ("erased", 0)]
        csc_log = await audit_events(cluster.nodes["csc"])
        (told,) = events(csc_log, "summary.withdrawn_by_sender")
        assert told["detail"]["answers_erased"] == [before.message_id]
        assert len(events(csc_log, "clarification.erased")) == 1
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await cluster.api("csc").OpenReceived(
                node_api_pb2.OpenReceivedRequest(actor=CSC_WORKER, message_id=before.message_id)
            )
        assert (raised.value.details() or "").startswith(
            f"item {before.message_id!r} was erased at its sender's request: this node no longer holds it"
        )


async def test_an_answer_racing_the_withdrawal_that_erases_its_summary_is_refused(federation: LocalFederation) -> None:
    """The withdrawal commits after the answer was checked and while it is sealed: the check
    made again in the answer's transaction refuses it, and nothing of it is queued."""
    async with running(federation) as cluster:
        _, _, summary_id = await shared_with_both(cluster)
        shared = await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)
        await cluster.api("csc").AskClarification(
            node_api_pb2.AskClarificationRequest(actor=CSC_WORKER, about_message_id=shared.message_id, question="Who?")
        )
        question = await next_item(cluster, "amh", env.MESSAGE_KIND_CLARIFICATION_REQUEST)
        messenger = cluster.nodes["amh"].ctx.messenger
        seal_each = messenger.seal_each

        async def withdrawn_meanwhile(*args: Any, **kwargs: Any) -> Any:
            if args[1] == env.MESSAGE_KIND_CLARIFICATION_RESPONSE:
                await withdraw(cluster, summary_id, "WRONG_PERSON")
            return await seal_each(*args, **kwargs)

        messenger.seal_each = withdrawn_meanwhile  # type: ignore[method-assign]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await cluster.api("amh").AnswerClarification(
                node_api_pb2.AnswerClarificationRequest(
                    actor=PRACTITIONER, request_message_id=question.message_id, answer="Her neighbour."
                )
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "which this node withdrew from csc for erasure" in (refused.value.details() or "")
        assert await cluster.nodes["amh"].store.fetchone(  # type: ignore[union-attr]
            "SELECT COUNT(*) FROM outbox WHERE kind = ?", (env.MESSAGE_KIND_CLARIFICATION_RESPONSE,)
        ) == (0,)


async def test_a_version_still_waiting_to_be_sent_when_withdrawn_is_never_sent(tmp_path: Path) -> None:
    """The school's node is away when the summary goes, so its copy waits at the sender; the
    summary is withdrawn as WRONG_PERSON meanwhile. That copy is cancelled, never sent: the
    school, back, is told of the withdrawal only; children's social care, which had it, erases
    it. The practitioner and the register learn which agency never had it (a breach's scope).
    The clock stands still, so the sender does not probe the school again meanwhile."""
    clock = ManualClock()
    federation = make_federation(tmp_path, clock)
    async with running(federation, clock=clock) as cluster:
        _, _, assessment_id = await think_family(cluster)
        await cluster.stop_node("school")
        shared = await share(cluster, assessment_id)
        summary_id = (await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)).summary.summary_id
        amh = cluster.nodes["amh"]
        await wait_delivered(amh, 1)
        await settle(amh)  # the school's copy went to the gateway, which said the school is away
        to_school = next(r for r in shared.recipients if r.node_id == "school")

        withdrawn = await cluster.api("amh").WithdrawSummary(
            node_api_pb2.WithdrawSummaryRequest(
                actor=PRACTITIONER, summary_id=summary_id, reason="Linked to the wrong family.", ground="WRONG_PERSON"
            )
        )
        assert [f.code for f in withdrawn.findings] == ["breach_to_assess", "versions_cancelled"]
        school_name = amh.trust.current(amh.clock.now_ms()).nodes["school"].agency_name
        assert withdrawn.findings[1].message == (
            f"1 message(s) of or about this summary were still waiting to be sent (to {school_name}) and are "
            "cancelled: they will not be sent"
        )
        status = await cluster.api("amh").GetShareStatus(
            node_api_pb2.ShareStatusRequest(actor=PRACTITIONER, share_id=shared.share_id)
        )
        assert {r.node_id: r.state for r in status.recipients} == {"csc": "delivered", "school": "cancelled"}
        assert status.settled
        (cancelled,) = [r for r in status.recipients if r.state == "cancelled"]
        assert cancelled.reason == "not sent: the summary was withdrawn (WRONG_PERSON) before this left the node"

        feed = cluster.api("amh").WatchDeliveries(node_api_pb2.WatchDeliveriesRequest(actor=PRACTITIONER), timeout=15)
        async for event in feed:  # the case system's delivery feed says so too
            if event.status.state == "cancelled":
                break
        feed.cancel()
        assert (event.share_id, event.status.message_id) == (shared.share_id, to_school.message_id)

        await cluster.start_node("school")  # the gateway tells amh; what is due for the school goes now
        await wait_delivered(amh, 3)  # the summary to csc, and the withdrawal to both
        assert await amh.store.fetchone(  # type: ignore[union-attr]
            "SELECT state FROM outbox WHERE message_id = ?", (to_school.message_id,)
        ) == ("cancelled",)
        assert held(cluster, "school", summary_id) == []  # no version of it ever reached the school
        assert [state for _, state, *_ in held(cluster, "csc", summary_id)] == ["erased"]
        notice = await next_item(cluster, "school", env.MESSAGE_KIND_WITHDRAWAL)
        assert (notice.body.withdrawal.summary_id, notice.body.withdrawal.erase) == (summary_id, True)

        entries = await audit_events(amh)
        (entry,) = events(entries, "message.cancelled")
        assert (entry["message_id"], entry["counterpart"]) == (to_school.message_id, "school")
        assert entry["detail"]["withdrawal"] == withdrawn.share_id
        assert events(entries, "summary.withdrawn")[0]["detail"]["cancelled"] == [to_school.message_id]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await cluster.api("amh").RecordFollowUp(
                node_api_pb2.FollowUpRequest(actor=PRACTITIONER, message_id=to_school.message_id, note="Phoned.")
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "was cancelled: there is nothing to follow up" in (refused.value.details() or "")

    register = linkage("audit", "register", "--config", config(federation, "amh"))
    assert register.returncode == 0, register.stderr
    assert "; 1 message(s) of it not yet sent were cancelled, never sent" in register.stdout
    report = json.loads(
        linkage("audit", "report", "--config", config(federation, "amh"), "--person", PARENT, "--json").stdout
    )
    assert [r["with"] for r in report if r["what"] == "Not sent: its summary withdrawn first (summary share)"] == [
        school_name
    ]


@pytest.mark.parametrize(("ground", "answer_goes"), [("WRONG_PERSON", False), ("NOT_TO_BE_RELIED_ON", True)])
async def test_an_answer_still_waiting_about_a_summary_withdrawn_for_erasure_is_never_sent(
    tmp_path: Path, ground: str, answer_goes: bool
) -> None:
    """Children's social care asks about the summary, then its node goes away; the answer
    waits at the sender when the summary is withdrawn. Withdrawn for erasure, the answer is
    about the wrong person too: cancelled, never sent. Withdrawn and kept, the answer still
    explains what the recipient keeps: it goes when the node is back. The clock stands still."""
    clock = ManualClock()
    federation = make_federation(tmp_path, clock)
    async with running(federation, clock=clock) as cluster:
        _, _, summary_id = await shared_with_both(cluster)
        shared = await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)
        await cluster.api("csc").AskClarification(
            node_api_pb2.AskClarificationRequest(
                actor=CSC_WORKER, about_message_id=shared.message_id, question="Where was it recorded?"
            )
        )
        question = await next_item(cluster, "amh", env.MESSAGE_KIND_CLARIFICATION_REQUEST)
        await wait_delivered(cluster.nodes["csc"], 1)  # its question receipted: nothing of csc's left to send
        await cluster.stop_node("csc")
        amh = cluster.nodes["amh"]
        answered = await cluster.api("amh").AnswerClarification(
            node_api_pb2.AnswerClarificationRequest(
                actor=PRACTITIONER, request_message_id=question.message_id, answer="At the Elm Street clinic."
            )
        )
        (answer,) = answered.recipients
        await settle(amh)  # the answer went to the gateway, which said csc's node is away

        withdrawn = await cluster.api("amh").WithdrawSummary(
            node_api_pb2.WithdrawSummaryRequest(
                actor=PRACTITIONER, summary_id=summary_id, reason="Linked to the wrong family.", ground=ground
            )
        )
        assert ("versions_cancelled" in [f.code for f in withdrawn.findings]) is not answer_goes
        await cluster.start_node("csc")
        await wait_delivered(amh, 4 + answer_goes)  # the share's two and the withdrawal's two (and the answer)
        (state,) = await amh.store.fetchone(  # type: ignore[union-attr]
            "SELECT state FROM outbox WHERE message_id = ?", (answer.message_id,)
        )
        assert state == ("delivered" if answer_goes else "cancelled")
        await next_item(cluster, "csc", env.MESSAGE_KIND_WITHDRAWAL)
        with closing(sqlite3.connect(cluster.nodes["csc"].config.store_path)) as db:
            arrived = db.execute(
                "SELECT message_id FROM inbox WHERE kind = ?", (env.MESSAGE_KIND_CLARIFICATION_RESPONSE,)
            ).fetchall()
        assert arrived == ([(answer.message_id,)] if answer_goes else [])

        entries = await audit_events(amh)
        (queued,) = [e for e in events(entries, "message.queued") if e["message_id"] == answer.message_id]
        assert queued["summary_id"] == summary_id  # the IG officer sees what the answer was about
        cancelled = events(entries, "message.cancelled")
        if answer_goes:
            assert cancelled == []
        else:
            (entry,) = cancelled
            assert (entry["message_id"], entry["summary_id"], entry["counterpart"]) == (
                answer.message_id,
                summary_id,
                "csc",
            )
            assert entry["detail"]["kind"] == "clarification_response"
    if not answer_goes:  # a subject access report says what never went
        report = json.loads(
            linkage("audit", "report", "--config", config(federation, "amh"), "--person", PARENT, "--json").stdout
        )
        assert [r["what"] for r in report if r["what"].startswith("Not sent")] == [
            "Not sent: its summary withdrawn first (clarification response)"
        ]


async def test_a_summary_sent_to_one_agency_in_error_is_recalled_from_it_alone(federation: LocalFederation) -> None:
    """The school should never have had it: withdrawn from the school alone as SHARED_IN_ERROR,
    the school erases it and children's social care keeps it. What later corrects the summary
    need not go back to the school, and a later withdrawal from everyone goes to those that hold it."""
    async with running(federation) as cluster:
        _, _, summary_id = await shared_with_both(cluster)
        api = cluster.api("amh")

        def asked(ground: str, *only: str) -> node_api_pb2.WithdrawSummaryRequest:
            return node_api_pb2.WithdrawSummaryRequest(
                actor=PRACTITIONER, summary_id=summary_id, reason="Sent to the wrong agency.", ground=ground,
                recipients=only,
            )  # fmt: skip

        recalled = await api.WithdrawSummary(asked("SHARED_IN_ERROR", "school"))
        assert [r.node_id for r in recalled.recipients] == ["school"]
        assert [f.code for f in recalled.findings] == ["breach_to_assess"]
        await wait_delivered(cluster.nodes["amh"], 3)
        assert [state for _, state, *_ in held(cluster, "school", summary_id)] == ["erased"]
        assert [state for _, state, *_ in held(cluster, "csc", summary_id)] == ["new"]

        for request, code, said in [
            (asked("SHARED_IN_ERROR", "school"), grpc.StatusCode.FAILED_PRECONDITION, "from school, and no version"),
            (asked("WRONG_PERSON", "police"), grpc.StatusCode.INVALID_ARGUMENT, "never went to police; it went to"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await api.WithdrawSummary(request)
            assert refused.value.code() == code and said in (refused.value.details() or ""), refused.value

        # The school is still linked to the family: a correction leaves it out, which it may,
        # since the school no longer holds the summary.
        amh = cluster.nodes["amh"]
        assert amh.store is not None
        (assessment_id,) = await amh.store.fetchone("SELECT assessment_id FROM assessments")
        decision = stories.override_decision()
        decision.not_shared_with.add(node_id="school", reason="It should never have had this summary.")
        corrected = await api.ShareSummary(
            node_api_pb2.ShareSummaryRequest(
                actor=PRACTITIONER, assessment_id=assessment_id, decision=decision, kind=env.MESSAGE_KIND_CORRECTION
            )
        )
        assert [r.node_id for r in corrected.recipients] == ["csc"], corrected.findings
        everyone = await api.WithdrawSummary(asked("NOT_TO_BE_RELIED_ON"))
        assert [r.node_id for r in everyone.recipients] == ["csc"]  # the school holds nothing to withdraw


async def test_the_senders_own_record_stands_or_is_withdrawn_by_the_ground_it_was_withdrawn_on(
    federation: LocalFederation,
) -> None:
    """A withdrawal on a ground that retracts the assessment itself (about the wrong person)
    marks the sender's own chronology entries withdrawn and takes the assessment off its
    duty view's reviews; one that undoes only its sharing (sent in error) leaves it standing.
    A later version supersedes the earlier, and one recorded after a retraction stands."""
    async with running(federation) as cluster:
        parent, child, summary_id = await shared_with_both(cluster)
        amh_case = await _case_id(cluster, "amh")
        api = cluster.api("amh")

        async def own() -> list[str]:
            response = await api.Chronology(node_api_pb2.ChronologyRequest(actor=PRACTITIONER, case_id=amh_case))
            assert all(e.own for e in response.entries)  # amh received nothing about the family
            return [e.state for e in response.entries][::2]  # each assessment's two risk items alike

        async def reviews() -> list[str]:
            listed = await api.ListDue(node_api_pb2.DueRequest(actor=PRACTITIONER, within_days=30))
            return [i.assessment_id for i in listed.items if i.assessment_id]

        async def refused(stale: str, why: str) -> None:
            """Not shared, nor previewed: recipients would take it for the summary's newest version."""
            for call in (api.ShareSummary, api.PreviewShare):
                request = node_api_pb2.ShareSummaryRequest(
                    actor=PRACTITIONER, assessment_id=stale, decision=stories.override_decision()
                )
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await call(request)
                assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert f"assessment {stale!r} no longer stands: {why}" in (raised.value.details() or "")

        async def version() -> str:
            again = stories.parent_risk_change(parent, child)
            again.summary_id = summary_id
            return (
                await api.RecordAssessment(
                    node_api_pb2.RecordAssessmentRequest(actor=PRACTITIONER, case_id=amh_case, assessment=again)
                )
            ).assessment_id

        assert (await own(), await reviews()) == (["current"], [summary_id])  # its first version's id
        in_error = await withdraw(cluster, summary_id, "SHARED_IN_ERROR")  # the sharing was wrong, not the assessment
        assert (await own(), await reviews()) == (["current"], [summary_id])
        second = await version()
        await share(cluster, second)
        await wait_delivered(cluster.nodes["amh"], 6)  # two shares and a withdrawal, to csc and the school
        assert (await own(), await reviews()) == (["superseded", "current"], [second])
        await refused(summary_id, f"a later version of summary {summary_id!r} was recorded since ({second!r})")
        await withdraw(cluster, summary_id, "WRONG_PERSON")
        assert (await own(), await reviews()) == (["withdrawn", "withdrawn"], [])
        await refused(second, f"summary {summary_id!r} was withdrawn since on WRONG_PERSON, which retracts it")
        third = await version()
        assert (await own(), await reviews()) == (["withdrawn", "withdrawn", "current"], [third])
        await share(cluster, third)  # what stands now goes
        await wait_delivered(cluster.nodes["amh"], 10)
        # The case's list of its own assessments says the same, with the shares made of each.
        case = node_api_pb2.CaseRequest(actor=PRACTITIONER, case_id=amh_case)
        listed = (await api.ListAssessments(case)).assessments
        assert [(a.assessment_id, a.version, a.state, len(a.share_ids)) for a in listed] == [
            (third, 3, "current", 1),
            (second, 2, "withdrawn", 1),
            (summary_id, 1, "withdrawn", 1),
        ]
        code, out, err = await linkage_cli(
            "case", "assessments", amh_case, "--socket", str(cluster.nodes["amh"].config.api_socket),
            "--actor-id", "amh-1", "--actor-role", "Care coordinator",
        )  # fmt: skip
        assert code == 0, err
        assert f"{third}  " in out and f"version 3 of {summary_id}  current\n" in out, out
        assert out.count("  withdrawn\n") == 2 and out.count("review by") == 1, out
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await api.ListAssessments(node_api_pb2.CaseRequest(actor=PRACTITIONER, case_id="no-such-case"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        # Each share's status says which withdrawal reached each recipient after it, if any.
        for share_id, since in ((listed[2].share_ids[0], in_error.share_id), (listed[0].share_ids[0], "")):
            status = await api.GetShareStatus(node_api_pb2.ShareStatusRequest(actor=PRACTITIONER, share_id=share_id))
            assert {r.node_id: r.withdrawn_by for r in status.recipients} == {"csc": since, "school": since}
            assert (status.withdrawal_ground, status.erase) == ("", False)  # a share of a summary, not a withdrawal
        code, out, err = await linkage_cli(
            "share", "status", listed[2].share_ids[0], "--socket", str(cluster.nodes["amh"].config.api_socket),
            "--actor-id", "amh-1", "--actor-role", "Care coordinator",
        )  # fmt: skip
        assert out.count(f"    withdrawn from it since: linkage share status {in_error.share_id}\n") == 2, (out, err)
        # Retracted, then recalled as sent in error: the refusal names the retraction.
        kept = await withdraw(cluster, summary_id, "NOT_TO_BE_RELIED_ON")
        await withdraw(cluster, summary_id, "SHARED_IN_ERROR")
        # A withdrawal's own status names no withdrawal after it: it withdrew no version of its own.
        status = await api.GetShareStatus(node_api_pb2.ShareStatusRequest(actor=PRACTITIONER, share_id=kept.share_id))
        assert {r.node_id: r.withdrawn_by for r in status.recipients} == {"csc": "", "school": ""}
        await refused(third, f"summary {summary_id!r} was withdrawn since on NOT_TO_BE_RELIED_ON, which retracts it")


async def test_a_retraction_told_to_some_holders_warns_of_the_others(federation: LocalFederation) -> None:
    """A ground that says the assessment itself no longer stands, sent to some of the agencies
    that hold it: the practitioner is told which still hold it as current. One that undoes
    only the sharing (sent in error) is rightly sent to some, and warns of nobody."""
    async with running(federation) as cluster:
        _, _, summary_id = await shared_with_both(cluster)
        api = cluster.api("amh")

        async def withdrawn(ground: str, only: str) -> dict[str, str]:
            answer = await api.WithdrawSummary(
                node_api_pb2.WithdrawSummaryRequest(
                    actor=PRACTITIONER, summary_id=summary_id, reason="Wrong.", ground=ground, recipients=[only]
                )
            )
            return {f.code: f.message for f in answer.findings}

        assert set(await withdrawn("SHARED_IN_ERROR", "school")) == {"breach_to_assess"}  # its sharing only
        await share(cluster, summary_id)  # the same assessment, which stands, to both again
        await wait_delivered(cluster.nodes["amh"], 5)
        said = await withdrawn("WRONG_PERSON", "school")
        assert said["still_held"] == (
            "this ground says the assessment itself no longer stands, but Children's Social Care still hold it "
            "as current: withdraw it from them too"
        )

        # Until it is withdrawn from them too, the duty view keeps the agency that still holds it.
        async def still_held() -> list[node_api_pb2.DueItem]:
            return [i for i in (await api.ListDue(node_api_pb2.DueRequest(actor=PRACTITIONER))).items if i.still_held]

        (held,) = await still_held()
        assert (held.node_id, held.summary_id, held.kind, held.overdue) == (
            "csc",
            summary_id,
            env.MESSAGE_KIND_WITHDRAWAL,
            True,
        )
        assert held.case_id == await _case_id(cluster, "amh") and held.what.startswith("withdrawn as WRONG_PERSON on ")
        assert events(await audit_events(cluster.nodes["amh"]), "due.viewed")[-1]["detail"]["still_held"] == 1
        who = ("--socket", str(cluster.nodes["amh"].config.api_socket), "--actor-id", "amh-1", "--actor-role", "Duty")
        code, out, err = await linkage_cli("due", *who)
        assert code == 0, err
        assert f"STILL HELD         Children's Social Care holds summary {summary_id} (case {held.case_id}): " in out
        assert f"linkage share withdraw {summary_id} --only csc --ground GROUND --reason REASON" in out
        await withdrawn("WRONG_PERSON", "csc")
        assert await still_held() == []
        # A version recorded and shared after the retraction is what they hold now: nothing is due.
        parent, child = (p.link_token for p in (await amh_case_people(cluster)))
        corrected = stories.parent_risk_change(parent, child)
        corrected.summary_id = summary_id
        recorded = await api.RecordAssessment(
            node_api_pb2.RecordAssessmentRequest(
                actor=PRACTITIONER, case_id=await _case_id(cluster, "amh"), assessment=corrected
            )
        )
        await share(cluster, recorded.assessment_id)
        assert await still_held() == []


async def test_the_duty_view_names_each_retracted_summary_still_held_where_it_is_held(
    federation: LocalFederation,
) -> None:
    """Two summaries retracted from one agency only: the duty view, which reads where every
    withdrawn summary stands at once, lists each beside the agency still holding it, and
    drops one as it is withdrawn from them too."""
    async with running(federation) as cluster:
        parent, child, first = await shared_with_both(cluster)
        api = cluster.api("amh")
        second = await record_assessment(cluster, parent, child)  # a new summary, named by its first assessment
        await share(cluster, second)
        await wait_delivered(cluster.nodes["amh"], 4)

        async def withdrawn(summary_id: str, only: str) -> None:
            await api.WithdrawSummary(
                node_api_pb2.WithdrawSummaryRequest(
                    actor=PRACTITIONER, summary_id=summary_id, reason="Wrong.", ground="WRONG_PERSON", recipients=[only]
                )
            )

        async def still_held() -> list[tuple[str, str]]:
            due = await api.ListDue(node_api_pb2.DueRequest(actor=PRACTITIONER))
            return sorted((i.summary_id, i.node_id) for i in due.items if i.still_held)

        await withdrawn(first, "school")
        await withdrawn(second, "csc")
        assert await still_held() == sorted([(first, "csc"), (second, "school")])
        await withdrawn(first, "csc")
        assert await still_held() == [(second, "school")]


async def amh_case_people(cluster: Cluster) -> list[node_api_pb2.CasePerson]:
    case = await cluster.api("amh").FindCases(node_api_pb2.FindCasesRequest(actor=PRACTITIONER))
    return list(case.cases[0].people)
