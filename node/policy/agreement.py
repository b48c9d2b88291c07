"""The federation's data-sharing agreement: per recipient agency type, which fields and
risk categories may go, and which categories need a stated relevance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RecipientRules:
    fields: frozenset[str]
    categories: frozenset[str] | None  # None: every category
    relevance_required: frozenset[str] = frozenset()

    def allows_category(self, category: str) -> bool:
        return self.categories is None or category in self.categories

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> RecipientRules:
        categories = [str(c) for c in doc.get("categories", ["*"])]
        return cls(
            fields=frozenset(str(f) for f in doc.get("fields", [])),
            categories=None if "*" in categories else frozenset(categories),
            relevance_required=frozenset(str(c) for c in doc.get("relevance_required", [])),
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
    def from_document(cls, doc: dict[str, Any]) -> Agreement:
        return cls(
            version=str(doc["version"]),
            title=str(doc.get("title", "")),
            default=RecipientRules.from_document(doc.get("default", {})),
            by_type={k: RecipientRules.from_document(v) for k, v in doc.get("recipient", {}).items()},
            approval_when_consent_absent=bool(doc.get("approval", {}).get("when_consent_absent", False)),
        )
