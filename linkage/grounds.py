"""A share decision's lawful ground as one line, as the audit log records it and the IG
officer's register shows it: its UK GDPR Article 6 bases, Article 9 condition, DPA 2018
condition, statutory powers and the grounds for overriding consent."""

from __future__ import annotations

from linkage.v1 import summary_pb2


def lawful_ground(decision: summary_pb2.ShareDecision) -> str:
    basis = decision.lawful_basis
    grounds = [*basis.art6, basis.art9, basis.dpa_condition, *basis.statutory_gateway, *decision.override_grounds]
    return ",".join(x for x in grounds if x)
