"""The scripts in tools/ (not a package), loaded as modules for the tests that check what
they generate is what is committed."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def load_tool(name: str) -> Any:
    """tools/`name`.py as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generated_page(tool: str) -> tuple[str, str]:
    """The page a doc generator writes, as committed and as it would write it now."""
    module = load_tool(tool)
    return module.PAGE.read_text(), module.render()
