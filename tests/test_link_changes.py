"""A node keeps the gateway's answer to "who else is linked to this family" until the
gateway says it changed. An agency that joins or leaves a family is told to the others
ahead of its own involvement notice, so a share decided after that notice follows it."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence

import grpc
import pytest

from gateway.sessions import Sessions
from linkage import stories
from linkage.clock import SystemClock
from linkage.federation import publish_directory
from linkage.frames import unbatch
from linkage.v1 import envelope_pb2 as env
from linkage.v1 import gateway_pb2, node_api_pb2
from tests.harness import Cluster, LocalFederation, next_item, running
from tests.test_federation import _case_id, open_case
from tests.test_workflows import CSC_WORKER, SCHOOL_DSL, record_assessment, share


async def look_ups(cluster: Cluster, node: str) -> int:
    """Recipient look-ups the gateway answered for `node`, from its metadata log."""
    await cluster.gateway.metalog.flush()
    assert cluster.gateway._db is not None
    with sqlite3.connect(cluster.gateway._db.path) as db:
        row = db.execute(
            "SELECT COUNT(*) FROM metalog WHERE event = 'resolve' AND json_extract(entry, '$.actor.id') = ?", (node,)
        ).fetchone()
    return int(row[0])


async def notice_from(cluster: Cluster, sender: str, token: bytes, after_seq: int) -> int:
    """Until amh has the involvement notice in which `sender` joins or leaves about `token`; its seq."""
    while True:
        item = await next_item(cluster, "amh", env.MESSAGE_KIND_INVOLVEMENT_NOTICE, after_seq=after_seq)
        after_seq = item.seq
        if item.sender_node == sender and token in item.body.involvement.link_tokens:
            return item.seq


async def amh_and_csc_linked(cluster: Cluster) -> tuple[bytes, bytes, str]:
    """amh and csc both work with the family; amh has an assessment to share."""
    family = stories.think_family_people()
    parent, child = await open_case(cluster, "amh", family)
    await open_case(cluster, "csc", family)
    return parent, child, await record_assessment(cluster, parent, child)


def recipients(shared: node_api_pb2.ShareSummaryResponse) -> list[str]:
    return sorted(r.node_id for r in shared.recipients)


async def test_the_next_share_follows_every_change_of_who_is_linked(federation: LocalFederation) -> None:
    async with running(federation, nodes=("amh", "csc", "school")) as cluster:
        parent, child, assessment_id = await amh_and_csc_linked(cluster)
        assert recipients(await share(cluster, assessment_id)) == ["csc"]
        asked = await look_ups(cluster, "amh")
        assert recipients(await share(cluster, assessment_id)) == ["csc"]
        assert await look_ups(cluster, "amh") == asked  # nothing changed: the answer was kept

        # The school joins: amh hears of it, and its next share includes the school.
        school_case = await cluster.api("school").OpenCase(
            node_api_pb2.OpenCaseRequest(actor=SCHOOL_DSL, case_ref="s-1", people=[stories.think_family_people()[1]])
        )
        seen = await notice_from(cluster, "school", child, 0)
        assert recipients(await share(cluster, assessment_id)) == ["csc", "school"]

        # Children's social care leaves; then the school leaves too.
        csc_case = await _case_id(cluster, "csc")
        for token in (parent, child):
            await cluster.api("csc").RemovePerson(
                node_api_pb2.RemovePersonRequest(actor=CSC_WORKER, case_id=csc_case, link_token=token)
            )
        seen = await notice_from(cluster, "csc", child, seen)
        assert recipients(await share(cluster, assessment_id)) == ["school"]

        await cluster.api("school").RemovePerson(
            node_api_pb2.RemovePersonRequest(actor=SCHOOL_DSL, case_id=school_case.case_id, link_token=child)
        )
        await notice_from(cluster, "school", child, seen)
        nobody = await share(cluster, assessment_id)
        assert not nobody.recipients and nobody.outcome != 0


@pytest.mark.parametrize("change", ["stream_ends", "directory_changes"])
async def test_a_node_asks_again_once_its_stream_ends_or_the_directory_changes(
    federation: LocalFederation, change: str
) -> None:
    async with running(federation, nodes=("amh", "csc")) as cluster:
        *_, assessment_id = await amh_and_csc_linked(cluster)
        await share(cluster, assessment_id)
        asked = await look_ups(cluster, "amh")

        link = cluster.nodes["amh"].link
        assert link is not None
        forgot = asyncio.Event()
        keep = link.on_links_changed

        def watch(tokens: Sequence[bytes] | None) -> None:
            keep(tokens)
            if tokens is None:
                forgot.set()

        link.on_links_changed = watch
        if change == "stream_ends":  # notices sent meanwhile would be lost
            session = cluster.gateway.sessions.get("amh")
            assert session is not None
            session.close((grpc.StatusCode.UNAVAILABLE, "gateway restarting"))
        else:  # an agency suspended or restored changes every answer
            publish_directory(federation.fed, SystemClock().now_ms(), copy_to=(federation.gateway_config.data_dir,))
            await cluster.gateway.check_directory()
        async with asyncio.timeout(15):
            await forgot.wait()
        assert recipients(await share(cluster, assessment_id)) == ["csc"]
        assert await look_ups(cluster, "amh") == asked + 1


@pytest.mark.parametrize("kind", ["links_changed", "send_ack"])
async def test_a_notice_or_an_answer_that_cannot_be_queued_ends_the_stream_instead(kind: str) -> None:
    """The node keeps state until these come (answers it was given; a send in flight), so
    dropping one would strand it: ending the stream makes it reconnect and start afresh.
    They have room beyond the limit on other nodes' messages, so only a node far behind
    reading its own answers gets there."""
    sessions = Sessions(queue_limit=1, answer_headroom=1)
    session = sessions.open("amh")
    message = gateway_pb2.GatewayFrame(deliver=env.Envelope())
    assert session.push(message) and not session.push(message)  # the limit: its sender is told BUSY
    assert session.push(gateway_pb2.GatewayFrame(peer_online=gateway_pb2.PeerOnline(node_id="csc")), answer=True)
    if kind == "links_changed":
        sessions.notify(session, gateway_pb2.LinksChanged(link_tokens=[bytes(32)]))
    else:
        ack = gateway_pb2.SendAck(message_id="m1", recipient_node="csc", status=gateway_pb2.SEND_STATUS_FORWARDED)
        sessions.push_or_end(session, gateway_pb2.GatewayFrame(send_ack=ack))
    written = [f.WhichOneof("frame") for batch in [f async for f in session.frames()] for f in unbatch(batch)]
    assert written == ["deliver", "peer_online"]  # then the end of the stream
    assert session.error is not None and session.error[0] == grpc.StatusCode.UNAVAILABLE
