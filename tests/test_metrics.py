"""Prometheus metrics of node and gateway, scraped over HTTP during a real exchange."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
import urllib.request
from pathlib import Path

import pytest

from gateway.metrics import GatewayMetrics
from linkage import stories
from linkage.clock import ManualClock
from linkage.v1 import node_api_pb2
from node import checkpoints as checkpoints_module
from node.metrics import NodeMetrics
from node.outbox import GAUGE_INTERVAL_S
from tests.harness import (
    PRACTITIONER,
    CapturedLogs,
    LocalFederation,
    make_federation,
    reads_refused,
    running,
    settle,
    wait_delivered,
)
from tests.project_tools import generated_page, load_tool
from tests.test_delivery import family_assessment, share
from tests.test_federation import _case_id, open_case, share_think_family


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
        store = cluster.nodes["amh"].store
        assert store is not None
        (waited_ms,) = await store.fetchone("SELECT SUM(MAX(0, delivered_at_ms - created_at_ms)) FROM outbox")
    assert amh["linkage_node_messages_sent_total"] == 2
    assert amh["linkage_node_messages_delivered_total"] == 2
    assert amh["linkage_node_outbox_depth"] == 0
    assert amh["linkage_node_delivery_latency_seconds_count"] == 2
    # Each from when it was queued to when the recipient took it, by the recipient's receipt.
    assert amh["linkage_node_delivery_latency_seconds_sum"] == pytest.approx(waited_ms / 1000)
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


async def test_a_share_is_answered_as_made_though_the_outbox_gauges_cannot_be_read(
    federation: LocalFederation, captured_logs: CapturedLogs
) -> None:
    """The depth and age gauges are read after a change commits. A read the store refused
    there answered the case system UNKNOWN for a share it had made and that went; now it is
    logged, and the gauges are read again at the next change a second on."""
    async with running(federation, nodes=("amh", "csc")) as cluster:
        amh = cluster.nodes["amh"]
        assert amh.store is not None
        assessment_id = await family_assessment(cluster)

        async with reads_refused(amh.store, "outbox", "queued_again_at_ms"):
            amh.outbox._gauges_at = -GAUGE_INTERVAL_S  # a second since the last read: this change reads them
            response = await share(cluster, assessment_id)
        await wait_delivered(amh, 1)
    assert [r.node_id for r in response.recipients] == ["csc"]
    (failed,) = captured_logs.records("outbox.gauges_failed")
    assert failed["level"] == "error" and "outbox.queued_again_at_ms is prohibited" in failed["exception"]


async def test_which_agency_is_not_being_reached_is_in_the_metrics_by_name(tmp_path: Path) -> None:
    """Agency IT alert on the agency, not only on totals: the sender's outbox depth and oldest
    age for each recipient's node, back to 0 once it has none; and the gateway's view of each
    node the directory lists, connected (1) or away (0)."""
    clock = ManualClock()
    federation = make_federation(tmp_path, clock, nodes=("amh", "csc"))
    federation.gateway_config = dataclasses.replace(federation.gateway_config, metrics_listen="127.0.0.1:0")
    amh_config = federation.node_configs["amh"]
    federation.node_configs["amh"] = dataclasses.replace(amh_config, metrics_listen="127.0.0.1:0")
    async with running(federation, clock=clock) as cluster:
        amh = cluster.nodes["amh"]
        assessment_id = await family_assessment(cluster)
        await cluster.stop_node("csc")
        await share(cluster, assessment_id)
        await settle(amh)  # the gateway has answered it: csc is away
        clock.advance(90_000)
        await amh.outbox.refresh_gauges()
        waiting = await asyncio.to_thread(scrape, amh.metrics_endpoint.port)
        gateway = await asyncio.to_thread(scrape, cluster.gateway.metrics_endpoint.port)
        await cluster.start_node("csc")
        await amh.outbox.send_due()
        await wait_delivered(amh, 1)
        await amh.outbox.refresh_gauges()
        delivered = await asyncio.to_thread(scrape, amh.metrics_endpoint.port)
        back = await asyncio.to_thread(scrape, cluster.gateway.metrics_endpoint.port)
        version = amh.outbox.version
        await cluster.gateway.stop(grace=1)
        assert amh.link is not None
        while amh.link.connected.is_set():  # the outbox hears the stream end
            version = await amh.outbox.wait_change(version)
        cut_off = await asyncio.to_thread(scrape, amh.metrics_endpoint.port)
    assert waiting["linkage_node_gateway_connected"] == 1
    assert waiting['linkage_node_outbox_recipient_depth{recipient="csc"}'] == 1
    assert waiting['linkage_node_outbox_recipient_oldest_age_seconds{recipient="csc"}'] == 90
    assert (waiting["linkage_node_outbox_depth"], waiting["linkage_node_outbox_oldest_age_seconds"]) == (1, 90)
    assert delivered['linkage_node_outbox_recipient_depth{recipient="csc"}'] == 0
    assert delivered['linkage_node_outbox_recipient_oldest_age_seconds{recipient="csc"}'] == 0
    assert not any(name.startswith("linkage_node_outbox_recipient") and "amh" in name for name in delivered)
    connected = {n: v for n, v in gateway.items() if n.startswith("linkage_gateway_node_connected")}
    assert connected == {
        'linkage_gateway_node_connected{node="amh"}': 1,
        'linkage_gateway_node_connected{node="csc"}': 0,
    }
    assert back['linkage_gateway_node_connected{node="csc"}'] == 1
    assert (delivered["linkage_node_gateway_connected"], cut_off["linkage_node_gateway_connected"]) == (1, 0)


async def test_how_long_audit_entries_wait_for_the_witness_is_in_the_metrics(
    federation: LocalFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0 while the witness holds the whole log; while entries wait, the time since it last took
    the log, growing while it cannot be reached: agency IT alert on minutes of it."""

    class Later:  # the monotonic clock, moved on by hand
        ahead = 0.0

        def monotonic(self) -> float:
            return time.monotonic() + self.ahead

    later = Later()
    monkeypatch.setattr(checkpoints_module, "time", later)
    node = dataclasses.replace(federation.node_configs["amh"], metrics_listen="127.0.0.1:0")
    federation.node_configs["amh"] = node
    async with running(federation, nodes=("amh",)) as cluster:
        amh = cluster.nodes["amh"]
        parent, child = await open_case(cluster, "amh", stories.think_family_people())
        case_id = await _case_id(cluster, "amh")

        async def assess() -> None:  # audited: an entry the witness has not taken
            assessment = stories.parent_risk_change(parent, child)
            request = node_api_pb2.RecordAssessmentRequest(actor=PRACTITIONER, case_id=case_id, assessment=assessment)
            await cluster.api("amh").RecordAssessment(request)

        async def waited() -> float:
            figures = await asyncio.to_thread(scrape, amh.metrics_endpoint.port)
            return figures["linkage_node_audit_unwitnessed_seconds"]

        later.ahead = 1_000  # long after the start: counted from the last lodge, not from it
        assert await amh.checkpoints.lodge()
        assert await waited() == 0
        later.ahead += 100
        await assess()
        assert 100 <= await waited() < 110
        assert await amh.checkpoints.lodge()
        assert await waited() == 0
        await cluster.gateway.stop(grace=1)
        await assess()
        assert not await amh.checkpoints.lodge()  # no witness to take it
        later.ahead += 200
        assert 200 <= await waited() < 210


def test_every_metric_is_in_the_metrics_reference_with_its_labels() -> None:
    """Agency IT alert on these: docs/metrics.md lists each one a node or the gateway serves,
    as scraped, with the help text it is served with (generated: `make docs`)."""
    page, rendered = generated_page("gen_metrics_doc")
    assert page == rendered, "run `make docs`: docs/metrics.md is out of date"
    module = load_tool("gen_metrics_doc")
    for holder in (NodeMetrics(), GatewayMetrics()):  # every metric registered, kept as an attribute or not
        served = {family.name for family in holder.registry.collect()}
        assert served == {name for name, *_ in module.metrics(holder)}
        assert all(f"| `{name}" in page for name in served)
    assert "| `linkage_node_messages_rejected_total` | counter | `reason` |" in page
    assert "| `linkage_gateway_node_connected` | gauge | `node` |" in page
