"""A share decision's lawful ground as one line, as the audit log records it and the IG
officer's register shows it: its UK GDPR Article 6 bases, Article 9 condition, DPA 2018
condition, statutory powers and the grounds for overriding consent; and the rest of the
terms a summary was received on."""

from __future__ import annotations

from linkage.v1 import summary_pb2


def lawful_ground(decision: summary_pb2.ShareDecision) -> str:
    basis = decision.lawful_basis
    grounds = [*basis.art6, basis.art9, basis.dpa_condition, *basis.statutory_gateway, *decision.override_grounds]
    return ",".join(x for x in grounds if x)


def terms_received(summary: summary_pb2.RiskSummary, me: str) -> dict[str, object]:
    """The terms a summary came to node `me` on, as its `message.received` entry keeps them and
    the register of sharing states them: they outlive the summary, erased or purged."""
    decision = summary.decision
    mine = next((r for r in decision.recipients if r.node_id == me), None)
    return {
        "data_categories": list(mine.data_categories) if mine else [],
        "jurisdiction": summary.jurisdiction,
        "consent_status": decision.consent_status,
        "approved_by": decision.approved_by.id,
        "handling": list(decision.handling_conditions),
    }
