"""mTLS identity at the gateway: no certificate, no entry; nobody acts as another node."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Awaitable
from pathlib import Path

import grpc
import pytest

from linkage import logs, stories
from linkage.auditlog import open_checkpoint, sign_checkpoint
from linkage.cli.audit import fetch_checkpoints
from linkage.clock import SystemClock
from linkage.ids import uuid7
from linkage.keys import MessageKeys
from linkage.pki import CertificateAuthority, spiffe_id
from linkage.transport import TlsFiles, secure_channel
from linkage.v1 import audit_pb2, envelope_pb2, gateway_pb2, gateway_pb2_grpc
from tests.crypto_fixtures import seal
from tests.harness import FEDERATION_ID, PRACTITIONER, Cluster, LocalFederation, running, wait_delivered
from tests.test_federation import open_case, share_think_family, summaries

TOKEN = bytes([3]) * 32


def gateway_stub(cluster: Cluster, tls: TlsFiles) -> gateway_pb2_grpc.GatewayAsyncStub:
    channel = secure_channel(f"127.0.0.1:{cluster.gateway.port}", tls, "gateway")
    cluster._channels.append(channel)
    return gateway_pb2_grpc.GatewayStub(channel)


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
        for channel in (no_cert, plaintext):
            cluster._channels.append(channel)
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


async def test_node_cannot_subscribe_resolve_or_send_as_another(federation: LocalFederation) -> None:
    async with running(federation, nodes=("amh",)) as cluster:
        csc = gateway_stub(cluster, federation.node_configs["csc"].tls)
        calls: list[Awaitable[object]] = [
            csc.Subscribe(gateway_pb2.SubscribeRequest(node_id="amh", link_tokens=[TOKEN]), timeout=5),
            csc.Unsubscribe(gateway_pb2.UnsubscribeRequest(node_id="amh", link_tokens=[TOKEN]), timeout=5),
            csc.ResolveRecipients(gateway_pb2.ResolveRecipientsRequest(node_id="amh", link_tokens=[TOKEN]), timeout=5),
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


async def test_resolving_a_family_needs_a_subscription_to_it(federation: LocalFederation) -> None:
    async with running(federation, nodes=("amh", "csc")) as cluster:
        await open_case(cluster, "csc", stories.think_family_people())
        amh = gateway_stub(cluster, federation.node_configs["amh"].tls)
        subscribed = list(await cluster.nodes["csc"].cases.subscribed_tokens())
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await amh.ResolveRecipients(gateway_pb2.ResolveRecipientsRequest(node_id="amh", link_tokens=subscribed))
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_bad_requests_get_invalid_argument(federation: LocalFederation) -> None:
    async with running(federation, nodes=()) as cluster:
        amh = gateway_stub(cluster, federation.node_configs["amh"].tls)
        for tokens in ([], [b"short"], [TOKEN] * 1001):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await amh.Subscribe(gateway_pb2.SubscribeRequest(node_id="amh", link_tokens=tokens))
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_witness_refuses_a_checkpoint_of_a_shorter_log_and_one_for_another_node(
    federation: LocalFederation,
) -> None:
    """An audit log only grows: once the gateway holds a checkpoint, a smaller one from the same
    node is refused and not kept; nobody lodges a checkpoint in another node's name."""
    async with running(federation, nodes=()) as cluster:
        keys = MessageKeys.load(federation.node_configs["amh"].message_keys)
        amh = gateway_stub(cluster, federation.node_configs["amh"].tls)
        now = SystemClock().now_ms()

        def checkpoint(size: int, node_id: str = "amh") -> audit_pb2.SignedCheckpoint:
            return sign_checkpoint(keys.signing, keys.key_id, node_id, size, bytes([size]) * 32, now)

        assert (await amh.LodgeCheckpoint(checkpoint(5), timeout=5)).lodged == 1
        assert (await amh.LodgeCheckpoint(checkpoint(5), timeout=5)).lodged == 1  # the same again: kept once
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await amh.LodgeCheckpoint(checkpoint(4), timeout=5)
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "smaller than one already lodged (5)" in (raised.value.details() or "")
        csc = gateway_stub(cluster, federation.node_configs["csc"].tls)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await csc.LodgeCheckpoint(checkpoint(9), timeout=5)
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (await amh.LodgeCheckpoint(checkpoint(7), timeout=5)).lodged == 2
        held = await amh.GetCheckpoints(gateway_pb2.GetCheckpointsRequest(node_id="amh"), timeout=5)
        assert [open_checkpoint(c, cluster.gateway.trust.current(now)).tree_size for c in held.checkpoints] == [5, 7]


async def test_a_nodes_checkpoints_come_back_a_page_at_a_time_forks_included(federation: LocalFederation) -> None:
    """However many a node has lodged, each answer fits in a message and the pages together
    hold every one, in order; two checkpoints of the same size (a fork: evidence) both come
    back even when a page ends between them."""
    async with running(federation, nodes=()) as cluster:
        keys = MessageKeys.load(federation.node_configs["amh"].message_keys)
        amh = gateway_stub(cluster, federation.node_configs["amh"].tls)
        now = SystemClock().now_ms()
        lodged = [(size, bytes([size]) * 32) for size in range(1, 8)] + [(7, bytes([99]) * 32)]
        for size, root in lodged:
            await amh.LodgeCheckpoint(sign_checkpoint(keys.signing, keys.key_id, "amh", size, root, now), timeout=5)

        first = await amh.GetCheckpoints(gateway_pb2.GetCheckpointsRequest(node_id="amh", limit=3), timeout=5)
        assert len(first.checkpoints) == 3 and first.more
        directory = cluster.gateway.trust.current(now)
        for page in (3, 7, 0):  # 7: a page ends between the two of size 7; 0: the gateway's page, all at once
            held = [open_checkpoint(c, directory) for c in await fetch_checkpoints(amh, "amh", page=page)]
            assert [(c.tree_size, c.root) for c in held] == sorted(lodged), page

        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await amh.GetCheckpoints(gateway_pb2.GetCheckpointsRequest(node_id="amh", after_root=b"x"), timeout=5)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "after_root must be empty or a 32-byte root" in (raised.value.details() or "")


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
