"""A node restored from a backup gets back what other agencies delivered to it since
(node/redelivery.py): real nodes, gateway, stores and backups."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import sqlite3
import uuid
from pathlib import Path

import pytest

from linkage import backup, stories
from linkage.cli.audit import report_rows
from linkage.clock import DAY_MS, ManualClock, SystemClock
from linkage.directory import TrustedDirectory
from linkage.envelope import MAX_CLOCK_SKEW_MS
from linkage.federation import publish_directory
from linkage.files import write_private
from linkage.frames import unbatch
from linkage.ids import uuid7
from linkage.store_notes import mark, mark_path, read_mark
from linkage.v1 import audit_pb2, envelope_pb2, gateway_pb2, gateway_pb2_grpc, node_api_pb2, workflow_pb2
from node import link
from node.audit_events import MEANING
from node.redelivery import ask_again_if_restored, ask_again_if_rolled_back
from node.server import NodeServer
from tests.harness import (
    PRACTITIONER,
    CapturedLogs,
    Cluster,
    audit_events,
    linkage,
    make_federation,
    next_item,
    running,
    wait_count,
)
from tests.test_challenges import MAINTAINED, challenge, respond
from tests.test_delivery import family_assessment, share
from tests.test_federation import _case_id, open_case
from tests.test_workflows import CSC_WORKER, SCHOOL_DSL, decline, planned_closure, s47_request, think_family


async def _shared(cluster: Cluster, assessment_id: str) -> str:
    (recipient,) = (await share(cluster, assessment_id)).recipients
    return recipient.message_id


async def _followed(cluster: Cluster, after_seq: int, message_ids: list[str]) -> dict[str, list[tuple[int, str]]]:
    """What csc's watch of deliveries, from `after_seq`, tells of each message until all are
    delivered: (event number, state) in order."""
    heard: dict[str, list[tuple[int, str]]] = {m: [] for m in message_ids}
    watch = cluster.api("csc").WatchDeliveries(
        node_api_pb2.WatchDeliveriesRequest(actor=PRACTITIONER, after_seq=after_seq)
    )
    async with asyncio.timeout(15):
        async for event in watch:
            if event.status.message_id in heard:
                heard[event.status.message_id].append((event.seq, event.status.state))
            if all(story and story[-1][1] == "delivered" for story in heard.values()):
                break
    watch.cancel()
    return heard


async def test_a_node_restored_from_a_backup_gets_back_what_was_delivered_to_it_since(tmp_path: Path) -> None:
    federation = make_federation(tmp_path / "fed", SystemClock(), nodes=("amh", "csc", "school"))
    csc = backup.Member.of(federation.node_configs["csc"])
    key, sealed = tmp_path / "backup.key", tmp_path / "csc.age"
    to = backup.recipients([backup.generate_key(key, "")])
    delivered_to_csc = "SELECT count(*) FROM outbox WHERE recipient = 'csc' AND state = 'delivered' AND message_id IN "

    async with running(federation) as cluster:
        amh = cluster.nodes["amh"]
        assert amh.store is not None
        assessment_id = await family_assessment(cluster)
        kept = await _shared(cluster, assessment_id)
        await wait_count(amh, delivered_to_csc + "(?)", (kept,), 1)
        backup.take(csc, sealed, to, SystemClock().now_ms())
        after = [await _shared(cluster, assessment_id) for _ in range(4)]
        await wait_count(amh, delivered_to_csc + "(?, ?, ?, ?)", tuple(after), 4)
        # Two of those can no longer go as they went: one older than delivery allows, and one
        # whose copy here retention purged (as node/retention.py leaves it).
        sent_again, too_old, purged = after[:2], after[2], after[3]
        async with amh.store.tx() as tx:
            await tx.execute(
                "UPDATE outbox SET created_at_ms = ? WHERE message_id = ?", (tx.now_ms - 8 * DAY_MS, too_old)
            )
            await tx.execute(
                "DELETE FROM outbox_bodies WHERE seq = (SELECT seq FROM outbox WHERE message_id = ?)", (purged,)
            )
            await tx.execute("UPDATE outbox SET body_kept = 0 WHERE message_id = ?", (purged,))

        # Where csc's case system would resume its watch of what csc received.
        seen = (await cluster.api("csc").ListReceived(node_api_pb2.ListReceivedRequest(actor=PRACTITIONER))).items
        await cluster.stop_node("csc")
        backup.restore_store(csc, sealed, backup.identities(key), SystemClock().now_ms())
        noted = read_mark(csc.store)
        assert noted is not None
        restored = await cluster.start_node("csc")
        assert restored.store is not None
        held = "SELECT count(*) FROM inbox WHERE sender = 'amh' AND message_id IN (?, ?, ?, ?, ?)"
        assert (await restored.store.fetchone(held, (kept, *after)))[0] == 1  # the backup's, alone

        # amh and school are each asked once, and answer; amh sends the two again, in order.
        await wait_count(restored, "SELECT count(*) FROM outbox WHERE kind = 17 AND state = 'delivered'", (), 2)
        await wait_count(amh, delivered_to_csc + "(?, ?)", tuple(sent_again), 2)
        (asked,) = await audit_events(restored, "store.restored")
        assert asked["detail"]["asked"] == ["amh", "school"]
        followed = await cluster.api("csc").GetShareStatus(
            node_api_pb2.ShareStatusRequest(actor=PRACTITIONER, share_id=asked["detail"]["restore_id"])
        )
        assert [(r.node_id, r.state) for r in followed.recipients] == [("amh", "delivered"), ("school", "delivered")]
        assert not mark_path(csc.store).exists()
        (answered,) = await audit_events(amh, "redelivery.requested")
        assert answered["counterpart"] == "csc"
        # From the backup's last entry, less the clock skew allowed; so with what came within
        # that skew before the backup, which csc absorbs.
        assert answered["detail"]["since_ms"] == noted.last_entry_ms - MAX_CLOCK_SKEW_MS
        assert answered["detail"]["sent_again"] == [kept, *sent_again]
        assert answered["detail"]["lost"] == [too_old, purged]
        # Each message's own story, which WatchDeliveries follows, says it went back to the queue, and why.
        requeued = [
            e for e in await audit_events(amh, "message.queued") if e["detail"].get("by") == "recipient_restored"
        ]
        assert [e["message_id"] for e in requeued] == [kept, *sent_again]
        assert all(e["seq"] < answered["seq"] for e in requeued)  # entered with the request's answer
        assert requeued[0]["detail"]["reason"].startswith("queued again: csc lost it when its store was put back")
        (nothing,) = await audit_events(cluster.nodes["school"], "redelivery.requested")
        assert nothing["detail"]["sent_again"] == nothing["detail"]["lost"] == []
        rows = await restored.store.fetchall(
            "SELECT message_id FROM inbox WHERE sender = 'amh' AND message_id IN (?, ?, ?, ?, ?) ORDER BY seq",
            (kept, *after),
        )
        assert [r[0] for r in rows] == [kept, *sent_again]
        # Resumed from before the restore, csc's case system is given what came since, those
        # sent again among them: the restored store numbers them past anything it gave before.
        resumed = await cluster.api("csc").ListReceived(
            node_api_pb2.ListReceivedRequest(actor=PRACTITIONER, after_seq=seen[-1].seq)
        )
        assert {i.message_id for i in resumed.items} >= set(sent_again)

        # What cannot go again is the sender's to tell another way: its duty view lists it.
        owed = (await cluster.api("amh").ListDue(node_api_pb2.DueRequest(actor=PRACTITIONER))).items
        lost = {item.message_id: item.what for item in owed if item.undeliverable}
        assert set(lost) == {too_old, purged}
        assert "lost it when its store was put back to an earlier copy" in lost[too_old]
        assert "older than 7 days" in lost[too_old] and "purged" in lost[purged]
        received = (
            await cluster.api("amh").ListReceived(node_api_pb2.ListReceivedRequest(actor=PRACTITIONER, limit=500))
        ).items
        (notice,) = [i for i in received if i.kind == envelope_pb2.MESSAGE_KIND_REDELIVERY_REQUEST]
        assert notice.sender_node == "csc" and notice.body.redelivery.restore_id == asked["detail"]["restore_id"]
        who = ("--actor-id", "amh-1", "--actor-role", "Duty worker", "--socket", str(amh.config.api_socket))
        code, out, _ = await linkage("inbox", "list", *who)
        assert code == 0 and "redelivery_request from Children's Social Care: its store was put back to a copy" in out
        code, out, _ = await linkage("inbox", "open", notice.message_id, *who)
        assert code == 0 and "is being sent again, as it was" in out, out

        await cluster.stop_node("csc")  # started again, it asks nothing more
        again = await cluster.start_node("csc")
        assert again.store is not None
        assert (await again.store.fetchone("SELECT count(*) FROM outbox WHERE kind = 17"))[0] == 2
        assert len(await audit_events(again, "store.restored")) == 1

        # Put back to the same copy once more (a restore done again): the last item, and the
        # last delivery event, the case system saw since the first are still before all that
        # the store numbers next.
        listed = await cluster.api("csc").ListReceived(
            node_api_pb2.ListReceivedRequest(actor=PRACTITIONER, after_seq=seen[-1].seq, limit=500)
        )
        last_seen = max(i.seq for i in listed.items)
        first_asks = [r[0] for r in await again.store.fetchall("SELECT message_id FROM outbox WHERE kind = 17")]
        last_event = max(seq for story in (await _followed(cluster, 0, first_asks)).values() for seq, _ in story)
        await cluster.stop_node("csc")
        backup.restore_store(csc, sealed, backup.identities(key), SystemClock().now_ms())
        twice = await cluster.start_node("csc")
        assert twice.store is not None
        await wait_count(twice, "SELECT count(*) FROM inbox WHERE message_id IN (?, ?)", tuple(sent_again), 2)
        resumed = await cluster.api("csc").ListReceived(
            node_api_pb2.ListReceivedRequest(actor=PRACTITIONER, after_seq=last_seen)
        )
        assert {i.message_id for i in resumed.items} >= set(sent_again)
        asks = [r[0] for r in await twice.store.fetchall("SELECT message_id FROM outbox WHERE kind = 17")]
        assert not set(asks) & set(first_asks)
        for story in (await _followed(cluster, last_event, asks)).values():
            assert [state for _, state in story] == ["queued", "sent", "delivered"]
            assert all(seq > last_event for seq, _ in story)


async def test_a_restored_node_is_given_back_what_it_sent_since_and_its_withdrawal_reaches_the_holder(
    tmp_path: Path,
) -> None:
    """What the restored node itself sent after its backup comes back from the agency that
    holds it, under the node's own signature: share status knows it again; sealed again, it
    goes back to that agency when its store is put back too; and a withdrawal of the summary
    goes where the summary went (UK GDPR Art 19), not nowhere."""
    federation = make_federation(tmp_path / "fed", SystemClock(), nodes=("amh", "csc"))
    member = backup.Member.of(federation.node_configs["amh"])
    holder = backup.Member.of(federation.node_configs["csc"])
    key, sealed, held = tmp_path / "backup.key", tmp_path / "amh.age", tmp_path / "csc.age"
    to = backup.recipients([backup.generate_key(key, "")])

    async with running(federation) as cluster:
        assessment_id = await family_assessment(cluster)
        backup.take(member, sealed, to, SystemClock().now_ms())
        backup.take(holder, held, to, SystemClock().now_ms())
        shared = await share(cluster, assessment_id)
        (sent,) = shared.recipients
        await wait_count(
            cluster.nodes["amh"],
            "SELECT count(*) FROM outbox WHERE state = 'delivered' AND message_id = ?",
            (sent.message_id,),
            1,
        )
        csc = cluster.nodes["csc"]
        assert csc.store is not None
        summary_id, tokens = await _held(csc, sent.message_id)

        await cluster.stop_node("amh")
        backup.restore_store(member, sealed, backup.identities(key), SystemClock().now_ms())
        amh = await cluster.start_node("amh")
        await wait_count(
            amh, "SELECT count(*) FROM outbox WHERE message_id = ? AND state = 'delivered'", (sent.message_id,), 1
        )
        (answered,) = await audit_events(csc, "redelivery.requested")
        assert answered["detail"]["returned"] == 1
        (given,) = await audit_events(amh, "redelivery.returned")
        assert given["counterpart"] == "csc" and given["detail"]["recovered"] == [sent.message_id]
        assert given["detail"]["refused"] == [] and given["detail"]["already_held"] == 0
        (recovered,) = await audit_events(amh, "message.recovered")
        assert (recovered["summary_id"], recovered["counterpart"]) == (summary_id, "csc")
        assert recovered["tokens"] == tokens  # the tokens it was routed by, from what it signed
        assert recovered["detail"]["share_id"] == shared.share_id
        assert recovered["detail"]["sendable_again"] is True  # sealed again, should csc lose it too
        # An IG officer answering a subject access request reads it in plain words.
        (reported,) = [
            r
            for r in report_rows(federation.node_configs["amh"], f"nhs:{stories.PARENT_NHS}")
            if r["what"].startswith(MEANING["message.recovered"])
        ]
        assert reported["with"] == "Children's Social Care" and reported["what"].endswith("(summary share)")
        assert amh.store is not None
        kept = (
            "SELECT o.body_kept, length(b.envelope) > 0 FROM outbox o JOIN outbox_bodies b USING (seq) "
            "WHERE o.message_id = ?"
        )
        assert await amh.store.fetchone(kept, (sent.message_id,)) == (1, 1)
        status = await cluster.api("amh").GetShareStatus(
            node_api_pb2.ShareStatusRequest(actor=PRACTITIONER, share_id=shared.share_id)
        )
        assert [(r.node_id, r.state, r.message_id) for r in status.recipients] == [
            ("csc", "delivered", sent.message_id)
        ]
        # A watch of deliveries hears of it as delivered again, and why, as share status does.
        watch = cluster.api("amh").WatchDeliveries(node_api_pb2.WatchDeliveriesRequest(actor=PRACTITIONER))
        async with asyncio.timeout(15):
            async for heard in watch:
                if heard.status.message_id == sent.message_id:  # past the restored log's own
                    break
        watch.cancel()
        assert (heard.share_id, heard.status.node_id, heard.status.state) == (shared.share_id, "csc", "delivered")
        assert heard.status.delivered_at_ms == recovered["detail"]["received_at_ms"] > 0
        assert heard.status.reason.startswith("given back by csc after this node's store was put back")

        # The register of sharing lists the share again, as given back; the inbox says what came.
        toml = str(federation.node_configs["amh"].data_dir / "node.toml")
        code, out, _ = await linkage("audit", "register", "--json", "--config", toml)
        assert code == 0
        (row,) = [r for r in json.loads(out)["rows"] if r["id"] == shared.share_id]
        assert (row["direction"], row["agencies"], row["decision"]) == ("sent", "Children's Social Care", "SHARED")
        assert row["consent_status"] and row["lawful_ground"] and row["why"]
        assert "lost in restore" in row["note"] and "Children's Social Care gave it back" in row["note"]
        received = await cluster.api("amh").ListReceived(node_api_pb2.ListReceivedRequest(actor=PRACTITIONER))
        (notice,) = [i for i in received.items if i.kind == envelope_pb2.MESSAGE_KIND_RETURNED_COPIES]
        who = ("--actor-id", "amh-1", "--actor-role", "Duty worker", "--socket", str(amh.config.api_socket))
        code, out, _ = await linkage("inbox", "open", notice.message_id, *who)
        assert code == 0 and "gave\n  back 1 message(s) this node had sent it since" in out, out

        # csc's store put back to before the share: amh sends it again from the copy.
        await cluster.stop_node("csc")
        backup.restore_store(holder, held, backup.identities(key), SystemClock().now_ms())
        csc = await cluster.start_node("csc")
        assert csc.store is not None
        again = "SELECT count(*) FROM outbox WHERE message_id = ? AND state = 'delivered' AND queued_again_at_ms > 0"
        await wait_count(amh, again, (sent.message_id,), 1)
        (asked,) = await audit_events(amh, "redelivery.requested")
        assert sent.message_id in asked["detail"]["sent_again"] and not asked["detail"]["lost"]
        assert await _held(csc, sent.message_id) == (summary_id, tokens)

        withdrawn = await cluster.api("amh").WithdrawSummary(
            node_api_pb2.WithdrawSummaryRequest(
                actor=PRACTITIONER, summary_id=summary_id, reason="Wrong family.", ground="SHARED_IN_ERROR"
            )
        )
        (withdrawal,) = withdrawn.recipients
        assert withdrawal.node_id == "csc"
        await wait_count(
            amh, "SELECT count(*) FROM outbox WHERE message_id = ? AND state = 'delivered'", (withdrawal.message_id,), 1
        )
        row = await csc.store.fetchone("SELECT state FROM inbox WHERE message_id = ?", (sent.message_id,))
        assert row[0] == "erased"  # as its ground asks


async def test_a_restored_node_puts_back_a_closure_made_since_and_leaves_the_family_again(tmp_path: Path) -> None:
    """A closure amh proposed and made after its backup comes back from the agencies it
    alerted: the proposal, each agency's answer (sent again before the copies), and the case
    closed, its people unsubscribed at the gateway once more (the restored store, holding the
    case open, had subscribed them again as it started)."""
    federation = make_federation(tmp_path / "fed", SystemClock(), nodes=("amh", "csc", "school"))
    member = backup.Member.of(federation.node_configs["amh"])
    key, sealed = tmp_path / "backup.key", tmp_path / "amh.age"
    to = backup.recipients([backup.generate_key(key, "")])
    kind = envelope_pb2.MESSAGE_KIND_CLOSURE_NOTICE
    notices = "SELECT count(*) FROM outbox WHERE kind = ? AND state = 'delivered'"

    async with running(federation) as cluster:
        await think_family(cluster)
        case_id = await _case_id(cluster, "amh")
        backup.take(member, sealed, to, SystemClock().now_ms())
        amh = cluster.nodes["amh"]
        await cluster.api("amh").ProposeClosure(planned_closure(PRACTITIONER, case_id, note="Parent stable."))
        for node, actor, answer, reason in (
            ("csc", CSC_WORKER, workflow_pb2.CLOSURE_ANSWER_AGREE, ""),
            ("school", SCHOOL_DSL, workflow_pb2.CLOSURE_ANSWER_OBJECT, "Attendance has dropped."),
        ):
            intent = await next_item(cluster, node, envelope_pb2.MESSAGE_KIND_CLOSURE_INTENT)
            await cluster.api(node).RespondToClosure(
                node_api_pb2.RespondToClosureRequest(
                    actor=actor, intent_message_id=intent.message_id, answer=answer, reason=reason
                )
            )
        await wait_count(amh, "SELECT count(*) FROM closure_invitees WHERE at_ms IS NOT NULL", (), 2)
        await cluster.api("amh").CloseCase(
            node_api_pb2.CloseCaseRequest(
                actor=PRACTITIONER, case_id=case_id, note="Ours ends.", override_objections_reason="Passed to CSC."
            )
        )
        await wait_count(amh, notices, (kind,), 2)
        made = await cluster.api("amh").GetClosure(node_api_pb2.CaseRequest(actor=PRACTITIONER, case_id=case_id))
        assert made.state == "closed" and len(made.replies) == 2
        assert cluster.gateway._index is not None and cluster.gateway._index.count("amh") == 0

        await cluster.stop_node("amh")
        backup.restore_store(member, sealed, backup.identities(key), SystemClock().now_ms())
        amh = await cluster.start_node("amh")
        removed = "SELECT count(*) FROM audit WHERE event = 'subscription.removed'"
        await wait_count(amh, removed, (), 1)  # once the case is closed again from a copy
        await wait_count(amh, notices, (kind,), 2)  # both copies of the notice are in
        put_back = await cluster.api("amh").GetClosure(node_api_pb2.CaseRequest(actor=PRACTITIONER, case_id=case_id))
        assert put_back == made
        assert amh.store is not None
        assert await amh.store.fetchone("SELECT status FROM cases WHERE case_id = ?", (case_id,)) == ("closed",)
        assert cluster.gateway._index.count("amh") == 0
        rebuilt = {
            (
                e["counterpart"],
                e["detail"]["kind"],
                e["detail"].get("rebuilt") or e["detail"].get("case_closed_already"),
            )
            for e in await audit_events(amh, "message.recovered")
        }
        assert len(rebuilt) == 4 and {r[2] for r in rebuilt} == {"closure_proposal", "case_closed", case_id}
        (taken_back,) = await audit_events(amh, "subscription.removed")
        assert taken_back["detail"] == {"removed": 2, "deferred": True}
        closing = [e["detail"].get("cases_closed") for e in await audit_events(amh, "redelivery.returned")]
        assert sorted(closing, key=bool) == [None, [case_id]]  # by the first copy of the notice


async def test_a_restored_node_ends_the_subscriptions_its_store_no_longer_knows_of(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A case opened after the backup is not in the restored store, but the gateway still
    holds its people subscribed for the node: the node sees the gateway's total exceed what
    it knows, lists what the gateway holds for it (here in pages of two, as it would in pages
    of a thousand), and ends the rest. Reopened (from the agency's own records), the case
    subscribes them again."""
    monkeypatch.setattr(link, "MAX_TOKENS_PER_CALL", 2)
    federation = make_federation(tmp_path / "fed", SystemClock(), nodes=("amh",))
    member = backup.Member.of(federation.node_configs["amh"])
    key, sealed = tmp_path / "backup.key", tmp_path / "amh.age"
    to = backup.recipients([backup.generate_key(key, "")])
    other = node_api_pb2.PersonIdentifier(scheme="nhs", value=stories.UNRELATED_NHS, role_in_risk="AT_RISK")

    async with running(federation) as cluster:
        family = await open_case(cluster, "amh", stories.think_family_people())
        backup.take(member, sealed, to, SystemClock().now_ms())
        (since,) = await open_case(cluster, "amh", [other], case_ref="case-2")
        index = cluster.gateway._index
        assert index is not None and index.count("amh") == 3

        await cluster.stop_node("amh")
        backup.restore_store(member, sealed, backup.identities(key), SystemClock().now_ms())
        amh = await cluster.start_node("amh")
        async with asyncio.timeout(30):  # a listing that never ends would never end them
            await wait_count(amh, "SELECT count(*) FROM audit WHERE event = 'subscription.removed'", (), 1)
        (ended,) = await audit_events(amh, "subscription.removed")
        assert ended["detail"] == {"removed": 1, "unknown_here": True} and ended["tokens"] == [since.hex()]
        assert index.count("amh") == 2 and all(index.is_subscribed("amh", t) for t in family)

        await open_case(cluster, "amh", [other], case_ref="case-2")
        assert index.count("amh") == 3


async def _held(node: NodeServer, message_id: str) -> tuple[str, list[str]]:
    """The summary a node received in a message, and the link tokens it was routed by."""
    assert node.store is not None
    (summary_id,) = await node.store.fetchone("SELECT summary_id FROM inbox WHERE message_id = ?", (message_id,))
    rows = await node.store.fetchall(
        "SELECT t.token FROM inbox i JOIN inbox_tokens t ON t.inbox_seq = i.seq WHERE i.message_id = ?", (message_id,)
    )
    return summary_id, sorted(bytes(r[0]).hex() for r in rows)


async def test_a_restore_cut_short_before_its_swap_leaves_a_mark_the_node_drops(
    tmp_path: Path, captured_logs: CapturedLogs
) -> None:
    federation = make_federation(tmp_path / "fed", SystemClock(), nodes=("amh", "csc"))
    store = federation.node_configs["csc"].store_path
    async with running(federation, nodes=("csc",)):
        pass  # the store exists
    other = tmp_path / "staged.sqlite"  # the backup's store, never swapped in
    shutil.copy(store, other)
    mark(other, store, 1, "", SystemClock().now_ms())
    async with running(federation, nodes=("csc",)) as cluster:
        csc = cluster.nodes["csc"]
        assert not mark_path(store).exists()
        assert await audit_events(csc, "store.restored") == []
        assert csc.store is not None
        assert (await csc.store.fetchone("SELECT count(*) FROM outbox"))[0] == 0

        # A mark for the store in place, with no directory to seal the requests by: kept, to ask later.
        restored = mark(store, store, 1, "", SystemClock().now_ms())
        undirected = dataclasses.replace(csc.ctx, trust=TrustedDirectory(csc.trust.federation_id, csc.trust.public_key))
        await ask_again_if_restored(undirected)
        assert mark_path(store).exists() and await audit_events(csc, "store.restored") == []
        await ask_again_if_restored(csc.ctx)
        assert not mark_path(store).exists() and len(await audit_events(csc, "store.restored")) == 1

        # The request committed, then a crash before the mark went: it is dropped, not asked twice.
        write_private(mark_path(store), restored.to_json())
        await ask_again_if_restored(csc.ctx)
        assert not mark_path(store).exists() and len(await audit_events(csc, "store.restored")) == 1

        # A mark that cannot be read is left for the operator, with an error naming it; nothing is asked.
        mark_path(store).write_bytes(b"\x00 half-written")
        await ask_again_if_restored(csc.ctx)
        assert mark_path(store).exists() and len(await audit_events(csc, "store.restored")) == 1
        (said,) = captured_logs.records("restore.mark_unreadable")
        assert said["level"] == "error" and str(mark_path(store)) in said["problem"], said


async def test_a_restored_node_whose_directory_lapsed_while_away_asks_once_it_takes_a_current_one(
    tmp_path: Path, captured_logs: CapturedLogs
) -> None:
    """A store put back on a node away past its directory's days: as it starts there is no
    directory to seal its requests by; it asks as it takes a current one from the gateway,
    not at some later restart."""
    clock = ManualClock()
    federation = make_federation(tmp_path, clock, nodes=("amh", "csc"), validity_days=2)
    store = federation.node_configs["csc"].store_path
    async with running(federation, nodes=("csc",), clock=clock):
        pass  # the store exists
    mark(store, store, 1, "", clock.now_ms())  # as `backup restore` leaves it
    clock.advance(3 * DAY_MS)  # csc's directory file has lapsed
    publish_directory(federation.fed, clock.now_ms(), copy_to=(federation.gateway_config.data_dir,))
    async with running(federation, clock=clock) as cluster:
        csc = cluster.nodes["csc"]
        (waited,) = captured_logs.records("restore.not_announced")
        assert waited["reason"] == "directory_expired"
        assert csc.trust.version == 2 and not mark_path(store).exists()
        (restored,) = await audit_events(csc, "store.restored")
        assert restored["detail"]["found"] == "backup_restore"
        assert csc.store is not None
        assert (await csc.store.fetchone("SELECT count(*) FROM outbox WHERE recipient = 'amh'"))[0] == 1


async def test_the_gateway_routes_a_restore_s_messages_without_tokens_and_nothing_else(tmp_path: Path) -> None:
    federation = make_federation(tmp_path / "fed", SystemClock(), nodes=("amh", "csc"))
    token = bytes(32)
    cases = [
        (envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE, []),
        (envelope_pb2.MESSAGE_KIND_REDELIVERY_REQUEST, [token]),
        (envelope_pb2.MESSAGE_KIND_REDELIVERY_REQUEST, []),
        (envelope_pb2.MESSAGE_KIND_RETURNED_COPIES, [token]),
        (envelope_pb2.MESSAGE_KIND_RETURNED_COPIES, []),
    ]
    async with running(federation, nodes=("csc",)) as cluster:
        call = gateway_pb2_grpc.GatewayStub(cluster.gateway_channel("amh")).Connect()
        now = SystemClock().now_ms()
        for kind, tokens in cases:
            routing = envelope_pb2.RoutingHeader(
                message_id=uuid7(now), sender_node="amh", recipient_node="csc", link_tokens=tokens, kind=kind
            )
            envelope = envelope_pb2.Envelope(routing=routing.SerializeToString(), ciphertext=uuid.uuid4().bytes)
            await call.write(gateway_pb2.NodeFrame(send=envelope))
        acks: list[gateway_pb2.SendAck] = []
        while len(acks) < len(cases):
            frame = await call.read()
            assert isinstance(frame, gateway_pb2.GatewayFrame)
            acks += [f.send_ack for f in unbatch(frame) if f.HasField("send_ack")]
        call.cancel()
    share, *restores = acks
    assert (share.status, share.reason) == (gateway_pb2.SEND_STATUS_REJECTED, "no_tokens")
    for with_tokens, without in (restores[:2], restores[2:]):  # the request, and the copies returned for it
        assert (with_tokens.status, with_tokens.reason) == (gateway_pb2.SEND_STATUS_REJECTED, "malformed")
        # Routed: forwarded, or told its recipient is away (csc's stream may not be open there yet).
        assert without.status in (gateway_pb2.SEND_STATUS_FORWARDED, gateway_pb2.SEND_STATUS_RECIPIENT_OFFLINE)


async def test_a_store_rolled_back_by_other_means_is_found_by_its_witness_and_asks_the_same(
    tmp_path: Path, captured_logs: CapturedLogs
) -> None:
    """A copy of the files put back (a virtual machine's snapshot, say) leaves no mark; the
    witness, holding a checkpoint of a longer log, shows it, and the node asks once."""
    federation = make_federation(tmp_path / "fed", SystemClock(), nodes=("amh", "csc"))
    store = federation.node_configs["csc"].store_path
    snapshot = tmp_path / "snapshot"
    async with running(federation) as cluster:
        assessment_id = await family_assessment(cluster)
        amh = cluster.nodes["amh"]
        kept = await _shared(cluster, assessment_id)
        delivered = "SELECT count(*) FROM outbox WHERE state = 'delivered' AND message_id IN "
        await wait_count(amh, delivered + "(?)", (kept,), 1)
        await cluster.stop_node("csc")  # its final state lodged with the witness
        snapshot.mkdir()
        for file in store.parent.glob("store.sqlite*"):
            shutil.copy2(file, snapshot / file.name)
        await cluster.start_node("csc")
        after = [await _shared(cluster, assessment_id) for _ in range(2)]
        await wait_count(amh, delivered + "(?, ?)", tuple(after), 2)
        await cluster.stop_node("csc")  # lodged again: the witness holds the longer log
        for file in store.parent.glob("store.sqlite*"):
            file.unlink()
        for file in snapshot.iterdir():
            shutil.copy2(file, store.parent / file.name)

        csc = await cluster.start_node("csc")
        asking = csc.checkpoints.on_behind
        assert asking is not None
        refusals = [sqlite3.OperationalError("disk I/O error")]

        async def refused_once(held: audit_pb2.Checkpoint) -> None:  # its store refuses the first time
            if refusals:
                raise refusals.pop()
            await asking(held)

        csc.checkpoints.on_behind = refused_once
        assert not await csc.checkpoints.lodge()  # behind the witness, and the asking failed: said
        assert await audit_events(csc, "store.restored") == [] and "restore.ask_failed" in captured_logs.getvalue()
        assert not await csc.checkpoints.lodge()  # still behind: nothing lodged, and asked this time
        async with asyncio.timeout(30):  # a guard only: the request is made in that lodge
            await wait_count(csc, "SELECT count(*) FROM outbox WHERE kind = 17 AND state = 'delivered'", (), 1)
        await wait_count(amh, delivered + "(?, ?)", tuple(after), 2)
        (found,) = await audit_events(csc, "store.restored")
        assert found["detail"]["found"] == "behind_witness" and found["detail"]["asked"] == ["amh"]
        assert csc.store is not None
        rows = await csc.store.fetchall("SELECT message_id FROM inbox WHERE message_id IN (?, ?, ?)", (kept, *after))
        assert {r[0] for r in rows} == {kept, *after}
        # Asked once for the gap the witness shows: not again at a later start still behind it.
        witnessed = audit_pb2.Checkpoint(tree_size=found["detail"]["witnessed_entries"], at_ms=found["ts_ms"] - 1)
        await ask_again_if_rolled_back(csc.ctx, witnessed, 0, 0, "")
        assert len(await audit_events(csc, "store.restored")) == 1
        await csc.checkpoints.lodge()  # past the witness now, by what came again: lodged, as a break
        assert len(await audit_events(csc, "store.restored")) == 1


async def test_a_restored_node_knows_again_how_it_answered_what_it_was_asked_since_its_backup(tmp_path: Path) -> None:
    """amh answered csc's information request, challenge and closure proposal after its
    backup. Put back, it is sent the three again and given back its three answers: each is
    shown answered as it was, and none is on its duty view as if never answered (csc holds
    the answers, and would be asked a second time)."""
    federation = make_federation(tmp_path / "fed", SystemClock(), nodes=("amh", "csc"))
    member = backup.Member.of(federation.node_configs["amh"])
    key, sealed = tmp_path / "backup.key", tmp_path / "amh.age"
    to = backup.recipients([backup.generate_key(key, "")])

    async with running(federation) as cluster:
        family = stories.think_family_people()
        await open_case(cluster, "amh", family)
        await open_case(cluster, "csc", family)
        backup.take(member, sealed, to, SystemClock().now_ms())
        csc_case = await _case_id(cluster, "csc")
        await cluster.api("csc").RequestInformation(s47_request(csc_case, "amh"))
        await challenge(cluster)
        await cluster.api("csc").ProposeClosure(planned_closure(CSC_WORKER, csc_case))
        asked = await next_item(cluster, "amh", envelope_pb2.MESSAGE_KIND_INFORMATION_REQUEST)
        raised = await next_item(cluster, "amh", envelope_pb2.MESSAGE_KIND_CHALLENGE)
        intent = await next_item(cluster, "amh", envelope_pb2.MESSAGE_KIND_CLOSURE_INTENT)
        await decline(cluster, asked.message_id, "Nothing relevant since the last share.")
        await respond(cluster, raised.message_id, MAINTAINED, "The assessment stands; we will meet.")
        await cluster.api("amh").RespondToClosure(
            node_api_pb2.RespondToClosureRequest(
                actor=PRACTITIONER, intent_message_id=intent.message_id, answer=workflow_pb2.CLOSURE_ANSWER_AGREE
            )
        )
        answers = "SELECT count(*) FROM inbox WHERE sender = 'amh' AND kind IN (?, ?, ?)"
        kinds = (
            envelope_pb2.MESSAGE_KIND_INFORMATION_RESPONSE,
            envelope_pb2.MESSAGE_KIND_CHALLENGE_RESPONSE,
            envelope_pb2.MESSAGE_KIND_CLOSURE_RESPONSE,
        )
        await wait_count(cluster.nodes["csc"], answers, kinds, 3)

        async def at_amh() -> tuple[list[int], list[int], list[str]]:
            case = node_api_pb2.CaseRequest(actor=PRACTITIONER, case_id=await _case_id(cluster, "amh"))
            requests = (await cluster.api("amh").ListInformationRequests(case)).received
            challenges = (await cluster.api("amh").ListChallenges(case)).received
            due = await cluster.api("amh").ListDue(node_api_pb2.DueRequest(actor=PRACTITIONER))
            return [r.answer for r in requests], [c.answer for c in challenges], [i.what for i in due.items]

        answered = await at_amh()
        assert answered == ([workflow_pb2.INFORMATION_ANSWER_DECLINED], [MAINTAINED], [])

        await cluster.stop_node("amh")
        backup.restore_store(member, sealed, backup.identities(key), SystemClock().now_ms())
        amh = await cluster.start_node("amh")
        # Each answer given back is applied as it comes, or, should it come before the request it
        # answers is sent again, as that request comes (message.reply_applied).
        await wait_count(amh, "SELECT count(*) FROM inbox WHERE answer != 0", (), 3)
        assert await at_amh() == answered
        applied = [*await audit_events(amh, "message.recovered"), *await audit_events(amh, "message.reply_applied")]
        rebuilt = [e["detail"]["rebuilt"] for e in applied if "rebuilt" in e["detail"]]
        assert sorted(rebuilt) == ["challenge_answer", "closure_answer", "information_answer"]
