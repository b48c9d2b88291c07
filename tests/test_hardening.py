"""The attack suite (reference/security_reliability.md §5.2): each control proven by a test.
THREATS.md maps every threat to its control and to the tests here and elsewhere."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, closing, contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway import metalog
from gateway import server as gateway_server
from gateway.db import GatewayDb
from gateway.metalog import MetaLog, kept_path
from gateway.server import GatewayServer
from gateway.service import UNWRITABLE_RETRY_MS, GatewayService
from linkage import duties, store_notes, stories
from linkage.auditlog import verify_chain
from linkage.clock import ManualClock, SystemClock
from linkage.config import DeliverySettings, GatewayLimits
from linkage.envelope import open_envelope
from linkage.federation import publish_directory, revoke_node
from linkage.frames import MAX_BATCH_FRAMES, unbatch
from linkage.reasons import Reason, Rejected
from linkage.transport import api_channel
from linkage.v1 import directory_pb2, envelope_pb2, gateway_pb2, gateway_pb2_grpc, node_api_pb2
from node.link import GatewayRefused, Subscribed
from node.store import Store
from tests.crypto_fixtures import NOW, make_keyring
from tests.harness import (
    PRACTITIONER,
    CapturedLogs,
    LocalFederation,
    audit_events,
    make_federation,
    running,
    settle,
    wait_count,
    wait_delivered,
)
from tests.test_delivery import family_assessment, share
from tests.test_workflows import CSC_WORKER

TOKEN = bytes([5]) * 32
SHARE_KIND = envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE


async def test_s1_a_thousand_bit_flips_are_all_rejected_and_audited(tmp_path: Path) -> None:
    clock = ManualClock()
    federation = make_federation(tmp_path, clock, nodes=("amh", "csc"))
    async with running(federation, clock=clock) as cluster:
        await share(cluster, await family_assessment(cluster))
        amh, csc = cluster.nodes["amh"], cluster.nodes["csc"]
        await wait_delivered(amh, 1)
        assert amh.store is not None and csc.store is not None
        good = envelope_pb2.Envelope.FromString((await amh.store.fetchone("SELECT envelope FROM outbox_bodies"))[0])
        before_inbox = (await csc.store.fetchone("SELECT COUNT(*) FROM inbox"))[0]
        before_rejects = (await csc.store.fetchone("SELECT COUNT(*) FROM audit WHERE event = 'message.rejected'"))[0]
        rng = random.Random(1)
        for _ in range(1000):
            field = rng.choice(["routing", "ciphertext"])
            data = bytearray(getattr(good, field))
            bit = rng.randrange(len(data) * 8)
            data[bit // 8] ^= 1 << (bit % 8)
            bad = envelope_pb2.Envelope()
            bad.CopyFrom(good)
            setattr(bad, field, bytes(data))
            await csc.reception.on_envelopes([bad])
        assert (await csc.store.fetchone("SELECT COUNT(*) FROM inbox"))[0] == before_inbox
        rejects = await audit_events(csc, "message.rejected")
        assert len(rejects) - before_rejects == 1000
        reasons = {r["detail"]["reason"] for r in rejects[before_rejects:]}
        assert reasons <= {r.value for r in Reason}
        assert Reason.DECRYPT_FAILED.value in reasons


async def test_s5_revoked_node_is_refused_on_its_already_open_connection(federation: LocalFederation) -> None:
    async with running(federation, nodes=("amh", "csc")) as cluster:
        channel = cluster.gateway_channel("csc")  # opened, and used, before the revocation
        stub = gateway_pb2_grpc.GatewayStub(channel)
        await stub.Subscribe(gateway_pb2.SubscribeRequest(node_id="csc", link_tokens=[TOKEN]))
        revoke_node(federation.fed, "csc")
        publish_directory(federation.fed, ManualClock().now_ms(), copy_to=(federation.gateway_config.data_dir,))
        await cluster.gateway.check_directory()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Subscribe(gateway_pb2.SubscribeRequest(node_id="csc", link_tokens=[TOKEN]))
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "revoked" in (raised.value.details() or "")
        assert cluster.gateway.sessions.get("csc") is None or cluster.gateway.sessions.get("csc").error  # type: ignore[union-attr]


async def test_r15_expired_directory_fails_closed_until_a_fresh_one_arrives(tmp_path: Path) -> None:
    clock = ManualClock()
    federation = make_federation(tmp_path, clock, nodes=("amh",))
    async with running(federation, clock=clock) as cluster:
        stub = gateway_pb2_grpc.GatewayStub(cluster.gateway_channel("amh"))
        clock.advance(8 * 86_400_000)
        await cluster.gateway.check_directory()
        health = await cluster.gateway.health.Check(
            health_pb2.HealthCheckRequest(service=""),
            None,  # type: ignore[arg-type]
        )
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Subscribe(gateway_pb2.SubscribeRequest(node_id="amh", link_tokens=[TOKEN]))
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "expired" in (raised.value.details() or "")
        publish_directory(federation.fed, clock.now_ms(), copy_to=(federation.gateway_config.data_dir,))
        await cluster.gateway.check_directory()
        await stub.Subscribe(gateway_pb2.SubscribeRequest(node_id="amh", link_tokens=[TOKEN]))


async def test_r15_a_node_whose_directory_expired_refuses_what_needs_it_and_reports_not_serving(
    tmp_path: Path,
) -> None:
    """A node's API fails closed as the gateway does: a share, which must check recipients'
    keys against a current directory, is refused saying why, and nothing is recorded; its
    health says NOT_SERVING until a fresh directory arrives."""
    clock = ManualClock()
    federation = make_federation(tmp_path, clock, nodes=("amh", "csc"))
    async with running(federation, clock=clock) as cluster:
        assessment_id = await family_assessment(cluster)
        amh = cluster.nodes["amh"]
        assert amh.store is not None
        clock.advance(8 * 86_400_000)
        await amh.check_directory()
        health = await amh.health.Check(
            health_pb2.HealthCheckRequest(service=""),
            None,  # type: ignore[arg-type]
        )
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await share(cluster, assessment_id)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        said = raised.value.details() or ""
        assert said.startswith("node cannot serve: ") and "expired" in said, said
        assert await amh.store.fetchall("SELECT share_id FROM shares") == []


async def test_s8_oversized_message_is_refused_at_the_transport(federation: LocalFederation) -> None:
    async with running(federation, nodes=()) as cluster:
        tls = federation.node_configs["amh"].tls
        # A client that does not keep our limit: the gateway's own limit must hold.
        channel = cluster.closes(
            grpc.aio.secure_channel(
                f"127.0.0.1:{cluster.gateway.port}",
                tls.channel_credentials(),
                options=[("grpc.ssl_target_name_override", "gateway"), ("grpc.max_send_message_length", 1 << 22)],
            )
        )
        call = gateway_pb2_grpc.GatewayStub(channel).Connect()
        await call.write(gateway_pb2.NodeFrame(send=envelope_pb2.Envelope(routing=b"x", ciphertext=bytes(300_000))))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call.read()
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_s9_a_hundred_thousand_malformed_inputs_give_only_clean_refusals() -> None:
    ring = make_keyring(("a", "b"))
    original = ring.seal("a", "b").envelope
    good = original.SerializeToString()
    rng = random.Random(9)
    parsed = 0
    for n in range(100_000):
        if n % 2:
            data = rng.randbytes(rng.randrange(0, 200))
        else:
            mutated = bytearray(good)
            for _ in range(rng.randrange(1, 8)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            data = bytes(mutated)
        try:
            envelope = envelope_pb2.Envelope.FromString(data)
        except DecodeError:
            continue
        if (envelope.routing, envelope.ciphertext) == (original.routing, original.ciphertext):
            continue  # the mutation left the message itself unchanged
        parsed += 1
        with pytest.raises(Rejected):
            open_envelope(envelope, me="b", keys=ring.keys["b"], directory=ring.view, now_ms=NOW)
    assert parsed > 1000  # many parse "successfully"; validation refuses them all


async def test_s9_five_thousand_malformed_envelopes_through_the_live_gateway(federation: LocalFederation) -> None:
    async with running(federation, nodes=("csc",)) as cluster:
        stub = gateway_pb2_grpc.GatewayStub(cluster.gateway_channel("amh"))
        call = stub.Connect()
        rng = random.Random(5)
        sent = 0
        while sent < 5_000:
            if rng.random() < 0.5:
                routing = rng.randbytes(rng.randrange(60))
            else:
                routing = envelope_pb2.RoutingHeader(
                    sender_node="amh",
                    recipient_node=rng.choice(["csc", "nobody", ""]),
                    message_id=rng.randbytes(8).hex(),
                    link_tokens=[rng.randbytes(rng.randrange(40))],
                ).SerializeToString() + rng.randbytes(rng.randrange(4))
            try:  # a header naming another sender is spoofing, which ends the stream (test S7)
                if envelope_pb2.RoutingHeader.FromString(routing).sender_node not in ("", "amh"):
                    continue
            except DecodeError:
                pass
            frame = gateway_pb2.NodeFrame(send=envelope_pb2.Envelope(routing=routing, ciphertext=rng.randbytes(40)))
            await call.write(frame)
            sent += 1
        acks = 0
        while acks < 5_000:
            answer = await call.read()
            assert isinstance(answer, gateway_pb2.GatewayFrame)
            for reply in unbatch(answer):  # answers waiting together come batched
                if reply.WhichOneof("frame") == "send_ack":
                    assert reply.send_ack.status == gateway_pb2.SEND_STATUS_REJECTED
                    acks += 1
        call.cancel()
        # The gateway is unharmed: it still routes real traffic.
        await stub.Subscribe(gateway_pb2.SubscribeRequest(node_id="amh", link_tokens=[TOKEN]))


BAD = gateway_pb2.NodeFrame(send=envelope_pb2.Envelope(routing=b"junk", ciphertext=b"x"))


@pytest.mark.parametrize(
    ("breach", "said"),
    [
        ([gateway_pb2.NodeFrame(batch=gateway_pb2.NodeFrames(frames=[BAD]))], "may not contain another batch"),
        ([BAD] * (MAX_BATCH_FRAMES + 1), f"may hold at most {MAX_BATCH_FRAMES} frames; this one held 65"),
    ],
    ids=["nested", "too_many"],
)
async def test_s9_a_batch_is_checked_frame_by_frame_and_may_not_nest_or_grow(
    federation: LocalFederation, breach: list[gateway_pb2.NodeFrame], said: str
) -> None:
    async with running(federation, nodes=("csc",)) as cluster:
        stub = gateway_pb2_grpc.GatewayStub(cluster.gateway_channel("amh"))
        call = stub.Connect()
        await call.write(gateway_pb2.NodeFrame(batch=gateway_pb2.NodeFrames(frames=[BAD] * MAX_BATCH_FRAMES)))
        answers: list[gateway_pb2.GatewayFrame] = []
        while len(answers) < MAX_BATCH_FRAMES:
            answer = await call.read()
            assert isinstance(answer, gateway_pb2.GatewayFrame)
            answers += unbatch(answer)
        assert {a.send_ack.status for a in answers} == {gateway_pb2.SEND_STATUS_REJECTED}
        await call.write(gateway_pb2.NodeFrame(batch=gateway_pb2.NodeFrames(frames=breach)))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async with asyncio.timeout(15):  # taken, the batch would be answered and the stream go on
                while True:
                    await call.read()
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert said in (raised.value.details() or "")


def test_s10_the_gateway_holds_no_key_that_opens_a_summary(federation: LocalFederation) -> None:
    names = {p.name for p in federation.gateway_config.data_dir.rglob("*")}
    assert not names & {"hpke.key", "signing.key", "linkage.key", "key_id"}
    sources = " ".join(p.read_text() for p in Path("gateway").rglob("*.py"))
    assert "hpke" not in sources.lower() and "LinkageKey" not in sources and "MessageKeys" not in sources


def test_s14_a_suite_other_than_the_directory_names_is_refused() -> None:
    ring = make_keyring(("a", "b"))
    out = ring.seal("a", "b")
    routing = envelope_pb2.RoutingHeader.FromString(out.envelope.routing)
    routing.suite = directory_pb2.HPKE_SUITE_MLKEM768X25519_SHA256_AES256GCM
    downgraded = envelope_pb2.Envelope(routing=routing.SerializeToString(), ciphertext=out.envelope.ciphertext)
    with pytest.raises(Rejected) as raised:
        open_envelope(downgraded, me="b", keys=ring.keys["b"], directory=ring.view, now_ms=NOW)
    assert raised.value.reason == Reason.UNSUPPORTED_SUITE


async def test_control_plane_rate_limit_stops_enumeration_and_is_logged(tmp_path: Path) -> None:
    clock = ManualClock()
    federation = make_federation(tmp_path, clock, nodes=("amh",))
    async with running(federation, clock=clock, limits=GatewayLimits(control_per_second=1, control_burst=5)) as cluster:
        stub = gateway_pb2_grpc.GatewayStub(cluster.gateway_channel("amh"))
        codes = []
        for n in range(10):
            try:
                await stub.Subscribe(gateway_pb2.SubscribeRequest(node_id="amh", link_tokens=[bytes([n]) * 32]))
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code())
        assert codes.count(grpc.StatusCode.OK) == 5
        assert codes[5:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 5
        await cluster.gateway.metalog.flush()
        db = cluster.gateway._db
        assert db is not None
        async with db.db.execute("SELECT COUNT(*) FROM metalog WHERE event = 'rate_limited'") as cur:
            row = await cur.fetchone()
        assert row is not None and row[0] == 5
        clock.advance(2_000)  # the bucket refills with time
        await stub.Subscribe(gateway_pb2.SubscribeRequest(node_id="amh", link_tokens=[TOKEN]))


async def test_s7_a_case_system_cannot_name_another_practitioner_than_itself_without_audit(
    federation: LocalFederation,
) -> None:
    """Every call's practitioner is recorded; a call naming nobody is refused."""
    async with running(federation, nodes=("amh",)) as cluster:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await cluster.api("amh").OpenCase(node_api_pb2.OpenCaseRequest(case_ref="x"))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_post_quantum_federation_shares_end_to_end_and_needs_both_signatures(tmp_path: Path) -> None:
    """A federation that chose hybrid ML-KEM-768 + X25519 with an ML-DSA-65 co-signature."""
    from linkage.contentkeys import ContentKeys
    from linkage.envelope import HYBRID, decrypt, encrypt
    from tests.crypto_fixtures import seal as seal_envelope

    clock = ManualClock()
    federation = make_federation(tmp_path, clock, nodes=("amh", "csc"), suite="hybrid")
    async with running(federation, clock=clock) as cluster:
        await share(cluster, await family_assessment(cluster))
        amh, csc = cluster.nodes["amh"], cluster.nodes["csc"]
        await wait_delivered(amh, 1)
        assert amh.store is not None and csc.store is not None
        envelope = envelope_pb2.Envelope.FromString((await amh.store.fetchone("SELECT envelope FROM outbox_bodies"))[0])
        routing = envelope_pb2.RoutingHeader.FromString(envelope.routing)
        assert routing.suite == HYBRID
        assert len(envelope.sealed_key) > 1120  # carries an ML-KEM encapsulation

        # Without the ML-DSA co-signature the message is refused, even with a valid Ed25519 one.
        keys = csc.reception.keys
        signed = envelope_pb2.SignedMessage.FromString(decrypt(envelope, routing, keys))
        signed.pq_signature = b""
        directory = csc.trust.current(clock.now_ms())
        stripped = encrypt(
            routing,
            envelope.routing,
            directory.sealing_key("csc", clock.now_ms()),
            signed.SerializeToString(),
            ContentKeys(),
        )
        with pytest.raises(Rejected) as raised:
            open_envelope(stripped, me="csc", keys=keys, directory=directory, now_ms=clock.now_ms())
        assert raised.value.reason == Reason.BAD_SIGNATURE

        # A sender may not fall back to the classic suite when the directory names hybrid.
        classic = seal_envelope(
            keys=amh.reception.keys,
            sender_node="amh",
            recipient_node="csc",
            recipient_key=directory.sealing_key("csc", clock.now_ms()),
            suite=directory_pb2.HPKE_SUITE_X25519_SHA256_AES128GCM,
            message_id=routing.message_id,
            link_tokens=routing.link_tokens,
            kind=routing.kind,
            created_at_ms=clock.now_ms(),
            share_id="x",
        )
        with pytest.raises(Rejected) as raised:
            open_envelope(classic.envelope, me="csc", keys=keys, directory=directory, now_ms=clock.now_ms())
        assert raised.value.reason == Reason.UNSUPPORTED_SUITE


@contextmanager
def _disk_full(store: Store) -> Iterator[None]:
    """No page more for the node's writer, as on a full disk: another program's data takes
    the file's free pages, and the writer may not grow it. Then room again, as when agency IT
    frees space: that data dropped, and the file free to grow."""
    with closing(sqlite3.connect(store.path)) as other:
        other.execute("CREATE TABLE filler(x BLOB)")
        free, page = (other.execute(f"PRAGMA {p}").fetchone()[0] for p in ("freelist_count", "page_size"))
        other.execute("INSERT INTO filler VALUES (zeroblob(?))", ((free + 1) * page,))
        other.commit()
    store.db.execute(f"PRAGMA max_page_count = {store.db.execute('PRAGMA page_count').fetchone()[0]}")
    try:
        yield
    finally:
        with closing(sqlite3.connect(store.path)) as other:
            other.execute("DROP TABLE filler")
        store.db.execute("PRAGMA max_page_count = 4294967294")


async def _rows(store: Store) -> list[int]:
    return [(await store.fetchone(f"SELECT COUNT(*) FROM {t}"))[0] for t in ("shares", "outbox", "inbox", "audit")]


async def _health(watch: Any, status: int) -> None:
    """Until the node reports `status`: the health service's own stream of changes (a
    failure, not a hang, if it never does)."""
    async with asyncio.timeout(15):
        while (await watch.read()).status != status:
            pass


async def test_r6_a_full_disk_fails_the_node_closed_says_what_to_do_and_loses_nothing(
    tmp_path: Path, captured_logs: CapturedLogs
) -> None:
    """A share on a full disk failed UNKNOWN ("Unexpected <class 'sqlite3.OperationalError'>"),
    and the node went on reporting SERVING. Now the case system hears RESOURCE_EXHAUSTED and
    what to do; nothing of the share stands (no share, message or audit entry); the node
    reports NOT_SERVING, and its metric 0, until a write succeeds again. A recipient whose
    disk is full keeps nothing of what arrives and sends no receipt, so it comes again, and
    is stored once there is room; meanwhile it says so once, and each arrival it could not
    store only by SQLite's name for why (it logged a traceback for each)."""
    clock = ManualClock()
    async with running(make_federation(tmp_path, clock, nodes=("amh", "csc")), clock=clock) as cluster:
        assessment_id = await family_assessment(cluster)
        amh, csc = cluster.nodes["amh"], cluster.nodes["csc"]
        assert amh.store is not None and csc.store is not None
        watches = {}
        for name, node in (("amh", amh), ("csc", csc)):
            channel = cluster.closes(api_channel(node.config.api_socket))
            watches[name] = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))  # type: ignore[attr-defined]
            await _health(watches[name], health_pb2.HealthCheckResponse.SERVING)
        before = await _rows(amh.store)
        with _disk_full(amh.store):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await share(cluster, assessment_id)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (
                "disk is full (SQLITE_FULL): nothing of this call was recorded or sent; ask agency IT to free space"
                in (raised.value.details() or "")
            )
            await _health(watches["amh"], health_pb2.HealthCheckResponse.NOT_SERVING)
            assert amh.metrics.registry.get_sample_value("linkage_node_store_writable") == 0
            assert await _rows(amh.store) == before
        await share(cluster, assessment_id)  # room again: the same call goes through
        await _health(watches["amh"], health_pb2.HealthCheckResponse.SERVING)
        assert amh.metrics.registry.get_sample_value("linkage_node_store_writable") == 1
        await wait_delivered(amh, 1)

        received = await _rows(csc.store)
        with _disk_full(csc.store):
            await share(cluster, assessment_id)
            await _health(watches["csc"], health_pb2.HealthCheckResponse.NOT_SERVING)
            assert await _rows(csc.store) == received
            async with csc.store.tx() as tx:  # a row rewritten in place, which a full disk takes
                await tx.execute("UPDATE cases SET status = status")
            assert csc.store.writability.error == "SQLITE_FULL"  # it proves nothing: still failing closed
        await settle(amh)  # the gateway's ack recorded: a receipt is awaited from now
        clock.advance(amh.config.delivery.receipt_timeout_ms + 1)  # none came: the sender sends it again
        await amh.outbox.send_due()
        await wait_delivered(amh, 2)
        await _health(watches["csc"], health_pb2.HealthCheckResponse.SERVING)
        assert (await _rows(csc.store))[2] == received[2] + 1
    lines = captured_logs.records()
    refused = [line for line in lines if line["event"] in ("message.store_failed", "gateway.frame_failed")]
    assert refused and all(line.get("error") == "SQLITE_FULL" and "exception" not in line for line in refused)
    assert [line["event"] for line in lines].count("store.unwritable") == 2  # once at each node


async def test_r6_a_subscription_whose_entry_the_store_refused_is_recorded_once_it_takes_writes(
    tmp_path: Path, captured_logs: CapturedLogs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A case opened as the disk was remounted read-only: the gateway took its people's
    subscriptions, and the audit entry that says so could not be written. The call answered
    with the case, and the entry was lost for good: the IG officer's log never showed that
    the node told the gateway it is linked to them. Now the entry waits, and is written
    (marked late, with when the gateway took them) as soon as the store takes writes again."""
    clock = ManualClock()
    async with running(make_federation(tmp_path, clock, nodes=("amh", "csc")), clock=clock) as cluster:
        csc = cluster.nodes["csc"]
        assert csc.store is not None
        db, subscribe = csc.store.db, csc.ctx.link.subscribe

        async def then_the_disk_is_read_only(tokens: list[bytes]) -> Subscribed:
            taken = await subscribe(tokens)
            db.execute("PRAGMA query_only = ON")
            return taken

        monkeypatch.setattr(csc.ctx.link, "subscribe", then_the_disk_is_read_only)
        try:
            opened = await cluster.api("csc").OpenCase(
                node_api_pb2.OpenCaseRequest(actor=CSC_WORKER, case_ref="c-1", people=stories.think_family_people())
            )
            taken_at_ms = clock.now_ms()
            assert opened.case_id and len(opened.people) == 2
            (refused,) = captured_logs.records("subscription.not_audited")
            assert refused["error"] == "SQLITE_READONLY" and refused["tokens"] == 2
            assert await audit_events(csc, "subscription.added") == []
        finally:
            db.execute("PRAGMA query_only = OFF")
        clock.advance(1_000)
        # Mended: the next entry the node writes, of anything, shows the store takes writes.
        await cluster.api("csc").DiscoverInvolvement(node_api_pb2.CaseRequest(actor=CSC_WORKER, case_id=opened.case_id))
        async with asyncio.timeout(15):
            await wait_count(csc, "SELECT COUNT(*) FROM audit WHERE event = ?", ("subscription.added",), 1)
        (entry,) = await audit_events(csc, "subscription.added")
        assert entry["detail"] == {"added": 2, "late": True, "taken_at_ms": taken_at_ms}
        assert entry["actor"]["id"] == CSC_WORKER.id and entry["ts_ms"] == taken_at_ms + 1_000
        assert sorted(entry["tokens"]) == sorted(p.link_token.hex() for p in opened.people)


async def test_r6_a_node_whose_store_refuses_writes_as_it_reconnects_connects_once_it_takes_them_again(
    tmp_path: Path, captured_logs: CapturedLogs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node reconnecting re-asserts its subscriptions, and records those it ends. With its
    store refusing writes (a disk remounted read-only), that ended the node's link for good:
    it never connected again, though the store was mended, and nothing told anyone; and the
    refusal, met as the transaction began, did not make the node report NOT_SERVING. Now the
    node says the store is unwritable, the link is begun again after a back-off, and once the
    store takes writes it connects, and what it shares is delivered."""
    monkeypatch.setattr(duties, "RESTART_BASE_MS", 1)  # begun again at once, for the test's speed
    clock = ManualClock()
    async with running(make_federation(tmp_path, clock, nodes=("amh", "csc")), clock=clock) as cluster:
        assessment_id = await family_assessment(cluster)
        amh = cluster.nodes["amh"]
        assert amh.store is not None and amh.link is not None
        async with amh.store.tx() as tx:  # a subscription to end, as when a case closed while the gateway was away
            await tx.execute("INSERT INTO subscriptions_to_end(token) VALUES (?)", (TOKEN,))
        changed = asyncio.Event()
        amh.store.writability.on_change(changed.set)
        amh.store.db.execute("PRAGMA query_only = ON")
        try:
            session = cluster.gateway.sessions.get("amh")
            assert session is not None
            session.close((grpc.StatusCode.UNAVAILABLE, "the gateway's side of the stream ended"))
            async with asyncio.timeout(15):
                await changed.wait()
            assert amh.store.writability.error == "SQLITE_READONLY"
            assert not amh.link.connected.is_set()
            before = await _rows(amh.store)
            with pytest.raises(grpc.aio.AioRpcError) as raised:  # a case system's call meanwhile
                await share(cluster, assessment_id)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE  # unlike a full disk: not a matter of room
            assert raised.value.details() == (
                "the node's store cannot be written (SQLITE_READONLY): nothing of this call was recorded or sent; "
                "ask agency IT to fix its disk, then call again"
            )
            assert await _rows(amh.store) == before
        finally:
            amh.store.db.execute("PRAGMA query_only = OFF")
        async with asyncio.timeout(15):
            await amh.link.connected.wait()
        assert amh.store.writability.error is None
        assert await amh.store.fetchone("SELECT COUNT(*) FROM subscriptions_to_end") == (0,)
        await share(cluster, assessment_id)
        await wait_delivered(amh, 1)
    failed = captured_logs.records("duty.failed")
    assert failed and all(line["duty"] == "GatewayLink.run" and line["error"] == "SQLITE_READONLY" for line in failed)
    assert all("exception" not in line for line in failed)


async def test_r6_a_node_stopped_while_its_store_refuses_writes_stops_and_starts_again_with_its_log_whole(
    tmp_path: Path, captured_logs: CapturedLogs
) -> None:
    """A node stopped (SIGTERM) on a disk remounted read-only: closing its store wrote the
    audit log's frontier, a write the disk refused, and that raised out of the stop, which
    then never closed the store's connections nor let its lock go (and the process ended
    with a traceback). Now the frontier is left, said, and the stop ends as any other; the
    next start reads the frontier from the log itself, and the log verifies."""
    clock = ManualClock()
    async with running(make_federation(tmp_path, clock, nodes=("amh", "csc")), clock=clock) as cluster:
        assessment_id = await family_assessment(cluster)
        await share(cluster, assessment_id)  # audit entries past the frontier stored as the node started
        amh = cluster.nodes["amh"]
        assert amh.store is not None
        amh.store.db.execute("PRAGMA query_only = ON")  # as on a disk remounted read-only
        await cluster.stop_node("amh")
        (said,) = captured_logs.records("store.head_not_stored")
        assert said["error"] == "SQLITE_READONLY" and "exception" not in said
        assert captured_logs.records("node.stopped")
        amh = await cluster.start_node("amh")  # its lock was let go, and its log is read whole
        assert amh.store is not None
        await share(cluster, assessment_id)
        await wait_delivered(amh, 2)
        assert verify_chain(await amh.store.fetchall("SELECT seq, entry, hash FROM audit ORDER BY seq")).ok


@pytest.mark.soak
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_r6_disks_made_read_only_at_random_mid_burst_lose_and_repeat_nothing_soak(
    tmp_path: Path, captured_logs: CapturedLogs, seed: int
) -> None:
    """Three thousand shares from amh, eight at a time, while the disk of amh, csc or the
    gateway, chosen at random, is made read-only for up to half a second and mended, again
    and again: each share the case system was told was accepted reaches csc once; each it
    was refused was refused saying nothing was recorded; and no refusal logged a traceback."""
    rng = random.Random(seed)
    fast = DeliverySettings(retry_base_ms=100, retry_cap_ms=2_000, receipt_timeout_ms=3_000)
    async with running(make_federation(tmp_path, SystemClock(), nodes=("amh", "csc")), nodes=()) as cluster:
        for name in ("amh", "csc"):
            await cluster.start_node(name, delivery=fast)
        assessment_id = await family_assessment(cluster)
        amh, csc = cluster.nodes["amh"], cluster.nodes["csc"]
        assert amh.store is not None and csc.store is not None and cluster.gateway._db is not None
        stores, gateway_db = {"amh": amh.store.db, "csc": csc.store.db}, cluster.gateway._db.db

        async def read_only(name: str, on: bool) -> None:
            pragma = f"PRAGMA query_only = {'ON' if on else 'OFF'}"
            if name == "gateway":
                await gateway_db.execute(pragma)
            else:
                stores[name].execute(pragma)

        accepted: set[str] = set()
        refused: collections.Counter[str] = collections.Counter()
        remaining = iter(range(3_000))
        request = node_api_pb2.ShareSummaryRequest(
            actor=PRACTITIONER, assessment_id=assessment_id, decision=stories.override_decision()
        )

        async def shares() -> None:
            for _ in remaining:
                try:
                    accepted.add((await cluster.api("amh").ShareSummary(request, timeout=10)).share_id)
                except grpc.aio.AioRpcError as exc:
                    refused[f"{exc.code().name}: {exc.details()}"] += 1

        async def faults() -> None:
            while True:
                await asyncio.sleep(rng.uniform(0.05, 0.4))
                name = rng.choice(("amh", "csc", "gateway"))
                await read_only(name, True)
                try:
                    await asyncio.sleep(rng.uniform(0.02, 0.5))
                finally:
                    await read_only(name, False)

        faulting = asyncio.create_task(faults())
        try:
            await asyncio.gather(*(shares() for _ in range(8)))
        finally:
            faulting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await faulting
        assert set(refused) <= {
            "UNAVAILABLE: the node's store cannot be written (SQLITE_READONLY): nothing of this call was recorded "
            "or sent; ask agency IT to fix its disk, then call again"
        }
        (queued,) = await amh.store.fetchone("SELECT COUNT(*) FROM outbox")
        async with asyncio.timeout(120):
            await wait_delivered(amh, queued)
        recorded = {row[0] for row in await amh.store.fetchall("SELECT share_id FROM shares")}
        received = [row[0] for row in await csc.store.fetchall("SELECT share_id FROM inbox")]
        assert accepted <= recorded and len(received) == len(set(received)) and set(received) == recorded
        for store in (amh.store, csc.store):
            assert verify_chain(await store.fetchall("SELECT seq, entry, hash FROM audit ORDER BY seq")).ok
    assert [line for line in captured_logs.records() if "exception" in line] == []


async def test_a_frame_the_gateway_fails_to_handle_ends_that_stream_and_nothing_is_lost(
    tmp_path: Path, captured_logs: CapturedLogs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A defect met while the gateway handled a node's frame ended its reading of that stream
    and nothing else: the stream stayed open, so the node went on sending into it, and what
    it sent (here, its receipts) was never read again, until the node restarted. Now the
    stream is ended with INTERNAL, the failure logged with its traceback, and the node
    reconnects; the message whose receipt was lost is sent again and delivered once."""
    clock = ManualClock()
    async with running(make_federation(tmp_path, clock, nodes=("amh", "csc")), clock=clock) as cluster:
        assessment_id = await family_assessment(cluster)
        amh = cluster.nodes["amh"]
        failed, reopened = asyncio.Event(), asyncio.Event()
        relay_receipt, open_session = GatewayService._relay_receipt, cluster.gateway.sessions.open

        def fails_once(service: GatewayService, session: Any, receipt: envelope_pb2.Receipt) -> None:
            if not failed.is_set():
                failed.set()
                raise RuntimeError("a defect met once")
            relay_receipt(service, session, receipt)

        def opened(node_id: str, certificate: bytes = b"") -> Any:
            session = open_session(node_id, certificate)
            if failed.is_set() and node_id == "csc":
                reopened.set()
            return session

        monkeypatch.setattr(GatewayService, "_relay_receipt", fails_once)
        monkeypatch.setattr(cluster.gateway.sessions, "open", opened)
        await share(cluster, assessment_id)
        async with asyncio.timeout(15):  # a failure, not a hang, if csc never comes back
            await failed.wait()
            await reopened.wait()
        clock.advance(amh.config.delivery.receipt_timeout_ms + 1)  # no receipt came: sent again
        await amh.outbox.send_due()
        async with asyncio.timeout(15):
            await wait_delivered(amh, 1)
        csc = cluster.nodes["csc"]
        assert csc.store is not None
        assert await csc.store.fetchone("SELECT COUNT(*) FROM inbox WHERE kind = ?", (SHARE_KIND,)) == (1,)
    (ended,) = captured_logs.records("stream.failed")
    assert ended["node"] == "csc" and "RuntimeError: a defect met once" in ended["exception"]


async def test_a_receipt_for_a_sender_whose_stream_is_ending_is_said_dropped_and_the_message_still_arrives(
    tmp_path: Path, captured_logs: CapturedLogs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receipt relayed onto the sender's stream as it ended was logged as relayed (and in the
    metadata log), though nothing would write it. It is said dropped; the sender, reconnecting,
    sends again, and the recipient receipts it again."""
    async with running(make_federation(tmp_path, SystemClock(), nodes=("amh", "csc"))) as cluster:
        assessment_id = await family_assessment(cluster)
        relay_receipt = GatewayService._relay_receipt
        ended: list[str] = []

        def as_the_sender_goes(service: GatewayService, session: Any, receipt: envelope_pb2.Receipt) -> None:
            sender = cluster.gateway.sessions.get("amh")
            if not ended and sender is not None:  # the first receipt comes as amh's stream ends
                sender.close()
                ended.append(envelope_pb2.ReceiptBody.FromString(receipt.body).message_id)
            relay_receipt(service, session, receipt)

        monkeypatch.setattr(GatewayService, "_relay_receipt", as_the_sender_goes)
        await share(cluster, assessment_id)
        async with asyncio.timeout(15):
            await wait_delivered(cluster.nodes["amh"], 1)
    lines = captured_logs.records()
    said = [line["event"] for line in lines if line.get("message_id") == ended[0] and "receipt." in line["event"]]
    assert said == ["receipt.dropped"], said  # (relayed is logged at debug)


async def test_a_stream_the_gateway_ends_with_a_status_ends_without_an_error_logged(
    tmp_path: Path, captured_logs: CapturedLogs
) -> None:
    """The gateway ends a node's stream with a status (replaced by a newer one, its node
    revoked or too far behind, the gateway going away): the stream's reader, waiting for the
    node's next frame, is told the call was aborted here. That is the stream ending as meant;
    it was logged as a defect, at error, with a traceback, each time."""
    async with running(make_federation(tmp_path, SystemClock(), nodes=("amh",))) as cluster:
        amh = cluster.nodes["amh"]
        assert amh.link is not None
        for _ in range(3):
            with pytest.raises(GatewayRefused):  # refused on the stream: the gateway holds it
                await amh.link.resolve([bytes(32)])
            stream = cluster.gateway.sessions.get("amh")
            assert stream is not None
            amh.link.connected.clear()
            stream.close((grpc.StatusCode.UNAVAILABLE, "ended by the test"))
            await amh.link.connected.wait()
    lines = captured_logs.records()
    assert [line["event"] for line in lines if line["event"] == "disconnect"] == ["disconnect"] * 4
    assert not [line for line in lines if line["level"] in ("error", "critical")]


@asynccontextmanager
async def _read_only(db: GatewayDb) -> AsyncIterator[None]:
    """SQLite refuses every write to the gateway's store, as on a disk remounted read-only;
    then takes them again, as when its operator mends it. (A full disk, as the node's test
    makes it, is not exact enough here: a few metadata-log entries still fit in the free
    space of its last page.)"""
    await db.db.execute("PRAGMA query_only = ON")
    try:
        yield
    finally:
        await db.db.execute("PRAGMA query_only = OFF")


async def _metalog(db: GatewayDb) -> list[tuple[str, str]]:
    """The metadata log's (event, outcome)s, once its chain is checked."""
    rows = await db.read("SELECT seq, entry, hash FROM metalog ORDER BY seq")
    checked = verify_chain(rows)
    assert checked.ok, checked.problem
    return [(entry["event"], entry["decision"]) for entry in (json.loads(row[1]) for row in rows)]


async def test_r6_a_gateway_that_cannot_write_its_store_relays_nothing_new_says_why_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Subscribe on a gateway whose store refused writes failed UNKNOWN; the gateway went on
    reporting SERVING and relaying envelopes it could not record in its metadata log. Now the
    node hears UNAVAILABLE and why, the gateway reports NOT_SERVING (metric 0) and answers each
    envelope BUSY for the sender to hold back everything; what its log could not take waits in
    memory, and is appended, in order, once the store takes writes again. Then the held
    message goes through."""
    monkeypatch.setattr(metalog, "RETRY_EVERY_S", 0.05)  # its next try, sooner
    monkeypatch.setattr(gateway_server, "DIRECTORY_CHECK_S", 3600.0)  # health changes by the store alone
    clock = ManualClock()
    async with running(make_federation(tmp_path, clock, nodes=("amh", "csc")), clock=clock) as cluster:
        assessment_id = await family_assessment(cluster)
        amh, csc, gateway = cluster.nodes["amh"], cluster.nodes["csc"], cluster.gateway
        assert csc.store is not None and gateway._db is not None
        await share(cluster, assessment_id)
        await wait_delivered(amh, 1)
        channel = cluster.gateway_channel("amh")
        stub = gateway_pb2_grpc.GatewayStub(channel)
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))  # type: ignore[attr-defined]
        await _health(watch, health_pb2.HealthCheckResponse.SERVING)
        received = await _rows(csc.store)
        await gateway.metalog.flush()
        before = len(await _metalog(gateway._db))
        async with _read_only(gateway._db):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.Subscribe(gateway_pb2.SubscribeRequest(node_id="amh", link_tokens=[TOKEN]))
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            assert (
                "the gateway cannot write its store (SQLITE_READONLY): nothing of this call was recorded; "
                "its operator must free space or fix its disk" in (raised.value.details() or "")
            )
            await _health(watch, health_pb2.HealthCheckResponse.NOT_SERVING)
            assert gateway.metrics.registry.get_sample_value("linkage_gateway_store_writable") == 0
            await share(cluster, assessment_id)
            await settle(amh)  # the gateway has answered it
            busy = amh.metrics.registry.get_sample_value("linkage_node_busy_answers_total", {"limit": "gateway"})
            assert busy == 1
            assert await _rows(csc.store) == received
            assert gateway.metalog.pending > 0
        await _health(watch, health_pb2.HealthCheckResponse.SERVING)  # the log's next try took what waited
        assert gateway.metrics.registry.get_sample_value("linkage_gateway_store_writable") == 1
        clock.advance(UNWRITABLE_RETRY_MS)  # the hold the gateway asked for
        await amh.outbox.send_due()
        await wait_delivered(amh, 2)
        await gateway.metalog.flush()
        events = (await _metalog(gateway._db))[before:]
        refused = events.index(("subscribe.refused", "UNAVAILABLE"))
        held = events.index(("envelope.busy", "gateway_unwritable"))
        forwarded = [n for n, (event, _) in enumerate(events) if event == "envelope.forwarded"]
        assert refused < held < forwarded[0] and len(forwarded) == 1
        await stub.Subscribe(gateway_pb2.SubscribeRequest(node_id="amh", link_tokens=[TOKEN]))


async def test_r6_a_gateway_backup_entered_while_its_store_refuses_writes_is_entered_once_when_it_takes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The metadata log keeps an entry its store refused, to commit later: the backup's record
    stays until then, and looking again meanwhile does not queue the entry a second time."""
    monkeypatch.setattr(gateway_server, "DIRECTORY_CHECK_S", 3600.0)  # the test looks, not the file watch
    async with running(make_federation(tmp_path, ManualClock(), nodes=("amh",)), nodes=()) as cluster:
        gateway = cluster.gateway
        assert gateway._db is not None
        record = store_notes.BackupRecord("01a20105-405a-7c0b", NOW, "gw.age", "ab" * 32, 1, [], "", 0, "")
        store_notes.leave(gateway.config.store_path, record)
        async with _read_only(gateway._db):
            for _ in range(3):
                await gateway.check_backups()
            assert list(store_notes.waiting(gateway.config.store_path))
        await gateway.check_backups()
        assert not list(store_notes.waiting(gateway.config.store_path))
        assert [e for e, _ in await _metalog(gateway._db)].count("store.backed_up") == 1


async def test_r6_a_gateway_stopped_while_its_store_refuses_writes_keeps_what_waits_and_enters_it_once(
    tmp_path: Path,
) -> None:
    """What waits for the store when the gateway stops is written beside it, and entered ahead
    of anything new at the next start, with an entry saying so; a file whose entries are in
    the log already (the gateway stopped between committing them and removing it) is only
    removed."""
    config = make_federation(tmp_path, ManualClock(), nodes=("amh",)).gateway_config
    kept = kept_path(config.store_path)

    async def started() -> GatewayServer:
        gateway = GatewayServer(config, SystemClock())
        await gateway.start()
        return gateway

    gateway = await started()
    assert gateway._db is not None
    await gateway._db.db.execute("PRAGMA query_only = ON")  # as _read_only, never lifted
    for n in range(3):
        gateway.metalog.record("resolve", "amh", message_id=f"m{n}")
    gateway.metalog.record("resolve", "amh", message_id="m3")
    await gateway.stop(grace=0)
    saved = kept.read_bytes()
    assert b'"m3' in saved

    for _ in range(2):
        gateway = await started()
        try:
            assert not kept.exists() and gateway._db is not None
            await _metalog(gateway._db)  # the chain checked
            rows = await gateway._db.read("SELECT entry FROM metalog ORDER BY seq")
            entries = [json.loads(row[0]) for row in rows]
            ids = [e["message_id"] for e in entries]
            at = ids.index("m0")
            assert ids[at : at + 4] == ["m0", "m1", "m2", "m3"] and ids.count("m0") == 1
            assert entries[at + 4]["event"] == "metalog.kept"
            assert entries[at + 4]["detail"]["entries"] == 4
        finally:
            await gateway.stop()
        kept.write_bytes(saved)  # as if stopped before removing it: entered once all the same
    kept.unlink()


def _kept_at_stop(db: GatewayDb, kept: Path, events: int) -> int:
    """A metadata log stopping with `events` waiting for its store: how many it kept in `kept`."""
    stopping = MetaLog(db, ManualClock(), "gw")
    for n in range(events):
        stopping.record("resolve", "amh", message_id=f"m{n}")
    return stopping.keep(kept)


async def test_r6_kept_entries_a_store_still_refuses_wait_with_their_file_and_a_file_that_cannot_be_read_is_left(
    gateway_db: GatewayDb, tmp_path: Path, captured_logs: CapturedLogs
) -> None:
    """At a start whose store still refuses writes, what a stop kept waits with the rest and
    its file stays until they are in; a file that cannot be read is left for a person, and said."""
    kept = tmp_path / "gateway.sqlite.metalog-kept"
    assert _kept_at_stop(gateway_db, kept, 2) == 2
    log = MetaLog(gateway_db, ManualClock(), "gw")
    await log.load()
    async with _read_only(gateway_db):
        assert await log.take_kept(kept) == 0
        assert kept.exists() and log.pending == 3
    await log.flush()
    assert not kept.exists()
    assert await _metalog(gateway_db) == [("resolve", ""), ("resolve", ""), ("metalog.kept", "")]

    kept.write_text('{"format": "half')
    assert await log.take_kept(kept) == 0 and kept.exists() and log.pending == 0
    (said,) = captured_logs.records("metalog.kept_unreadable")
    assert said["level"] == "error" and said["file"] == kept.name


async def test_r6_what_a_stop_counted_past_the_bound_is_recorded_at_the_next_start(
    gateway_db: GatewayDb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events past the bound when the gateway stops go into the kept file as counts beside
    the entries held, and the next start records both: the entries, the entry saying they
    were kept, then the count."""
    monkeypatch.setattr(metalog, "MAX_PENDING", 2)
    kept = tmp_path / "gateway.sqlite.metalog-kept"
    assert _kept_at_stop(gateway_db, kept, 5) == 2
    log = MetaLog(gateway_db, ManualClock(), "gw")
    await log.load()
    assert await log.take_kept(kept) == 2 and not kept.exists()
    rows = await gateway_db.read("SELECT entry FROM metalog ORDER BY seq")
    entries = [json.loads(row[0]) for row in rows]
    assert [(e["event"], e["message_id"]) for e in entries] == [
        ("resolve", "m0"),
        ("resolve", "m1"),
        ("metalog.kept", ""),
        ("metalog.unrecorded", ""),
    ]
    assert entries[3]["detail"] == {"events": {"resolve": 3}}
    assert (await _metalog(gateway_db))[-1] == ("metalog.unrecorded", "")  # the chain checked


async def test_r6_a_gateway_that_can_neither_commit_nor_keep_what_waits_puts_it_in_its_operational_log(
    tmp_path: Path, captured_logs: CapturedLogs
) -> None:
    """The last resort: the entries, ids and counts as the metadata log holds them, one line each."""
    config = make_federation(tmp_path, ManualClock(), nodes=("amh",)).gateway_config
    kept_path(config.store_path).mkdir()  # nothing can be written in its place
    gateway = GatewayServer(config, SystemClock())
    await gateway.start()
    assert gateway._db is not None
    await gateway._db.db.execute("PRAGMA query_only = ON")
    for n in range(2):
        gateway.metalog.record("resolve", "amh", message_id=f"m{n}", outcome="ok", tokens=1)
    await gateway.stop(grace=0)
    lines = captured_logs.records()
    (stopped,) = [line for line in lines if line["event"] == "metalog.unflushed_at_stop"]
    assert stopped["entries"] == 2
    logged = [line for line in lines if line["event"] == "metalog.unflushed_entry"]
    assert [(e["entry_event"], e["node"], e["message_id"], e["outcome"], e["detail"]) for e in logged] == [
        ("resolve", "amh", f"m{n}", "ok", {"tokens": 1}) for n in range(2)
    ]


async def test_r6_a_metadata_log_that_cannot_be_written_counts_what_it_cannot_hold(
    gateway_db: GatewayDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What waits for the store is held in memory up to a bound; past it, events are counted
    by kind, and the count is appended as one entry after what was held."""
    monkeypatch.setattr(metalog, "MAX_PENDING", 3)
    db, log = gateway_db, MetaLog(gateway_db, ManualClock(), "gw")
    async with _read_only(db):
        for n in range(7):
            log.record("envelope.forwarded" if n % 2 else "resolve", "amh", message_id=f"m{n}")
        with pytest.raises(sqlite3.OperationalError):
            await log.flush()
        assert db.writability.error == "SQLITE_READONLY"
        log.record("connect", "csc")  # a failed flush keeps the count too
        with pytest.raises(sqlite3.OperationalError):
            await log.flush()
    await log.flush()
    assert db.writability.error is None
    rows = await db.read("SELECT entry FROM metalog ORDER BY seq")
    entries = [json.loads(row[0]) for row in rows]
    assert [e["message_id"] for e in entries[:3]] == ["m0", "m1", "m2"]
    assert entries[3]["event"] == "metalog.unrecorded" and entries[3]["actor"]["id"] == "gw"
    assert entries[3]["detail"] == {"events": {"envelope.forwarded": 2, "resolve": 2, "connect": 1}}
    assert len(entries) == 4
    assert (await _metalog(db))[-1] == ("metalog.unrecorded", "")


async def test_r6_what_a_flush_under_way_holds_counts_against_the_bound(
    gateway_db: GatewayDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries a flush has taken but not yet written are still held in memory: while it waits
    for the store, what comes beyond the bound is counted, not held as well."""
    monkeypatch.setattr(metalog, "MAX_PENDING", 3)
    db, log = gateway_db, MetaLog(gateway_db, ManualClock(), "gw")
    for n in range(2):
        log.record("resolve", "amh", message_id=f"m{n}")
    async with db._lock:  # the store busy with another transaction
        flushing = asyncio.create_task(log.flush())
        await asyncio.sleep(0)  # it takes the two, and waits for the store
        for n in range(2, 5):
            log.record("resolve", "amh", message_id=f"m{n}")
    await flushing
    await log.flush()
    rows = await db.read("SELECT entry FROM metalog ORDER BY seq")
    entries = [json.loads(row[0]) for row in rows]
    assert [e["message_id"] for e in entries] == ["m0", "m1", "m2", ""]
    assert entries[3]["detail"] == {"events": {"resolve": 2}}


async def test_a_metadata_entry_that_cannot_be_written_is_said_in_its_place_and_its_batch_commits(
    gateway_db: GatewayDb,
) -> None:
    """A defect that records what JSON cannot hold (here, bytes in an entry's detail) once
    failed the flush before its transaction, and the whole batch was lost: now the entry is
    said in its place (`metalog.unencodable`, with its event), and the chain goes on."""
    db, log = gateway_db, MetaLog(gateway_db, ManualClock(), "gw")
    log.record("resolve", "amh", message_id="m0")
    log.record("resolve", "amh", message_id="m1", unencodable=b"\x00")
    log.record("resolve", "csc", message_id="m2")
    await log.flush()
    rows = await db.read("SELECT seq, entry, hash FROM metalog ORDER BY seq")
    assert verify_chain(rows).ok
    entries = [json.loads(row[1]) for row in rows]
    assert [(e["event"], e["message_id"]) for e in entries] == [
        ("resolve", "m0"),
        ("metalog.unencodable", ""),
        ("resolve", "m2"),
    ]
    assert entries[1]["detail"] == {"event": "resolve", "error": "TypeError"}


async def test_r6_a_metadata_log_the_store_refused_is_tried_again_though_nothing_new_comes(
    gateway_db: GatewayDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle gateway still finds out that its store takes writes again: the flush it was
    refused is tried again, so its health does not wait for the next event."""
    monkeypatch.setattr(metalog, "RETRY_EVERY_S", 0.05)
    db, log = gateway_db, MetaLog(gateway_db, ManualClock(), "gw")
    changed = asyncio.Event()
    db.writability.on_change(changed.set)
    flushing = asyncio.create_task(log.run())
    try:
        async with asyncio.timeout(15):  # a failure, not a hang, if either never comes
            async with _read_only(db):
                log.record("connect", "amh")
                await changed.wait()  # its flush was refused
                changed.clear()
                assert db.writability.error == "SQLITE_READONLY"
            await changed.wait()  # and tried again, with nothing new recorded
        assert db.writability.error is None
        assert await _metalog(db) == [("connect", "")]
    finally:
        flushing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flushing
