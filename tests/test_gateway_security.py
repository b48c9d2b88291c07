"""mTLS identity at the gateway: no certificate, no entry; nobody acts as another node."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import sqlite3
from collections.abc import Awaitable
from pathlib import Path
from typing import Literal

import grpc
import pytest

from gateway.db import GatewayDb
from gateway.witness import Witness
from linkage import logs, stories
from linkage.auditlog import open_checkpoint, sign_checkpoint
from linkage.clock import SystemClock
from linkage.ids import uuid7
from linkage.keys import MessageKeys
from linkage.merkle import consistency_proof, leaf_hash, root_of
from linkage.pki import CertificateAuthority, spiffe_id
from linkage.tokens import MAX_TOKENS_PER_MESSAGE
from linkage.transport import DIRECTORY_VERSION_KEY, TlsFiles, secure_channel
from linkage.v1 import audit_pb2, envelope_pb2, gateway_pb2, gateway_pb2_grpc
from tests.crypto_fixtures import seal
from tests.harness import (
    FEDERATION_ID,
    PRACTITIONER,
    CapturedLogs,
    Cluster,
    LocalFederation,
    revoke,
    running,
    wait_delivered,
)
from tests.test_federation import open_case, share_think_family, summaries

TOKEN = bytes([3]) * 32


def gateway_stub(cluster: Cluster, tls: TlsFiles) -> gateway_pb2_grpc.GatewayAsyncStub:
    return gateway_pb2_grpc.GatewayStub(
        cluster.closes(secure_channel(f"127.0.0.1:{cluster.gateway.port}", tls, "gateway"))
    )


async def test_client_without_certificate_is_refused(federation: LocalFederation) -> None:
    async with running(federation, nodes=()) as cluster:
        ca = federation.gateway_config.tls.ca.read_bytes()
        target = f"127.0.0.1:{cluster.gateway.port}"
        no_cert = grpc.aio.secure_channel(
            target,
            grpc.ssl_channel_credentials(root_certificates=ca),
            options=[("grpc.ssl_target_name_override", "gateway")],
        )
        plaintext = grpc.aio.insecure_channel(target)
        for channel in (cluster.closes(no_cert), cluster.closes(plaintext)):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await gateway_pb2_grpc.GatewayStub(channel).Subscribe(
                    gateway_pb2.SubscribeRequest(node_id="amh", link_tokens=[TOKEN]), timeout=5
                )
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_certificate_from_another_ca_is_refused(federation: LocalFederation, tmp_path: Path) -> None:
    rogue = CertificateAuthority.create(FEDERATION_ID, dt.datetime.now(dt.UTC))
    key, cert = rogue.issue(spiffe_id(FEDERATION_ID, "node", "amh"), "node-amh", dt.datetime.now(dt.UTC), 1)
    (tmp_path / "rogue.key").write_bytes(key)
    (tmp_path / "rogue.pem").write_bytes(cert)
    tls = TlsFiles(cert=tmp_path / "rogue.pem", key=tmp_path / "rogue.key", ca=federation.gateway_config.tls.ca)
    async with running(federation, nodes=()) as cluster:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await gateway_stub(cluster, tls).Subscribe(
                gateway_pb2.SubscribeRequest(node_id="amh", link_tokens=[TOKEN]), timeout=5
            )
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("identity", "said"),
    [
        (spiffe_id(FEDERATION_ID, "gateway", "gateway"), "certificate does not name a node of this federation"),
        (spiffe_id("elsewhere.example", "node", "amh"), "certificate does not name a node of this federation"),
        (spiffe_id(FEDERATION_ID, "node", "stranger"), "node 'stranger' is not in the directory"),
        (spiffe_id(FEDERATION_ID, "node", "amh"), "certificate is not the one the directory pins for 'amh'"),
    ],
)
async def test_a_certificate_from_the_federation_ca_admits_only_the_node_the_directory_pins_it_for(
    federation: LocalFederation, tmp_path: Path, identity: str, said: str
) -> None:
    """The CA's signature is not enough: a certificate naming the gateway, another federation's
    node or a node the directory does not hold, or a second certificate for a member (its key
    stolen and a certificate issued for it, say), is refused on every call and stream."""
    key, cert = federation.fed.ca().issue(identity, "node-x", dt.datetime.now(dt.UTC), 1)
    (tmp_path / "x.key").write_bytes(key)
    (tmp_path / "x.pem").write_bytes(cert)
    tls = TlsFiles(cert=tmp_path / "x.pem", key=tmp_path / "x.key", ca=federation.gateway_config.tls.ca)
    async with running(federation, nodes=()) as cluster:
        stub = gateway_stub(cluster, tls)
        stream = stub.Connect()
        calls: list[Awaitable[object]] = [
            stub.Subscribe(gateway_pb2.SubscribeRequest(node_id="amh", link_tokens=[TOKEN]), timeout=5),
            stub.FetchDirectory(gateway_pb2.FetchDirectoryRequest(), timeout=5),
            stream.read(),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call
            assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert said in (raised.value.details() or ""), raised.value.details()
        assert cluster.gateway._index is not None and len(cluster.gateway._index) == 0


async def test_a_stream_opens_with_the_gateways_directory_version_for_a_node_behind_and_refuses_a_garbled_one(
    federation: LocalFederation,
) -> None:
    """A node says, as it dials, which directory it holds; the gateway opens the stream of
    one holding an older one by naming its own, and refuses a version it cannot read."""
    async with running(federation, nodes=()) as cluster:
        stub = gateway_stub(cluster, federation.node_configs["amh"].tls)
        for said in (("x",), ("-1",), ("1" * 21,), ("1", "1")):
            stream = stub.Connect(metadata=[(DIRECTORY_VERSION_KEY, v) for v in said])
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stream.read()
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert DIRECTORY_VERSION_KEY in (raised.value.details() or "")
        stream = stub.Connect(metadata=[(DIRECTORY_VERSION_KEY, "0")])
        first = await stream.read()
        stream.cancel()
    assert isinstance(first, gateway_pb2.GatewayFrame)
    assert first.links_changed.directory_version == cluster.gateway.trust.version == 1


async def test_node_cannot_subscribe_resolve_or_send_as_another(federation: LocalFederation) -> None:
    async with running(federation, nodes=("amh",)) as cluster:
        csc = gateway_stub(cluster, federation.node_configs["csc"].tls)
        calls: list[Awaitable[object]] = [
            csc.Subscribe(gateway_pb2.SubscribeRequest(node_id="amh", link_tokens=[TOKEN]), timeout=5),
            csc.Unsubscribe(gateway_pb2.UnsubscribeRequest(node_id="amh", link_tokens=[TOKEN]), timeout=5),
            csc.ResolveRecipients(gateway_pb2.ResolveRecipientsRequest(node_id="amh", link_tokens=[TOKEN]), timeout=5),
            csc.ListSubscriptions(gateway_pb2.ListSubscriptionsRequest(node_id="amh", limit=10), timeout=5),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call
            assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "authenticated as 'csc'" in (raised.value.details() or "")
        assert cluster.gateway._index is not None and len(cluster.gateway._index) == 0

        # An envelope claiming to come from amh, on csc's own stream.
        directory = cluster.gateway.trust.current(SystemClock().now_ms())
        now = SystemClock().now_ms()
        forged = seal(
            keys=MessageKeys.load(federation.node_configs["csc"].message_keys),
            sender_node="amh",
            recipient_node="school",
            recipient_key=directory.sealing_key("school", now),
            suite=directory.directory.suite,
            message_id=uuid7(now),
            link_tokens=[TOKEN],
            kind=envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE,
            created_at_ms=now,
            share_id="x",
        )
        stream = csc.Connect()
        await stream.write(gateway_pb2.NodeFrame(send=forged.envelope))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stream.read()
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED


Stream = grpc.aio.StreamStreamCall[gateway_pb2.NodeFrame, gateway_pb2.GatewayFrame]


async def _next_frames(
    stream: Stream, count: int, which: Literal["send_ack", "resolved"]
) -> list[gateway_pb2.GatewayFrame]:
    """The next `count` frames of one kind on a node's stream, alone or in batches."""
    found: list[gateway_pb2.GatewayFrame] = []
    async with asyncio.timeout(10):
        while len(found) < count:
            frame = await stream.read()
            assert isinstance(frame, gateway_pb2.GatewayFrame)
            frames = frame.batch.frames if frame.HasField("batch") else [frame]
            found += [f for f in frames if f.HasField(which)]
    return found


async def acks(stream: Stream, count: int) -> list[gateway_pb2.SendAck]:
    return [f.send_ack for f in await _next_frames(stream, count, "send_ack")]


async def test_an_envelope_the_gateway_will_never_route_is_refused_with_its_reason_and_the_stream_goes_on(
    federation: LocalFederation, captured_logs: CapturedLogs
) -> None:
    """To an agency the directory does not hold, to its own sender, to a revoked agency, or
    not addressed as a message must be: each refused on the stream with the reason its
    sender's outbox records, none handed on, and the sender's stream stays open."""
    async with running(federation, nodes=("amh",)) as cluster:
        await revoke(cluster, "school")
        now = SystemClock().now_ms()

        def envelope(
            to: str,
            message_id: str = "",
            tokens: tuple[bytes, ...] = (TOKEN,),
            kind: envelope_pb2.MessageKind.ValueType = envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE,
        ) -> envelope_pb2.Envelope:
            routing = envelope_pb2.RoutingHeader(
                message_id=message_id or uuid7(now),
                sender_node="csc",
                recipient_node=to,
                link_tokens=tokens,
                created_at_ms=now,
                expires_at_ms=now + 60_000,
                kind=kind,
            )
            return envelope_pb2.Envelope(routing=routing.SerializeToString(), ciphertext=b"x" * 64, sealed_key=b"k")

        refusals = [
            (envelope("nobody"), "unknown_recipient"),
            (envelope("csc"), "unknown_recipient"),
            (envelope("school"), "recipient_revoked"),
            (envelope("amh", message_id="not a message id"), "malformed"),
            (envelope("amh", tokens=()), "no_tokens"),
            (envelope("amh", tokens=(b"short",)), "no_tokens"),
            (envelope("amh", tokens=(TOKEN,) * (MAX_TOKENS_PER_MESSAGE + 1)), "no_tokens"),
            (envelope("amh", kind=envelope_pb2.MESSAGE_KIND_REDELIVERY_REQUEST), "malformed"),
        ]
        stream = gateway_stub(cluster, federation.node_configs["csc"].tls).Connect()
        for sent, _ in refusals:
            await stream.write(gateway_pb2.NodeFrame(send=sent))
        for ack, (sent, reason) in zip(await acks(stream, len(refusals)), refusals, strict=True):
            routing = envelope_pb2.RoutingHeader.FromString(sent.routing)
            assert (ack.message_id, ack.recipient_node) == (routing.message_id, routing.recipient_node)
            assert (ack.status, ack.reason) == (gateway_pb2.SEND_STATUS_REJECTED, reason)
            assert (ack.busy_scope, ack.retry_after_ms) == (gateway_pb2.BUSY_SCOPE_UNSPECIFIED, 0)  # never to retry
        envelopes = "linkage_gateway_envelopes_total"
        outcomes = ("rejected", "forwarded", "recipient_offline", "busy")
        counted = [cluster.gateway.metrics.registry.get_sample_value(envelopes, {"outcome": o}) for o in outcomes]
        assert counted == [len(refusals), None, None, None]  # none handed on
        entries = captured_logs.records()
        warned = [(e["level"], e["outcome"]) for e in entries if e["event"] == "envelope.rejected"]
        assert warned == [("warning", reason) for _, reason in refusals]  # for agency IT's alerts
        # The stream still carries what routes, with as many tokens as a header may carry.
        for tokens in ((TOKEN,), (TOKEN,) * MAX_TOKENS_PER_MESSAGE):
            await stream.write(gateway_pb2.NodeFrame(send=envelope("amh", tokens=tokens)))
        assert [a.status for a in await acks(stream, 2)] == [gateway_pb2.SEND_STATUS_FORWARDED] * 2
        await stream.done_writing()


async def test_a_revoked_agency_is_neither_a_recipient_nor_named_as_linked(federation: LocalFederation) -> None:
    """Its subscriptions outlast its revocation at the gateway; they route and tell nothing."""
    async with running(federation, nodes=()) as cluster:
        stubs = {n: gateway_stub(cluster, federation.node_configs[n].tls) for n in ("amh", "csc", "school")}
        for node_id, stub in stubs.items():
            await stub.Subscribe(gateway_pb2.SubscribeRequest(node_id=node_id, link_tokens=[TOKEN]))

        async def linked() -> tuple[list[str], list[str], list[str]]:
            asked = gateway_pb2.ResolveRecipientsRequest(node_id="amh", link_tokens=[TOKEN])
            resolved = await stubs["amh"].ResolveRecipients(asked)
            discovered = await stubs["amh"].DiscoverInvolvement(
                gateway_pb2.DiscoverInvolvementRequest(node_id="amh", link_tokens=[TOKEN])
            )
            (by_token,) = resolved.by_token
            (involved,) = discovered.involvement
            return list(resolved.node_ids), list(by_token.node_ids), list(involved.node_ids)

        assert await linked() == (["csc", "school"],) * 3
        await revoke(cluster, "school")
        assert await linked() == (["csc"],) * 3


async def test_a_look_up_on_the_stream_is_answered_on_it_refusals_included(
    federation: LocalFederation, captured_logs: CapturedLogs
) -> None:
    """An answer says whether the gateway will push what changes it (so the node may keep it);
    a refusal says why, keeps nothing, and the stream goes on."""
    async with running(federation, nodes=()) as cluster:
        for node_id in ("amh", "csc"):
            stub = gateway_stub(cluster, federation.node_configs[node_id].tls)
            await stub.Subscribe(gateway_pb2.SubscribeRequest(node_id=node_id, link_tokens=[TOKEN]))
        stream = gateway_stub(cluster, federation.node_configs["amh"].tls).Connect()
        asked = [
            gateway_pb2.ResolveRecipientsRequest(node_id="amh", link_tokens=[TOKEN], request_id=1),
            gateway_pb2.ResolveRecipientsRequest(node_id="amh", link_tokens=[bytes([4]) * 32], request_id=2),
            gateway_pb2.ResolveRecipientsRequest(node_id="csc", link_tokens=[TOKEN], request_id=3),
        ]
        for request in asked:
            await stream.write(gateway_pb2.NodeFrame(resolve=request))
        answers = [f.resolved for f in await _next_frames(stream, len(asked), "resolved")]
        await stream.done_writing()
        denied = grpc.StatusCode.PERMISSION_DENIED.value[0]
        assert [(a.request_id, list(a.node_ids), a.code, a.changes_pushed) for a in answers] == [
            (1, ["csc"], 0, True),
            (2, [], denied, False),
            (3, [], denied, False),
        ]
        assert "subscribe to every link token" in answers[1].message
        assert answers[2].message == "authenticated as 'amh' but the request names 'csc'"
        entries = captured_logs.records()
        refused = [(e["level"], e["node"]) for e in entries if e["event"] == "resolve.refused"]
        assert refused == [("warning", "amh")] * 2
        assert not [e for e in entries if e["event"] == "resolve.busy"]  # every answer found room


async def test_resolving_a_family_needs_a_subscription_to_it(
    federation: LocalFederation, captured_logs: CapturedLogs
) -> None:
    async with running(federation, nodes=("amh", "csc")) as cluster:
        await open_case(cluster, "csc", stories.think_family_people())
        amh = gateway_stub(cluster, federation.node_configs["amh"].tls)
        subscribed = list(await cluster.nodes["csc"].cases.subscribed_tokens())
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await amh.ResolveRecipients(gateway_pb2.ResolveRecipientsRequest(node_id="amh", link_tokens=subscribed))
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        refused = [(e["level"], e["node"], e["outcome"]) for e in captured_logs.records("resolve.refused")]
        assert refused == [("warning", "amh", "PERMISSION_DENIED")]  # a node fishing for who else is linked


async def test_bad_requests_get_invalid_argument(federation: LocalFederation, captured_logs: CapturedLogs) -> None:
    async with running(federation, nodes=()) as cluster:
        amh = gateway_stub(cluster, federation.node_configs["amh"].tls)
        for tokens in ([], [b"short"], [TOKEN] * 1001):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await amh.Subscribe(gateway_pb2.SubscribeRequest(node_id="amh", link_tokens=tokens))
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "too many link tokens (1001 > 1000)" in (raised.value.details() or "")
        for listing, said in (
            (gateway_pb2.ListSubscriptionsRequest(node_id="amh", limit=1001), "limit is at most 1000"),
            (gateway_pb2.ListSubscriptionsRequest(node_id="amh", limit=5, after_token=b"short"), "32-byte"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await amh.ListSubscriptions(listing)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and said in (raised.value.details() or "")
        # As many as a call may carry go, and a page may be as long.
        most = [n.to_bytes(32, "big") for n in range(1, 1001)]
        assert (await amh.Subscribe(gateway_pb2.SubscribeRequest(node_id="amh", link_tokens=most))).added == 1000
        page = await amh.ListSubscriptions(gateway_pb2.ListSubscriptionsRequest(node_id="amh", limit=1000))
        assert list(page.link_tokens) == most
        entries = captured_logs.records()
        refused = [(e["event"], e["level"], e["outcome"]) for e in entries if e["event"].endswith("refused")]
        assert (
            refused
            == [("subscribe.refused", "warning", "INVALID_ARGUMENT")] * 3
            + [("subscriptions.list_refused", "warning", "INVALID_ARGUMENT")] * 2
        )  # for agency IT's alerts: a node of theirs asking what is never answered


async def test_a_node_lists_its_own_subscriptions_a_page_at_a_time(federation: LocalFederation) -> None:
    """In token order, none of another node's; limit 0 answers the total alone."""
    async with running(federation, nodes=()) as cluster:
        amh = gateway_stub(cluster, federation.node_configs["amh"].tls)
        csc = gateway_stub(cluster, federation.node_configs["csc"].tls)
        mine = sorted(bytes([n]) * 32 for n in range(10, 15))
        await amh.Subscribe(gateway_pb2.SubscribeRequest(node_id="amh", link_tokens=mine))
        await csc.Subscribe(gateway_pb2.SubscribeRequest(node_id="csc", link_tokens=[bytes([12]) * 32, TOKEN]))
        pages, after = [], b""
        while True:
            page = await amh.ListSubscriptions(
                gateway_pb2.ListSubscriptionsRequest(node_id="amh", after_token=after, limit=2)
            )
            assert page.total == 5
            pages.append(list(page.link_tokens))
            if len(page.link_tokens) < 2:
                break
            after = page.link_tokens[-1]
        assert pages == [mine[0:2], mine[2:4], mine[4:]]
        total = await csc.ListSubscriptions(gateway_pb2.ListSubscriptionsRequest(node_id="csc"))
        assert (list(total.link_tokens), total.total) == ([], 2)


async def test_the_witness_moves_on_only_with_a_consistency_proof_and_keeps_each_break(
    federation: LocalFederation,
) -> None:
    """The gateway holds one checkpoint per node. A newer one is taken with an RFC 9162 proof
    that its log extends the held one; without one it is a break: taken too, with the held
    checkpoint kept as evidence. A smaller checkpoint, or a proof from a size the gateway does
    not hold, is refused and nothing kept; nobody lodges in another node's name."""
    async with running(federation, nodes=()) as cluster:
        keys = MessageKeys.load(federation.node_configs["amh"].message_keys)
        amh = gateway_stub(cluster, federation.node_configs["amh"].tls)
        now = SystemClock().now_ms()
        log = [leaf_hash(b"entry %d" % i) for i in range(20)]
        rewritten = log[:7] + [leaf_hash(b"rewritten %d" % i) for i in range(7, 20)]

        def lodge(
            size: int, held: int, leaves: list[bytes] = log, node_id: str = "amh", proof: list[bytes] | None = None
        ) -> gateway_pb2.LodgeCheckpointRequest:
            signed = sign_checkpoint(keys.signing, keys.key_id, node_id, size, root_of(leaves[:size]), now)
            if proof is None:
                proof = consistency_proof(held, leaves[:size]) if 0 < held < size else []
            return gateway_pb2.LodgeCheckpointRequest(checkpoint=signed, from_tree_size=held, consistency_proof=proof)

        async def refused(request: gateway_pb2.LodgeCheckpointRequest, code: grpc.StatusCode, says: str) -> None:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await amh.LodgeCheckpoint(request, timeout=5)
            assert raised.value.code() == code and says in (raised.value.details() or ""), raised.value.details()

        first = await amh.LodgeCheckpoint(lodge(5, 0), timeout=5)
        assert (first.tree_size, first.diverged) == (5, False)
        assert not (await amh.LodgeCheckpoint(lodge(5, 5), timeout=5)).diverged  # the same again
        await refused(lodge(4, 5), grpc.StatusCode.FAILED_PRECONDITION, "smaller than the one held (5)")
        await refused(
            lodge(9, 0),
            grpc.StatusCode.FAILED_PRECONDITION,
            "holds a checkpoint of 5 entries, and this proof is from 0",
        )
        await refused(lodge(9, 5, proof=[b"short"]), grpc.StatusCode.INVALID_ARGUMENT, "hashes of 32 bytes")
        await refused(lodge(9, 0, proof=[bytes(32)]), grpc.StatusCode.INVALID_ARGUMENT, "takes no proof")
        await refused(lodge(0, 5), grpc.StatusCode.INVALID_ARGUMENT, "empty log")
        csc = gateway_stub(cluster, federation.node_configs["csc"].tls)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await csc.LodgeCheckpoint(lodge(9, 5), timeout=5)
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED

        unsigned = lodge(9, 5)  # the witness cosigns only what the node's own key signed
        unsigned.checkpoint.signature = keys.signing.sign(b"something else")
        await refused(unsigned, grpc.StatusCode.INVALID_ARGUMENT, "checkpoint signature does not verify")

        grown = await amh.LodgeCheckpoint(lodge(9, 5), timeout=5)
        assert (grown.tree_size, grown.diverged) == (9, False)
        # From 9, a log whose entries 8 onwards were rewritten: its own proof cannot join the two.
        broken = await amh.LodgeCheckpoint(lodge(12, 9, leaves=rewritten), timeout=5)
        assert (broken.tree_size, broken.diverged) == (12, True)
        assert not (await amh.LodgeCheckpoint(lodge(20, 12, leaves=rewritten), timeout=5)).diverged
        lodged = {
            outcome: cluster.gateway.metrics.registry.get_sample_value(
                "linkage_gateway_checkpoints_total", {"outcome": outcome}
            )
            for outcome in ("ok", "diverged")
        }
        assert lodged == {"ok": 4, "diverged": 1}  # what an operator alerts on

        held = await amh.GetCheckpoints(gateway_pb2.GetCheckpointsRequest(node_id="amh"), timeout=5)
        directory = cluster.gateway.trust.current(now)
        latest = open_checkpoint(held.latest, directory)
        assert (latest.tree_size, latest.root) == (20, root_of(rewritten))
        assert [(c.tree_size, c.root) for c in (open_checkpoint(b, directory) for b in held.breaks)] == [
            (9, root_of(log[:9]))
        ]
        with sqlite3.connect(federation.gateway_config.data_dir / "gateway.sqlite") as db:
            assert db.execute("SELECT COUNT(*) FROM witnessed").fetchone()[0] == 1  # one row, however many lodged


async def test_a_gateway_that_kept_every_checkpoint_keeps_the_largest_and_each_fork(tmp_path: Path) -> None:
    """Upgrading a gateway whose witness kept every checkpoint lodged: each node's largest is
    the one held from then on, checkpoints at a size lodged with two roots are kept as breaks,
    and the old table is gone."""
    path = tmp_path / "gateway.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE checkpoints(node_id TEXT NOT NULL, tree_size INTEGER NOT NULL, root BLOB NOT NULL, "
            "at_ms INTEGER NOT NULL, signed BLOB NOT NULL, PRIMARY KEY (node_id, tree_size, root)) WITHOUT ROWID"
        )
        rows = [("amh", 5, b"a5"), ("amh", 7, b"a7"), ("amh", 7, b"b7"), ("amh", 9, b"a9"), ("csc", 3, b"c3")]
        db.executemany(
            "INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?)", [(n, s, r, s, b"signed " + r) for n, s, r in rows]
        )
    gateway = await GatewayDb.open(path)
    try:
        assert await gateway.read("SELECT node_id, tree_size, root FROM witnessed ORDER BY node_id") == [
            ("amh", 9, b"a9"),
            ("csc", 3, b"c3"),
        ]
        assert await gateway.read("SELECT node_id, seq, tree_size, root FROM witness_breaks ORDER BY node_id, seq") == [
            ("amh", 1, 7, b"a7"),
            ("amh", 2, 7, b"b7"),
        ]
        assert not await gateway.read("SELECT 1 FROM sqlite_master WHERE name = 'checkpoints'")
    finally:
        await gateway.close()


async def test_a_gateway_from_before_cosigning_keeps_what_it_witnessed(tmp_path: Path) -> None:
    """Its witness table gains the cosignature column; what it held stays, with no cosignature
    until the node's next lodge."""
    path = tmp_path / "gateway.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE witnessed(node_id TEXT PRIMARY KEY, tree_size INTEGER NOT NULL, root BLOB NOT NULL, "
            "signed BLOB NOT NULL) WITHOUT ROWID"
        )
        held = audit_pb2.SignedCheckpoint(checkpoint=b"body", signature=b"sig")
        db.execute("INSERT INTO witnessed VALUES ('amh', 5, ?, ?)", (b"root", held.SerializeToString()))
    gateway = await GatewayDb.open(path)
    try:
        kept = await Witness(gateway, SystemClock(), "gateway").held("amh")
        assert (kept.latest, kept.cosignature, kept.breaks) == (held, None, [])
    finally:
        await gateway.close()


async def test_canary_in_a_summary_never_reaches_gateway_files_or_any_log(federation: LocalFederation) -> None:
    captured = io.StringIO()
    logs.configure("debug", stream=captured)
    canary = "CANARY-4f1d0c-personal-data"
    try:
        async with running(federation) as cluster:
            shared = await share_think_family(cluster, headline=canary, case_ref=canary)
            assert len(shared.recipients) == 2
            await wait_delivered(cluster.nodes["amh"], 2)
            received = await summaries(cluster, "csc")
            assert received[0].summary.headline == canary  # it did travel, sealed
    finally:
        logs.configure("info")
    secrets = [canary, stories.PARENT_NHS, stories.CHILD_NHS, PRACTITIONER.name]
    text = captured.getvalue()
    assert "envelope.forwarded" in text  # the capture really holds the gateway's events
    for secret in secrets:
        assert secret not in text
    for path in federation.gateway_config.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in data, f"{secret} found in {path}"


async def test_expired_certificate_is_refused(federation: LocalFederation, tmp_path: Path) -> None:
    ca = federation.fed.ca()
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    key, cert = ca.issue(spiffe_id(FEDERATION_ID, "node", "amh"), "node-amh", past, 1)  # expired yesterday
    (tmp_path / "old.key").write_bytes(key)
    (tmp_path / "old.pem").write_bytes(cert)
    tls = TlsFiles(cert=tmp_path / "old.pem", key=tmp_path / "old.key", ca=federation.gateway_config.tls.ca)
    async with running(federation, nodes=()) as cluster:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await gateway_stub(cluster, tls).Subscribe(
                gateway_pb2.SubscribeRequest(node_id="amh", link_tokens=[TOKEN]), timeout=5
            )
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
