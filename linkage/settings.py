"""Every configuration setting, with its type, default and meaning: the one list that
`linkage config check` validates against and docs/configuration.md documents."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Setting:
    section: str
    key: str
    kind: str  # str | id (a node's or the gateway's) | int | float | path | address | listen (an address, or
    # empty: off) | level | list
    default: object
    meaning: str
    required: bool = False
    minimum: int = 0  # for a number: the least that makes sense (0 where 0 means "off" or "keep")


_COMMON = [
    Setting("federation", "id", "str", None, "The federation's id, as in the certificates' SPIFFE ids.", True),
    Setting("federation", "directory_public_key", "path", None, "The federation's directory signing key (PEM).", True),
    Setting(
        "federation",
        "directory",
        "path",
        "directory.pb",
        "The signed directory file: a node writes each newer one it takes from the gateway over it.",
    ),
    Setting("tls", "cert", "path", None, "This process's TLS certificate (PEM).", True),
    Setting("tls", "key", "path", None, "Its private key (PEM, mode 0600).", True),
    Setting("tls", "ca", "path", None, "The federation CA certificate (PEM).", True),
]

NODE: list[Setting] = [
    Setting("node", "id", "id", None, "This node's id, as enrolled.", True),
    Setting("node", "data_dir", "path", ".", "Where the store (store.sqlite) lives."),
    Setting("node", "log_level", "level", "info", "debug, info, warning or error."),
    Setting("gateway", "address", "address", None, "host:port of the federation gateway.", True),
    Setting("gateway", "server_name", "id", "gateway", "The gateway's TLS name (its id)."),
    Setting("api", "socket", "path", "api.sock", "The local API socket for case systems (mode 0600)."),
    Setting("keys", "message_keys", "path", "keys", "Folder of this node's message keys."),
    Setting("keys", "linkage_key", "path", "keys/linkage.key", "The federation linkage key (tokens)."),
    Setting("delivery", "retry_base_ms", "int", 1_000, "First retry delay when a recipient is away.", minimum=1),
    Setting(
        "delivery",
        "retry_cap_ms",
        "int",
        3_600_000,
        "Longest retry delay (the gateway says when it is back).",
        minimum=1,
    ),
    Setting(
        "delivery",
        "receipt_timeout_ms",
        "int",
        60_000,
        "Re-send a forwarded message with no receipt after this.",
        minimum=1,
    ),
    Setting(
        "delivery",
        "undeliverable_after_days",
        "int",
        7,
        "Then a message is undeliverable, with its reason.",
        minimum=1,
    ),
    Setting(
        "delivery",
        "escalate_after_hours",
        "int",
        4,
        "A message not yet delivered after this goes on the duty view, to tell the agency another way; 0: off.",
    ),
    Setting("delivery", "outbox_high_water", "int", 10_000, "Queued messages beyond which new shares wait.", minimum=1),
    Setting("policy", "agreement", "path", None, "The data-sharing agreement (default: the packaged example)."),
    Setting("policy", "glossary", "path", None, "Plain-language glossary (default: the packaged one)."),
    Setting("policy", "codelists_extra", "list", [], "The federation's own code-list extensions."),
    Setting(
        "retention",
        "summaries_days",
        "int",
        0,
        "Keep received summaries, sent bodies and requests sent this long; 0 keeps them.",
    ),
    Setting("metrics", "listen", "listen", "", "host:port for Prometheus metrics; empty: off."),
    *_COMMON,
]

GATEWAY: list[Setting] = [
    Setting("gateway", "id", "id", None, "The gateway's id, as enrolled.", True),
    Setting("gateway", "listen", "address", "127.0.0.1:7443", "host:port to listen on (mTLS only)."),
    Setting("gateway", "data_dir", "path", ".", "Where gateway.sqlite lives (subscriptions, witness, metadata)."),
    Setting("gateway", "log_level", "level", "info", "debug, info, warning or error."),
    Setting(
        "retention",
        "metalog_days",
        "int",
        0,
        "Keep the metadata log's entries this long; 0 keeps them all. What is kept still verifies.",
    ),
    Setting(
        "witness",
        "key",
        "path",
        None,
        "Its Ed25519 witness key (PEM, mode 0600), named in the directory: it cosigns the audit checkpoints "
        "it witnesses. Unset: it witnesses without cosigning.",
    ),
    Setting(
        "limits",
        "envelopes_per_second",
        "float",
        2_000.0,
        "Per sending node; beyond it the sender is told BUSY, with when its next envelope can be taken.",
    ),
    Setting("limits", "envelope_burst", "int", 4_000, "Token-bucket burst for envelopes.", minimum=1),
    Setting(
        "limits",
        "recipient_queue",
        "int",
        4_096,
        "Other nodes' messages waiting for one connected node; beyond it their senders are told BUSY for "
        "that recipient only (answers to the node's own requests have room beyond it).",
        minimum=1,
    ),
    Setting(
        "limits",
        "max_concurrent_rpcs",
        "int",
        512,
        "Beyond it calls get RESOURCE_EXHAUSTED (streams count).",
        minimum=1,
    ),
    Setting(
        "limits",
        "control_per_second",
        "float",
        50.0,
        "Per node: subscribe, unsubscribe, discovery, and each page of a node listing its own subscriptions.",
    ),
    Setting("limits", "control_burst", "int", 500, "Token-bucket burst for those.", minimum=1),
    Setting(
        "limits",
        "resolve_per_second",
        "float",
        1_000.0,
        "Per node: recipient look-ups (asked only when no current answer is held).",
    ),
    Setting("limits", "resolve_burst", "int", 10_000, "Token-bucket burst for it.", minimum=1),
    Setting("metrics", "listen", "listen", "", "host:port for Prometheus metrics; empty: off."),
    *_COMMON,
]
