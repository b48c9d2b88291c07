"""Running a node: store, keys, gateway stream, outbox, and the local API."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from linkage import logs
from linkage.clock import Clock, SystemClock
from linkage.config import ConfigError, NodeConfig
from linkage.directory import DirectoryView, read_signed
from linkage.duties import Duty, begin
from linkage.files import write_atomic
from linkage.keys import MessageKeys
from linkage.metrics import MetricsEndpoint
from linkage.pki import CertificateProblem, spiffe_id
from linkage.reasons import Rejected
from linkage.renewal import CertificateWatch, Renewal, new_roots, roots_detail, write_roots
from linkage.runtime import serve_until_signalled
from linkage.store_notes import NEWEST_ID
from linkage.tokens import MAX_TOKENS_PER_MESSAGE, LinkageKey
from linkage.transport import API_SERVER_OPTIONS, LINK_HEALTH_SERVICE, unix_address
from linkage.v1 import directory_pb2, gateway_pb2
from linkage.writability import StoreUnusable, log_failure, unwritable
from node import retention
from node.api import SERVICE_NAME, NodeApiService, add_to_server
from node.audit_events import AuditEvent
from node.backup_log import enter_backups
from node.cases import Cases
from node.checkpoints import Checkpointer
from node.chronology import Chronologies
from node.context import NodeContext
from node.inbox import Inbox
from node.link import ANSWERS, DELIVERIES, GatewayLink
from node.messaging import Messenger
from node.metrics import NodeMetrics
from node.outbox import Outbox
from node.policy import PolicyContext
from node.policy_files import load_policy
from node.reception import InboxFeed, Reception
from node.redelivery import Redelivery, ask_again_if_restored, ask_again_if_rolled_back
from node.requests import Requests
from node.resolver import Resolver
from node.sharing import Sharing
from node.store import Store

DIRECTORY_CHECK_S = 300.0
LOOK_GAP_S = 1.0  # between looks, however often one is asked for
log = logs.get("node")
Source = TypeVar("Source")
Loaded = TypeVar("Loaded")


def _loaded(what: str, source: Source, load: Callable[[Source], Loaded]) -> Loaded:
    """`load(source)`, or a ConfigError that says what could not be loaded from where."""
    try:
        return load(source)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot load {what} from {source}: {exc}") from exc


class NodeServer:
    keys: MessageKeys  # from start(), and replaced when rotated (check_keys)

    def __init__(self, config: NodeConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.trust = config.federation.trusted_directory()
        self.health = health.aio.HealthServicer()
        self.feed = InboxFeed()
        self._tasks: list[asyncio.Task[None]] = []
        self._server: grpc.aio.Server | None = None
        self.store: Store | None = None
        self.link: GatewayLink | None = None
        self._renewal: Renewal | None = None  # renewed TLS files, until the directory pins them
        self._said_waiting: Renewal | None = None
        self._keys_said = ""  # what was last said of the keys in the bundle
        self._roots_at_start: list[str] | None = None  # CAs its directory file named, written before the store opened
        self._roots_audited: list[str] | None = None  # CAs whose change is audited: not again while the file waits
        self._roots_due = True  # the held directory's CAs are to be compared with the CA file: at the next look
        self._directory_unkept = False  # the directory held could not be written to the directory file: at each look
        self._restore_unasked = False  # a restored store whose loss is yet to be asked for: with the next directory
        # A directory, keys or a certificate taken one at a time: a SIGHUP during the periodic look,
        # or a reconnection during either, would otherwise audit and apply the same change twice.
        self._changing = asyncio.Lock()
        self._look_now = asyncio.Event()  # a newer directory is known of: the periodic look, at once

    def _load_directory_file(self) -> None:
        path = self.config.federation.directory
        if not path.exists():
            return
        try:  # one that will not do is fetched from the gateway instead, as one that is missing
            view = self.trust.accept(read_signed(path), self.clock.now_ms())
            log.info("directory.loaded", version=view.version, source="file")
        except Rejected as exc:
            log.warning("directory.refused", reason=exc.reason.value, source="file")
            return
        # Written before the TLS files are read; audited once the store is open (not written: at the first look).
        if (roots := new_roots(self.config.tls, view.directory)) is not None and write_roots(self.config.tls, roots):
            self._roots_at_start = roots_detail(roots)

    async def _on_connect(self) -> None:
        """Before each stream: take a newer directory, then re-assert every subscription."""
        assert self.link is not None
        if (signed := await self.link.fetch_directory(self.trust.version)) is not None:  # None: it is the one held
            await self._take_directory(signed)
        await self._follow_roots()
        # Keys the directory just taken names: what others queued while this node was away may
        # be sealed to them, and comes as soon as the stream opens.
        await self.check_keys()
        await self.check_certificate()  # a stream to come opens with a renewed certificate
        await self.cases.reassert_subscriptions()

    async def check_directory(self) -> None:
        """Take a newer directory from the gateway; fail closed (NOT_SERVING) once ours has expired."""
        if self.link is not None and self.link.connected.is_set():
            try:
                if (signed := await self.link.fetch_directory(self.trust.version)) is not None:
                    await self._take_directory(signed)
            except grpc.aio.AioRpcError as exc:  # tried again at the next check; said, so it is not silent until expiry
                log.warning("directory.fetch_failed", status=exc.code().name)
        if self._directory_unkept:
            async with self._changing:
                if (view := self.trust.view) is not None and self._directory_unkept:
                    await self._keep_directory(view)
        await self._follow_roots()  # from the directory held, while away too: the CAs may be what keeps it away
        await self._report_serving()

    async def _take_directory(self, signed: directory_pb2.SignedDirectory) -> None:
        """A directory from the gateway, if newer and valid; a new version is audited before it
        is taken, with the key that signs it when that changed (the federation rotated it)."""
        async with self._changing:
            held = self.trust.version
            try:
                view, signer = self.trust.check(signed, self.clock.now_ms())
            except Rejected as exc:
                log.warning("directory.refused", reason=exc.reason.value, source="gateway")
                return
            if view.version == held:  # taken by a look that fetched it too and ran first
                return
            detail: dict[str, Any] = {"version": view.version, "previous": held}
            if signer is not None:
                detail["signing_key"] = signer.public_bytes_raw().hex()
            if not await self._recorded("directory.accepted", detail, failed="directory.accept_not_audited"):
                return
            # Before a new key that signs it is trusted: a crash between the two leaves a
            # file whose handovers lead on from the key still trusted, not one no key signs.
            await self._keep_directory(view)
            self.trust.take(view, signer)
            log.info("directory.loaded", version=view.version, source="gateway")
            self._roots_due = True
            if self._restore_unasked:  # no directory to seal its requests by as it started: now there is
                self._restore_unasked = await ask_again_if_restored(self.ctx)
            await self._report_serving()  # one that started without a current directory now has one

    async def _follow_roots(self) -> None:
        """Trust the CAs the held directory names where the CA file differs (a rotation of the
        federation CA began or ended): audited once, then written, and the certificate check
        that follows takes them. A change whose entry or file could not be written is tried
        again at each look, not only when a newer directory comes: without it this node may
        not reach a gateway that moved to the new CA."""
        async with self._changing:
            view = self.trust.view
            if not self._roots_due or view is None:
                return
            if (roots := new_roots(self.config.tls, view.directory)) is None:  # nothing to change, or refused
                self._roots_due = False
                return
            detail = roots_detail(roots)
            if detail != self._roots_audited:
                if not await self._recorded("tls.roots_changed", {"roots": detail}, failed="tls.roots_failed"):
                    return
                self._roots_audited = detail
            self._roots_due = not write_roots(self.config.tls, roots)

    async def _keep_directory(self, view: DirectoryView) -> None:
        """Write a directory taken from the gateway over the directory file: a restart while the
        gateway is away starts from it, not from one lapsed since, and the commands that read
        the bundle (`linkage directory`, `linkage audit ...`) read what the node holds."""
        try:
            await asyncio.to_thread(write_atomic, self.config.federation.directory, view.signed.SerializeToString())
        except OSError as exc:  # held all the same, and written at a later look once it can be
            log.error("directory.not_saved", version=view.version, error=exc.strerror)
            self._directory_unkept = True
            return
        self._directory_unkept = False

    async def reload(self) -> None:
        """On SIGHUP, and every few minutes: a newer directory, rotated message keys, renewed TLS
        files, and backups taken to enter in the audit log."""
        await self.check_directory()
        await self.check_keys()
        await self.check_certificate()
        await self.check_backups()

    async def check_backups(self) -> None:
        assert self.store is not None
        try:
            await enter_backups(self.store)
        except Exception as exc:  # its store refused, say: the records wait for the next look
            log_failure(log, "backup.record_failed", exc)

    async def check_keys(self) -> None:
        """Take a generation of message keys `federation rotate-keys` put in the bundle, without
        a restart: senders seal to it, and this node signs with it, once the directory
        activates it; what was sealed to any generation held still opens. Recorded first."""
        assert self.store is not None
        async with self._changing:
            folder = self.config.message_keys
            try:
                if (folder / "key_id").read_text().strip() == self.keys.key_id:
                    return
                keys = MessageKeys.load(folder)
                if keys.for_id(self.keys.key_id) is None:
                    in_use = self.keys.key_id
                    raise ValueError(f"they no longer hold {in_use!r}, the generation in use: not its rotation")
                named = self._directory_key(keys.key_id)
                if named is not None and keys.public_halves() != named:
                    raise ValueError(f"they are not the keys the directory names {keys.key_id!r} (half copied?)")
            except (OSError, ValueError) as exc:  # a rotation under way or cut short, or not this node's keys
                self._say_once("keys.reload_refused", f"{folder}: {exc}")
                return
            if named is None:  # taken once the directory names them, so every public half can be checked
                waiting = f"{keys.key_id!r} is in the bundle; no directory held names it yet"
                self._say_once("keys.reload_waiting", waiting, warn=False)
                return
            detail = {"key_id": keys.key_id, "previous": self.keys.key_id}
            if not await self._recorded("keys.loaded", detail, failed="keys.reload_failed"):
                return
            self.keys = keys
            for holder in (self.ctx.messenger, self.reception, self.checkpoints):  # each signs or opens with them
                holder.keys = keys
            log.info("keys.loaded", key_id=keys.key_id)

    async def hung_up(self) -> None:
        """SIGHUP: what `reload` looks for, and the policy files as they are now."""
        await self.reload()
        await self.check_policy()

    async def check_policy(self) -> None:
        """Take the agreement, glossary and code lists as their files now are (`[policy]`), on
        SIGHUP alone: an operator's edit is taken when they say it is done, not half-way at a
        periodic look. Loaded whole or not at all, and recorded first, with the versions it
        replaces; every share decided after names the new ones. One that does not load, or
        that changes the identity-basis codes (the chronology is derived again under those
        as the node starts), is refused, saying why, and the policy in use stands."""
        assert self.store is not None
        async with self._changing:
            held = self.ctx.policy
            try:
                policy = await asyncio.to_thread(_loaded, "the policy", self.config.policy, load_policy)
            except ConfigError as exc:
                log.error("policy.reload_refused", problem=str(exc))
                return
            if policy == held:
                log.info("policy.unchanged", agreement=held.agreement.version, codelists=held.codes.version)
                return
            if policy.codes.digest("identity_basis") != held.codes.digest("identity_basis"):
                problem = "its identity-basis codes differ from those in use: restart the node to take them"
                log.error("policy.reload_refused", problem=problem)
                return
            detail = {
                "agreement": policy.agreement.version,
                "codelists": policy.codes.version,
                "previous_agreement": held.agreement.version,
                "previous_codelists": held.codes.version,
            }
            if not await self._recorded("policy.loaded", detail, failed="policy.reload_failed"):
                return
            self.ctx.policy = policy
            log.info("policy.loaded", agreement=policy.agreement.version, codelists=policy.codes.version)

    async def check_certificate(self) -> None:
        """Move to renewed TLS files once the directory pins their certificate (until then the
        gateway refuses it, and accepts the one in use); warn daily as the one in use nears
        its end. The stream is opened again on the new certificate; nothing in flight is lost."""
        assert self.link is not None and self.store is not None
        async with self._changing:
            self.certificate.warn_if_lapsing()
            if (renewal := self.certificate.renewal()) is not None:
                self._renewal = renewal
            if (waiting := self._renewal) is not None:
                if self.trust.pinned_certificate(self.config.node_id) == waiting.checked.fingerprint:
                    fingerprint, lapses = waiting.checked.fingerprint.hex(), waiting.checked.not_after_ms
                    detail = {"fingerprint": fingerprint, "lapses_ms": lapses}
                    if not await self._recorded("tls.certificate_renewed", detail, failed="tls.renewal_failed"):
                        return
                    self._renewal = None
                    self.certificate.use(waiting)
                    await self.link.use_tls(waiting.material)
                elif waiting is not self._said_waiting:
                    self._said_waiting = waiting
                    log.info(
                        "tls.renewal_waiting",
                        fingerprint=waiting.checked.fingerprint.hex(),
                        until="a directory that pins it",
                    )

    def _directory_key(self, key_id: str) -> tuple[bytes, bytes, bytes, bytes] | None:
        """The public halves of one of this node's key generations, as the directory held names them."""
        entry = self.trust.node_entry(self.config.node_id)
        key = next((k for k in entry.keys if k.key_id == key_id), None) if entry else None
        if key is None:
            return None
        return key.signing_public_key, key.hpke_public_key, key.hpke_pq_public_key, key.mldsa_public_key

    def _say_once(self, event: str, problem: str, warn: bool = True) -> None:
        """What is wrong with the keys in the bundle, or what they wait for, once for each: they
        are looked at every few minutes."""
        if problem != self._keys_said:
            self._keys_said = problem
            (log.warning if warn else log.info)(event, problem=problem)

    async def _recorded(self, event: AuditEvent, detail: dict[str, Any], failed: str) -> bool:
        """Audit a change to what this node signs, opens or connects with, before it is made;
        False (logged as `failed`) if the entry could not be committed: the change then waits
        for the next look."""
        assert self.store is not None
        try:
            async with self.store.tx() as tx:
                await tx.audit(event, detail=detail)
        except Exception as exc:
            log_failure(log, failed, exc)
            return False
        return True

    async def _report_serving(self) -> None:
        """SERVING while the directory is current and the store can be written; NOT_SERVING
        (failing closed) while either is not."""
        writable = self.store is not None and self.store.writability.error is None
        serving = writable and self.trust.serving(self.clock.now_ms())
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def _watch_files(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):  # every few minutes, or at once when one is due
                async with asyncio.timeout(DIRECTORY_CHECK_S):
                    await self._look_now.wait()
            self._look_now.clear()
            await self.reload()
            await asyncio.sleep(LOOK_GAP_S)  # told again and again (a sender it still does not know): not faster

    def _directory_announced(self, version: int) -> None:
        """The gateway took a newer directory than ours (an agency enrolled, revoked, or with
        new keys): look now, not at the next look, so what others send under it is opened."""
        if version > self.trust.version:
            self._look_now.set()

    async def _on_link_state(self, up: bool) -> None:
        if up:
            await self.outbox.on_connected()
        else:
            await self.outbox.disconnected()
        status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set(LINK_HEALTH_SERVICE, status)

    async def _on_frames(self, frames: list[gateway_pb2.GatewayFrame]) -> None:
        """A run of answers to our sends, a run of deliveries (each stored together), or one
        other frame."""
        first = frames[0]
        which = first.WhichOneof("frame")
        if which in ANSWERS:
            await self.outbox.on_answers([f.send_ack if f.HasField("send_ack") else f.receipt for f in frames])
        elif which in DELIVERIES:
            await self.reception.on_envelopes([f.deliver for f in frames])
        elif which == "peer_online":
            await self.outbox.on_peer_online(first.peer_online.node_id)

    async def start(self) -> None:
        """Open the store, connect and serve. What is read from files is read first, so a bad
        file stops the node before it opens anything; if a later step fails, what was opened
        is closed again, so the process can exit (and say why) rather than hang."""
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self._load_directory_file()
        keys = _loaded("the message keys", config.message_keys, MessageKeys.load)
        identity = spiffe_id(config.federation.federation_id, "node", config.node_id)
        self.certificate = _loaded("the TLS files", config.tls, lambda tls: CertificateWatch(tls, identity, self.clock))
        try:  # the node still serves its case systems, who may read what it holds meanwhile
            self.certificate.in_use.check(identity, self.clock.now_ms())
        except CertificateProblem as exc:
            log.error("tls.certificate_unusable", problem=str(exc))
        linkage_key = _loaded("the linkage key", config.linkage_key, LinkageKey.load)
        policy = _loaded("the policy", config.policy, load_policy)
        self.store = await Store.open(config.store_path, self.clock)
        try:
            await self._start(keys, linkage_key, policy)
        except BaseException as exc:
            await self._close_after_failed_start()
            if (error := unwritable(exc)) is not None:  # said as a file it cannot use, not as a defect
                raise StoreUnusable(
                    f"{config.store_path} cannot be written ({error}): the node did not start; "
                    "ask agency IT to free space on its disk or mend it, then start it again"
                ) from exc
            raise

    async def _close_after_failed_start(self) -> None:
        if self._server is not None:
            await self._server.stop(None)
        if self.link is not None:
            self.metrics_endpoint.stop()
            await self.link.close()
        if self.store is not None:
            await self.store.close()
            self.store = None

    async def _start(self, keys: MessageKeys, linkage_key: LinkageKey, policy: PolicyContext) -> None:
        config = self.config
        self.keys = keys
        assert self.store is not None
        if self._roots_at_start is not None:
            detail = {"roots": self._roots_at_start, "source": "file"}
            await self._recorded("tls.roots_changed", detail, failed="tls.roots_failed")
        self.metrics = self._bound_metrics(self.store)
        self.metrics_endpoint = MetricsEndpoint(self.metrics.registry)
        self.link = GatewayLink(
            config.node_id,
            config.gateway_address,
            config.gateway_server_name,
            self.certificate.in_use,
            on_connect=self._on_connect,
            on_frames=self._on_frames,
            on_state=self._on_link_state,
        )
        link = self.link
        self.metrics.gateway_connected.set_function(lambda: float(link.connected.is_set()))
        self.outbox = Outbox(
            self.store, self.link, self.trust, config.node_id, self.clock, config.delivery, metrics=self.metrics
        )
        self.checkpoints = Checkpointer(
            self.store, self.link, keys, config.node_id, self.clock, self.trust, self.metrics
        )
        messenger = Messenger(
            config.node_id, keys, self.trust, self.clock, config.delivery, self.outbox.fresh, self.outbox.unsent
        )
        (newest,) = await self.store.fetchone(NEWEST_ID)
        if newest:  # what it makes from now on comes after it, however the clock was set meanwhile
            messenger.ids.after(newest)
        self.reception = Reception(
            self.store,
            self.link,
            self.trust,
            keys,
            config.node_id,
            self.clock,
            self.feed,
            Redelivery(
                config.delivery.undeliverable_after_ms,
                messenger,
                self.outbox.requeued,
                self.outbox.recovered,
                lambda: self.cases.ending_due(),  # Cases is made below, before anything arrives
            ),
            self.checkpoints.for_receipt,
            metrics=self.metrics,
            look_now=self._look_now.set,
        )
        self.ctx = NodeContext(
            node_id=config.node_id,
            store=self.store,
            link=self.link,
            outbox=self.outbox,
            trust=self.trust,
            messenger=messenger,
            linkage_key=linkage_key,
            clock=self.clock,
            policy=policy,
            resolver=Resolver(self.link.resolve, MAX_TOKENS_PER_MESSAGE),
            look=self.check_directory,
        )
        self.link.on_links_changed = self.ctx.resolver.forget
        self.link.on_directory = self._directory_announced
        self.link.held_directory = lambda: self.trust.version
        self.cases = Cases(self.ctx)
        self.metrics.notices_waiting.set_function(lambda: float(self.cases.notices.waiting))
        self.sharing = Sharing(self.ctx)
        self.inbox = Inbox(self.ctx)
        self.chronology = Chronologies(self.ctx, self.inbox.item)
        requests = Requests(self.ctx, self.cases, self.sharing)
        # The log as this start found it: if the witness holds a longer one, the store was put
        # back from a copy, and what came after this entry is lost here (node/redelivery.py).
        last = await self.store.fetchone("SELECT seq, ts_ms FROM audit ORDER BY seq DESC LIMIT 1")
        entries, last_ms = last if last is not None else (0, 0)
        ctx = self.ctx
        self.checkpoints.on_behind = lambda held: ask_again_if_rolled_back(ctx, held, entries, last_ms, newest or "")
        self._restore_unasked = await ask_again_if_restored(self.ctx)
        async with self.store.tx() as tx:  # key and configuration changes are audited too
            dropped = await self.chronology.follow_code_lists(tx)
            await tx.audit(
                "node.started",
                detail={
                    "schema": self.store.schema_version,
                    "key_id": keys.key_id,
                    "directory_version": self.trust.version,
                    "agreement": self.ctx.policy.agreement.version,
                    "codelists": self.ctx.policy.codes.version,
                },
            )
        if dropped:  # said once it stands
            log.info("chronology.derived_again", rows=dropped)
        await self.check_backups()
        row = await self.store.fetchone("SELECT MAX(seq) FROM inbox")
        self.feed.last_seq = int(row[0] or 0)
        await self.cases.notices.count()  # any a node stopped before sending

        self._server = await self._serve_api(
            NodeApiService(self.cases, self.sharing, requests, self.inbox, self.chronology, self.outbox, self.feed)
        )
        if config.metrics_listen:
            self.metrics_endpoint.start(config.metrics_listen)
        await self.health.set(LINK_HEALTH_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        duties: list[Duty] = [
            self.link.run,
            self.outbox.run,
            self.cases.run_resubscriber,
            self.cases.notices.run,
            self.checkpoints.run,
            self._watch_files,
            functools.partial(retention.run, self.store, self.clock, config.retention_days),
            self.chronology.keep_derived,
        ]
        self._tasks = [begin(log, duty) for duty in duties]
        self.store.writability.on_change_run(self._report_serving)
        await self._report_serving()
        self.certificate.warn_if_lapsing()
        log.info("node.started", schema=self.store.schema_version)

    def _bound_metrics(self, store: Store) -> NodeMetrics:
        """The node's metrics, those read at each scrape bound to what they read."""
        metrics, trust, now_ms, node_id = NodeMetrics(), self.trust, self.clock.now_ms, self.config.node_id
        metrics.bind_directory(
            age=lambda: (now_ms() - trust.issued_at_ms) / 1000,
            expires_in=lambda: (trust.expires_at_ms - now_ms()) / 1000,
            keys_expire_in=lambda: (trust.keys_expire_at_ms(node_id) - now_ms()) / 1000,
        )
        metrics.store_writable.set_function(lambda: float(store.writability.error is None))
        metrics.certificate_expires_in.set_function(self.certificate.expires_in_s)
        return metrics

    async def _serve_api(self, service: NodeApiService) -> grpc.aio.Server:
        """The case system's API, health and reflection, on the node's Unix socket."""
        server = grpc.aio.server(options=API_SERVER_OPTIONS)
        add_to_server(service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
        socket = self.config.api_socket
        with contextlib.suppress(FileNotFoundError):
            socket.unlink()
        old_umask = os.umask(0o177)  # the socket is born owner-only: only this account's case system
        try:
            server.add_insecure_port(unix_address(socket))
            await server.start()
        except RuntimeError as exc:  # gRPC's word for an address it could not bind
            raise ConfigError(f"[api] socket {socket}: cannot bind it ({exc})") from exc
        finally:
            os.umask(old_umask)
        return server

    async def stop(self, grace: float = 5.0) -> None:
        """Drain: finish API calls in progress, wait for in-flight acks, then close."""
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        if self.store is not None:
            unacked = await self.outbox.drain(grace)
            log.info("node.drained", unacknowledged=unacked)
            if self.link is not None and self.link.connected.is_set():
                await self.checkpoints.lodge()  # leave the final state with the witness
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                async with asyncio.timeout(grace):
                    await task
            except (asyncio.CancelledError, TimeoutError):
                pass
            if not task.done():
                log.error("node.task_did_not_stop", task=task.get_name())
        if self.link is not None:
            await self.link.close()
            self.metrics_endpoint.stop()
        if self.store is not None:
            await self.store.close()
        log.info("node.stopped")


async def serve(config: NodeConfig) -> None:
    node = NodeServer(config)
    await node.start()
    await serve_until_signalled(
        f"linkage node {config.node_id} serving its API on unix:{config.api_socket}", node.stop, node.hung_up
    )
