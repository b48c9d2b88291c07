"""The federation's data-sharing agreement: per recipient agency type, which fields and
risk categories may go, and which categories need a stated relevance."""

from __future__ import annotations

from dataclasses import dataclass, field

from linkage.toml_shapes import Table, table, text, texts


@dataclass(frozen=True)
class RecipientRules:
    fields: frozenset[str]
    categories: frozenset[str] | None  # None: every category
    relevance_required: frozenset[str] = frozenset()

    def allows_category(self, category: str) -> bool:
        return self.categories is None or category in self.categories

    @classmethod
    def from_document(cls, doc: Table, where: str) -> RecipientRules:
        categories = texts(doc, "categories", where, ("*",))
        return cls(
            fields=frozenset(texts(doc, "fields", where)),
            categories=None if "*" in categories else frozenset(categories),
            relevance_required=frozenset(texts(doc, "relevance_required", where)),
        )


@dataclass(frozen=True)
class Agreement:
    version: str
    title: str
    default: RecipientRules
    by_type: dict[str, RecipientRules] = field(default_factory=dict)
    approval_when_consent_absent: bool = False

    def rules_for(self, agency_type: str) -> RecipientRules:
        return self.by_type.get(agency_type, self.default)

    @classmethod
    def from_document(cls, doc: Table) -> Agreement:
        approval = table(doc, "approval").get("when_consent_absent", False)
        if not isinstance(approval, bool):
            raise ValueError("approval.when_consent_absent must be true or false")
        recipients = table(doc, "recipient")
        by_type = {
            k: RecipientRules.from_document(table(recipients, k, "recipient."), f"recipient.{k}.") for k in recipients
        }
        return cls(
            version=text(doc, "version"),
            title=text(doc, "title") if "title" in doc else "",
            default=RecipientRules.from_document(table(doc, "default"), "default."),
            by_type=by_type,
            approval_when_consent_absent=approval,
        )
