"""The federation CA is replaced without a restart or a hand-copied file (`federation
rotate-ca`): the old CA certifies the new one and is destroyed; every directory names both
as trusted until the old one is retired; certificates issued meanwhile carry the
cross-certificate, so a member that still trusts only the old CA (away all along) accepts
them; retiring is refused while any member's certificate is the old CA's."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from linkage import logs
from linkage.clock import SystemClock
from linkage.federation import Federation, FederationError, publish_directory, renew_certificate, retire_ca, rotate_ca
from linkage.pki import CertificateAuthority, chains_to
from linkage.renewal import new_roots, write_roots
from linkage.transport import TlsFiles
from linkage.v1 import directory_pb2
from node.server import NodeServer
from tests.file_crashes import Crash, crash_at
from tests.harness import (
    CapturedLogs,
    Cluster,
    LocalFederation,
    LogWatch,
    audit_events,
    linkage,
    looks_by_hand,
    make_federation,
    running,
    store_refuses,
    wait_delivered,
)
from tests.test_delivery import family_assessment, share


def _roots(ca_file: Path) -> set[x509.Certificate]:
    return set(x509.load_pem_x509_certificates(ca_file.read_bytes()))


@contextmanager
def _unwritable(ca_file: Path) -> Iterator[None]:
    """While inside, `ca_file` cannot be replaced: a folder stands where its new version is
    written before it is renamed over the old (linkage.files), which stays readable."""
    blocker = ca_file.with_name(f".{ca_file.name}.tmp")
    blocker.mkdir()
    try:
        yield
    finally:
        blocker.rmdir()


def _members(federation: LocalFederation) -> tuple[Federation, TlsFiles, TlsFiles, TlsFiles]:
    """The federation, and the TLS files of its gateway, amh and csc."""
    configs = federation.node_configs
    return federation.fed, federation.gateway_config.tls, configs["amh"].tls, configs["csc"].tls


def _issuer(tls: TlsFiles) -> x509.Name:
    return x509.load_pem_x509_certificate(tls.cert.read_bytes()).issuer


async def _publish(cluster: Cluster) -> None:
    """A directory at the gateway and at every running node, as their next looks would take it."""
    publish_directory(
        cluster.federation.fed, SystemClock().now_ms(), copy_to=(cluster.federation.gateway_config.data_dir,)
    )
    await cluster.gateway.check_directory()
    cluster.gateway.check_certificate()
    for node in cluster.nodes.values():
        assert node.link is not None
        async with asyncio.timeout(15):  # a node that just moved to new TLS files is dialling again
            await node.link.connected.wait()
        await node.reload()


async def _gets_in(cluster: Cluster, cert: bytes, key_file: Path, tmp_path: Path) -> bool:
    """Whether the gateway takes a TLS client presenting `cert` (it answers with HTTP/2's
    greeting), or refuses it in the handshake."""
    tls = cluster.federation.node_configs["amh"].tls
    (chain := tmp_path / "client.pem").write_bytes(cert)
    context = ssl.create_default_context(cafile=tls.ca)
    context.load_cert_chain(chain, key_file)
    context.set_alpn_protocols(["h2"])
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", cluster.gateway.port, ssl=context, server_hostname="gateway"
        )
    except (ssl.SSLError, ConnectionError):
        return False
    try:
        return bool(await reader.read(9))
    except (ssl.SSLError, ConnectionError):
        return False
    finally:
        writer.transport.abort()


async def test_the_ca_is_rotated_without_a_restart_even_for_a_node_away_throughout(tmp_path: Path) -> None:
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh", "csc"))
    fed, gateway, amh, csc = _members(federation)
    (first,) = fed.roots()
    csc_old_cert = csc.cert.read_bytes()
    now = SystemClock().now_ms
    async with running(federation) as cluster:
        assessment_id = await family_assessment(cluster)
        await cluster.stop_node("csc")  # away for all of it, trusting the first CA alone

        rotate_ca(fed, now())
        second = fed.ca().cert
        assert fed.roots() == [first, second] and second.subject != first.subject
        with pytest.raises(FederationError, match="rotated already"):
            rotate_ca(fed, now())
        await _publish(cluster)
        assert _roots(gateway.ca) == _roots(amh.ca) == {first, second}
        assert _roots(csc.ca) == {first}

        # Members renewed under the new CA, the gateway first: amh moves over as its directory pins it.
        renew_certificate(fed, gateway.cert, now())
        renew_certificate(fed, amh.cert, now())
        await _publish(cluster)
        assert _issuer(gateway) == _issuer(amh) == second.subject
        assert cluster.nodes["amh"].certificate.fingerprint == federation_pin(fed, "amh")
        await share(cluster, assessment_id)  # to csc, still away
        with pytest.raises(FederationError, match="node csc"):
            retire_ca(fed)

        # csc comes back with the first CA alone and a certificate it issued: the gateway, on the
        # new CA's certificate, reaches it through the cross-certificate, and it takes both CAs.
        async with asyncio.timeout(30):
            await cluster.start_node("csc")
            await wait_delivered(cluster.nodes["amh"], 1)
        assert _roots(csc.ca) == {first, second}
        renew_certificate(fed, csc.cert, now())
        await _publish(cluster)
        assert _issuer(csc) == second.subject

        assert retire_ca(fed) == [first.fingerprint(hashes.SHA256())]
        await _publish(cluster)
        assert _roots(gateway.ca) == _roots(amh.ca) == _roots(csc.ca) == {second}
        await share(cluster, assessment_id)
        async with asyncio.timeout(30):
            await wait_delivered(cluster.nodes["amh"], 2)
        assert not await _gets_in(cluster, csc_old_cert, csc.key, tmp_path)  # the first CA's: refused now
        assert await _gets_in(cluster, csc.cert.read_bytes(), csc.key, tmp_path)
        changes = [
            e["detail"]["roots"] for e in await audit_events(cluster.nodes["amh"]) if e["event"] == "tls.roots_changed"
        ]
        assert len(changes) == 2 and len(changes[0]) == 2 and len(changes[1]) == 1


async def _gateway_verified_by(cluster: Cluster, ca_file: Path) -> bool:
    """Whether a client trusting the CAs in `ca_file` accepts the gateway's certificate."""
    context = ssl.create_default_context(cafile=ca_file)
    try:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", cluster.gateway.port, ssl=context, server_hostname="gateway"
        )
    except ssl.SSLCertVerificationError:
        return False
    writer.transport.abort()
    return True


async def test_a_node_away_while_its_ca_was_retired_is_brought_back_with_the_cas_written_by_renew_tls(
    tmp_path: Path,
) -> None:
    """The retired CA vouches for nothing, by design (its key may be known): a member away
    throughout, its certificate renewed by hand so that the CA could be retired, trusts no CA
    the gateway's next certificate chains to. `renew-tls --ca` writes the CAs with it."""
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh", "csc"))
    fed, gateway, amh, csc = _members(federation)
    (first,) = fed.roots()
    now = SystemClock().now_ms
    async with running(federation) as cluster:
        assessment_id = await family_assessment(cluster)
        await cluster.stop_node("csc")
        rotate_ca(fed, now())
        await _publish(cluster)
        for member in (gateway, amh, csc):  # csc's bundle by hand, as retiring requires
            renew_certificate(fed, member.cert, now())
        await _publish(cluster)
        retire_ca(fed)
        await _publish(cluster)
        renew_certificate(fed, gateway.cert, now())  # issued after the retirement: no cross-certificate
        cluster.gateway.check_certificate()
        assert _roots(csc.ca) == {first}
        assert not await _gateway_verified_by(cluster, csc.ca)
        refused = LogWatch("CERTIFICATE_VERIFY_FAILED")
        logs.configure("info", stream=refused)
        config = dataclasses.replace(
            federation.node_configs["csc"], gateway_address=f"127.0.0.1:{cluster.gateway.port}"
        )
        away = NodeServer(config, cluster.gateway.clock)
        try:  # started so, its log says why it cannot connect
            await away.start()
            async with asyncio.timeout(30):
                await refused.seen.wait()
        finally:
            await away.stop(grace=0)
            logs.configure("info")
        assert '"event":"gateway.unavailable"' in refused.line and '"code":"UNAVAILABLE"' in refused.line

        code, out, err = await linkage(
            "federation", "renew-tls", "--dir", str(fed.root), "--cert", str(csc.cert), "--ca", str(csc.ca)
        )
        assert code == 0 and f"wrote the CAs the federation trusts now (1) to {csc.ca}" in out, err
        assert _roots(csc.ca) == set(fed.roots()) != {first}
        assert await _gateway_verified_by(cluster, csc.ca)
        await _publish(cluster)
        async with asyncio.timeout(30):
            await cluster.start_node("csc")
            await share(cluster, assessment_id)
            await wait_delivered(cluster.nodes["amh"], 1)

        held = amh.cert.read_bytes()
        code, _, err = await linkage(
            "federation", "renew-tls", "--dir", str(fed.root), "--cert", str(amh.cert), "--ca", str(tmp_path)
        )
        assert code != 0 and f"cannot write {tmp_path}" in err, err
        assert amh.cert.read_bytes() == held  # refused before anything was renewed


def federation_pin(fed: Federation, node_id: str) -> bytes:
    return directory_pb2.NodeEntry.FromString((fed.entries / f"{node_id}.pb").read_bytes()).tls_cert_sha256


def test_a_ca_rotation_cut_short_at_any_point_is_finished_by_running_it_again(tmp_path: Path) -> None:
    step = 0
    while True:
        step += 1
        fed = make_federation(tmp_path / str(step), SystemClock(), nodes=("amh",)).fed
        (first,) = fed.roots()
        try:
            with crash_at(step):
                rotate_ca(fed, SystemClock().now_ms())
            finished = True
        except Crash:
            finished = False
        if not finished and ((fed.root / "ca.next.pem").exists() or fed.roots() == [first]):
            rotate_ca(fed, SystemClock().now_ms())  # else it had finished, cut short only in syncing its folder
        ca = fed.ca()  # key and certificate a pair again
        assert ca.key.public_key() == ca.cert.public_key()
        assert fed.roots() == [first, ca.cert] and ca.cert != first
        cross = x509.load_pem_x509_certificate((fed.root / "ca.cross.pem").read_bytes())
        assert chains_to(cross, [], [first]) and cross.subject == ca.cert.subject
        assert not (fed.root / "ca.next.pem").exists() and not (fed.root / "ca.next.key").exists()
        if finished:
            break
    assert step > 4


def test_a_ca_is_trusted_only_when_a_trusted_ca_certified_it(tmp_path: Path, captured_logs: CapturedLogs) -> None:
    """The key that signs the directory decides a great deal (pins, keys, the CAs to trust);
    on its own it cannot make members trust a CA: a new one must come certified by a CA the
    member trusts already."""
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh",))
    fed, files, now = federation.fed, federation.node_configs["amh"].tls, dt.datetime.now(dt.UTC)
    (first,) = fed.roots()
    trusted = fed.ca()
    rogue = CertificateAuthority.create("test.linkage.example", now, generation=2)
    successor = CertificateAuthority.create("test.linkage.example", now, generation=3)

    def offering(*cas: x509.Certificate, crosses: tuple[bytes, ...] = ()) -> directory_pb2.Directory:
        return directory_pb2.Directory(
            tls_roots=[c.public_bytes(serialization.Encoding.DER) for c in cas],
            tls_cross_certificates=[
                x509.load_pem_x509_certificate(c).public_bytes(serialization.Encoding.DER) for c in crosses
            ],
        )

    assert new_roots(files, offering(first)) is None  # nothing to change
    assert new_roots(files, directory_pb2.Directory()) is None  # a directory that names no CA
    assert new_roots(files, offering(first, rogue.cert)) is None  # not certified at all
    assert new_roots(files, offering(first, rogue.cert, crosses=(successor.cross_certify(rogue),))) is None
    assert new_roots(files, offering(rogue.cert, crosses=(trusted.cross_certify(successor),))) is None
    refused = captured_logs.records("tls.roots_refused")
    assert len(refused) == 3 and {r["fingerprint"] for r in refused} == {rogue.cert.fingerprint(hashes.SHA256()).hex()}
    vouched = offering(first, successor.cert, crosses=(trusted.cross_certify(successor),))
    assert new_roots(files, vouched) == [first, successor.cert]
    assert new_roots(files, offering(successor.cert)) is None  # dropping the CA in use too: not vouched for
    garbled = directory_pb2.Directory(tls_roots=[b"not a certificate"])
    assert new_roots(files, garbled) is None
    refused = captured_logs.records("tls.roots_refused")
    assert refused[-1]["problem"] == "the directory's CAs are not certificates"


def test_cas_that_cannot_be_saved_are_said_and_those_in_use_kept(tmp_path: Path, captured_logs: CapturedLogs) -> None:
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh",))
    files = federation.node_configs["amh"].tls
    blocked = TlsFiles(cert=files.cert, key=files.key, ca=tmp_path / "ca-folder")
    blocked.ca.mkdir()  # where the CA file should be: nothing can replace it
    write_roots(blocked, federation.fed.roots())
    (said,) = captured_logs.records("tls.roots_not_saved")
    assert said["file"] == str(blocked.ca) and said["level"] == "error"
    assert blocked.ca.is_dir()
    assert "tls.roots_changed" not in captured_logs.getvalue()


async def test_rotate_ca_on_the_command_line_and_what_it_refuses(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, SystemClock(), nodes=("amh",)).fed
    code, out, _ = await linkage("federation", "rotate-ca", "--dir", str(fed.root), "--retire")
    assert code == 0 and "nothing to retire" in out
    code, out, _ = await linkage("federation", "rotate-ca", "--dir", str(fed.root))
    assert (
        code == 0
        and f"a new federation CA issues from now ({fed.ca().cert.fingerprint(hashes.SHA256()).hex()[:16]})" in out
    )
    code, _, err = await linkage("federation", "rotate-ca", "--dir", str(fed.root))
    assert code == 2 and "retire the old one first" in err and "Traceback" not in err
    code, _, err = await linkage("federation", "rotate-ca", "--dir", str(fed.root), "--retire")
    assert code == 2 and "node amh, gateway gateway still hold a certificate the previous CA issued" in err


async def test_a_node_started_with_a_directory_naming_new_cas_takes_them_and_audits_it(tmp_path: Path) -> None:
    """A directory file copied to a stopped node: its CA file changes before the store opens,
    and the change is in its audit log all the same."""
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh",))
    rotate_ca(federation.fed, SystemClock().now_ms())
    bundles = (federation.gateway_config.data_dir, federation.node_configs["amh"].data_dir)
    publish_directory(federation.fed, SystemClock().now_ms(), copy_to=bundles)
    async with running(federation) as cluster:
        assert _roots(federation.node_configs["amh"].tls.ca) == set(federation.fed.roots())
        (changed,) = [
            e["detail"] for e in await audit_events(cluster.nodes["amh"]) if e["event"] == "tls.roots_changed"
        ]
        assert changed["source"] == "file" and len(changed["roots"]) == 2


async def test_a_ca_change_the_node_could_not_record_or_write_is_made_at_its_next_look(
    tmp_path: Path, captured_logs: CapturedLogs
) -> None:
    """A node trusts a new CA only once its audit log records it. A change whose entry failed
    is made at its next look, though no newer directory comes (the CA may be what it needs to
    reach a gateway that moved to it); one audited whose file could not be written is written
    then, and audited once."""
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh",))
    fed, tls = federation.fed, federation.node_configs["amh"].tls
    (first,) = fed.roots()
    async with running(federation) as cluster:
        amh = cluster.nodes["amh"]
        rotate_ca(fed, SystemClock().now_ms())
        publish_directory(fed, SystemClock().now_ms(), copy_to=(federation.gateway_config.data_dir,))
        looks_by_hand(amh)
        await cluster.gateway.check_directory()
        with store_refuses(amh, "INSERT", "audit", "NEW.event = 'tls.roots_changed'"):  # this one entry
            await amh.check_directory()
        assert amh.trust.version == 2 and _roots(tls.ca) == {first}  # the directory taken, its CAs not yet
        assert len(captured_logs.records("tls.roots_failed")) == 1

        with _unwritable(tls.ca):
            await amh.check_directory()
        assert _roots(tls.ca) == {first} and len(captured_logs.records("tls.roots_not_saved")) == 1

        await amh.check_directory()
        assert _roots(tls.ca) == set(fed.roots())
        (changed,) = await audit_events(amh, "tls.roots_changed")
        assert len(changed["detail"]["roots"]) == 2
        await amh.check_directory()  # nothing left to change
        assert len(await audit_events(amh, "tls.roots_changed")) == 1


async def test_cas_the_gateway_could_not_write_are_written_at_its_next_look(
    tmp_path: Path, captured_logs: CapturedLogs
) -> None:
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh",))
    fed, tls = federation.fed, federation.gateway_config.tls
    (first,) = fed.roots()
    async with running(federation) as cluster:
        rotate_ca(fed, SystemClock().now_ms())
        publish_directory(fed, SystemClock().now_ms(), copy_to=(federation.gateway_config.data_dir,))
        with _unwritable(tls.ca):
            await cluster.gateway.check_directory()
        assert cluster.gateway.trust.version == 2 and _roots(tls.ca) == {first}
        assert len(captured_logs.records("tls.roots_not_saved")) == 1
        await cluster.gateway.check_directory()  # the same directory file
        assert _roots(tls.ca) == set(fed.roots())


async def test_cas_a_directory_names_without_a_trusted_ca_certifying_them_are_refused_once_per_directory(
    tmp_path: Path, captured_logs: CapturedLogs
) -> None:
    """Looks that retry a change cut short do not repeat a refusal: the gateway looks every
    few seconds, and one error a directory is what its operator acts on."""
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh",))
    gateway_ca, amh_ca = federation.gateway_config.tls.ca, federation.node_configs["amh"].tls.ca
    rogue = CertificateAuthority.create("test.linkage.example", dt.datetime.now(dt.UTC), generation=2)
    async with running(federation) as cluster:
        amh = cluster.nodes["amh"]
        held = gateway_ca.read_bytes()
        for ca in (gateway_ca, amh_ca):  # trusting another CA alone: nothing certifies the directory's to them
            ca.write_bytes(rogue.cert.public_bytes(serialization.Encoding.PEM))
        try:
            publish_directory(federation.fed, SystemClock().now_ms(), copy_to=(federation.gateway_config.data_dir,))
            for _ in range(2):
                await cluster.gateway.check_directory()
                await amh.check_directory()
            assert cluster.gateway.trust.version == amh.trust.version == 2
            assert len(captured_logs.records("tls.roots_refused")) == 2  # one each
            assert _roots(gateway_ca) == _roots(amh_ca) == {rogue.cert}
        finally:
            for ca in (gateway_ca, amh_ca):
                ca.write_bytes(held)
