"""Prometheus metrics of node and gateway, scraped over HTTP during a real exchange."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import urllib.request

from tests.harness import LocalFederation, running, wait_delivered
from tests.test_federation import share_think_family


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


async def test_metrics_are_exposed_and_count_the_exchange(federation: LocalFederation) -> None:
    federation.gateway_config = dataclasses.replace(federation.gateway_config, metrics_listen="127.0.0.1:0")
    for node in federation.node_configs:
        federation.node_configs[node] = dataclasses.replace(federation.node_configs[node], metrics_listen="127.0.0.1:0")
    async with running(federation) as cluster:
        await share_think_family(cluster)
        await wait_delivered(cluster.nodes["amh"], 2)
        await cluster.nodes["amh"].outbox.refresh_gauges()  # gauges lag by up to a second
        assert await cluster.nodes["amh"].checkpoints.lodge()
        amh = await asyncio.to_thread(scrape, cluster.nodes["amh"].metrics_endpoint.port)
        csc = await asyncio.to_thread(scrape, cluster.nodes["csc"].metrics_endpoint.port)
        gateway = await asyncio.to_thread(scrape, cluster.gateway.metrics_endpoint.port)
    assert amh["linkage_node_messages_sent_total"] == 2
    assert amh["linkage_node_messages_delivered_total"] == 2
    assert amh["linkage_node_outbox_depth"] == 0
    assert amh["linkage_node_delivery_latency_seconds_count"] == 2
    assert 0 < amh["linkage_node_directory_age_seconds"] < 3600
    week, year = 7 * 86_400, 365 * 86_400  # the harness publishes for a week; keys are enrolled for a year
    assert week - 3600 < amh["linkage_node_directory_expires_in_seconds"] <= week
    assert week - 3600 < gateway["linkage_gateway_directory_expires_in_seconds"] <= week
    assert year - 3600 < amh["linkage_node_message_keys_expire_in_seconds"] <= year
    certificates = 90 * 86_400  # TLS certificates are issued for 90 days
    assert certificates - 3600 < amh["linkage_node_tls_certificate_expires_in_seconds"] <= certificates
    assert certificates - 3600 < gateway["linkage_gateway_tls_certificate_expires_in_seconds"] <= certificates
    assert csc["linkage_node_messages_received_total"] >= 1
    assert gateway['linkage_gateway_envelopes_total{outcome="forwarded"}'] >= 2
    assert gateway['linkage_gateway_checkpoints_total{outcome="ok"}'] >= 1
    assert gateway["linkage_gateway_connected_nodes"] == 4
    assert gateway["linkage_gateway_subscriptions"] >= 5
    assert not any(re.search(r"[0-9a-f]{64}", name) for name in {**amh, **gateway})  # never a token


async def test_a_node_stopping_leaves_no_gauge_refresh_to_start_after_its_store_closes(
    federation: LocalFederation,
) -> None:
    """A refresh due a second after the last change fired during shutdown and made a task
    the closing loop never ran ("coroutine 'Outbox.refresh_gauges' was never awaited", seen
    once in a soak run). Stopping cancels the timer; later changes schedule none."""
    async with running(federation, nodes=("amh",)) as cluster:
        outbox = cluster.nodes["amh"].outbox
        await outbox.changed()
        await outbox.changed()  # within the interval: a refresh is scheduled for later
        assert outbox._gauges_later is not None
        await cluster.stop_node("amh")
        assert outbox._gauges_later is None
        await outbox.changed()
        assert outbox._gauges_later is None
