"""What each recipient may see: the minimised payload of one summary."""

from __future__ import annotations

from linkage.v1 import summary_pb2 as pb


def minimise(summary: pb.RiskSummary) -> pb.RiskSummary:
    """A copy without protect-identity people, nor any reference to them."""
    out = pb.RiskSummary()
    out.CopyFrom(summary)
    hidden = {p.link_token for p in summary.people if p.protect_identity}
    del out.people[:]
    out.people.extend(p for p in summary.people if not p.protect_identity)
    for item in out.risk_items:
        kept = [t for t in item.concerns if t not in hidden]
        del item.concerns[:]
        item.concerns.extend(kept)
    return out


def routing_tokens(summary: pb.RiskSummary) -> list[bytes]:
    """The tokens a share is routed by: the people it concerns, never protected ones."""
    return sorted({p.link_token for p in summary.people if not p.protect_identity})
