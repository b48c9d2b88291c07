"""The gateway's metrics: envelopes by outcome, refusals, checkpoints witnessed, connected
nodes (in all, and which), subscriptions, directory age. Counts, and agencies' node ids;
never a token or a person's identifier."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

_OUTCOMES = {
    "envelope.forwarded": "forwarded",
    "envelope.recipient_offline": "recipient_offline",
    "envelope.busy": "busy",
    "envelope.rejected": "rejected",
}


class NodesConnected(Collector):
    """linkage_gateway_node_connected{node}: 1 for each node the directory lists as active with
    a stream open now, 0 for each without one, read as it is scraped. A node that is away has
    a series of its own at 0, to alert on by name; a count of those connected names nobody."""

    NAME = "linkage_gateway_node_connected"
    LABELS = ("node",)

    def __init__(self) -> None:
        self.active: Callable[[], list[str]] = list
        self.connected: Callable[[], set[str]] = set

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            self.NAME, "1 while the node (active in the directory) has its stream open, else 0", labels=self.LABELS
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family, connected = self._family(), self.connected()
        for node_id in self.active():
            family.add_metric([node_id], float(node_id in connected))
        yield family


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.envelopes = Counter(
            "linkage_gateway_envelopes",
            "Envelopes from nodes, by what became of them: forwarded, recipient_offline, busy or rejected",
            ["outcome"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "linkage_gateway_refusals",
            "Calls refused, by kind: the refusal's log event (connect.refused, resolve.refused, ...) or rate_limited",
            ["kind"],
            registry=self.registry,
        )
        self.receipts = Counter("linkage_gateway_receipts", "Receipts relayed to senders", registry=self.registry)
        self.checkpoints = Counter(
            "linkage_gateway_checkpoints",
            "Audit checkpoints witnessed, by outcome (diverged: a break in a node's log, kept as evidence)",
            ["outcome"],
            registry=self.registry,
        )
        self.connected = Gauge("linkage_gateway_connected_nodes", "Nodes with an open stream", registry=self.registry)
        self.subscriptions = Gauge(
            "linkage_gateway_subscriptions", "(token, node) subscriptions held", registry=self.registry
        )
        self.store_writable = Gauge(
            "linkage_gateway_store_writable",
            "1 while the gateway's store takes writes; 0 while it cannot (a full or failing disk): "
            "it relays no new envelopes and reports NOT_SERVING",
            registry=self.registry,
        )
        self.directory_age = Gauge(
            "linkage_gateway_directory_age_seconds", "Age of the directory held", registry=self.registry
        )
        self.directory_expires_in = Gauge(
            "linkage_gateway_directory_expires_in_seconds",
            "Until the directory held expires and the gateway fails closed (alert well before 0)",
            registry=self.registry,
        )
        self.certificate_expires_in = Gauge(
            "linkage_gateway_tls_certificate_expires_in_seconds",
            "Until the TLS certificate served lapses and no node can connect (renew it well before 0)",
            registry=self.registry,
        )

        self.on_replaced_certificate = Gauge(
            "linkage_gateway_nodes_on_replaced_certificate",
            "Nodes connected with the certificate their renewal replaced: the renewed file is not in "
            "use there (install it before it lapses, and before retiring a CA)",
            registry=self.registry,
        )
        self.nodes_connected = NodesConnected()
        self.registry.register(self.nodes_connected)

    def observe(self, event: str, outcome: str = "") -> None:
        if event in _OUTCOMES:
            self.envelopes.labels(_OUTCOMES[event]).inc()
        elif event.endswith(".refused") or event == "rate_limited":
            self.refusals.labels(event).inc()
        elif event == "receipt.relayed":
            self.receipts.inc()
        elif event == "checkpoint.lodged":
            self.checkpoints.labels(outcome).inc()

    def bind(
        self,
        connected: Callable[[], float],
        subscriptions: Callable[[], float],
        store_writable: Callable[[], float],
        directory_age: Callable[[], float],
        directory_expires_in: Callable[[], float],
        certificate_expires_in: Callable[[], float],
        on_replaced_certificate: Callable[[], float],
        active_nodes: Callable[[], list[str]],
        connected_nodes: Callable[[], set[str]],
    ) -> None:
        self.connected.set_function(connected)
        self.subscriptions.set_function(subscriptions)
        self.store_writable.set_function(store_writable)
        self.directory_age.set_function(directory_age)
        self.directory_expires_in.set_function(directory_expires_in)
        self.certificate_expires_in.set_function(certificate_expires_in)
        self.on_replaced_certificate.set_function(on_replaced_certificate)
        self.nodes_connected.active, self.nodes_connected.connected = active_nodes, connected_nodes
