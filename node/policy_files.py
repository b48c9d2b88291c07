"""Loading the federation's rules for the (pure) policy: code lists, agreement, glossary."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from linkage.codelists import CodeLists
from linkage.config import PolicyFiles
from node.policy import Agreement, Glossary, PolicyContext


def document(path: Path | None, packaged: str) -> dict[str, object]:
    """The federation's own file at `path`, or the packaged one named `packaged`."""
    text = path.read_text() if path else resources.files("linkage.data").joinpath(packaged).read_text()
    return tomllib.loads(text)


def load_policy(files: PolicyFiles) -> PolicyContext:
    return PolicyContext(
        codes=CodeLists.load(files.codelists_extra),
        agreement=Agreement.from_document(document(files.agreement, "dsa.toml")),
        glossary=Glossary.from_document(document(files.glossary, "glossary.toml")),
    )
