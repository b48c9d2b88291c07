"""What each recipient may see: the minimised payload of one summary under the agreement."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from linkage.codelists import CodeLists
from linkage.v1 import summary_pb2 as pb
from node.policy.agreement import RecipientRules

# Always present: which summary this is, from whom, under whose law, and the decision that let it go.
ALWAYS = frozenset({"summary_id", "version", "originating_node", "agency_type", "author", "decision", "jurisdiction"})


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
    # One copy of the summary, trimmed in place (every copy of a message costs as much again).
    out = pb.RiskSummary()
    out.CopyFrom(summary)
    withheld: list[str] = []
    hidden = {p.link_token for p in summary.people if p.protect_identity}
    if hidden:
        withheld.append("people whose identity is protected")
        for n in reversed(range(len(out.people))):
            if out.people[n].protect_identity:
                del out.people[n]
    kept_categories: list[str] = []
    dropped: list[int] = []
    for n, item in enumerate(out.risk_items):
        label = f"risk item {n + 1} ({item.category})"
        if not rules.allows_category(item.category):
            withheld.append(f"{label}: not within the agreement for {agency_type}")
            dropped.append(n)
        elif item.category in rules.relevance_required and not item.relevance.strip():
            withheld.append(f"{label}: relevance to {agency_type} not stated")
            dropped.append(n)
        else:
            kept_categories.append(item.category)
            if hidden and any(t in hidden for t in item.concerns):
                kept_concerns = [t for t in item.concerns if t not in hidden]
                del item.concerns[:]
                item.concerns.extend(kept_concerns)
    for n in reversed(dropped):
        del out.risk_items[n]
    allowed = rules.fields
    if any(f.startswith("risk_items.") for f in allowed):
        # An item always says what kind of risk it is, what to consider before disclosing it to
        # the person it is about, and why it matters where that was required.
        allowed |= {"risk_items.category", "risk_items.sar_exemptions"} | (
            {"risk_items.relevance"} if rules.relevance_required else set()
        )
    fields = _prune(out, allowed, ALWAYS)
    categories = sorted(
        {c for category in kept_categories for c in codes.entry("risk_category", category).get("data_categories", [])}
    )
    return Payload(
        summary=out,
        fields=sorted(f for f in fields if f.split(".")[0] not in ALWAYS),
        data_categories=categories,
        withheld=withheld,
        items_withheld=len(summary.risk_items) - len(kept_categories),
    )
