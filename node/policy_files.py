"""Loading the federation's rules for the (pure) policy: code lists, agreement, glossary."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TypeVar

from linkage.codelists import CodeLists
from linkage.config import PolicyFiles
from linkage.toml_shapes import Table, read
from node.policy import Agreement, Glossary, PolicyContext

Rules = TypeVar("Rules")


def document(path: Path | None, packaged: str) -> Table:
    """The federation's own file at `path`, or the packaged one named `packaged`."""
    if path:
        return read(path)
    return tomllib.loads(resources.files("linkage.data").joinpath(packaged).read_text())


def _rules(path: Path | None, packaged: str, parse: Callable[[Table], Rules]) -> Rules:
    """What the document says, or a ValueError that names the file and the part that is wrong."""
    doc = document(path, packaged)
    try:
        return parse(doc)
    except ValueError as exc:
        raise ValueError(f"{path.name if path else packaged}: {exc}") from None


def load_policy(files: PolicyFiles) -> PolicyContext:
    return PolicyContext(
        codes=CodeLists.load(files.codelists_extra),
        agreement=_rules(files.agreement, "dsa.toml", Agreement.from_document),
        glossary=_rules(files.glossary, "glossary.toml", Glossary.from_document),
    )
