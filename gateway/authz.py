"""Per-call authorisation: the caller is the node its certificate names, and
that certificate must be the one the current directory pins for it. Checked on
every call, so a revocation takes effect on a connection that is already open.
"""

from __future__ import annotations

from typing import NoReturn

import grpc

from linkage.clock import Clock, utc_minute
from linkage.directory import DirectoryView, TrustedDirectory
from linkage.pki import parse_spiffe_id
from linkage.reasons import Rejected
from linkage.refusals import bounded
from linkage.transport import Peer, tls_peer
from linkage.v1 import directory_pb2


class Denied(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def abort(context: grpc.aio.ServicerContext[object, object], denied: Denied) -> NoReturn:
    await context.abort(denied.code, bounded(denied.message))
    raise AssertionError("unreachable")  # context.abort always raises


class Authoriser:
    def __init__(self, trust: TrustedDirectory, clock: Clock) -> None:
        self.trust = trust
        self.clock = clock

    def directory(self, now_ms: int | None = None) -> DirectoryView:
        try:
            return self.trust.current(self.clock.now_ms() if now_ms is None else now_ms)
        except Rejected as exc:
            raise Denied(grpc.StatusCode.UNAVAILABLE, f"gateway cannot serve: {exc}") from None

    def node_of(self, context: grpc.aio.ServicerContext[object, object]) -> str:
        """The calling node's id, or Denied."""
        return self.peer_of(context)[0]

    def peer_of(self, context: grpc.aio.ServicerContext[object, object]) -> tuple[str, Peer]:
        """The calling node's id and its TLS peer, or Denied."""
        peer = tls_peer(context)
        if peer is None:
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, "a client certificate from the federation CA is required")
        if peer.tls_version and peer.tls_version != "TLSv1.3":
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, f"TLS 1.3 is required, got {peer.tls_version}")
        parsed = parse_spiffe_id(peer.spiffe_id, self.trust.federation_id)
        if parsed is None or parsed[0] != "node":
            raise Denied(grpc.StatusCode.PERMISSION_DENIED, "certificate does not name a node of this federation")
        node_id = parsed[1]
        self.recheck(node_id, peer)
        return node_id, peer

    def recheck(self, node_id: str, peer: Peer) -> None:
        """Denied unless the current directory still pins this peer's certificate for an
        active node, and the certificate has not lapsed: per frame on an open stream, so
        revocation needs no reconnect, and a stream does not outlive its certificate."""
        now_ms = self.clock.now_ms()
        entry = self.directory(now_ms).nodes.get(node_id)
        if entry is None:
            raise Denied(grpc.StatusCode.PERMISSION_DENIED, f"node {node_id!r} is not in the directory")
        if entry.status != directory_pb2.NODE_STATUS_ACTIVE:
            raise Denied(grpc.StatusCode.PERMISSION_DENIED, f"node {node_id!r} is revoked")
        # The renewed certificate's predecessor too, so a node moves to its new one without a gap.
        if peer.fingerprint not in (entry.tls_cert_sha256, entry.previous_tls_cert_sha256):
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED, f"certificate is not the one the directory pins for {node_id!r}"
            )
        if now_ms > peer.not_after_ms:
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                f"the certificate of {node_id!r} lapsed at {utc_minute(peer.not_after_ms)}: "
                "renew it (linkage federation renew-tls)",
            )

    def replaced(self, node_id: str, certificate: bytes) -> bool:
        """Whether `certificate` is no longer the one the directory pins for the node but the
        one its renewal replaced, still accepted: the renewed file is not yet in use there."""
        try:
            entry = self.directory().nodes.get(node_id)
        except Denied:
            return False  # no directory to compare with: the gateway is not serving anyone
        return entry is not None and certificate == entry.previous_tls_cert_sha256 != entry.tls_cert_sha256

    def claimed(self, context: grpc.aio.ServicerContext[object, object], claimed_node: str) -> str:
        """The caller, who must be the node a request field names."""
        node_id = self.node_of(context)
        if claimed_node != node_id:
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"authenticated as {node_id!r} but the request names {claimed_node!r}",
            )
        return node_id
