"""Reading a federation's TOML documents (its agreement, glossary, code lists) by the shape
each part must have, so a file written by hand that parses but holds the wrong kind of
value somewhere is refused with where and what (`recipient.SCHOOL.fields must be a list of
text`), not a traceback from deep in the code that reads it."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

Table = dict[str, Any]


def read(path: Path) -> Table:
    """The TOML document at `path`; one that does not parse is refused naming the file."""
    text = path.read_text()
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path.name}: {exc}") from None


def table(doc: Table, key: str, where: str = "") -> Table:
    """`doc[key]`, a table; an empty one if absent."""
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise ValueError(f"{where}{key} must be a table ([{where}{key}])")
    return value


def tables(doc: Table, key: str, where: str = "") -> list[Table]:
    """`doc[key]`, an array of tables ([[key]]); empty if absent."""
    value = doc.get(key, [])
    if not (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
        raise ValueError(f"{where}{key} must be an array of tables ([[{where}{key}]])")
    return value


def texts(doc: Table, key: str, where: str = "", default: tuple[str, ...] = ()) -> list[str]:
    """`doc[key]`, a list of text; `default` if absent."""
    value = doc.get(key, list(default))
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ValueError(f"{where}{key} must be a list of text")
    return value


def text(doc: Table, key: str, where: str = "") -> str:
    """`doc[key]`, which must be there: text, or a number or date written as it reads."""
    if key not in doc:
        raise ValueError(f"{where}{key} is missing")
    value = doc[key]
    if isinstance(value, dict | list | bool):
        raise ValueError(f"{where}{key} must be text")
    return str(value)
