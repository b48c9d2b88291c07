"""gRPC transport settings shared by node and gateway: mTLS, limits, peer identity."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import grpc

from linkage.pki import CheckedCertificate, certificate_facts, check_certificate
from linkage.v1 import gateway_pb2

# Health service name a node reports SERVING while its stream to the gateway is up.
LINK_HEALTH_SERVICE = "linkage.v1.GatewayLink"
# The Connect call's metadata: the directory version the node holds (gateway.proto).
DIRECTORY_VERSION_KEY = "linkage-directory-version"

# Largest frame either side accepts; summaries are small, so anything near
# this is an attack or a bug (RESOURCE_EXHAUSTED at the transport).
MAX_MESSAGE_BYTES = 256 * 1024

# The signed directory grows with the federation: about 160 bytes a node, 3.3 KB with
# the post-quantum suite's keys (twice that while a node rotates), so 256 KiB held
# fewer than 80 such nodes. A node fetches it on a channel of its own that accepts this
# much, keeping its stream's frames to MAX_MESSAGE_BYTES.
DIRECTORY_MAX_BYTES = 64 * 1024 * 1024

# The node's API answers its own case system over a local socket: what it is sent is
# small, but what it answers can be large (a page of 500 received summaries, a family's
# chronology of thousands of entries). So its answers may be as large as the largest
# page of received summaries can be, with room to spare, and its clients must accept as
# much (gRPC's default is 4 MiB).
API_MAX_ANSWER_BYTES = 256 * 1024 * 1024

# A ping not answered within 10 s closes the connection, and the stream on it fails: a
# path that stays open but carries nothing (a hung proxy or firewall) is noticed, and the
# node connects again. keepalive_timeout_ms alone did not do it with this gRPC: it waits
# grpc.http2.ping_timeout_ms (a minute by default) for the answer to a ping already out,
# and a node's stream went unnoticed for over a minute (tests/test_network_faults.py).
_KEEPALIVE: list[tuple[str, int]] = [
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.ping_timeout_ms", 10_000),
]
_KEEPALIVE_SERVER: list[tuple[str, int]] = [
    *_KEEPALIVE,
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_connection_idle_ms", 300_000),
]
# The gateway's: it sends on no more than a node sent it, but for the directory.
SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", DIRECTORY_MAX_BYTES),
    *_KEEPALIVE_SERVER,
]
API_SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", API_MAX_ANSWER_BYTES),
    *_KEEPALIVE_SERVER,
]

# The gateway calls a node makes that a repeat cannot harm, since they change nothing or
# change it to the same end: one the gateway answers UNAVAILABLE (as it restarts, or while
# its store cannot be written) is made again by gRPC, three more times at most within the
# call's own deadline, so that a blip of a second or two does not fail them.
# LodgeCheckpoint is left out: a repeat after an answer lost on the way would be refused,
# since the gateway would hold that checkpoint by then; the stream the node redials itself.
# So is ResolveRecipients, made as a call only while the stream is down: a share then
# fails at once, telling the case system nothing was shared, rather than a second later.
RETRY_ATTEMPTS = 4  # in all, the first included
RETRIED_GATEWAY_CALLS = (
    "Subscribe",
    "Unsubscribe",
    "ListSubscriptions",
    "DiscoverInvolvement",
    "GetCheckpoints",
    "FetchDirectory",
)
_GATEWAY_SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": _GATEWAY_SERVICE, "method": m} for m in RETRIED_GATEWAY_CALLS],
                "retryPolicy": {
                    "maxAttempts": RETRY_ATTEMPTS,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)

CHANNEL_OPTIONS: list[tuple[str, int | str]] = [  # and the most it receives (secure_channel)
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    *_KEEPALIVE,
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Ping an idle connection for ever: by default a client stops after two pings without
    # data, and a bare gRPC stream idle that long was then never checked again (the gateway
    # allows a ping every 20 s).
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.service_config", _SERVICE_CONFIG),
]


@dataclass(frozen=True)
class TlsMaterial:
    """A certificate, its key and the federation CA, as read from their files at one moment:
    what a process dials or serves with."""

    cert: bytes
    key: bytes
    ca: bytes

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )

    def server_configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(self.key, self.cert)], root_certificates=self.ca)

    def check(self, identity_uri: str, now_ms: int) -> CheckedCertificate:
        """Raises CertificateProblem unless these may be used now (pki.check_certificate)."""
        return check_certificate(self.cert, self.key, self.ca, identity_uri, now_ms)


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path

    def __str__(self) -> str:  # as a person reads it in an error: the three files
        return f"{self.cert} (certificate), {self.key} (key) and {self.ca} (CA)"

    def read(self) -> TlsMaterial:
        return TlsMaterial(cert=self.cert.read_bytes(), key=self.key.read_bytes(), ca=self.ca.read_bytes())

    def version(self) -> tuple[tuple[int, int, int], ...]:
        """Changes when any of the three files is written again (each is replaced whole)."""
        stats = (path.stat() for path in (self.cert, self.key, self.ca))
        return tuple((st.st_ino, st.st_mtime_ns, st.st_size) for st in stats)

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.ca.read_bytes(),
            require_client_auth=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return self.read().channel_credentials()


@dataclass(frozen=True)
class Peer:
    """The authenticated TLS peer of one call."""

    spiffe_id: str
    fingerprint: bytes
    tls_version: str
    not_after_ms: int  # when its certificate lapses: an open stream is refused from then on


def tls_peer(context: grpc.aio.ServicerContext[object, object]) -> Peer | None:
    """The peer's certificate identity, or None if the call is not over mTLS."""
    auth = {k: list(v) for k, v in context.auth_context().items()}
    spiffe = auth.get("peer_spiffe_id") or auth.get("x509_subject_alternative_name")
    pem = auth.get("x509_pem_cert")
    if not spiffe or not pem:
        return None
    version = auth.get("ssl_tls_version", [b""])[0].decode()
    fingerprint, lapses = certificate_facts(pem[0])
    return Peer(spiffe_id=spiffe[0].decode(), fingerprint=fingerprint, tls_version=version, not_after_ms=lapses)


def secure_channel(
    address: str, tls: TlsFiles | TlsMaterial, server_name: str, max_receive: int = MAX_MESSAGE_BYTES
) -> grpc.aio.Channel:
    options: list[tuple[str, int | str]] = [
        *CHANNEL_OPTIONS,
        ("grpc.max_receive_message_length", max_receive),
        ("grpc.ssl_target_name_override", server_name),
    ]
    return grpc.aio.secure_channel(address, tls.channel_credentials(), options=options)


def api_channel(socket: Path, reconnect_most_s: float | None = None) -> grpc.aio.Channel:
    """A channel to a node's API on its local socket, accepting answers as large as it sends;
    while the node is away, trying again at most `reconnect_most_s` apart (gRPC's own
    default is two minutes)."""
    options: list[tuple[str, int]] = [("grpc.max_receive_message_length", API_MAX_ANSWER_BYTES)]
    if reconnect_most_s is not None:
        options.append(("grpc.max_reconnect_backoff_ms", int(reconnect_most_s * 1000)))
    return grpc.aio.insecure_channel(unix_address(socket), options=options)


def unix_address(socket: Path) -> str:
    """gRPC's address of a Unix socket. gRPC reads it as a URI, where a '#', '?' or '%' in
    the path would mean something else, or fail: percent-encoded, the path is taken as is."""
    return "unix:" + quote(str(socket))
