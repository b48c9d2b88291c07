"""What each recipient may see: the minimised payload of one summary under the agreement."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from linkage.codelists import CodeLists
from linkage.v1 import summary_pb2 as pb
from node.policy.agreement import RecipientRules

# Always present: which summary this is, from whom, and the decision that let it go.
ALWAYS = frozenset({"summary_id", "version", "originating_node", "agency_type", "author", "decision"})


@dataclass(frozen=True)
class Payload:
    summary: pb.RiskSummary
    fields: list[str]
    data_categories: list[str]
    withheld: list[str]
    items_withheld: int  # risk items the agreement kept from this recipient


def routing_tokens(summary: pb.RiskSummary) -> list[bytes]:
    """The tokens a share is routed by: the people it concerns, never protected ones."""
    return sorted({p.link_token for p in summary.people if not p.protect_identity})


def _prune(message: Message, allowed: frozenset[str], always: frozenset[str] = frozenset()) -> list[str]:
    """Clear every field not allowed ("x" keeps all of x, "x.y" keeps only y); return what is left."""
    kept: list[str] = []
    for field, value in message.ListFields():
        name = field.name
        if name in always or name in allowed:
            kept.append(name)
            continue
        inner = frozenset(p.split(".", 1)[1] for p in allowed if p.startswith(name + "."))
        if not inner or field.message_type is None:
            message.ClearField(name)
            continue
        children = value if field.is_repeated else [value]
        names: set[str] = set()
        for child in children:
            names.update(_prune(child, inner))
        kept.extend(f"{name}.{n}" for n in sorted(names))
    return kept


def payload_for(summary: pb.RiskSummary, rules: RecipientRules, codes: CodeLists, agency_type: str) -> Payload:
    out = pb.RiskSummary()
    out.CopyFrom(summary)
    hidden = {p.link_token for p in summary.people if p.protect_identity}
    del out.people[:]
    out.people.extend(p for p in summary.people if not p.protect_identity)
    withheld: list[str] = []
    if any(p.protect_identity for p in summary.people):
        withheld.append("people whose identity is protected")
    kept_items = []
    for n, item in enumerate(summary.risk_items, start=1):
        label = f"risk item {n} ({item.category})"
        if not rules.allows_category(item.category):
            withheld.append(f"{label}: not within the agreement for {agency_type}")
        elif item.category in rules.relevance_required and not item.relevance.strip():
            withheld.append(f"{label}: relevance to {agency_type} not stated")
        else:
            copy = pb.RiskItem()
            copy.CopyFrom(item)
            kept_concerns = [t for t in item.concerns if t not in hidden]
            del copy.concerns[:]
            copy.concerns.extend(kept_concerns)
            kept_items.append(copy)
    del out.risk_items[:]
    out.risk_items.extend(kept_items)
    allowed = rules.fields
    if any(f.startswith("risk_items.") for f in allowed):
        # An item always says what kind of risk it is, and why it matters where that was required.
        allowed |= {"risk_items.category"} | ({"risk_items.relevance"} if rules.relevance_required else set())
    fields = _prune(out, allowed, ALWAYS)
    categories = sorted(
        {c for item in kept_items for c in codes.entry("risk_category", item.category).get("data_categories", [])}
    )
    return Payload(
        summary=out,
        fields=sorted(f for f in fields if f.split(".")[0] not in ALWAYS),
        data_categories=categories,
        withheld=withheld,
        items_withheld=len(summary.risk_items) - len(kept_items),
    )
