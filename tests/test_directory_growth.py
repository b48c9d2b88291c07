"""The signed directory as a node and the gateway take it: as it grows with the federation,
past what a frame may carry (with the post-quantum suite each agency's entry is about 3.3 KB,
so 80 agencies outgrow 256 KiB), and as a node keeps what it took across a restart."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from linkage import stories
from linkage.cli.directory_listing import DAY_MS, listing
from linkage.clock import ManualClock, SystemClock
from linkage.config import NodeConfig
from linkage.directory import read_signed
from linkage.federation import enrol_node, publish_directory, rotate_directory_key
from linkage.transport import MAX_MESSAGE_BYTES, api_channel
from linkage.v1 import directory_pb2, gateway_pb2, gateway_pb2_grpc, node_api_pb2
from node.server import NodeServer
from tests.harness import (
    AGENCIES,
    PRACTITIONER,
    CapturedLogs,
    LocalFederation,
    looks_by_hand,
    make_federation,
    running,
    store_refuses,
    wait_count,
    wait_delivered,
)
from tests.test_delivery import HOUR, family_assessment, share
from tests.test_federation import open_case

AGENCIES_MORE = 80
SERVING = health_pb2.HealthCheckResponse.SERVING


async def _health(config: NodeConfig) -> Any:
    """What the node's API says of its health (on the node's own socket)."""
    async with api_channel(config.api_socket) as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)
        return (await health.Check(health_pb2.HealthCheckRequest())).status


async def test_a_post_quantum_directory_larger_than_a_frame_reaches_the_nodes(tmp_path: Path) -> None:
    """Nodes take a directory of 80 more post-quantum agencies from the gateway, both when they
    check for a newer one and when they connect; it no longer fits the stream's frame."""
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh", "csc"), suite="hybrid")
    fed = federation.fed
    model = directory_pb2.NodeEntry.FromString((fed.entries / "amh.pb").read_bytes())
    for n in range(AGENCIES_MORE):  # synthetic agencies, each with its own certificate and key ids
        entry = directory_pb2.NodeEntry()
        entry.CopyFrom(model)
        entry.node_id, entry.agency_name, entry.tls_cert_sha256 = f"extra-{n}", f"Agency {n}", os.urandom(32)
        for key in entry.keys:
            key.key_id = f"extra-{n}-{key.key_id}"
        (fed.entries / f"extra-{n}.pb").write_bytes(entry.SerializeToString())

    async with running(federation, nodes=("amh",)) as cluster:
        amh = cluster.nodes["amh"]
        published = publish_directory(fed, SystemClock().now_ms(), copy_to=(federation.gateway_config.data_dir,))
        assert len(fed.directory_path.read_bytes()) > MAX_MESSAGE_BYTES
        await cluster.gateway.check_directory()
        assert cluster.gateway.trust.version == published.version

        await amh.check_directory()  # as it does every few minutes
        assert amh.trust.version == published.version
        assert len(amh.trust.current(SystemClock().now_ms()).nodes) == 2 + AGENCIES_MORE

        await cluster.start_node("csc")  # csc's file holds the older one: it takes this one as it connects
        assert cluster.nodes["csc"].trust.version == published.version


async def test_a_node_that_cannot_fetch_the_directory_says_so(
    federation: LocalFederation, monkeypatch: pytest.MonkeyPatch, captured_logs: CapturedLogs
) -> None:
    """The periodic check keeps the held directory when a fetch fails, and logs the status,
    so a directory nodes cannot take is seen days before it expires, not when it does."""
    async with running(federation, nodes=("amh",)) as cluster:
        looks_by_hand(cluster.nodes["amh"])
        publish_directory(federation.fed, SystemClock().now_ms(), copy_to=(federation.gateway_config.data_dir,))
        await cluster.gateway.check_directory()  # a newer one to fetch
        monkeypatch.setattr("node.link.DIRECTORY_MAX_BYTES", 100)  # smaller than any signed directory
        await cluster.nodes["amh"].check_directory()
        assert cluster.nodes["amh"].trust.version == 1
    (failed,) = captured_logs.records("directory.fetch_failed")
    assert failed["status"] == "RESOURCE_EXHAUSTED"


async def test_a_gateway_that_finds_its_directory_file_unreadable_or_half_copied_keeps_the_one_it_holds(
    federation: LocalFederation, captured_logs: CapturedLogs
) -> None:
    """A directory file read while an operator's copy is under way was cut short: reading it
    raised DecodeError, which ended the gateway's watch of its files for good (no directory,
    certificate or backup taken after that, and no check of the held directory's expiry). Now
    it is said and the held one stands, as when the file cannot be read at all; the whole
    file, once it is there, is taken. One that could not be read is read again at each look
    until it is, said once: it was left until its modified time changed, and mending its
    permissions (chmod, chown) changes none, nor does a copy that keeps its time (`cp -p`)."""
    async with running(federation, nodes=("amh",)) as cluster:
        gateway = cluster.gateway
        published = publish_directory(federation.fed, SystemClock().now_ms())
        whole = federation.fed.directory_path.read_bytes()
        path = gateway.config.federation.directory
        path.unlink()
        path.mkdir()  # a name that cannot be read as a file, as a copy that set no read permission
        as_it_was = path.stat()
        await gateway.check_directory()
        await gateway.reload()  # SIGHUP's look, while it still cannot be read
        assert gateway.trust.version == 1
        path.rmdir()
        path.write_bytes(whole[: len(whole) // 2])
        os.utime(path, ns=(as_it_was.st_atime_ns, as_it_was.st_mtime_ns))  # readable, with the time it had
        await gateway.check_directory()
        assert gateway.trust.version == 1
        path.write_bytes(whole)
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a change, on any clock tick
        await gateway.check_directory()
        assert gateway.trust.version == published.version == 2
    lines = captured_logs.records()
    (unreadable,) = [line for line in lines if line["event"] == "directory.unreadable"]
    assert unreadable["error"] == "IsADirectoryError"
    (refused,) = [line for line in lines if line["event"] == "directory.refused"]
    assert refused["reason"] == "malformed"


def _enrol_while_running(federation: LocalFederation, clock: ManualClock, node_id: str) -> None:
    """A new agency enrolled into a running federation, and the directory naming it published
    to the gateway and the new node's bundle (not to the others: they take it from the gateway)."""
    name, agency_type = AGENCIES[node_id]
    bundle = federation.root / "nodes" / node_id
    now = clock.now_ms()
    path = enrol_node(federation.fed, node_id, name, agency_type, bundle, "127.0.0.1:0", now, contact_role="Duty team")
    publish_directory(federation.fed, now, copy_to=(federation.gateway_config.data_dir, bundle))
    federation.node_configs[node_id] = NodeConfig.load(path)


async def test_an_agency_enrolled_while_the_others_run_is_known_to_them_at_once(tmp_path: Path) -> None:
    """An agency enrolled into a running federation was unknown to every other node until its
    next look, up to five minutes after the gateway took the directory naming it: what it sent
    them meanwhile was refused as from an unknown sender, for good, and what they sent it was
    not sent ("no key"). The gateway now tells each node the version of each directory it
    takes, as it takes it, and each node takes that directory at once."""
    clock = ManualClock()
    federation = make_federation(tmp_path, clock, nodes=("csc", "school"))
    async with running(federation, clock=clock) as cluster:
        _enrol_while_running(federation, clock, "amh")
        await cluster.gateway.check_directory()
        async with asyncio.timeout(15):  # a failure, not a hang: untold, they would look in five minutes
            for node in cluster.nodes.values():
                await wait_count(node, "SELECT COUNT(*) FROM audit WHERE event = 'directory.accepted'", (), 1)
        await cluster.start_node("amh")
        assessment_id = await family_assessment(cluster)  # csc's case, opened after amh's, tells amh of it
        shared = await share(cluster, assessment_id)
        await wait_delivered(cluster.nodes["amh"], 1)
        amh_store = cluster.nodes["amh"].store
        assert amh_store is not None
        await wait_count(cluster.nodes["csc"], "SELECT COUNT(*) FROM outbox WHERE state = 'delivered'", (), 1)
        told = await amh_store.fetchall("SELECT sender FROM inbox")
    assert [r.node_id for r in shared.recipients] == ["csc"]
    assert told == [("csc",)]


async def test_a_message_from_an_agency_the_recipients_directory_does_not_name_yet_waits_for_it(
    tmp_path: Path,
) -> None:
    """A recipient whose directory does not name the sender yet (it could not take the newer
    one: here its store refuses to record it) defers what that sender sends, and looks for the
    newer directory, rather than refuse it for good: the sender says why in its status and
    sends it again until the recipient takes it."""
    clock = ManualClock()
    federation = make_federation(tmp_path, clock, nodes=("csc",))
    async with running(federation, clock=clock) as cluster:
        csc = cluster.nodes["csc"]
        await open_case(cluster, "csc", stories.think_family_people())
        with store_refuses(csc, "INSERT", "audit", when="NEW.event = 'directory.accepted'"):
            _enrol_while_running(federation, clock, "amh")
            await cluster.gateway.check_directory()
            amh = await cluster.start_node("amh")
            shared = await share(cluster, await family_assessment(cluster, recipients=()))
            answered = "SELECT COUNT(*) FROM outbox WHERE reason LIKE 'not taken yet%' OR state = 'undeliverable'"
            await wait_count(amh, answered, (), 2)  # csc's receipts for both are in
            (waiting,) = (
                await cluster.api("amh").GetShareStatus(
                    node_api_pb2.ShareStatusRequest(actor=PRACTITIONER, share_id=shared.share_id)
                )
            ).recipients
            assert csc.trust.version == 1
        await csc.check_directory()
        assert csc.trust.version == 2
        clock.advance(HOUR)  # past amh's back-off
        await amh.outbox.send_due()
        settled = "SELECT COUNT(*) FROM outbox WHERE state IN ('delivered', 'undeliverable')"
        await wait_count(amh, settled, (), 2)  # the summary, and amh's notice that it joined the family
        assert amh.store is not None
        states = await amh.store.fetchall("SELECT state FROM outbox")
    assert states == [("delivered",), ("delivered",)]
    assert waiting.state in ("queued", "sent")
    assert waiting.reason.startswith("not taken yet by the recipient (unknown_sender): its directory does not name")


async def test_an_agency_the_gateway_names_and_the_directory_held_does_not_is_looked_up_before_sealing(
    tmp_path: Path,
) -> None:
    """A node told nothing of the newer directory (here it does not act on the gateway's
    word) joins a family an agency enrolled since is linked to, and shares with it: the
    gateway names that agency, and the node takes the newer directory before it seals,
    rather than record its notice and its summary "not sent" for want of the agency's key."""
    clock = ManualClock()
    federation = make_federation(tmp_path, clock, nodes=("amh",))
    async with running(federation, clock=clock) as cluster:
        amh = cluster.nodes["amh"]
        looks_by_hand(amh)
        _enrol_while_running(federation, clock, "csc")
        await cluster.gateway.check_directory()
        await cluster.start_node("csc")
        await open_case(cluster, "csc", stories.think_family_people())  # csc tells nobody: none linked yet
        assessment_id = await family_assessment(cluster, recipients=())  # amh's notice that it joined goes first
        shared = await share(cluster, assessment_id)
        assert [(r.node_id, r.state) for r in shared.recipients] == [("csc", "queued")]
        settled = "SELECT COUNT(*) FROM outbox WHERE state IN ('delivered', 'undeliverable')"
        await wait_count(amh, settled, (), 2)
        assert amh.store is not None
        states = await amh.store.fetchall("SELECT state FROM outbox")
    assert states == [("delivered",), ("delivered",)]


async def test_a_node_holding_the_gateways_directory_is_sent_nothing(
    federation: LocalFederation, captured_logs: CapturedLogs
) -> None:
    """Every node asks every few minutes; the directory seldom changes, and with the
    post-quantum suite it is 3.3 KB an agency. Asked with the version held, the gateway
    answers with nothing; asked with an older one, or none, with the whole of it."""
    async with running(federation, nodes=("amh",)) as cluster:
        amh = cluster.nodes["amh"]
        stub = gateway_pb2_grpc.GatewayStub(cluster.gateway_channel("amh"))
        held = amh.trust.version
        assert await stub.FetchDirectory(gateway_pb2.FetchDirectoryRequest(have_version=held)) == (
            directory_pb2.SignedDirectory()
        )
        for older in (held - 1, 0):
            whole = await stub.FetchDirectory(gateway_pb2.FetchDirectoryRequest(have_version=older))
            assert directory_pb2.Directory.FromString(whole.directory).version == held and whole.signature

        await amh.check_directory()  # the empty answer keeps the one held, and is no refusal
        assert amh.trust.version == held and amh.trust.serving(SystemClock().now_ms())
        assert "directory.refused" not in captured_logs.getvalue()
        published = publish_directory(
            federation.fed, SystemClock().now_ms(), copy_to=(federation.gateway_config.data_dir,)
        )
        await cluster.gateway.check_directory()
        await amh.check_directory()
        assert amh.trust.version == published.version == held + 1


async def test_a_sighup_has_the_gateway_take_a_directory_copied_in_at_once(federation: LocalFederation) -> None:
    """What `reload` does on SIGHUP (linkage/runtime.py sends it there): the directory file,
    the certificate files and backups taken, looked at now rather than within minutes."""
    async with running(federation, nodes=("amh",)) as cluster:
        gateway = cluster.gateway
        published = publish_directory(
            federation.fed, SystemClock().now_ms(), copy_to=(gateway.config.federation.directory.parent,)
        )
        path = gateway.config.federation.directory
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a change, on any clock tick
        assert gateway.trust.version == 1
        await gateway.reload()
        assert gateway.trust.version == published.version == 2


async def test_a_node_keeps_the_directory_it_takes_and_starts_from_it_while_the_gateway_is_away(
    tmp_path: Path,
) -> None:
    """The directory file a node was enrolled with lapses in days, and nodes take the weekly
    ones from the gateway. A node writes each it takes to its file: restarted while the
    gateway is away, it serves its case systems on the newest it took, and `linkage
    directory` reads what it holds. The file is written before a new directory key is
    trusted, so a node that died between the two follows the handovers to it as it starts."""
    clock = ManualClock()
    federation = make_federation(tmp_path, clock, nodes=("amh",), validity_days=2)
    config = federation.node_configs["amh"]
    anchor = config.federation.directory_public_key
    enrolled_key = anchor.read_bytes()
    async with running(federation, clock=clock) as cluster:
        clock.advance(DAY_MS)
        rotate_directory_key(federation.fed, clock.now_ms())
        published = publish_directory(federation.fed, clock.now_ms(), copy_to=(federation.gateway_config.data_dir,))
        await cluster.gateway.check_directory()
        await cluster.nodes["amh"].check_directory()
        assert directory_pb2.Directory.FromString(read_signed(config.federation.directory).directory) == published
        assert listing(config, clock.now_ms())["version"] == published.version
        await cluster.stop_node("amh")

    new_key = anchor.read_bytes()
    anchor.write_bytes(enrolled_key)  # as a node killed after writing the directory, before the key
    clock.advance(2 * DAY_MS)  # the directory amh was enrolled with has lapsed; the gateway is away
    amh = NodeServer(config, clock)
    await amh.start()
    try:
        assert amh.trust.version == published.version and anchor.read_bytes() == new_key != enrolled_key
        assert await _health(config) == SERVING
    finally:
        await amh.stop(grace=0)


async def test_a_directory_a_node_cannot_write_to_its_file_is_held_all_the_same_and_said(
    tmp_path: Path, captured_logs: CapturedLogs
) -> None:
    """A node whose directory file is missing, and cannot be written, takes the gateway's as
    it connects and serves its case systems on it, saying it could not keep it; it writes
    it at its next look once it can."""
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh",))
    config = federation.node_configs["amh"]
    unwritable = config.federation.directory.parent / "gone" / "directory.pb"  # no such folder
    config = dataclasses.replace(config, federation=dataclasses.replace(config.federation, directory=unwritable))
    federation.node_configs["amh"] = config
    async with running(federation) as cluster:  # no file: it takes the gateway's as it connects
        amh = cluster.nodes["amh"]
        assert amh.trust.version == 1 and await _health(config) == SERVING
        assert not unwritable.exists()
        (unsaved,) = captured_logs.records("directory.not_saved")
        assert unsaved["level"] == "error" and unsaved["version"] == 1
        assert unsaved["error"] == "No such file or directory"

        unwritable.parent.mkdir()  # mended
        await amh.check_directory()
        held = amh.trust.view
        assert held is not None and read_signed(unwritable) == held.signed
        kept = unwritable.stat().st_ino
        await amh.check_directory()  # kept: not written again
        assert unwritable.stat().st_ino == kept and len(captured_logs.records("directory.not_saved")) == 1


async def test_a_restarted_node_takes_no_directory_older_than_the_one_it_kept(
    federation: LocalFederation, captured_logs: CapturedLogs
) -> None:
    """A gateway that is not what it should be, or one put back to an old directory file,
    offers a restarted node a directory older than the one it last took, still within its
    days: one that lists an agency since revoked as active, say. Until nodes kept what they
    took, a restart began again from the directory of enrolment and took it; now the node
    refuses it and keeps the newer."""
    gateway_file = federation.gateway_config.federation.directory
    enrolled = gateway_file.read_bytes()
    async with running(federation, nodes=("amh",)) as cluster:
        published = publish_directory(federation.fed, SystemClock().now_ms(), copy_to=(gateway_file.parent,))
        await cluster.gateway.check_directory()
        await cluster.nodes["amh"].check_directory()
        await cluster.stop_node("amh")
        port = cluster.gateway.port
        await cluster.gateway.stop(grace=0)
        gateway_file.write_bytes(enrolled)  # the gateway now holds, and offers, version 1
        await cluster.start_gateway(port)
        assert cluster.gateway.trust.version == 1
        amh = await cluster.start_node("amh")
        assert amh.trust.version == published.version == 2
    refused = [e for e in captured_logs.records("directory.refused") if e.get("source") == "gateway"]
    assert refused and {e["reason"] for e in refused} == {"directory_older"}
