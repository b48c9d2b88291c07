"""The federation's code lists (agency types, risk categories, lawful grounds, change
directions, forums...): versioned data files, extended by a federation's own file."""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from linkage.toml_shapes import Table, read, tables, text

Entry = dict[str, Any]


@dataclass(frozen=True)
class CodeLists:
    version: str
    lists: dict[str, dict[str, Entry]]

    @classmethod
    def from_documents(cls, documents: Iterable[tuple[str, Table]]) -> CodeLists:
        """Merge documents, each named by where it came from, in order: later ones add codes
        (and may relabel), never remove."""
        lists: dict[str, dict[str, Entry]] = {}
        versions = []
        for source, doc in documents:
            try:
                versions.append(text(doc, "version") if "version" in doc else "?")
                for name, entries in doc.items():
                    if isinstance(entries, list):
                        target = lists.setdefault(name, {})
                        for entry in tables(doc, name):
                            code = text(entry, "code", f"{name}.")
                            target[code] = {**target.get(code, {}), **entry}
            except ValueError as exc:
                raise ValueError(f"{source}: {exc}") from None
        return cls(version="+".join(versions), lists=lists)

    @classmethod
    def load(cls, extra: Iterable[Path] = ()) -> CodeLists:
        base = resources.files("linkage.data").joinpath("codelists.toml").read_text()
        docs = [("the packaged code lists", tomllib.loads(base))]
        return cls.from_documents([*docs, *((p.name, read(p)) for p in extra)])

    def has(self, name: str, code: str) -> bool:
        return code in self.lists.get(name, {})

    def entry(self, name: str, code: str) -> Entry:
        return self.lists.get(name, {}).get(code, {})

    def codes(self, name: str) -> list[str]:
        return sorted(self.lists.get(name, {}))

    def digest(self, name: str) -> str:
        """What one list holds, as a SHA-256 in hex: whatever its version says, it changes
        when a code, or anything said of one, does."""
        listed = json.dumps(self.lists.get(name, {}), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(listed.encode()).hexdigest()

    def unverified_link(self, identity_basis: str) -> bool:
        """A person linked on a basis the lists know and do not count as verified (a match,
        someone's word): whoever acts on it should confirm it is the same person first."""
        entry = self.entry("identity_basis", identity_basis)
        return bool(entry) and not entry.get("verified")
