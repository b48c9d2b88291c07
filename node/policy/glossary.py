"""Plain language: acronyms and jargon a practitioner is asked to explain before sending."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from node.policy.findings import Finding


@dataclass(frozen=True)
class Glossary:
    terms: dict[str, str]  # acronym -> meaning
    jargon: dict[str, str]  # phrase -> plainer alternative

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Glossary:
        return cls(
            terms={str(t["term"]): str(t["meaning"]) for t in doc.get("term", [])},
            jargon={str(j["phrase"]).lower(): str(j["plain"]) for j in doc.get("jargon", [])},
        )

    def findings(self, where: str, text: str) -> Iterator[Finding]:
        if not text:
            return
        lowered = text.lower()
        for term, meaning in self.terms.items():
            if re.search(rf"(?<![\w-]){re.escape(term)}(?![\w-])", text) and meaning.lower() not in lowered:
                yield Finding(
                    "unexplained_acronym",
                    f"{where}: explain '{term}' ({meaning}) or use plain words; not every reader knows it.",
                    "warning",
                )
        for phrase, plain in self.jargon.items():
            if phrase in lowered:
                yield Finding("jargon", f"{where}: instead of '{phrase}', {plain}.", "warning")
