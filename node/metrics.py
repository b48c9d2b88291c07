"""The node's metrics: messages sent, delivered, undeliverable, received and rejected by
reason; BUSY answers by whose limit; outbox depth and age, in all and by recipient (an
agency's node id: never a person's); delivery latency; whether the stream to the gateway is
open; directory age; audit checkpoints lodged with the witness, by outcome. Counts only."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.sent = Counter("linkage_node_messages_sent", "Messages forwarded by the gateway", registry=self.registry)
        self.delivered = Counter(
            "linkage_node_messages_delivered", "Messages with the recipient's signed receipt", registry=self.registry
        )
        self.undeliverable = Counter(
            "linkage_node_messages_undeliverable", "Messages that could not be delivered", registry=self.registry
        )
        self.received = Counter("linkage_node_messages_received", "Messages accepted", registry=self.registry)
        self.rejected = Counter(
            "linkage_node_messages_rejected",
            "Messages refused on arrival, by reason: its code, as the message.rejected log event gives it",
            ["reason"],
            registry=self.registry,
        )
        self.busy = Counter(
            "linkage_node_busy_answers",
            "Sends the gateway answered BUSY, by whose limit (sender, recipient, or gateway: its store is unwritable)",
            ["limit"],
            registry=self.registry,
        )
        self.outbox_depth = Gauge(
            "linkage_node_outbox_depth", "Messages not yet delivered or given up", registry=self.registry
        )
        self.outbox_age = Gauge(
            "linkage_node_outbox_oldest_age_seconds",
            "Age of the oldest undelivered message (from when it was queued again, for a recipient restored)",
            registry=self.registry,
        )
        self.recipient_depth = Gauge(
            "linkage_node_outbox_recipient_depth",
            "Messages not yet delivered or given up, by the agency's node they are for (0 once it has none)",
            ["recipient"],
            registry=self.registry,
        )
        self.recipient_age = Gauge(
            "linkage_node_outbox_recipient_oldest_age_seconds",
            "Age of the oldest undelivered message for each agency's node (0 once it has none): which agency "
            "is not being reached",
            ["recipient"],
            registry=self.registry,
        )
        self._recipients: set[str] = set()
        self.latency = Histogram(
            "linkage_node_delivery_latency_seconds",
            "From queued (or queued again, for a recipient whose store was put back) to the recipient's receipt",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 30, 60, 300, 3600, 86400),
            registry=self.registry,
        )
        self.directory_age = Gauge(
            "linkage_node_directory_age_seconds", "Age of the directory held", registry=self.registry
        )
        self.directory_expires_in = Gauge(
            "linkage_node_directory_expires_in_seconds",
            "Until the directory held expires and the node fails closed (alert well before 0)",
            registry=self.registry,
        )
        self.keys_expire_in = Gauge(
            "linkage_node_message_keys_expire_in_seconds",
            "Until the last of this node's message keys in the directory lapses and nobody can seal to it: "
            "rotate before then",
            registry=self.registry,
        )
        self.certificate_expires_in = Gauge(
            "linkage_node_tls_certificate_expires_in_seconds",
            "Until the node's TLS certificate in use lapses and it cannot reach the gateway (renew it well before 0)",
            registry=self.registry,
        )
        self.gateway_connected = Gauge(
            "linkage_node_gateway_connected",
            "1 while the node's stream to the gateway is open; 0 while it is not and nothing goes out or comes in "
            "(it reconnects by itself: alert on 0 for long)",
            registry=self.registry,
        )
        self.store_writable = Gauge(
            "linkage_node_store_writable",
            "1 while the node's store takes writes; 0 after one failed for a full, failing, read-only or damaged "
            "disk, until one succeeds (the node fails closed meanwhile: alert on it)",
            registry=self.registry,
        )
        self.unwitnessed = Gauge(
            "linkage_node_audit_unwitnessed_seconds",
            "How long audit entries have waited for the gateway's witness: the time since it last took this "
            "node's checkpoint (or the node started) while any wait, else 0; lodged every 30 s, so alert on "
            "minutes: the log's tamper evidence goes unwitnessed meanwhile",
            registry=self.registry,
        )
        self.notices_waiting = Gauge(
            "linkage_node_involvement_notices_waiting",
            "Involvement notices (this agency joining or leaving a family link) recorded and not yet sent: "
            "the gateway could not yet say which agencies to tell (away, busy, or not yet holding this "
            "node's subscriptions)",
            registry=self.registry,
        )
        self.checkpoints = Counter(
            "linkage_node_checkpoints",
            "Tries to lodge an audit checkpoint with the witness, by outcome: ok; diverged (this log does not "
            "extend the one the gateway held, now kept there as evidence); behind (shorter than it); failed",
            ["outcome"],
            registry=self.registry,
        )

    def outbox(self, now_ms: int, waiting: dict[str, tuple[int, int]]) -> None:
        """The outbox as it stands: for each recipient with messages waiting, how many and since
        when (ms). A recipient no longer waited on reads 0, rather than its last figure."""
        self.outbox_depth.set(sum(count for count, _ in waiting.values()))
        since = min((oldest for _, oldest in waiting.values()), default=now_ms)
        self.outbox_age.set(max(0, now_ms - since) / 1000)
        for recipient in self._recipients | waiting.keys():
            count, oldest = waiting.get(recipient, (0, now_ms))
            self.recipient_depth.labels(recipient).set(count)
            self.recipient_age.labels(recipient).set(max(0, now_ms - oldest) / 1000)
        self._recipients |= waiting.keys()

    def bind_directory(
        self, age: Callable[[], float], expires_in: Callable[[], float], keys_expire_in: Callable[[], float]
    ) -> None:
        self.directory_age.set_function(age)
        self.directory_expires_in.set_function(expires_in)
        self.keys_expire_in.set_function(keys_expire_in)
