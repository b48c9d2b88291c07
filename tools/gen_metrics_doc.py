"""Write docs/metrics.md from the node's and the gateway's metrics (node/metrics.py,
gateway/metrics.py), each with the help text it is scraped with (run `make docs`; a test
fails if the committed page is out of date)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.metrics import GatewayMetrics
from node.metrics import NodeMetrics

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "metrics.md"
# The samples each type of metric is scraped as, after its name.
SCRAPED = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def metrics(holder: object) -> list[tuple[str, str, tuple[str, ...], str]]:
    """(name, type, labels, help) of each metric a holder registers, in the order it makes them."""
    found = []
    for metric in vars(holder).values():
        if not hasattr(metric, "describe"):
            continue
        (family,) = metric.describe()
        labels: Any = getattr(metric, "_labelnames", None) or getattr(metric, "LABELS", ())
        found.append((family.name, family.type, tuple(labels), family.documentation))
    return found


def render() -> str:
    out = [
        "# Metrics",
        "",
        "With `[metrics] listen` set (docs/configuration.md), a node and the gateway serve Prometheus",
        "metrics over plain HTTP at `/metrics`: bind it to an address only the monitoring system can reach.",
        "They hold counts, times and agencies' node ids, never a link token or anything about a person.",
        "",
        "<!-- Generated from node/metrics.py and gateway/metrics.py by tools/gen_metrics_doc.py; do not edit. -->",
        "",
    ]
    for title, holder in (("Node", NodeMetrics()), ("Gateway", GatewayMetrics())):
        out += [f"## {title}", "", "| metric | type | labels | meaning |", "|---|---|---|---|"]
        for name, kind, labels, meaning in metrics(holder):
            scraped = ", ".join(f"`{name}{suffix}`" for suffix in SCRAPED[kind])
            shown = ", ".join(f"`{label}`" for label in labels)
            out.append(f"| {scraped} | {kind} | {shown} | {meaning}. |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    PAGE.write_text(render())
    print(f"wrote {PAGE}")
