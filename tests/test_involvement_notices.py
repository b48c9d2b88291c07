"""An agency that joins or leaves a family link while the gateway is away, or stops before
it could say so, is announced to the agencies linked to the family once the gateway can
say who they are: the notice is written with the change, never only attempted."""

from __future__ import annotations

import asyncio
import dataclasses

from linkage import logs, stories
from linkage.clock import ManualClock, SystemClock
from linkage.v1 import envelope_pb2 as env
from linkage.v1 import node_api_pb2
from node import involvement
from node.server import NodeServer
from node.store import Store
from tests.harness import (
    CapturedLogs,
    Cluster,
    LocalFederation,
    LogWatch,
    audit_events,
    next_item,
    reads_refused,
    running,
    store_refuses,
    wait_count,
)
from tests.test_federation import open_case
from tests.test_workflows import CSC_WORKER

WAITING = "SELECT COUNT(*) FROM notices_to_send"


def waiting(node: NodeServer) -> float | None:
    """What the node's metrics say of notices waiting."""
    return node.metrics.registry.get_sample_value("linkage_node_involvement_notices_waiting")


async def both_linked(cluster: Cluster) -> tuple[node_api_pb2.OpenCaseResponse, bytes, node_api_pb2.ReceivedSummary]:
    """amh's case for a family, then csc's (its case, the child's token), announced to amh."""
    family = stories.think_family_people()
    await open_case(cluster, "amh", family)
    opened = await cluster.api("csc").OpenCase(
        node_api_pb2.OpenCaseRequest(actor=CSC_WORKER, case_ref="c-1", people=family)
    )
    joined = await next_item(cluster, "amh", env.MESSAGE_KIND_INVOLVEMENT_NOTICE)
    return opened, opened.people[1].link_token, joined


async def test_a_person_removed_while_the_gateway_answers_ends_their_subscription_in_the_removers_name(
    federation: LocalFederation,
) -> None:
    """The notice goes as the person is removed, and their subscription ends in the same call,
    recorded as the practitioner's doing, not as one kept for a notice and ended later: the
    first change after the node starts among them."""
    async with running(federation, nodes=("amh", "csc")) as cluster:
        opened, child, joined = await both_linked(cluster)
        await cluster.stop_node("csc")
        await cluster.start_node("csc")
        await cluster.api("csc").RemovePerson(
            node_api_pb2.RemovePersonRequest(actor=CSC_WORKER, case_id=opened.case_id, link_token=child)
        )
        left = await next_item(cluster, "amh", env.MESSAGE_KIND_INVOLVEMENT_NOTICE, after_seq=joined.seq)
        assert list(left.body.involvement.link_tokens) == [child]
        (removed,) = await audit_events(cluster.nodes["csc"], "subscription.removed")
    assert removed["detail"] == {"removed": 1} and removed["actor"]["id"] == CSC_WORKER.id


async def test_joining_and_leaving_while_the_gateway_is_away_are_announced_once_it_is_back(
    federation: LocalFederation,
) -> None:
    async with running(federation, nodes=("amh", "csc")) as cluster:
        family = stories.think_family_people()
        parent, child = await open_case(cluster, "amh", family)
        csc = cluster.nodes["csc"]
        assert csc.store is not None
        port = cluster.gateway.port

        await cluster.gateway.stop(grace=0)
        opened = await cluster.api("csc").OpenCase(
            node_api_pb2.OpenCaseRequest(actor=CSC_WORKER, case_ref="c-1", people=family)
        )
        assert await csc.store.fetchone(WAITING) == (1,)  # the case is open; its notice waits
        assert waiting(csc) == 1
        await cluster.start_gateway(port)
        joined = await next_item(cluster, "amh", env.MESSAGE_KIND_INVOLVEMENT_NOTICE)
        assert joined.sender_node == "csc" and joined.body.involvement.joined
        assert set(joined.body.involvement.link_tokens) == {parent, child}
        assert joined.body.involvement.contact.role == CSC_WORKER.role  # who made the change, as then
        assert await csc.store.fetchone(WAITING) == (0,)

        await cluster.gateway.stop(grace=0)
        await cluster.api("csc").RemovePerson(
            node_api_pb2.RemovePersonRequest(actor=CSC_WORKER, case_id=opened.case_id, link_token=child)
        )
        assert await csc.store.fetchone(WAITING) == (1,) and waiting(csc) == 1
        await cluster.start_gateway(port)
        left = await next_item(cluster, "amh", env.MESSAGE_KIND_INVOLVEMENT_NOTICE, after_seq=joined.seq)
        assert not left.body.involvement.joined and list(left.body.involvement.link_tokens) == [child]
        # The subscription kept for asking who to tell ends once the notice has gone.
        async with asyncio.timeout(30):
            await wait_count(csc, "SELECT COUNT(*) FROM audit WHERE event = 'subscription.removed'", (), 1)
        assert cluster.gateway._index is not None and cluster.gateway._index.count("csc") == 1
        (removed,) = await audit_events(csc, "subscription.removed")
        assert removed["detail"] == {"removed": 1, "deferred": True}
        assert waiting(csc) == 0  # counted as the notice went, before the subscription ended


async def test_a_notice_a_node_stopped_before_sending_goes_as_it_starts_again(
    federation: LocalFederation, captured_logs: CapturedLogs
) -> None:
    """One about people the gateway holds no subscription of this node's to (a gateway put
    back from a backup, say) cannot be sent, now or later: it is said, and the next goes."""
    async with running(federation, nodes=("amh", "csc")) as cluster:
        family = stories.think_family_people()
        _, child = await open_case(cluster, "amh", family)
        await open_case(cluster, "csc", family)
        joined = await next_item(cluster, "amh", env.MESSAGE_KIND_INVOLVEMENT_NOTICE)
        await cluster.stop_node("csc")
        store = await Store.open(federation.node_configs["csc"].store_path, SystemClock())
        async with store.tx() as tx:  # as a stop between a change's commit and its notice leaves it
            await involvement.record(tx, [bytes(32)], True, CSC_WORKER)
            await involvement.record(tx, [child], False, CSC_WORKER)
        await store.close()
        await cluster.start_node("csc")
        left = await next_item(cluster, "amh", env.MESSAGE_KIND_INVOLVEMENT_NOTICE, after_seq=joined.seq)
    assert left.sender_node == "csc" and not left.body.involvement.joined
    assert list(left.body.involvement.link_tokens) == [child]
    unsendable = captured_logs.records("involvement.notice_unsendable")
    assert [(e["code"], e["tokens"]) for e in unsendable] == [("PERMISSION_DENIED", 1)]


async def test_the_subscription_kept_for_a_notice_a_stop_left_ends_once_it_has_gone(
    federation: LocalFederation,
) -> None:
    """A node stopped between removing a person and telling the others (the gateway away)
    keeps that person's subscription for the notice: as it starts again, the notice goes,
    and then the subscription ends, so the gateway routes nothing more about the person to
    an agency no longer involved."""
    async with running(federation, nodes=("amh", "csc")) as cluster:
        opened, child, joined = await both_linked(cluster)
        port = cluster.gateway.port

        await cluster.gateway.stop(grace=0)
        await cluster.api("csc").RemovePerson(
            node_api_pb2.RemovePersonRequest(actor=CSC_WORKER, case_id=opened.case_id, link_token=child)
        )
        await cluster.stop_node("csc")
        away = NodeServer(federation.node_configs["csc"], SystemClock())
        await away.start()  # the gateway still away
        try:
            assert waiting(away) == 1  # from the start, for the metrics
        finally:
            await away.stop(grace=0)
        await cluster.start_gateway(port)
        csc = await cluster.start_node("csc")
        assert csc.store is not None
        left = await next_item(cluster, "amh", env.MESSAGE_KIND_INVOLVEMENT_NOTICE, after_seq=joined.seq)
        assert not left.body.involvement.joined and list(left.body.involvement.link_tokens) == [child]
        async with asyncio.timeout(30):
            await wait_count(csc, "SELECT COUNT(*) FROM audit WHERE event = 'subscription.removed'", (), 1)
        assert await csc.store.fetchone(WAITING) == (0,)
        assert cluster.gateway._index is not None
        assert not cluster.gateway._index.is_subscribed("csc", child)
        assert cluster.gateway._index.count("csc") == 1  # the parent


async def test_a_notice_the_gateway_is_too_busy_to_answer_for_goes_when_it_can(
    federation: LocalFederation,
) -> None:
    """The gateway limits how often a node may ask who is linked (RESOURCE_EXHAUSTED beyond
    it): a notice refused so, as it is made and again by the duty, waits with back-off and
    goes once the limit allows."""
    async with running(federation, nodes=("amh", "csc")) as cluster:
        opened, child, joined = await both_linked(cluster)
        port = cluster.gateway.port
        await cluster.stop_node("csc")
        await cluster.gateway.stop(grace=0)
        # Each node may make one call of the kind (its resubscription as it connects) and then
        # one a second, on a clock that moves when told.
        clock = ManualClock()
        limits = dataclasses.replace(federation.gateway_config.limits, control_per_second=1.0, control_burst=1)
        await cluster.start_gateway(port, clock, limits)
        csc = await cluster.start_node("csc")
        assert csc.store is not None

        watch = LogWatch('{"attempt":0,"code":"RESOURCE_EXHAUSTED","event":"involvement.notice_deferred"')
        logs.configure("info", stream=watch)
        try:
            await cluster.api("csc").RemovePerson(
                node_api_pb2.RemovePersonRequest(actor=CSC_WORKER, case_id=opened.case_id, link_token=child)
            )
            async with asyncio.timeout(30):
                await watch.seen.wait()  # the duty was refused too, and waits
        finally:
            logs.configure("info")
        assert await csc.store.fetchone(WAITING) == (1,)
        clock.advance(1_000)  # a call's worth
        left = await next_item(cluster, "amh", env.MESSAGE_KIND_INVOLVEMENT_NOTICE, after_seq=joined.seq)
        assert not left.body.involvement.joined and list(left.body.involvement.link_tokens) == [child]
        assert await csc.store.fetchone(WAITING) == (0,)
    deferred = watch.records("involvement.notice_deferred")
    assert [(e["code"], e.get("attempt")) for e in deferred] == [
        ("RESOURCE_EXHAUSTED", None),  # as it was made
        ("RESOURCE_EXHAUSTED", 0),  # by the duty
    ]


async def test_a_person_added_is_announced_as_joining_and_one_protected_neither_joins_nor_leaves(
    federation: LocalFederation,
) -> None:
    """AddPerson tells the agencies linked to that person that this one has joined; a person
    whose identity is protected is named to nobody, so neither adding nor removing them is
    announced (the next notice amh hears of is the sibling leaving)."""
    async with running(federation, nodes=("amh", "csc")) as cluster:
        parent, child = stories.think_family_people()
        sibling = node_api_pb2.PersonIdentifier(scheme="nhs", value=stories.UNRELATED_NHS, role_in_risk="AT_RISK")
        await open_case(cluster, "amh", [parent, child, sibling])
        token = cluster.nodes["csc"].cases.person_token
        csc = cluster.api("csc")
        opened = await csc.OpenCase(node_api_pb2.OpenCaseRequest(actor=CSC_WORKER, case_ref="c-1", people=[parent]))
        first = await next_item(cluster, "amh", env.MESSAGE_KIND_INVOLVEMENT_NOTICE)
        case = opened.case_id
        await csc.AddPerson(node_api_pb2.AddPersonRequest(actor=CSC_WORKER, case_id=case, person=sibling))
        joined = await next_item(cluster, "amh", env.MESSAGE_KIND_INVOLVEMENT_NOTICE, after_seq=first.seq)
        assert joined.body.involvement.joined and list(joined.body.involvement.link_tokens) == [token(sibling)]

        hidden = node_api_pb2.PersonIdentifier()
        hidden.CopyFrom(child)
        hidden.protect_identity = True
        await csc.AddPerson(node_api_pb2.AddPersonRequest(actor=CSC_WORKER, case_id=case, person=hidden))
        for gone in (child, sibling):
            removal = node_api_pb2.RemovePersonRequest(actor=CSC_WORKER, case_id=case, link_token=token(gone))
            await csc.RemovePerson(removal)
        left = await next_item(cluster, "amh", env.MESSAGE_KIND_INVOLVEMENT_NOTICE, after_seq=joined.seq)
        assert not left.body.involvement.joined and list(left.body.involvement.link_tokens) == [token(sibling)]


async def test_a_notice_the_store_refuses_as_it_goes_waits_and_goes_once_it_can(
    federation: LocalFederation,
) -> None:
    """A case opened is opened, whatever then stops its notice: the call answers with the
    case, and the notice waits and is tried again with back-off (by the duty, which nothing
    else would ask), not dropped until the next change or a restart."""
    async with running(federation, nodes=("amh", "csc")) as cluster:
        family = stories.think_family_people()
        await open_case(cluster, "amh", family)
        csc = cluster.nodes["csc"]
        assert csc.store is not None
        watch = LogWatch('"attempt":1,"event":"involvement.notice_deferred","exception"')
        logs.configure("info", stream=watch)
        try:
            with store_refuses(csc, "DELETE", "notices_to_send"):  # the write that sends a notice
                opened = await cluster.api("csc").OpenCase(
                    node_api_pb2.OpenCaseRequest(actor=CSC_WORKER, case_ref="c-1", people=family)
                )
                assert opened.case_id and await csc.store.fetchone(WAITING) == (1,)
                async with asyncio.timeout(30):
                    await watch.seen.wait()  # the duty was refused twice, and waits
        finally:
            logs.configure("info")
        joined = await next_item(cluster, "amh", env.MESSAGE_KIND_INVOLVEMENT_NOTICE)
        assert joined.sender_node == "csc" and joined.body.involvement.joined
        assert await csc.store.fetchone(WAITING) == (0,)


async def test_a_notice_goes_though_the_subscription_s_audit_entry_failed(
    federation: LocalFederation, captured_logs: CapturedLogs
) -> None:
    """The case and its notice are committed together; the audit entry of the subscription
    made for it comes after. That entry failing is said (an error naming it), and the call
    still answers with the case it opened; the notice goes all the same, not at the next
    change or restart."""
    async with running(federation, nodes=("amh", "csc")) as cluster:
        family = stories.think_family_people()
        await open_case(cluster, "amh", family)
        csc = cluster.nodes["csc"]
        with store_refuses(csc, "INSERT", "audit", "NEW.event = 'subscription.added'"):
            opened = await cluster.api("csc").OpenCase(
                node_api_pb2.OpenCaseRequest(actor=CSC_WORKER, case_ref="c-1", people=family)
            )
        assert opened.case_id and len(opened.people) == 2
        (missing,) = captured_logs.records("subscription.not_audited")
        assert missing["level"] == "error" and missing["tokens"] == 2
        joined = await next_item(cluster, "amh", env.MESSAGE_KIND_INVOLVEMENT_NOTICE)
        assert joined.sender_node == "csc" and joined.body.involvement.joined


async def test_a_case_opened_is_answered_as_opened_though_the_notices_waiting_cannot_be_read(
    federation: LocalFederation, captured_logs: CapturedLogs
) -> None:
    """The case and its notice are committed; the notices waiting are then read to send them,
    and counted again when they cannot go. A store that refused those reads failed the call
    (UNKNOWN) though the case was opened; now the call answers with the case, the notice
    waits, and goes once they can be read."""
    async with running(federation, nodes=("amh", "csc")) as cluster:
        family = stories.think_family_people()
        await open_case(cluster, "amh", family)
        csc = cluster.nodes["csc"]
        assert csc.store is not None
        async with reads_refused(csc.store, "notices_to_send"):
            opened = await cluster.api("csc").OpenCase(
                node_api_pb2.OpenCaseRequest(actor=CSC_WORKER, case_ref="c-1", people=family)
            )
        assert opened.case_id and len(opened.people) == 2
        (uncounted, *_) = captured_logs.records("involvement.count_failed")
        assert uncounted["level"] == "error" and "not authorized" in uncounted["exception"]
        joined = await next_item(cluster, "amh", env.MESSAGE_KIND_INVOLVEMENT_NOTICE)
        assert joined.sender_node == "csc" and joined.body.involvement.joined
