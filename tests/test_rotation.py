"""Key rotation with an overlap window (S15): senders move to the new key when it
activates; messages created under the old key before its end still verify, after it
they are refused; what was sealed to the old key still opens."""

from __future__ import annotations

import asyncio
import shutil
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from grpc_health.v1 import health_pb2, health_pb2_grpc

from linkage import stories
from linkage.clock import ManualClock, SystemClock
from linkage.config import load_directory_key
from linkage.directory import TrustedDirectory
from linkage.envelope import open_envelope, signing_generation
from linkage.federation import (
    Federation,
    FederationError,
    publish_directory,
    rotate_directory_key,
    rotate_keys,
)
from linkage.keys import MessageKeys, RotationUnfinished, load_ed25519, raw_public, write_private_pem
from linkage.reasons import Reason, Rejected
from linkage.transport import api_channel
from linkage.v1 import directory_pb2, envelope_pb2, node_api_pb2
from node.store import db as db_module
from tests.crypto_fixtures import seal
from tests.faulty_proxy import FaultyProxy
from tests.file_crashes import Crash, crash_at, readable_by_others
from tests.harness import (
    AGENCIES,
    FEDERATION_ID,
    PRACTITIONER,
    CapturedLogs,
    Cluster,
    LocalFederation,
    audit_events,
    audit_verify_from_gateway,
    looks_by_hand,
    make_federation,
    running,
    wait_count,
)
from tests.test_delivery import family_assessment, share

HOUR = 3_600_000


def test_rotation_overlap_and_expiry(tmp_path: Path) -> None:
    clock = ManualClock()
    federation = make_federation(tmp_path, clock, nodes=("amh", "csc"), validity_days=30)
    bundle = federation.node_configs["csc"].data_dir
    old = MessageKeys.load(bundle / "keys")
    t0 = clock.now_ms()
    new_id = rotate_keys(federation.fed, "csc", bundle, t0, overlap_days=7, activate_in_hours=1)
    publish_directory(federation.fed, t0, 30)
    trust = TrustedDirectory(FEDERATION_ID, _directory_key(federation))
    directory = trust.accept(directory_pb2.SignedDirectory.FromString(federation.fed.directory_path.read_bytes()), t0)
    rotated = MessageKeys.load(bundle / "keys")
    assert rotated.key_id == new_id and [k.key_id for k in rotated.previous] == [old.key_id]
    amh = MessageKeys.load(federation.node_configs["amh"].data_dir / "keys")

    def message(created: int, signer: MessageKeys) -> envelope_pb2.Envelope:
        return seal(
            keys=signer,
            agency_type=AGENCIES["csc"][1],
            sender_node="csc",
            recipient_node="amh",
            recipient_key=directory.sealing_key("amh", created),
            suite=directory.directory.suite,
            message_id="01a20105-405a-7c0b-bc94-8ec599dbf70a",
            link_tokens=[bytes(32)],
            kind=envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE,
            created_at_ms=created,
            share_id="s",
        ).envelope

    # Before activation, csc still signs, and others still seal to it, with the old key.
    assert signing_generation(rotated, directory, "csc", t0).key_id == old.key_id
    assert directory.sealing_key("csc", t0).key_id == old.key_id
    assert directory.sealing_key("csc", t0 + 2 * HOUR).key_id == new_id  # never to an expired one after

    # A message signed under the old key inside the overlap verifies...
    inside = t0 + 3 * 24 * HOUR
    open_envelope(message(inside, old), me="amh", keys=amh, directory=directory, now_ms=inside)
    # ...one created after the old key's end is refused.
    after = t0 + 8 * 24 * HOUR
    with pytest.raises(Rejected) as raised:
        open_envelope(message(after, old), me="amh", keys=amh, directory=directory, now_ms=after)
    assert raised.value.reason == Reason.KEY_NOT_VALID
    # The new key signs after activation.
    open_envelope(message(after, rotated), me="amh", keys=amh, directory=directory, now_ms=after)

    # Something sealed to csc's old key before the rotation still opens with the rotated keyring.
    to_old = seal(
        keys=amh,
        agency_type=AGENCIES["amh"][1],
        sender_node="amh",
        recipient_node="csc",
        recipient_key=next(k for k in directory.nodes["csc"].keys if k.key_id == old.key_id),
        suite=directory.directory.suite,
        message_id="01a20105-405a-7c0b-bc94-8ec599dbf70b",
        link_tokens=[bytes(32)],
        kind=envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE,
        created_at_ms=t0,
        share_id="s",
    ).envelope
    opened = open_envelope(to_old, me="csc", keys=rotated, directory=directory, now_ms=t0)
    assert opened.routing.recipient_key_id == old.key_id


def _directory_key(federation: LocalFederation) -> ed25519.Ed25519PublicKey:
    return load_directory_key(federation.node_configs["amh"].federation.directory_public_key)


def test_a_rotation_refuses_another_nodes_bundle_and_a_window_with_no_valid_key(tmp_path: Path) -> None:
    """`rotate-keys --node-id csc --bundle amh` put csc's new key in amh's bundle and moved
    amh's own keys aside; a negative overlap or activation left a time with no key valid, or
    senders sealing to a key the node does not hold yet. Each is refused; nothing changes."""
    clock = ManualClock()
    federation = make_federation(tmp_path, clock, nodes=("amh", "csc"))
    amh, csc = (federation.node_configs[n].data_dir for n in ("amh", "csc"))
    before = {p: p.read_bytes() for p in (*(amh / "keys").rglob("*"), *(csc / "keys").rglob("*")) if p.is_file()}
    entry = (federation.fed.entries / "csc.pb").read_bytes()
    now = clock.now_ms()
    for bundle, overlap, hours, said in (
        (amh, 7, 1, "holds key 'amh-k1', not csc's newest \\('csc-k1'\\)"),
        (tmp_path, 7, 1, "holds no message keys"),
        (csc, -1, 1, "overlap is 0 to 365 days"),
        (csc, 7, 0, "activate the new key in 1 to 720 hours"),
        (csc, 7, -5, "activate the new key in 1 to 720 hours"),
    ):
        with pytest.raises(FederationError, match=said):
            rotate_keys(federation.fed, "csc", bundle, now, overlap_days=overlap, activate_in_hours=hours)
    after = {p: p.read_bytes() for p in (*(amh / "keys").rglob("*"), *(csc / "keys").rglob("*")) if p.is_file()}
    assert after == before and (federation.fed.entries / "csc.pb").read_bytes() == entry


def _private(keys: MessageKeys) -> tuple[bytes, ...]:
    return tuple(k.private_bytes_raw() for k in (keys.signing, keys.hpke, keys.mlkem, keys.mldsa) if k is not None)


@pytest.mark.parametrize("suite", ["classic", "hybrid"])
def test_a_rotation_cut_short_at_any_point_loses_no_key_and_running_it_again_finishes_it(
    tmp_path: Path, suite: str
) -> None:
    """Rotation moved the old key files aside one by one, then wrote the new ones, then the
    entry, each file in place: a crash between two of them left a bundle the node could not
    load (a signing key with no HPKE key, or the new key under the old id), and a key file
    readable by others until its chmod. Now, wherever it stops, the node either loads a whole
    generation that matches the directory entry or is told to run the rotation again; the old
    private keys are never lost; every key file is private from its creation; and running
    it again leaves exactly one new generation, in the bundle and in the entry."""
    clock = ManualClock()
    make_federation(tmp_path / "base", clock, nodes=("amh", "csc"), suite=suite)
    original = MessageKeys.load(tmp_path / "base" / "nodes" / "csc" / "keys")
    now = clock.now_ms()
    for step in count(1):
        run = tmp_path / f"step{step}"
        shutil.copytree(tmp_path / "base", run)
        fed, bundle = Federation.open(run / "federation"), run / "nodes" / "csc"
        try:
            with crash_at(step):
                rotate_keys(fed, "csc", bundle, now)
        except Crash:
            _check_after_crash(fed, bundle, original)
            if "csc-k2" not in _entry_keys(fed):  # the entry is written last: with it the rotation is done
                rotate_keys(fed, "csc", bundle, now)
            _check_rotated(fed, bundle, original)
            shutil.rmtree(run)
        else:
            _check_rotated(fed, bundle, original)
            break
    assert step > 40  # the hooks saw each step: a rotation takes more than 40


def _entry_keys(fed: Federation) -> dict[str, directory_pb2.NodeKey]:
    return {k.key_id: k for k in directory_pb2.NodeEntry.FromString((fed.entries / "csc.pb").read_bytes()).keys}


def _matches(keys: MessageKeys, entry: directory_pb2.NodeKey) -> bool:
    return (raw_public(keys.signing), raw_public(keys.hpke)) == (entry.signing_public_key, entry.hpke_public_key)


def _check_after_crash(fed: Federation, bundle: Path, original: MessageKeys) -> None:
    entry = _entry_keys(fed)  # whole, never half-written
    assert original.key_id in entry
    assert not readable_by_others(bundle / "keys")
    try:
        keys = MessageKeys.load(bundle / "keys")
    except RotationUnfinished as unfinished:
        assert "run `linkage federation rotate-keys` again" in str(unfinished)
        return
    generations = {k.key_id: k for k in (keys, *keys.previous)}
    assert _private(generations[original.key_id]) == _private(original)
    assert all(_matches(k, entry[key_id]) for key_id, k in generations.items() if key_id in entry)


def _check_rotated(fed: Federation, bundle: Path, original: MessageKeys) -> None:
    entry = _entry_keys(fed)
    keys = MessageKeys.load(bundle / "keys")
    assert list(entry) == [original.key_id, keys.key_id] == [original.key_id, "csc-k2"]
    assert [_private(k) for k in keys.previous] == [_private(original)]
    assert not set(_private(keys)) & set(_private(original))  # a new key, not the old one under a new name
    assert _matches(keys, entry["csc-k2"]) and _matches(keys.previous[0], entry[original.key_id])
    left = [
        p.name for p in (*(bundle / "keys").rglob("*"), *fed.root.rglob("*")) if p.name.endswith((".partial", ".tmp"))
    ]
    assert not left and not (bundle / "keys" / "next").exists()


async def test_a_running_node_takes_its_rotated_keys_without_a_restart(
    tmp_path: Path, captured_logs: CapturedLogs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node had to be restarted within the hour after `rotate-keys`, or once senders
    moved to the new key it could open nothing they sent. It now takes the new generation
    at its next look (SIGHUP, or every few minutes), only a whole rotation of its own, and
    only once its audit log records it."""
    clock = ManualClock()
    federation = make_federation(tmp_path, clock, nodes=("amh", "csc"), validity_days=30)
    bundle = federation.node_configs["csc"].data_dir
    async with running(federation, clock=clock) as cluster:
        amh, csc = cluster.nodes["amh"], cluster.nodes["csc"]
        assessment_id = await family_assessment(cluster)
        new_id = rotate_keys(federation.fed, "csc", bundle, clock.now_ms(), activate_in_hours=1)
        (bundle / "keys" / "next").mkdir()  # as a rotation cut short leaves it: nothing taken
        await csc.reload()
        assert csc.keys.key_id == "csc-k1"
        (bundle / "keys" / "next").rmdir()
        await csc.reload()  # whole, but no directory names the new key yet: it waits
        assert csc.keys.key_id == "csc-k1"
        assert await csc.checkpoints.lodge()

        publish_directory(federation.fed, clock.now_ms(), 30, copy_to=(federation.gateway_config.data_dir,))
        looks_by_hand(amh, csc)
        await cluster.gateway.check_directory()
        await amh.check_directory()
        signing = bundle / "keys" / "signing.key"
        whole = signing.read_bytes()
        write_private_pem(signing, ed25519.Ed25519PrivateKey.generate())  # as a copy half done leaves it
        await csc.reload()
        assert csc.keys.key_id == "csc-k1"
        signing.write_bytes(whole)
        assert csc.store is not None
        csc.store.db.execute("PRAGMA query_only = ON")  # as on a disk remounted read-only
        try:
            await csc.reload()
        finally:
            csc.store.db.execute("PRAGMA query_only = OFF")
        assert csc.keys.key_id == "csc-k1"  # not taken unaudited: taken at the next look
        monkeypatch.setattr(db_module, "INLINE_COMMIT_S", 0.0)  # each COMMIT in its thread, as on a slow disk
        await asyncio.gather(csc.reload(), csc.reload())  # a SIGHUP during the periodic look: taken once
        assert csc.keys.key_id == new_id and csc.keys.for_id("csc-k1") is not None
        assert await csc.checkpoints.lodge()

        clock.advance(2 * HOUR)  # the new key is active: amh seals to it, csc signs its receipt with it
        shared = await share(cluster, assessment_id)
        assert await _settled(cluster, "amh", shared.share_id) == [("csc", "delivered")]
        # Past the overlap the old key is refused: what csc signs now must be under the new one.
        clock.advance(8 * 24 * HOUR)
        opened = await cluster.api("csc").OpenCase(
            node_api_pb2.OpenCaseRequest(actor=PRACTITIONER, case_ref="case-2", people=stories.think_family_people())
        )
        parent, child = (p.link_token for p in opened.people)
        recorded = await cluster.api("csc").RecordAssessment(
            node_api_pb2.RecordAssessmentRequest(
                actor=PRACTITIONER, case_id=opened.case_id, assessment=stories.parent_risk_change(parent, child)
            )
        )
        shared = await share(cluster, recorded.assessment_id, sender="csc")
        assert await _settled(cluster, "csc", shared.share_id) == [("amh", "delivered")]
        loaded = [e["detail"] for e in await audit_events(csc) if e["event"] == "keys.loaded"]
        assert loaded == [{"key_id": new_id, "previous": "csc-k1"}]

        shutil.move(bundle / "keys", tmp_path / "csc-keys")  # another node's keys in its place
        shutil.copytree(federation.node_configs["amh"].data_dir / "keys", bundle / "keys")
        await csc.reload()
        assert csc.keys.key_id == new_id
    said = captured_logs.records("keys.reload_refused", "keys.reload_waiting", "keys.reload_failed")
    assert [s["event"] for s in said] == [
        "keys.reload_refused",
        "keys.reload_waiting",
        "keys.reload_refused",
        "keys.reload_failed",
        "keys.reload_refused",
    ]
    assert "did not finish" in said[0]["problem"] and "no directory held names it yet" in said[1]["problem"]
    assert "they are not the keys the directory names 'csc-k2' (half copied?)" in said[2]["problem"]
    assert said[3]["error"] == "SQLITE_READONLY"
    assert "they no longer hold 'csc-k2', the generation in use: not its rotation" in said[4]["problem"]


async def test_a_node_cut_off_while_its_new_keys_activated_takes_them_as_it_connects_again(tmp_path: Path) -> None:
    """A node whose gateway was out of its reach when its rotated keys activated took the
    directory that names them as it connected again, but the keys themselves only at its
    next look, up to five minutes on: what the others had queued for it meanwhile, sealed
    to the new key, came first, and it refused each as sealed to a key it did not hold
    (undeliverable, for good). It now takes them before its stream opens."""
    clock = ManualClock()
    federation = make_federation(tmp_path, clock, nodes=("amh", "csc"), validity_days=30)
    bundle = federation.node_configs["csc"].data_dir
    async with running(federation, nodes=("amh",), clock=clock) as cluster:
        proxy = await FaultyProxy(cluster.gateway.port).start()
        try:
            csc = await cluster.start_node("csc", gateway_port=proxy.port)
            assessment_id = await family_assessment(cluster)
            new_id = rotate_keys(federation.fed, "csc", bundle, clock.now_ms(), activate_in_hours=1)
            proxy.refuse(True)  # from here until it is back, csc cannot reach the gateway
            publish_directory(federation.fed, clock.now_ms(), 30, copy_to=(federation.gateway_config.data_dir,))
            await cluster.gateway.check_directory()
            await cluster.nodes["amh"].check_directory()
            clock.advance(2 * HOUR)  # csc's new key is active: amh seals to it
            shared = await share(cluster, assessment_id)
            assert csc.keys.key_id == "csc-k1"
            proxy.refuse(False)
            assert await _settled(cluster, "amh", shared.share_id) == [("csc", "delivered")]
            assert csc.keys.key_id == new_id
        finally:
            await proxy.close()


async def test_a_message_sealed_to_new_keys_not_yet_in_place_waits_for_them(tmp_path: Path) -> None:
    """Keys rotated with the bundle on another machine, and copied into place after they
    activated: what the others sealed to them meanwhile was refused as sealed to a key the
    node did not hold, and undeliverable for good. The node now defers it, as it does what
    the clocks decide (its directory names those keys, so they are on their way): the
    sender says why in the message's status and sends it again until they are in place."""
    clock = ManualClock()
    federation = make_federation(tmp_path, clock, nodes=("amh", "csc"), validity_days=30)
    bundle, elsewhere = federation.node_configs["csc"].data_dir, tmp_path / "csc-bundle-elsewhere"
    shutil.copytree(bundle / "keys", elsewhere / "keys")
    async with running(federation, clock=clock) as cluster:
        amh, csc = cluster.nodes["amh"], cluster.nodes["csc"]
        assessment_id = await family_assessment(cluster)
        new_id = rotate_keys(federation.fed, "csc", elsewhere, clock.now_ms(), activate_in_hours=1)
        publish_directory(federation.fed, clock.now_ms(), 30, copy_to=(federation.gateway_config.data_dir,))
        await cluster.gateway.check_directory()
        for node in (amh, csc):
            await node.reload()
        clock.advance(2 * HOUR)  # active, and still only in the other bundle
        shared = await share(cluster, assessment_id)
        answered = "SELECT COUNT(*) FROM outbox WHERE reason LIKE 'not taken yet%' OR state = 'undeliverable'"
        await wait_count(amh, answered, (), 1)  # csc's receipt is in
        (waiting,) = (
            await cluster.api("amh").GetShareStatus(
                node_api_pb2.ShareStatusRequest(actor=PRACTITIONER, share_id=shared.share_id)
            )
        ).recipients
        assert waiting.state in ("queued", "sent")
        assert waiting.reason.startswith("not taken yet by the recipient (unknown_key): it does not hold yet a key")

        shutil.rmtree(bundle / "keys")
        shutil.copytree(elsewhere / "keys", bundle / "keys")
        await csc.reload()
        assert csc.keys.key_id == new_id
        clock.advance(HOUR)  # past amh's back-off
        await amh.outbox.send_due()
        assert await _settled(cluster, "amh", shared.share_id) == [("csc", "delivered")]
        (refused,) = await audit_events(csc, "message.rejected")
    assert refused["detail"]["reason"] == "unknown_key" and refused["detail"]["deferred"] is True


async def _settled(cluster: Cluster, node: str, share_id: str) -> list[tuple[str, str]]:
    """Each recipient's state once a share is settled (delivered, or not to be)."""
    request = node_api_pb2.ShareStatusRequest(actor=PRACTITIONER, share_id=share_id)
    async with asyncio.timeout(30):
        async for status in cluster.api(node).WatchShareStatus(request):
            if status.settled:
                return [(r.node_id, r.state) for r in status.recipients]
    raise AssertionError(f"the watch of {share_id} ended before it settled")


async def test_the_directory_key_is_rotated_without_touching_a_node_or_the_gateway(tmp_path: Path) -> None:
    """Until now a new directory signing key (a stolen one, say) meant copying its public half
    to every bundle by hand. Now the old key hands over to the new one, and each process follows
    the handovers as it takes a directory the new key signed, keeps the new key across a restart,
    and trusts it alone: even a node that was stopped for the whole of two rotations."""
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh", "csc"))
    fed, gateway_dir = federation.fed, federation.gateway_config.data_dir
    away = federation.node_configs["csc"].federation.directory_public_key
    anchors = [federation.gateway_config.federation.directory_public_key, away]
    anchors.append(federation.node_configs["amh"].federation.directory_public_key)
    first = away.read_bytes()
    async with running(federation) as cluster:
        assessment_id = await family_assessment(cluster)
        await cluster.stop_node("csc")

        async def publish() -> None:
            publish_directory(fed, SystemClock().now_ms(), copy_to=(gateway_dir,))
            await cluster.gateway.check_directory()
            await cluster.nodes["amh"].check_directory()

        keys = []
        for _ in range(2):
            keys.append(rotate_directory_key(fed, SystemClock().now_ms()))
            await publish()
        new = (fed.root / "directory.pub").read_bytes()
        assert [a.read_bytes() for a in anchors] == [new, first, new]  # the stopped node's, untouched
        assert cluster.gateway.trust.version == cluster.nodes["amh"].trust.version == 3
        taken = [e["detail"] for e in await audit_events(cluster.nodes["amh"]) if e["event"] == "directory.accepted"]
        assert taken[-2:] == [
            {"version": 2, "previous": 1, "signing_key": keys[0].hex()},
            {"version": 3, "previous": 2, "signing_key": keys[1].hex()},
        ]

        await cluster.start_node("csc")  # its own directory is the first key's: the gateway's leads on from it
        assert cluster.nodes["csc"].trust.version == 3 and away.read_bytes() == new
        health: Any = health_pb2_grpc.HealthStub(cluster.closes(api_channel(cluster.nodes["csc"].config.api_socket)))
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING
        shared = await share(cluster, assessment_id)
        assert await _settled(cluster, "amh", shared.share_id) == [("csc", "delivered")]


async def test_a_directory_the_store_cannot_record_waits_and_is_taken_once_it_can(
    tmp_path: Path, captured_logs: CapturedLogs
) -> None:
    """A node takes a newer directory, and the new key that signs it, only once its audit log
    says so: while its disk is read-only it keeps the one it holds and the key it trusts, and
    at the next look after the disk is mended it takes and records both."""
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh",))
    fed = federation.fed
    anchor = federation.node_configs["amh"].federation.directory_public_key
    trusted = anchor.read_bytes()
    async with running(federation) as cluster:
        amh = cluster.nodes["amh"]
        assert amh.store is not None
        key = rotate_directory_key(fed, SystemClock().now_ms())
        publish_directory(fed, SystemClock().now_ms(), copy_to=(federation.gateway_config.data_dir,))
        looks_by_hand(amh)
        await cluster.gateway.check_directory()
        amh.store.db.execute("PRAGMA query_only = ON")  # as on a disk remounted read-only
        try:
            await amh.check_directory()
        finally:
            amh.store.db.execute("PRAGMA query_only = OFF")
        assert amh.trust.version == 1 and anchor.read_bytes() == trusted  # not taken unaudited
        assert [e["error"] for e in captured_logs.records("directory.accept_not_audited")] == ["SQLITE_READONLY"]

        await amh.check_directory()
        assert amh.trust.version == 2 and anchor.read_bytes() == (fed.root / "directory.pub").read_bytes()
        taken = [e["detail"] for e in await audit_events(amh, "directory.accepted")]
        assert taken[-1] == {"version": 2, "previous": 1, "signing_key": key.hex()}


def test_a_directory_key_rotation_cut_short_at_any_point_is_finished_by_running_it_again(tmp_path: Path) -> None:
    step = 0
    while True:
        step += 1
        federation = make_federation(tmp_path / str(step), SystemClock(), nodes=("amh",))
        fed = federation.fed
        old = load_ed25519(fed.root / "directory.key")
        try:
            with crash_at(step):
                rotate_directory_key(fed, SystemClock().now_ms())
            finished = True
        except Crash:
            finished = False
        left = raw_public(load_ed25519(fed.root / "directory.key"))  # whole, the old key or the new
        # Cut short only in syncing its folder, the rotation was whole: running it again rotates anew.
        whole = left != raw_public(old) and load_directory_key(fed.root / "directory.pub").public_bytes_raw() == left
        new = rotate_directory_key(fed, SystemClock().now_ms())
        assert load_directory_key(fed.root / "directory.pub").public_bytes_raw() == new
        signed = publish_directory(fed, SystemClock().now_ms())
        assert len(signed.handovers) == (2 if finished or whole else 1)  # one cut short is finished, not doubled
        trust = TrustedDirectory(FEDERATION_ID, old.public_key())
        assert trust.accept(
            directory_pb2.SignedDirectory.FromString(fed.directory_path.read_bytes()), SystemClock().now_ms()
        )
        assert trust.public_key.public_bytes_raw() == new
        if finished:
            break
    assert step > 3


async def test_an_ig_officer_verifies_the_checkpoints_a_node_signs_with_its_rotated_key(tmp_path: Path) -> None:
    """After a rotation of its message keys a node signs its audit checkpoints with the new
    key, which only a newer directory than its enrolment's names. `linkage audit verify`
    checks them against the node's directory file, which the node keeps current: the
    checkpoint is confirmed, not ignored as signed by a key the file does not know."""
    clock = ManualClock()
    federation = make_federation(tmp_path, clock, nodes=("amh",))
    config = federation.node_configs["amh"]
    async with running(federation, clock=clock) as cluster:
        amh = cluster.nodes["amh"]
        new_id = rotate_keys(federation.fed, "amh", config.data_dir, clock.now_ms(), activate_in_hours=1)
        publish_directory(federation.fed, clock.now_ms(), copy_to=(federation.gateway_config.data_dir,))
        await cluster.gateway.check_directory()
        await amh.reload()
        clock.advance(2 * HOUR)  # the new key is active: the node signs its checkpoints with it
        assert amh.keys.key_id == new_id
        assert await amh.checkpoints.lodge()
        code, report, err = await audit_verify_from_gateway(cluster, "amh")
    assert code == 0, report + err
    assert "ignored a checkpoint" not in report and "consistent with 1 of 1 lodged checkpoints" in report, report
