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

Entry = dict[str, Any]


@dataclass(frozen=True)
class CodeLists:
    version: str
    lists: dict[str, dict[str, Entry]]

    @classmethod
    def from_documents(cls, documents: Iterable[dict[str, Any]]) -> CodeLists:
        """Merge documents in order: later ones add codes (and may relabel), never remove."""
        lists: dict[str, dict[str, Entry]] = {}
        versions = []
        for doc in documents:
            versions.append(str(doc.get("version", "?")))
            for name, entries in doc.items():
                if isinstance(entries, list):
                    target = lists.setdefault(name, {})
                    for entry in entries:
                        target[str(entry["code"])] = {**target.get(str(entry["code"]), {}), **entry}
        return cls(version="+".join(versions), lists=lists)

    @classmethod
    def load(cls, extra: Iterable[Path] = ()) -> CodeLists:
        base = resources.files("linkage.data").joinpath("codelists.toml").read_text()
        docs = [tomllib.loads(base)] + [tomllib.loads(p.read_text()) for p in extra]
        return cls.from_documents(docs)

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
