"""A node and the gateway's witness over time, on a real federation: restarts, a lost record
of what was witnessed, a store restored from a backup older than the last checkpoint
(a break, which the gateway keeps and the IG officer's verify reports), and the witness's
cosignatures, which the node keeps only when the directory's witness key verifies them."""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.db import GatewayDb
from gateway.server import GatewayServer
from gateway.witness import Witness
from linkage.auditlog import check_cosignature
from linkage.clock import ManualClock, SystemClock
from linkage.config import ConfigError
from linkage.keys import write_private_pem
from linkage.reasons import Rejected
from linkage.v1 import audit_pb2, gateway_pb2, gateway_pb2_grpc
from node.server import NodeServer
from tests.harness import (
    CapturedLogs,
    Cluster,
    audit_verify_from_gateway,
    drop_audit_guards,
    make_federation,
    running,
)


async def _append(node: NodeServer, entries: int) -> None:
    assert node.store is not None
    async with node.store.tx() as tx:
        for _ in range(entries):
            await tx.audit("case.opened")


async def _held(cluster: Cluster, node_id: str) -> gateway_pb2.WitnessedCheckpoints:
    stub = gateway_pb2_grpc.GatewayStub(cluster.gateway_channel(node_id))
    return await stub.GetCheckpoints(gateway_pb2.GetCheckpointsRequest(node_id=node_id), timeout=5)


def _tries(node: NodeServer, outcome: str) -> float:
    return node.metrics.registry.get_sample_value("linkage_node_checkpoints_total", {"outcome": outcome}) or 0.0


def _size(signed: audit_pb2.SignedCheckpoint) -> int:
    return audit_pb2.Checkpoint.FromString(signed.checkpoint).tree_size


async def test_a_restarted_node_proves_its_log_grew_from_what_was_witnessed(tmp_path: Path) -> None:
    """Across restarts the witness moves on with a proof each time and records no break: from the
    compact range the node kept, and, when that record is lost, from the node's own log."""
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh",))
    store_path = federation.node_configs["amh"].store_path
    for restart in range(3):
        async with running(federation) as cluster:
            amh = cluster.nodes["amh"]
            assert amh.store is not None
            await _append(amh, 5 + restart)
            assert await amh.checkpoints.lodge()
            held = await _held(cluster, "amh")
            assert _size(held.latest) == amh.store.frontier.size and not held.breaks
            assert _tries(amh, "ok") >= 1 and _tries(amh, "diverged") == 0
        if restart == 0:
            with sqlite3.connect(store_path) as db:  # as if a lodge was cut short before it was recorded
                db.execute("DELETE FROM witnessed")


async def test_a_store_restored_from_an_older_backup_is_a_break_the_ig_officer_sees(tmp_path: Path) -> None:
    """Restored from a backup older than the last checkpoint, the node's log no longer extends
    what the gateway witnessed. Until it is longer than that it lodges nothing; then the gateway
    takes its checkpoint and keeps the one it contradicts, and `audit verify --from-gateway`
    fails, naming the entries that are gone."""
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh",))
    config = federation.node_configs["amh"]
    backup = tmp_path / "backup.sqlite"
    async with running(federation) as cluster:
        amh = cluster.nodes["amh"]
        await _append(amh, 3)
        assert await amh.checkpoints.lodge()
        with sqlite3.connect(config.store_path) as live, sqlite3.connect(backup) as copy:
            live.backup(copy)
        await _append(amh, 10)  # after the backup: these are lost in the restore
    for stale in config.store_path.parent.glob(config.store_path.name + "*"):
        stale.unlink()
    shutil.copy(backup, config.store_path)

    async with running(federation) as cluster:
        amh = cluster.nodes["amh"]
        assert amh.store is not None
        witnessed = _size((await _held(cluster, "amh")).latest)
        assert amh.store.frontier.size < witnessed
        assert not await amh.checkpoints.lodge()  # shorter than what was witnessed: nothing to prove from
        await _append(amh, witnessed - amh.store.frontier.size + 1)
        assert await amh.checkpoints.lodge()
        held = await _held(cluster, "amh")
        assert _size(held.latest) == amh.store.frontier.size
        assert [_size(b) for b in held.breaks] == [witnessed]
        tries = {o: _tries(amh, o) for o in ("behind", "diverged", "ok")}
        assert tries == {"behind": 1, "diverged": 1, "ok": 0}  # what the agency's IT alerts on
        code, report, err = await audit_verify_from_gateway(cluster, "amh")
    assert code == 1, report + err
    assert "the gateway recorded 1 break(s)" in report and "FAILED" in report, report


async def test_a_gateway_restored_to_an_older_checkpoint_is_proved_to_from_there(
    tmp_path: Path, captured_logs: CapturedLogs
) -> None:
    """The gateway goes back to an older checkpoint of a running node's log (restored from a
    backup): the node's next lodge, proved from the size it last lodged, is refused; in the
    same lodge it asks what the gateway holds and proves its log grew from that, rather than
    waiting for the next. No break is recorded."""
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh",))
    gateway_db = federation.gateway_config.data_dir / "gateway.sqlite"
    async with running(federation) as cluster:
        amh = cluster.nodes["amh"]
        assert amh.store is not None
        await _append(amh, 3)
        assert await amh.checkpoints.lodge()
        with sqlite3.connect(gateway_db) as db:
            older = db.execute("SELECT tree_size, root, signed FROM witnessed WHERE node_id = 'amh'").fetchone()
        await _append(amh, 5)
        assert await amh.checkpoints.lodge()
        last = amh.checkpoints.lodged_size
        with sqlite3.connect(gateway_db) as db:
            db.execute("UPDATE witnessed SET tree_size = ?, root = ?, signed = ? WHERE node_id = 'amh'", older)
        await _append(amh, 2)
        assert await amh.checkpoints.lodge()  # refused from the size it lodged last, then proved from the held one
        held = await _held(cluster, "amh")
        assert _size(held.latest) == amh.store.frontier.size and not held.breaks
        assert (_tries(amh, "failed"), _tries(amh, "diverged")) == (0, 0)
    said = captured_logs.records("checkpoint.not_lodged")
    assert [(e["code"], e["held"]) for e in said] == [("FAILED_PRECONDITION", last)]


def _kept(node: NodeServer) -> tuple[audit_pb2.SignedCheckpoint, audit_pb2.Cosignature]:
    """The cosigned checkpoint a node keeps in its store."""
    assert node.store is not None
    row = node.store.lookup("SELECT checkpoint, cosignature FROM witnessed WHERE id = 1")
    return audit_pb2.SignedCheckpoint.FromString(row[0]), audit_pb2.Cosignature.FromString(row[1])


async def test_the_witness_cosigns_what_it_holds_and_the_node_keeps_only_what_verifies(
    tmp_path: Path, captured_logs: CapturedLogs
) -> None:
    """Each checkpoint the gateway comes to hold it cosigns with the witness key the directory
    names; the node checks that and keeps it. A cosignature by any other key is not kept (nor is
    a lodge without one): the node keeps the last good one."""
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh",))
    async with running(federation) as cluster:
        amh = cluster.nodes["amh"]
        assert amh.store is not None
        directory = amh.trust.current(SystemClock().now_ms())
        await _append(amh, 3)
        assert await amh.checkpoints.lodge()
        checkpoint, cosignature = _kept(amh)
        assert _size(checkpoint) == amh.store.frontier.size and cosignature.gateway_id == "gateway"
        check_cosignature(cosignature, checkpoint, directory)
        held = await _held(cluster, "amh")
        assert (held.latest, held.latest_cosignature) == (checkpoint, cosignature)
        for forged in (  # another time, another gateway: neither verifies
            audit_pb2.Cosignature(gateway_id="gateway", at_ms=cosignature.at_ms + 1, signature=cosignature.signature),
            audit_pb2.Cosignature(gateway_id="elsewhere", at_ms=cosignature.at_ms, signature=cosignature.signature),
        ):
            with pytest.raises(Rejected):
                check_cosignature(forged, checkpoint, directory)
        await _append(amh, 1)
        with pytest.raises(Rejected):
            check_cosignature(cosignature, amh.checkpoints.latest(), directory)  # of the grown log

    stranger = federation.gateway_config.data_dir / "keys" / "stranger.key"
    write_private_pem(stranger, ed25519.Ed25519PrivateKey.generate())
    for key in (stranger, None):  # a key the directory does not name; then none at all
        federation.gateway_config = dataclasses.replace(federation.gateway_config, witness_key=key)
        async with running(federation) as cluster:
            amh = cluster.nodes["amh"]
            good = _kept(amh)  # as the last lodge with the directory's key left it (at the stop before)
            await _append(amh, 2)
            assert await amh.checkpoints.lodge()  # witnessed all the same
            held = await _held(cluster, "amh")
            assert amh.store is not None and _size(held.latest) == amh.store.frontier.size
            assert held.HasField("latest_cosignature") == (key is not None)
            assert _kept(amh) == good
    said = captured_logs.records("witness.key_not_in_directory")
    assert [e["level"] for e in said] == ["error"]  # for the stranger's key, as it loaded the directory; none for none

    stranger.write_bytes(b"half a key")  # one the gateway cannot read: it does not start
    federation.gateway_config = dataclasses.replace(federation.gateway_config, witness_key=stranger)
    with pytest.raises(ConfigError, match=r"\[witness\] key: "):
        GatewayServer(federation.gateway_config)


async def test_a_log_missing_an_entry_is_not_lodged_and_the_node_says_which(
    tmp_path: Path, captured_logs: CapturedLogs
) -> None:
    """Nothing can be proved from a log with an entry gone (deleted behind the node's back):
    the node lodges nothing, says which entry is missing, and counts the failure; `audit
    verify` is how the IG officer is shown the gap."""
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh",))
    async with running(federation) as cluster:
        await _append(cluster.nodes["amh"], 5)
        assert await cluster.nodes["amh"].checkpoints.lodge()
    with sqlite3.connect(federation.node_configs["amh"].store_path) as db:
        drop_audit_guards(db)
        db.execute("DELETE FROM audit WHERE seq = 2")
        db.execute("DELETE FROM witnessed")  # so the range the witness holds is read from the log again
    async with running(federation) as cluster:
        amh = cluster.nodes["amh"]
        assert not await amh.checkpoints.lodge()
        assert _tries(amh, "failed") >= 1 and _tries(amh, "ok") == 0
    said = [e for e in captured_logs.records("checkpoint.not_lodged") if e["code"] == "LOG_INCOMPLETE"]
    assert said and said[0]["level"] == "error"
    assert said[0]["detail"] == "audit entry 2 is missing from the store"


async def test_a_second_root_for_the_size_held_is_a_break_and_the_same_one_again_changes_nothing(
    tmp_path: Path,
) -> None:
    """Two logs that differ at the same size are a fork, however it came about: the witness
    keeps the one it held as a break, and does not refuse the other as smaller. The same
    checkpoint lodged again is consistent with itself."""
    db = await GatewayDb.open(tmp_path / "gateway.sqlite")
    try:
        witness = Witness(db, ManualClock(), "gateway")

        def lodging(root: bytes) -> tuple[audit_pb2.Checkpoint, audit_pb2.SignedCheckpoint]:
            checkpoint = audit_pb2.Checkpoint(node_id="amh", tree_size=4, root=root)
            return checkpoint, audit_pb2.SignedCheckpoint(checkpoint=checkpoint.SerializeToString())

        first = lodging(b"\x01" * 32)
        assert not (await witness.lodge(*first, 0, [])).diverged
        assert not (await witness.lodge(*first, 4, [])).diverged
        assert (await witness.held("amh")).breaks == []
        other = await witness.lodge(*lodging(b"\x02" * 32), 4, [])
        assert (other.tree_size, other.diverged) == (4, True)
        held = await witness.held("amh")
        assert held.breaks == [first[1]] and held.latest is not None
        assert audit_pb2.Checkpoint.FromString(held.latest.checkpoint).root == b"\x02" * 32
    finally:
        await db.close()
