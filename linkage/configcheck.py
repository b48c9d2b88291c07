"""`linkage config check FILE`: every problem in a configuration file at once, each with
its line, so agency IT can fix the file in one pass."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from linkage.clock import SystemClock
from linkage.directory import TrustedDirectory, load_key, read_signed
from linkage.ids import is_node_id
from linkage.keys import MessageKeys, load_ed25519
from linkage.pki import CertificateProblem, spiffe_id
from linkage.reasons import Reason, Rejected
from linkage.settings import GATEWAY, NODE, Setting
from linkage.tokens import LinkageKey
from linkage.transport import TlsFiles

if TYPE_CHECKING:  # linkage.config reads its values through this module
    from linkage.config import PolicyFiles

_LEVELS = {"debug", "info", "warning", "error"}
_ADDRESS = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")


def is_address(text: str) -> bool:
    """host:port, as a gateway address or a listen address is written (port 0: any free one)."""
    return bool(_ADDRESS.match(text)) and int(text.rsplit(":", 1)[1]) <= 65535


def _lines(text: str) -> dict[tuple[str, str], int]:
    """(section, key) -> line number, by reading the file as a person would."""
    where: dict[tuple[str, str], int] = {}
    section = ""
    for n, line in enumerate(text.splitlines(), start=1):
        stripped = line.split("#", 1)[0].strip()
        if m := re.match(r"^\[([^\[\]]+)\]$", stripped):
            section = m.group(1).strip()
            where[(section, "")] = n
        elif m := re.match(r"^([A-Za-z0-9_\-]+)\s*=", stripped):
            where[(section, m.group(1))] = n
    return where


def check(path: Path, load_policy: Callable[[PolicyFiles], object] | None = None) -> list[str]:
    """All problems found, as 'FILE:LINE: message'; empty when the file is good. A node's
    policy files are loaded with `load_policy`, as the node loads them (the command line
    passes the node's loader: this layer does not know the policy)."""
    try:
        text = path.read_text()
    except OSError as exc:
        return [f"{path}: cannot read: {exc.strerror}"]
    except UnicodeDecodeError:
        return [f"{path}: not a configuration file (it is not text)"]
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"line (\d+)", str(exc))
        return [f"{path}:{line.group(1) if line else '?'}: not valid TOML: {exc}"]
    gateway = data.get("gateway")
    kind = "gateway" if isinstance(gateway, dict) and "id" in gateway and "node" not in data else "node"
    settings = {(s.section, s.key): s for s in (GATEWAY if kind == "gateway" else NODE)}
    where = _lines(text)
    problems: list[tuple[int, str]] = []

    def at(section: str, key: str = "") -> int:
        return where.get((section, key), where.get((section, ""), 0))

    for section, values in data.items():
        if not isinstance(values, dict):
            problems.append((at("", section), f"'{section}' must be a [section]"))
            continue
        for key, value in values.items():
            setting = settings.get((section, key))
            if setting is None:
                known = sorted(k for s, k in settings if s == section)
                hint = f" (known here: {', '.join(known)})" if known else " (no such section)"
                problems.append((at(section, key), f"unknown setting [{section}] {key}{hint}"))
                continue
            message = value_problem(setting, value) or _missing_file(setting, value, path.parent)
            if not message and (section, key) in _READERS and (path.parent / str(value)).exists():
                message = _unreadable(_READERS[(section, key)], path.parent / str(value))
            if message:
                problems.append((at(section, key), f"[{section}] {key}: {message}"))
    for setting in settings.values():
        if setting.required and setting.key not in data.get(setting.section, {}):
            problems.append((at(setting.section), f"[{setting.section}] {setting.key} is required: {setting.meaning}"))
    if not problems:  # each file is what it should be: now whether they go together, as the process will ask
        together = _together(kind, data, path.parent, load_policy)
        problems += [(at(section, key), message) for section, key, message in together]
    return [f"{path}:{line}: {message}" for line, message in sorted(problems)]


# What each file a setting names must hold, read as the process reads it.
_READERS: dict[tuple[str, str], Callable[[Path], object]] = {
    ("federation", "directory_public_key"): load_key,
    ("federation", "directory"): read_signed,
    ("keys", "message_keys"): MessageKeys.load,
    ("keys", "linkage_key"): LinkageKey.load,
    ("witness", "key"): load_ed25519,
}


def _unreadable(read: Callable[[Path], object], path: Path) -> str:
    try:
        read(path)
    except (OSError, ValueError, KeyError, Rejected) as exc:
        return str(exc)
    return ""


def _together(
    kind: str, data: dict[str, Any], base: Path, load_policy: Callable[[PolicyFiles], object] | None
) -> Iterator[tuple[str, str, str]]:
    """(section, key, problem) for files that are each sound but will not work together: a
    directory not signed by the directory key or lapsed, TLS files that are not a usable pair
    from the federation's CA for this process, a node's policy files that do not load."""
    federation, now_ms = data.get("federation", {}), SystemClock().now_ms()
    signed_by = TrustedDirectory(federation["id"], load_key(base / federation["directory_public_key"]))
    if (directory := base / federation.get("directory", "directory.pb")).exists():
        try:
            signed_by.accept(read_signed(directory), now_ms)
        except Rejected as exc:  # a node fetches a current one as it connects; the gateway has no other
            if kind == "gateway" or exc.reason != Reason.DIRECTORY_EXPIRED:
                yield "federation", "directory", f"[federation] directory: {exc}"
    try:  # the three files together: said at their section
        tls = TlsFiles(*(base / data["tls"][key] for key in ("cert", "key", "ca"))).read()
        tls.check(spiffe_id(federation["id"], kind, data[kind]["id"]), now_ms)
    except OSError as exc:  # a key only the node's own user may read, say
        yield "tls", "", f"[tls] cannot read {exc.filename}: {exc.strerror}"
    except CertificateProblem as exc:
        yield "tls", "", f"[tls] {exc}"
    if kind == "node" and load_policy is not None:
        from linkage.config import policy_files  # here: linkage.config imports this module

        policy = data.get("policy", {})
        files = policy_files(base, policy.get("agreement"), policy.get("glossary"), policy.get("codelists_extra", []))
        try:  # the node would not start on them
            load_policy(files)
        except (OSError, ValueError, KeyError) as exc:
            yield "policy", "", f"[policy] the node would not start: cannot load the policy from {files}: {exc}"


def value_problem(setting: Setting, value: object) -> str:
    """What is wrong with `value` for `setting`, by its kind and least sensible value; empty
    if nothing. Both `config check` and the processes as they load their file ask this."""
    kind = setting.kind
    if kind in ("str", "id", "path", "address", "listen", "level") and not isinstance(value, str):
        return f"must be text, got {type(value).__name__}"
    if kind == "id" and not is_node_id(str(value)):
        return "must be an id as enrolment gives it: a lowercase letter, then letters, digits or hyphens (csc, gateway)"
    if kind == "int" and (not isinstance(value, int) or isinstance(value, bool) or value < setting.minimum):
        return f"must be a whole number, {setting.minimum} or more"
    if kind == "float" and (not isinstance(value, int | float) or isinstance(value, bool) or value <= 0):
        return "must be a positive number"
    if kind == "list" and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return "must be a list of file paths"
    if kind == "level" and value not in _LEVELS:
        return f"must be one of {', '.join(sorted(_LEVELS))}"
    if kind == "address" and not is_address(str(value)):
        return "must be host:port (a port up to 65535), e.g. gateway.example:7443"
    if kind == "listen" and value and not is_address(str(value)):
        return 'must be host:port (a port up to 65535), e.g. 0.0.0.0:9464, or "" for none'
    return ""


def _missing_file(setting: Setting, value: object, base: Path) -> str:
    must_exist = setting.section in ("tls", "federation", "keys", "witness")
    if setting.kind == "path" and must_exist and not (base / str(value)).exists():
        return f"{value} does not exist (relative paths start from the file's folder)"
    return ""
