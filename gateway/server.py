"""Running a gateway: TLS server, health, reflection, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import asdict

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway.authz import Authoriser
from gateway.db import GatewayDb
from gateway.metalog import MetaLog, kept_path
from gateway.metrics import GatewayMetrics
from gateway.ratelimit import RateLimits
from gateway.service import GatewayService
from gateway.sessions import Sessions
from gateway.subscriptions import SubscriptionIndex
from gateway.witness import Witness
from linkage import logs
from linkage.clock import Clock, SystemClock
from linkage.config import ConfigError, GatewayConfig
from linkage.directory import DirectoryView, parse_signed, read_signed
from linkage.duties import begin
from linkage.keys import load_ed25519, raw_public
from linkage.metrics import MetricsEndpoint
from linkage.pki import spiffe_id
from linkage.reasons import Rejected
from linkage.renewal import CertificateWatch, ServerCertificate, new_roots, write_roots
from linkage.runtime import serve_until_signalled
from linkage.store_notes import BackupRecord, enter_waiting
from linkage.transport import SERVER_OPTIONS
from linkage.v1 import directory_pb2, gateway_pb2, gateway_pb2_grpc

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name
log = logs.get("gateway")
DIRECTORY_CHECK_S = 5.0
RETENTION_EVERY_S = 3_600.0  # the metadata log's retention: an hour's entries at a time, not a day's


class GatewayServer:
    def __init__(
        self,
        config: GatewayConfig,
        clock: Clock | None = None,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),  # run before every call, in order
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.interceptors = interceptors
        self.trust = config.federation.trusted_directory()
        self.sessions = Sessions(config.limits.recipient_queue)
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._index: SubscriptionIndex | None = None
        self._db: GatewayDb | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._directory_mtime = 0  # of the directory file as last read
        self._directory_unreadable: str | None = None  # why the file could not be read, as said: not again
        self._roots_unwritten = False  # the held directory's CAs are not yet in the CA file: tried at each look
        self._serving: bool | None = None  # as last reported, once serving
        self._backups_queued: set[str] = set()  # entered in the metadata log's queue: not again
        self.metrics = GatewayMetrics()
        self.metrics_endpoint = MetricsEndpoint(self.metrics.registry)
        self.port = 0
        try:
            self.witness_key = load_ed25519(config.witness_key) if config.witness_key else None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"[witness] key: {exc}") from None

    def load_directory(self, signed: directory_pb2.SignedDirectory) -> None:
        view = self.trust.accept(signed, self.clock.now_ms())
        log.info("directory.loaded", version=view.version, nodes=len(view.nodes))
        self._follow_roots()
        self._check_witness_key(view)
        for node_id, entry in view.nodes.items():  # a revoked node's open stream ends now
            session = self.sessions.get(node_id)
            if entry.status != directory_pb2.NODE_STATUS_ACTIVE and session is not None:
                session.close((grpc.StatusCode.PERMISSION_DENIED, f"node {node_id!r} is revoked"))
        # Look-up answers name only active nodes: any may have changed with the directory. Each
        # node is told its version, to take it now: what a node it did not know sends is then opened.
        self.sessions.notify_all(gateway_pb2.LinksChanged(directory_version=view.version))

    def _follow_roots(self) -> None:
        """Write the CAs the held directory names where the CA file differs; the file watch
        presents and checks with them. CAs the file could not take are tried again at each
        look (`_roots_unwritten`), not left until the next directory."""
        view = self.trust.view
        if view is not None and (roots := new_roots(self.config.tls, view.directory)) is not None:
            self._roots_unwritten = not write_roots(self.config.tls, roots)
        else:
            self._roots_unwritten = False

    def _check_witness_key(self, view: DirectoryView) -> None:
        """Say so if nodes cannot check this gateway's cosignatures: they keep only those that verify."""
        if self.witness_key is None:
            return
        try:
            named = view.witness_key(self.config.gateway_id)
        except Rejected:
            named = b""
        if named != raw_public(self.witness_key):
            log.error("witness.key_not_in_directory", version=view.version)

    async def check_directory(self) -> None:
        """Take a newer directory file if there is one; fail closed when the held one has expired."""
        if (data := self._changed_directory_file()) is not None:
            try:
                self.load_directory(parse_signed(data))
            except Rejected as exc:  # copied in part, say: the held one stands until it changes again
                log.warning("directory.refused", reason=exc.reason.value)
        elif self._roots_unwritten:
            self._follow_roots()
        await self._report_serving()

    def _changed_directory_file(self) -> bytes | None:
        """The directory file's bytes if its modified time changed since it was last read. One
        that cannot be read is said once and read again at each look, whether or not its time
        changes: mending its permissions (chmod, chown) changes none, nor does a copy that
        keeps the time it had (`cp -p`, `rsync -t`)."""
        path = self.config.federation.directory
        try:
            mtime = path.stat().st_mtime_ns
            if mtime == self._directory_mtime:
                return None
            data = path.read_bytes()
        except OSError as exc:
            if (error := type(exc).__name__) != self._directory_unreadable:
                self._directory_unreadable = error
                log.warning("directory.unreadable", error=error)
            return None
        self._directory_mtime, self._directory_unreadable = mtime, None
        return data

    async def _report_serving(self) -> None:
        """SERVING while the directory is current and the store can be written; NOT_SERVING
        (failing closed) while either is not."""
        writable = self._db is not None and self._db.writability.error is None
        serving = writable and self.trust.serving(self.clock.now_ms())
        if serving != self._serving and self._server is not None:
            self._serving = serving
            status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", SERVICE_NAME):
                await self.health.set(name, status)

    async def _watch_files(self) -> None:
        while True:
            await asyncio.sleep(DIRECTORY_CHECK_S)
            await self.check_directory()
            self.check_certificate()
            await self.check_backups()

    def check_certificate(self) -> None:
        """Take a renewed certificate for the handshakes to come; warn daily as it nears its end."""
        self.certificate.check()
        self.certificate.watch.warn_if_lapsing()

    async def reload(self) -> None:
        """On SIGHUP: the directory and the certificate files, and backups taken, now."""
        await self.check_directory()
        self.check_certificate()
        await self.check_backups()

    async def check_backups(self) -> None:
        """Enter each backup `linkage backup create` took of this gateway in its metadata log
        (linkage/store_notes.py): the entry is committed before its record goes."""
        assert self._db is not None
        db, metalog = self._db, self.metalog

        async def entered(record: BackupRecord) -> bool:
            return bool(
                await db.read(
                    "SELECT 1 FROM metalog WHERE ts_ms >= ? AND event = 'store.backed_up' "
                    "AND json_extract(entry, '$.detail.backup_id') = ?",
                    (record.taken_at_ms, record.backup_id),
                )
            )

        async def enter(record: BackupRecord) -> None:
            # The log keeps an entry its store refused and commits it later: queue each once,
            # and keep its record until a flush has committed it.
            if record.backup_id not in self._backups_queued:
                metalog.record("store.backed_up", self.config.gateway_id, **asdict(record))
                self._backups_queued.add(record.backup_id)
            await metalog.flush()

        try:
            await enter_waiting(self.config.store_path, entered, enter)
        except Exception as exc:  # its store refused, say: the records wait for the next look
            log.error("backup.record_failed", error=type(exc).__name__)

    async def _retention(self) -> None:
        while True:
            try:
                await self.metalog.purge(self.config.metalog_days)
            except Exception as exc:  # what was purged stays purged; the rest waits for the next round
                log.error("metalog.purge_failed", error=type(exc).__name__)
            await asyncio.sleep(RETENTION_EVERY_S)

    async def start(self) -> int:
        """Open the database and serve. Files are read first, so a bad one stops the gateway
        before it opens anything; if a later step fails, what was opened is closed again, so
        the process can exit (and say why) rather than hang."""
        directory = self.config.federation.directory
        self._directory_mtime = directory.stat().st_mtime_ns
        try:  # the gateway hands the directory out: with none it can use, nothing could work
            self.load_directory(read_signed(directory))
        except Rejected as exc:
            raise ConfigError(
                f"[federation] directory: cannot serve with {directory} ({exc}); copy in the federation's "
                "current directory (`linkage federation publish` writes one)"
            ) from None
        identity = spiffe_id(self.config.federation.federation_id, "gateway", self.config.gateway_id)
        try:
            watch = CertificateWatch(self.config.tls, identity, self.clock)
            watch.in_use.check(identity, self.clock.now_ms())
        except (OSError, ValueError) as exc:  # CertificateProblem among them
            raise ConfigError(f"[tls] cannot serve with the gateway's certificate and key: {exc}") from exc
        self.certificate = ServerCertificate(watch)
        credentials = self.certificate.credentials()
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        self._db = await GatewayDb.open(self.config.store_path)
        self.metalog = MetaLog(self._db, self.clock, self.config.gateway_id)
        try:
            return await self._start(credentials)
        except BaseException:
            await self.stop(grace=0)  # closes whatever was opened: each step is checked there
            raise

    async def _start(self, credentials: grpc.ServerCredentials) -> int:
        assert self._db is not None
        self._index = await SubscriptionIndex.open(self._db)
        await self.metalog.load()
        await self.metalog.take_kept(kept_path(self.config.store_path))
        await self.check_backups()
        limits = self.config.limits
        server = grpc.aio.server(
            interceptors=self.interceptors,
            options=SERVER_OPTIONS,
            maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
        )
        authz = Authoriser(self.trust, self.clock)
        service = GatewayService(
            authz,
            self._index,
            self.sessions,
            RateLimits(limits.envelopes_per_second, limits.envelope_burst, self.clock),
            Witness(self._db, self.clock, self.config.gateway_id, self.witness_key),
            self.metalog,
            RateLimits(limits.control_per_second, limits.control_burst, self.clock),
            RateLimits(limits.resolve_per_second, limits.resolve_burst, self.clock),
            self.metrics,
            self._db.writability,
        )
        gateway_pb2_grpc.add_GatewayServicer_to_server(service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
        try:
            self.port = server.add_secure_port(self.config.listen, credentials)
        except RuntimeError as exc:  # gRPC's word for a port it could not bind
            raise ConfigError(f"[gateway] listen {self.config.listen}: cannot bind it (is it in use?)") from exc
        await server.start()
        self._server = server
        duties = [self.metalog.run, self._watch_files, *([self._retention] if self.config.metalog_days > 0 else [])]
        self._tasks = [begin(log, duty) for duty in duties]
        index, writability = self._index, self._db.writability
        self.metrics.bind(
            connected=lambda: len(self.sessions),
            subscriptions=lambda: len(index),
            store_writable=lambda: float(writability.error is None),
            directory_age=lambda: (self.clock.now_ms() - self.trust.issued_at_ms) / 1000,
            directory_expires_in=lambda: (self.trust.expires_at_ms - self.clock.now_ms()) / 1000,
            certificate_expires_in=self.certificate.watch.expires_in_s,
            on_replaced_certificate=lambda: sum(authz.replaced(s.node_id, s.certificate) for s in self.sessions.live()),
            active_nodes=self.trust.active_nodes,
            connected_nodes=lambda: {session.node_id for session in self.sessions.live()},
        )
        if self.config.metrics_listen:
            self.metrics_endpoint.start(self.config.metrics_listen)
        writability.on_change_run(self._report_serving)
        await self._report_serving()
        self.certificate.watch.warn_if_lapsing()
        log.info("gateway.started", port=self.port, subscriptions=len(self._index))
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        self.sessions.close_all((grpc.StatusCode.UNAVAILABLE, "gateway is shutting down"))
        if self._server is not None:
            await self._server.stop(grace)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.metrics_endpoint.stop()
        if self._index is not None:
            await self._index.close()
        if self._db is not None:
            try:
                await self.metalog.flush()
            except Exception:  # kept beside the store for the next start; the database is closed all the same
                self._keep_unflushed()
            await self._db.close()
        log.info("gateway.stopped")

    def _keep_unflushed(self) -> None:
        path = kept_path(self.config.store_path)
        try:
            kept = self.metalog.keep(path)
        except OSError as exc:  # the disk will not take that either: the operational log must
            log.error("metalog.unflushed_at_stop", entries=self.metalog.pending, error=exc.strerror)
            self.metalog.log_pending()
            return
        log.error("metalog.kept_at_stop", entries=kept, file=path.name)


async def serve(config: GatewayConfig) -> None:
    """Run until SIGTERM or SIGINT, then drain and stop."""
    server = GatewayServer(config)
    await server.start()
    await serve_until_signalled(
        f"linkage gateway {config.gateway_id} listening on port {server.port}", server.stop, server.reload
    )
