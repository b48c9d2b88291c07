"""Project hygiene: generated code is fresh, layers stay apart, every command has help, every
kind of audit entry has its plain meaning."""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from linkage.cli.main import MODULE_COMMANDS, build_parser
from node.audit_events import MEANING, AuditEvent
from tests.project_tools import load_tool

ROOT = Path(__file__).resolve().parent.parent


def test_generated_protobuf_code_is_not_stale(tmp_path: Path) -> None:
    written = load_tool("gen_proto").generate(tmp_path)
    committed = ROOT / "linkage" / "v1"
    stale = [p.name for p in written if p.read_bytes() != (committed / p.name).read_bytes()]
    extra = {p.name for p in committed.glob("*_pb2*")} - {p.name for p in written}
    assert not stale and not extra, f"run `make proto`: stale {stale}, no longer generated {sorted(extra)}"


def _imports(package: str) -> dict[Path, set[str]]:
    found: dict[Path, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[path] = names
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("gateway", {"node"}), ("node", {"gateway"}), ("linkage", {"node", "gateway"})],
)
def test_layers_do_not_import_each_other(package: str, forbidden: set[str]) -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(names & forbidden)
        for p, names in _imports(package).items()
        if names & forbidden and "cli" not in p.relative_to(ROOT).parts  # the CLI wires the layers together
    }
    assert not offenders


def test_the_linkage_command_imports_the_command_line_only_when_it_runs() -> None:
    """`audit verify`'s worker processes import the script that started them, so its module
    stays light: otherwise each would import the whole command line again first."""
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="linkage")
    assert script.value == "linkage.__main__:run"
    probe = (
        "import sys, linkage.__main__; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'grpc', 'google', 'cryptography', 'node', "
        "'gateway'} or m.startswith('linkage.cli.')))"
    )
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == "[]"
    ran = subprocess.run([Path(sys.executable).parent / "linkage", "--version"], capture_output=True, text=True)
    assert ran.returncode == 0 and ran.stdout.startswith("linkage "), ran.stderr


def _top_level(parser: argparse.ArgumentParser) -> set[str]:
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(commands.choices)


def test_a_command_line_that_names_a_command_loads_its_module_alone() -> None:
    """The table that says which module registers which command agrees with what each
    registers, and `linkage health` (a container's check, every ten seconds) loads no
    other command's code."""
    everything = _top_level(build_parser())
    own = everything - {n for names in MODULE_COMMANDS.values() for n in names}  # defined in main.py
    assert {"federation", "node", "gateway", "demo"} <= own
    for module, names in MODULE_COMMANDS.items():
        for name in names:
            assert _top_level(build_parser(name)) == own | set(names), module
    probe = (
        "import sys; from linkage.cli.main import main\n"
        "try:\n    main(['health', '--config', '/nonexistent/node.toml'])\n"
        "finally:\n    print(sorted(m for m in sys.modules if m.startswith('linkage.cli.')))"
    )
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    loaded = ran.stdout.strip().splitlines()[-1]
    assert loaded == "['linkage.cli.health', 'linkage.cli.main', 'linkage.cli.terminal', 'linkage.cli.values']", (
        ran.stderr
    )


def _commands(parser: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    import argparse

    assert isinstance(parser, argparse.ArgumentParser)
    out = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _commands(sub, (*prefix, name))
    return out


@pytest.mark.parametrize("command", _commands(build_parser()), ids=lambda c: " ".join(c) or "linkage")
def test_every_command_has_help(command: tuple[str, ...]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "linkage", *command, "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "usage: linkage" in result.stdout


def test_every_kind_of_audit_entry_has_its_plain_meaning() -> None:
    """mypy holds every entry a node writes to `AuditEvent`; an IG officer reads each kind in
    plain words (`audit list --help`, the subject access report), so none may lack them."""
    assert list(MEANING) == list(get_args(AuditEvent))
    listed = subprocess.run(
        [sys.executable, "-m", "linkage", "audit", "list", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert all(f"  {event} " in listed for event in MEANING)


_LEVELS = frozenset({"debug", "info", "warning", "error", "exception", "critical"})
# The helpers that log an event their caller names, by its position and keyword: `log_failure(log,
# "event", ...)`, the gateway's `_note("event", ...)` (a log line and a metadata-log entry), and a
# node's `_say_once("event", ...)` and `_recorded(..., failed="event")`.
_EVENT_ARGUMENT = {
    "log_failure": (1, "event"),
    "_note": (0, "event"),
    "_say_once": (0, "event"),
    "_recorded": (2, "failed"),
}


def _logged_events() -> tuple[dict[str, str], list[str]]:
    """Every event the node and the gateway log by a name written in their code, with where;
    and where a call logs an event whose name is not written there, so no table can be
    checked against it (but in the helpers that log their caller's)."""
    found: dict[str, str] = {}
    unread: list[str] = []
    for package in ("node", "gateway", "linkage"):
        for path in (ROOT / package).rglob("*.py"):
            if "v1" in path.relative_to(ROOT).parts:  # generated
                continue
            tree = ast.parse(path.read_text())
            in_helpers = {
                id(call)
                for helper in ast.walk(tree)
                if isinstance(helper, ast.FunctionDef | ast.AsyncFunctionDef) and helper.name in _EVENT_ARGUMENT
                for call in ast.walk(helper)
            }
            for call in ast.walk(tree):
                if not isinstance(call, ast.Call) or (event := _event_argument(call)) is None:
                    continue
                where = f"{path.relative_to(ROOT)}:{call.lineno}"
                if (written := _written(event)) is None:
                    if id(call) not in in_helpers:
                        unread.append(where)
                    continue
                for name in written:
                    found.setdefault(name, where)
    return found, unread


def _event_argument(call: ast.Call) -> ast.expr | None:
    """What a call gives as the event it logs, if it logs one."""
    if _is_level(call.func):
        index, keyword = 0, "event"
    else:
        func = call.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name not in _EVENT_ARGUMENT:
            return None
        index, keyword = _EVENT_ARGUMENT[name]
    if len(call.args) > index:
        return call.args[index]
    return next((given.value for given in call.keywords if given.arg == keyword), None)


def _is_level(func: ast.expr) -> bool:
    """`log.info`, and `(log.warning if ... else log.info)`."""
    if isinstance(func, ast.IfExp):
        return _is_level(func.body) and _is_level(func.orelse)
    return isinstance(func, ast.Attribute) and func.attr in _LEVELS


def _written(event: ast.expr) -> list[str] | None:
    """The names an event argument can take, a `*` for each part an f-string fills in; None if
    the code does not write them out."""
    if isinstance(event, ast.Constant) and isinstance(event.value, str):
        return [event.value]
    if isinstance(event, ast.JoinedStr):
        return ["".join(str(part.value) if isinstance(part, ast.Constant) else "*" for part in event.values)]
    if isinstance(event, ast.IfExp):
        either = (_written(event.body), _written(event.orelse))
        return None if either[0] is None or either[1] is None else either[0] + either[1]
    return None


def _tabled_events() -> tuple[set[str], set[str]]:
    """The events the operations guide's table names, and the endings its `*.x` rows name.
    A name in a row's first cell that starts with a dot ends the one before it."""
    names: set[str] = set()
    endings: set[str] = set()
    for line in (ROOT / "docs" / "operations.md").read_text().splitlines():
        if not line.startswith("| `"):
            continue
        stem = ""
        for name in re.findall(r"`([*a-z_.]+)`", line.split("|")[1]):
            if name.startswith("*."):
                endings.add(name[1:])
            elif name.startswith("."):
                names.add(stem + name)
            else:
                names.add(name)
                stem = name.rsplit(".", 1)[0]
    return names, endings


def test_every_event_a_node_or_the_gateway_logs_has_its_row_in_the_operations_guide() -> None:
    """Agency IT read an event's meaning, and what to do, in docs/operations.md: none is
    logged that the guide does not explain."""
    names, endings = _tabled_events()
    logged, unread = _logged_events()
    assert len(logged) > 100  # the finder still finds them
    assert not unread, f"write out the event's name where it is logged, so the guide can be checked: {unread}"
    unexplained = {
        event: where
        for event, where in logged.items()
        if event not in names and not any(event.endswith(ending) for ending in endings)
    }
    assert not unexplained, f"give these a row in docs/operations.md's table of log events: {unexplained}"
