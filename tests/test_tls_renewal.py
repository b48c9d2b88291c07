"""TLS certificates are renewed without a restart (certificates last 90 days): `federation
renew-tls` certifies the member's own key again; a running node moves to the new
certificate once its directory pins it, the gateway accepting the one it renewed
meanwhile, and nothing in flight is lost; a running gateway presents its renewed
certificate from its next handshake. What is not a usable certificate is never taken, and
a stream does not outlive its certificate."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import re
import shutil
import ssl
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from gateway.authz import Authoriser, Denied
from gateway.server import GatewayServer
from linkage.clock import DAY_MS, ManualClock, SystemClock
from linkage.config import ConfigError, load_directory_key
from linkage.directory import TrustedDirectory
from linkage.federation import (
    CERT_VALIDITY_DAYS,
    FederationError,
    publish_directory,
    renew_certificate,
    revoke_node,
)
from linkage.pki import cert_fingerprint, certificate_facts, spiffe_id
from linkage.renewal import CertificateWatch, ServerCertificate
from linkage.transport import Peer
from linkage.v1 import directory_pb2
from node import link as node_link
from node.server import NodeServer
from node.store import db as db_module
from tests.file_crashes import Crash, crash_at
from tests.harness import (
    FEDERATION_ID,
    CapturedLogs,
    Cluster,
    LocalFederation,
    audit_events,
    linkage,
    looks_by_hand,
    make_federation,
    running,
    wait_delivered,
)
from tests.test_delivery import family_assessment, inbox, share
from tests.test_metrics import scrape


def _entry(federation: LocalFederation, node_id: str) -> directory_pb2.NodeEntry:
    return directory_pb2.NodeEntry.FromString((federation.fed.entries / f"{node_id}.pb").read_bytes())


async def _publish(cluster: Cluster) -> None:
    """A new directory at the gateway, which each node fetches at its next look (by hand)."""
    looks_by_hand(*cluster.nodes.values())
    publish_directory(
        cluster.federation.fed, SystemClock().now_ms(), copy_to=(cluster.federation.gateway_config.data_dir,)
    )
    await cluster.gateway.check_directory()


async def test_a_node_moves_to_its_renewed_certificate_without_a_restart_and_loses_nothing(
    tmp_path: Path, captured_logs: CapturedLogs, monkeypatch: pytest.MonkeyPatch
) -> None:
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh", "csc"))
    cert_file = federation.node_configs["amh"].tls.cert
    old = cert_fingerprint(cert_file.read_bytes())
    key_before = federation.node_configs["amh"].tls.key.read_bytes()
    async with running(federation) as cluster:
        amh = cluster.nodes["amh"]
        assert amh.link is not None
        assessment_id = await family_assessment(cluster)
        await share(cluster, assessment_id)

        _, new = renew_certificate(federation.fed, cert_file, SystemClock().now_ms())
        assert federation.node_configs["amh"].tls.key.read_bytes() == key_before  # its own key, certified again
        entry = _entry(federation, "amh")
        assert (entry.tls_cert_sha256, entry.previous_tls_cert_sha256) == (new, old)

        await amh.reload()  # the gateway would refuse the new one: the directory does not pin it yet
        assert amh.certificate.fingerprint == old
        assert [e["fingerprint"] for e in captured_logs.records("tls.renewal_waiting")] == [new.hex()]

        await _publish(cluster)
        await share(cluster, assessment_id)  # the old certificate, pinned as the renewed one, still serves
        async with asyncio.timeout(30):
            await wait_delivered(amh, 2)

        # Shares in flight while the node changes over, and after.
        sharing = asyncio.gather(*(share(cluster, assessment_id) for _ in range(20)))
        monkeypatch.setattr(db_module, "INLINE_COMMIT_S", 0.0)  # each COMMIT in its thread, as on a slow disk
        # The old stream ends because the node ends its side, not by the timer.
        monkeypatch.setattr(node_link, "STREAM_END_GRACE_S", 3600.0)
        dialled = amh.link._channel
        await asyncio.gather(amh.reload(), amh.reload())  # a SIGHUP during the periodic look: taken once
        assert amh.certificate.fingerprint == new
        await sharing
        async with asyncio.timeout(15):
            await amh.link.connected.wait()
            while (state := dialled.get_state()) is not grpc.ChannelConnectivity.SHUTDOWN:  # closed once done with
                await dialled.wait_for_state_change(state)
        assert [e["renewed"] for e in captured_logs.records("gateway.stream_ended")] == [True]

        # The gateway stops accepting the old certificate: only a node now on the new one gets through.
        entry = _entry(federation, "amh")
        entry.previous_tls_cert_sha256 = b""
        (federation.fed.entries / "amh.pb").write_bytes(entry.SerializeToString())
        await _publish(cluster)
        await share(cluster, assessment_id)
        async with asyncio.timeout(30):
            await wait_delivered(amh, 23)
        received = await inbox(cluster, "csc")
        assert len(received) == len(set(received)) == 23

        # A stream the gateway ends later is no renewal's: the node redials after its back-off.
        version = amh.outbox.version
        session = cluster.gateway.sessions.get("amh")
        assert session is not None
        session.close()
        async with asyncio.timeout(15):
            while amh.link.connected.is_set():  # the outbox hears the stream end
                version = await amh.outbox.wait_change(version)
            await amh.link.connected.wait()
        assert [e["renewed"] for e in captured_logs.records("gateway.stream_ended")] == [True, False]
        renewed = [e for e in await audit_events(amh) if e["event"] == "tls.certificate_renewed"]
        assert [e["detail"]["fingerprint"] for e in renewed] == [new.hex()]
        assert not captured_logs.records("stream.refused")


async def test_the_gateway_shows_a_node_still_on_the_certificate_its_renewal_replaced(
    tmp_path: Path, captured_logs: CapturedLogs
) -> None:
    """A renewal made where the CA is (`--out`) and not yet copied to the node: the node
    keeps the certificate the renewal replaced, which the gateway still accepts, and the
    gateway's metric and log say so, as the operator must know before retiring a CA."""
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh", "csc"))
    federation.gateway_config = dataclasses.replace(federation.gateway_config, metrics_listen="127.0.0.1:0")
    cert_file = federation.node_configs["amh"].tls.cert
    renewed = tmp_path / "amh-renewed.pem"
    async with running(federation) as cluster:
        port = cluster.gateway.metrics_endpoint.port

        def on_replaced() -> float:
            return scrape(port)["linkage_gateway_nodes_on_replaced_certificate"]

        assessment_id = await family_assessment(cluster)
        renew_certificate(federation.fed, cert_file, SystemClock().now_ms(), out=renewed)
        assert await asyncio.to_thread(on_replaced) == 0  # the directory does not pin the new one yet
        await _publish(cluster)
        assert await asyncio.to_thread(on_replaced) == 1
        await cluster.stop_node("amh")  # and comes back, still with the old file
        amh = await cluster.start_node("amh")
        await share(cluster, assessment_id)  # through the gateway: it has taken the new stream
        async with asyncio.timeout(30):
            await wait_delivered(amh, 1)
        assert [e["node"] for e in captured_logs.records("tls.peer_on_replaced_certificate")] == ["amh"]
        assert await asyncio.to_thread(on_replaced) == 1

        shutil.copy(renewed, cert_file)  # installed: the node moves over at its next look
        await amh.reload()
        assert amh.certificate.fingerprint == cert_fingerprint(renewed.read_bytes())
        await share(cluster, assessment_id)
        async with asyncio.timeout(30):
            await wait_delivered(amh, 2)
        assert await asyncio.to_thread(on_replaced) == 0
        assert len(captured_logs.records("tls.peer_on_replaced_certificate")) == 1


async def test_a_stream_the_gateway_does_not_close_is_cancelled_and_the_node_moves_over_all_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, captured_logs: CapturedLogs
) -> None:
    monkeypatch.setattr(node_link, "_end_writing", lambda call: asyncio.sleep(0))  # the gateway never hears it
    monkeypatch.setattr(node_link, "STREAM_END_GRACE_S", 0.2)
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh", "csc"))
    async with running(federation) as cluster:
        amh = cluster.nodes["amh"]
        assert amh.link is not None
        assessment_id = await family_assessment(cluster)
        renew_certificate(federation.fed, federation.node_configs["amh"].tls.cert, SystemClock().now_ms())
        await _publish(cluster)
        await amh.reload()
        async with asyncio.timeout(15):
            await amh.link.connected.wait()
        await share(cluster, assessment_id)
        async with asyncio.timeout(15):
            await wait_delivered(amh, 1)
    assert len(captured_logs.records("gateway.stream_cancelled")) == 1


async def test_a_renewal_the_store_cannot_record_waits_and_is_taken_once_it_can(
    tmp_path: Path, captured_logs: CapturedLogs
) -> None:
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh",))
    async with running(federation) as cluster:
        amh = cluster.nodes["amh"]
        assert amh.store is not None
        old = amh.certificate.fingerprint
        _, new = renew_certificate(federation.fed, federation.node_configs["amh"].tls.cert, SystemClock().now_ms())
        await _publish(cluster)
        await amh.check_directory()  # the directory that pins it taken, and audited
        amh.store.db.execute("PRAGMA query_only = ON")  # as on a disk remounted read-only
        try:
            await amh.reload()
        finally:
            amh.store.db.execute("PRAGMA query_only = OFF")
        assert amh.certificate.fingerprint == old  # not taken unaudited
        assert [e["error"] for e in captured_logs.records("tls.renewal_failed")] == ["SQLITE_READONLY"]
        await amh.reload()
        assert amh.certificate.fingerprint == new


async def test_a_gateway_presents_its_renewed_certificate_to_new_connections_without_a_restart(
    tmp_path: Path,
) -> None:
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh", "csc"))
    gateway_cert = federation.gateway_config.tls.cert
    async with running(federation) as cluster:
        before = await _served_certificate(cluster)
        assert before == cert_fingerprint(gateway_cert.read_bytes())

        identity, new = renew_certificate(federation.fed, gateway_cert, SystemClock().now_ms())
        assert identity == spiffe_id(FEDERATION_ID, "gateway", "gateway")
        assert await _served_certificate(cluster) == new  # the next handshake: no restart, no signal
        assert cluster.gateway.certificate.watch.fingerprint == new  # what its metric and warnings follow

        # Streams opened before go on, and nodes dialling again are served the new one.
        assessment_id = await family_assessment(cluster)
        await share(cluster, assessment_id)
        await cluster.stop_node("csc")
        await cluster.start_node("csc")
        await share(cluster, assessment_id)
        await wait_delivered(cluster.nodes["amh"], 2)


async def _served_certificate(cluster: Cluster) -> bytes:
    """The fingerprint of the certificate the gateway presents to a node dialling it now."""
    tls = cluster.federation.node_configs["amh"].tls
    context = ssl.create_default_context(cafile=tls.ca)
    context.load_cert_chain(tls.cert, tls.key)
    context.set_alpn_protocols(["h2"])
    _, writer = await asyncio.open_connection("127.0.0.1", cluster.gateway.port, ssl=context, server_hostname="gateway")
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.transport.abort()  # the server's HTTP/2 greeting is of no interest
    return hashlib.sha256(der).digest()


@pytest.mark.parametrize(
    ("replacement", "problem"),
    [
        ("garbage", "is not a PEM certificate"),
        ("another node's", "does not name spiffe://test.linkage.example/node/amh"),
        ("a new key's", "the key is not the certificate's"),
        ("an encrypted key", "the key file is not an unencrypted PEM private key"),
        ("a foreign CA's", "not issued by the federation CA"),
        ("lapsed", "not now"),
        ("a folder", "node.key: Is a directory"),
        ("gone", "node.pem: No such file or directory"),
    ],
)
def test_files_that_are_not_a_usable_certificate_are_refused_and_the_one_in_use_kept(
    tmp_path: Path, captured_logs: CapturedLogs, replacement: str, problem: str
) -> None:
    clock = ManualClock()
    federation = make_federation(tmp_path, clock, nodes=("amh", "csc"))
    tls = federation.node_configs["amh"].tls
    watch = CertificateWatch(tls, spiffe_id(FEDERATION_ID, "node", "amh"), clock)
    in_use = watch.fingerprint
    if replacement == "garbage":
        tls.cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot one\n")
    elif replacement == "another node's":
        shutil.copy(federation.node_configs["csc"].tls.cert, tls.cert)
        shutil.copy(federation.node_configs["csc"].tls.key, tls.key)
    elif replacement == "a new key's":
        now = dt.datetime.fromtimestamp(clock.now_ms() / 1000, tz=dt.UTC)
        _, cert = federation.fed.ca().issue(spiffe_id(FEDERATION_ID, "node", "amh"), "node-amh", now, 90)
        tls.cert.write_bytes(cert)
    elif replacement == "an encrypted key":
        key = serialization.load_pem_private_key(tls.key.read_bytes(), password=None)
        tls.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"a passphrase"),
            )
        )
    elif replacement == "a foreign CA's":
        other = make_federation(tmp_path / "other", clock, nodes=("amh",))
        shutil.copy(other.node_configs["amh"].tls.cert, tls.cert)
        shutil.copy(other.node_configs["amh"].tls.key, tls.key)
    elif replacement == "a folder":
        tls.key.unlink()
        tls.key.mkdir()
    elif replacement == "gone":
        tls.cert.unlink()
    else:
        renew_certificate(federation.fed, tls.cert, clock.now_ms())
        clock.advance(CERT_VALIDITY_DAYS * DAY_MS + DAY_MS)
    assert watch.renewal() is None and watch.renewal() is None  # asked twice: said once
    assert watch.fingerprint == in_use
    refused = captured_logs.records("tls.renewal_refused")
    assert len(refused) == 1 and problem in str(refused[0]["problem"])


def test_files_written_again_as_they_were_are_no_renewal_and_nothing_is_said(
    tmp_path: Path, captured_logs: CapturedLogs
) -> None:
    """A tool that rewrites the files unchanged (configuration management, a restore) changes
    nothing: no "renewed" line, and a lapsing certificate's daily warning is not reset."""
    clock = ManualClock()
    federation = make_federation(tmp_path, clock, nodes=("amh",))
    tls = federation.node_configs["amh"].tls
    watch = CertificateWatch(tls, spiffe_id(FEDERATION_ID, "node", "amh"), clock)
    server = ServerCertificate(watch)
    clock.advance((CERT_VALIDITY_DAYS - 20) * DAY_MS)
    watch.warn_if_lapsing()
    before = tls.version()
    for path in (tls.cert, tls.key):
        content = path.read_bytes()
        path.unlink()
        path.write_bytes(content)
    assert tls.version() != before
    server.check()
    watch.warn_if_lapsing()
    assert len(captured_logs.records("tls.certificate_lapsing")) == 1
    assert not captured_logs.records("tls.renewal_refused") and not captured_logs.records("tls.renewed")
    assert watch.renewal() is None  # and the new version was taken as seen


def test_the_gateway_accepts_the_pinned_and_the_renewed_certificate_and_no_certificate_past_its_end(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    federation = make_federation(tmp_path, clock, nodes=("amh", "csc"), validity_days=120)
    cert_file = federation.node_configs["amh"].tls.cert
    old_pem = cert_file.read_bytes()
    renew_certificate(federation.fed, cert_file, clock.now_ms() + 30 * DAY_MS)  # as advised, a month before its end
    publish_directory(federation.fed, clock.now_ms(), 120)
    trust = TrustedDirectory(FEDERATION_ID, load_directory_key(federation.fed.root / "directory.pub"))
    trust.accept(directory_pb2.SignedDirectory.FromString(federation.fed.directory_path.read_bytes()), clock.now_ms())
    authz = Authoriser(trust, clock)

    def peer(pem: bytes) -> Peer:
        fingerprint, lapses = certificate_facts(pem)
        return Peer(spiffe_id("x", "node", "amh"), fingerprint, "TLSv1.3", lapses)

    authz.recheck("amh", peer(cert_file.read_bytes()))
    authz.recheck("amh", peer(old_pem))
    with pytest.raises(Denied) as other:
        authz.recheck("amh", peer(federation.node_configs["csc"].tls.cert.read_bytes()))
    assert other.value.code == grpc.StatusCode.PERMISSION_DENIED

    clock.advance(certificate_facts(old_pem)[1] - clock.now_ms())  # X.509's notAfter is its last moment
    authz.recheck("amh", peer(old_pem))
    clock.advance(1)  # the old one has lapsed; its open stream ends at its next frame
    with pytest.raises(Denied) as lapsed:
        authz.recheck("amh", peer(old_pem))
    assert lapsed.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert "lapsed at" in lapsed.value.message and "renew-tls" in lapsed.value.message
    authz.recheck("amh", peer(cert_file.read_bytes()))


async def test_renew_tls_on_the_command_line_and_what_it_refuses(tmp_path: Path) -> None:
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh", "csc"))
    fed_dir = str(federation.fed.root)
    cert_file = federation.node_configs["amh"].tls.cert
    old_pem = cert_file.read_bytes()

    code, out, err = await linkage("federation", "renew-tls", "--dir", fed_dir, "--cert", str(cert_file))
    assert code == 0, err
    assert "renewed the certificate of spiffe://test.linkage.example/node/amh" in out and "publish" in out
    assert _entry(federation, "amh").tls_cert_sha256 == cert_fingerprint(cert_file.read_bytes())

    stale = tmp_path / "stale.pem"
    stale.write_bytes(old_pem)
    cert_file_now = cert_file.read_bytes()
    renew_certificate(federation.fed, cert_file, SystemClock().now_ms())  # the old one is no longer pinned
    code, _, err = await linkage("federation", "renew-tls", "--dir", fed_dir, "--cert", str(stale))
    assert code != 0 and "is not the certificate the directory pins for 'amh'" in err

    other = make_federation(tmp_path / "other", SystemClock(), nodes=("amh",))
    code, _, err = await linkage(
        "federation", "renew-tls", "--dir", fed_dir, "--cert", str(other.node_configs["amh"].tls.cert)
    )
    assert code != 0 and "not issued by this federation's CA" in err

    revoke_node(federation.fed, "csc")
    code, _, err = await linkage(
        "federation", "renew-tls", "--dir", fed_dir, "--cert", str(federation.node_configs["csc"].tls.cert)
    )
    assert code != 0 and "revoked" in err
    assert cert_file_now != cert_file.read_bytes()

    # What is not a member's certificate, or names a member never enrolled, is refused saying so.
    now = dt.datetime.now(dt.UTC)
    not_pem, ghost, stray_gateway = tmp_path / "notes.txt", tmp_path / "ghost.pem", tmp_path / "gw2.pem"
    not_pem.write_text("not a certificate")
    ghost.write_bytes(federation.fed.ca().issue(spiffe_id(FEDERATION_ID, "node", "ghost"), "node-ghost", now, 90)[1])
    stray_gateway.write_bytes(federation.fed.ca().issue(spiffe_id(FEDERATION_ID, "gateway", "gw2"), "gw2", now, 90)[1])
    for given, said in (
        (tmp_path / "never-written.pem", "cannot read"),
        (not_pem, "is not a PEM certificate"),
        (federation.node_configs["amh"].tls.ca, f"is not a certificate of a member of federation '{FEDERATION_ID}'"),
        (ghost, "node 'ghost' is not enrolled"),
        (stray_gateway, "gateway 'gw2' is not enrolled"),
    ):
        with pytest.raises(FederationError, match=re.escape(said)):
            renew_certificate(federation.fed, given, SystemClock().now_ms())


def test_a_renewal_cut_short_at_any_point_leaves_the_node_a_pinned_certificate_and_running_it_again_finishes(
    tmp_path: Path,
) -> None:
    step = 0
    while True:
        step += 1
        federation = make_federation(tmp_path / str(step), SystemClock(), nodes=("amh",))
        cert_file = federation.node_configs["amh"].tls.cert
        try:
            with crash_at(step):
                renew_certificate(federation.fed, cert_file, SystemClock().now_ms())
            finished = True
        except Crash:
            finished = False
        entry = _entry(federation, "amh")
        in_use = cert_fingerprint(cert_file.read_bytes())
        assert in_use in (entry.tls_cert_sha256, entry.previous_tls_cert_sha256)  # the node still gets through
        if finished:
            break
        _, new = renew_certificate(federation.fed, cert_file, SystemClock().now_ms())
        assert cert_fingerprint(cert_file.read_bytes()) == new == _entry(federation, "amh").tls_cert_sha256
    assert step > 2  # it crashed somewhere before it finished


def test_a_certificate_near_its_end_is_warned_of_daily_and_shown_as_a_metric(
    tmp_path: Path, captured_logs: CapturedLogs
) -> None:
    clock = ManualClock()
    federation = make_federation(tmp_path, clock, nodes=("amh",))
    watch = CertificateWatch(federation.node_configs["amh"].tls, spiffe_id(FEDERATION_ID, "node", "amh"), clock)
    watch.warn_if_lapsing()
    assert not captured_logs.records("tls.certificate_lapsing")
    assert watch.expires_in_s() == pytest.approx(CERT_VALIDITY_DAYS * 86_400, abs=3_600)
    clock.advance((CERT_VALIDITY_DAYS - 20) * DAY_MS)
    for _ in range(3):
        watch.warn_if_lapsing()
        clock.advance(DAY_MS // 3)
    watch.warn_if_lapsing()  # a day after the first
    warnings = captured_logs.records("tls.certificate_lapsing")
    assert [w["days_left"] for w in warnings] == [20, 19]
    assert all(w["remedy"] == "linkage federation renew-tls" for w in warnings)


async def test_a_gateway_will_not_serve_with_a_certificate_it_cannot_use_and_a_node_says_so(
    tmp_path: Path, captured_logs: CapturedLogs
) -> None:
    """A gateway that cannot present its certificate can serve nobody: it stops at once and
    says why. A node still serves its case systems what it holds, and says why the gateway
    will refuse it."""
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh", "csc"))
    gateway_tls, amh_tls = federation.gateway_config.tls, federation.node_configs["amh"].tls
    shutil.copy(amh_tls.cert, gateway_tls.cert)
    shutil.copy(amh_tls.key, gateway_tls.key)
    with pytest.raises(ConfigError) as refused:
        await GatewayServer(federation.gateway_config).start()
    assert str(refused.value) == (
        "[tls] cannot serve with the gateway's certificate and key: "
        "the certificate does not name spiffe://test.linkage.example/gateway/gateway"
    )
    assert not (federation.gateway_config.data_dir / "gateway.sqlite").exists()

    shutil.copy(federation.node_configs["csc"].tls.cert, amh_tls.cert)
    node = NodeServer(federation.node_configs["amh"])
    await node.start()
    await node.stop(grace=0)
    (unusable,) = captured_logs.records("tls.certificate_unusable")
    assert unusable["problem"] == "the key is not the certificate's (were both files replaced?)"
