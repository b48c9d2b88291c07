"""The UK jurisdictions whose law an agency shares under (domain.md §1.9): England, Wales,
Scotland and Northern Ireland each have their own statutory powers to share for
safeguarding, so a summary says which law it was made under, and its decision may cite
only that law's powers."""

from __future__ import annotations

from linkage.codelists import CodeLists
from linkage.v1 import directory_pb2, summary_pb2

DEFAULT = "ENG"  # domain.md: England is the default jurisdiction


def of_node(entry: directory_pb2.NodeEntry) -> str:
    """A node's jurisdiction; one enrolled before jurisdictions were recorded is England's."""
    return entry.jurisdiction or DEFAULT


def of_summary(summary: summary_pb2.RiskSummary) -> str:
    """The law a summary was made under; one recorded before summaries said is England's."""
    return summary.jurisdiction or DEFAULT


def name(codes: CodeLists, code: str) -> str:
    """'Wales (WLS)', or the code alone when the lists do not know it."""
    label = codes.entry("jurisdiction", code).get("label")
    return f"{label} ({code})" if label else code


def powers_of(codes: CodeLists, jurisdiction: str) -> list[str]:
    """The statutory powers the code lists give as that jurisdiction's own law."""
    return [
        code
        for code in codes.codes("statutory_gateway")
        if jurisdiction in codes.entry("statutory_gateway", code).get("jurisdictions", ())
    ]


def applies(codes: CodeLists, name: str, code: str, jurisdiction: str) -> bool:
    """Whether a code of list `name` (a statutory power, an exemption) is law in the
    jurisdiction; one without a list of jurisdictions is law everywhere."""
    where = codes.entry(name, code).get("jurisdictions")
    return where is None or jurisdiction in where
