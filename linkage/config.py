"""Per-process configuration: one TOML file for each node and gateway.

Relative paths are taken from the directory holding the file, so a node's
whole configuration can be moved with its folder.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from linkage.configcheck import value_problem
from linkage.directory import TrustedDirectory, load_key
from linkage.settings import GATEWAY, NODE, Setting
from linkage.transport import TlsFiles


class ConfigError(ValueError):
    """A configuration file that cannot be used, with every problem found."""


class _Reader:
    def __init__(self, path: Path, settings: list[Setting]) -> None:
        self.path = path
        self.base = path.parent
        try:
            self.data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a configuration file (it is not text)") from None
        self.settings = {(s.section, s.key): s for s in settings}
        self.problems: list[str] = []

    def get(self, section: str, key: str, default: Any = None, required: bool = True) -> Any:
        """The value from LINKAGE_<SECTION>_<KEY> if set, else from the file, else `default`;
        one that is not what its setting takes is a problem (`default` stands in for it, so
        that every problem is found before the load fails)."""
        name = f"LINKAGE_{section}_{key}".upper()
        env = os.environ.get(name)
        setting = self.settings.get((section, key))
        if env is not None:
            value: Any = _from_env(setting.kind, env) if setting else env
        else:
            value = self.data.get(section, {}).get(key, default)
        if value is None:
            if required:
                self.problems.append(f"{self.path}: [{section}] {key} is required")
            return value
        if setting and (problem := value_problem(setting, value)):
            where = f"{name} (in the environment)" if env is not None else f"[{section}] {key}"
            self.problems.append(f"{self.path}: {where}: {problem}, not {value!r}")
            return default
        return value

    def path_of(self, section: str, key: str, default: str | None = None) -> Path:
        raw = self.get(section, key, default)
        return (self.base / str(raw)).resolve() if raw is not None else self.base

    def refuse(self, what: str, wanted: str) -> None:
        """The other process's file, given where this one's is wanted: say so, and what to give."""
        raise ConfigError(f"{self.path} is {what}; this takes {wanted}")

    def unknown(self) -> tuple[str, ...]:
        """What the file sets that this process does not know: a typo, or a newer release's."""
        return tuple(
            f"[{section}] {key}" if isinstance(values, dict) else section
            for section, values in self.data.items()
            for key in (values if isinstance(values, dict) else [""])
            if (section, key) not in self.settings
        )

    def done(self) -> None:
        if self.problems:
            raise ConfigError("\n".join(self.problems))


def _from_env(kind: str, text: str) -> Any:
    """An environment variable's text as its setting's kind, where it reads as one."""
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        return text  # left for value_problem to name
    if kind == "list":
        return [part for part in text.split(",") if part]
    return text


def load_directory_key(path: Path) -> ed25519.Ed25519PublicKey:
    try:
        return load_key(path)
    except ValueError as exc:
        raise ConfigError(f"[federation] directory_public_key: {exc}") from None


@dataclass(frozen=True)
class FederationConfig:
    federation_id: str
    directory_public_key: Path
    directory: Path

    def trusted_directory(self) -> TrustedDirectory:
        """What a running process trusts: the directory key from its file, which it keeps up
        to date when the federation rotates that key."""
        key = load_directory_key(self.directory_public_key)
        return TrustedDirectory(self.federation_id, key, anchor=self.directory_public_key)


def _federation(r: _Reader) -> FederationConfig:
    return FederationConfig(
        federation_id=r.get("federation", "id"),
        directory_public_key=r.path_of("federation", "directory_public_key"),
        directory=r.path_of("federation", "directory", "directory.pb"),
    )


def _tls(r: _Reader) -> TlsFiles:
    return TlsFiles(cert=r.path_of("tls", "cert"), key=r.path_of("tls", "key"), ca=r.path_of("tls", "ca"))


@dataclass(frozen=True)
class DeliverySettings:
    """How hard a node tries, and for how long, to deliver each message."""

    retry_base_ms: int = 1_000
    retry_cap_ms: int = 3_600_000  # the gateway says when a peer returns, so long waits cost nothing
    receipt_timeout_ms: int = 60_000  # re-send a forwarded message with no receipt after this
    undeliverable_after_ms: int = 7 * 86_400_000
    # A message still not delivered after this is on the duty view, to be told another way
    # meanwhile (mission anchors §8 item 9); 0: only once undeliverable.
    escalate_after_ms: int = 4 * 3_600_000
    outbox_high_water: int = 10_000  # queued messages beyond which new shares are refused for now


def _delivery(r: _Reader) -> DeliverySettings:
    d = DeliverySettings()
    return DeliverySettings(
        retry_base_ms=int(r.get("delivery", "retry_base_ms", d.retry_base_ms)),
        retry_cap_ms=int(r.get("delivery", "retry_cap_ms", d.retry_cap_ms)),
        receipt_timeout_ms=int(r.get("delivery", "receipt_timeout_ms", d.receipt_timeout_ms)),
        undeliverable_after_ms=int(r.get("delivery", "undeliverable_after_days", 7)) * 86_400_000,
        escalate_after_ms=int(r.get("delivery", "escalate_after_hours", 4)) * 3_600_000,
        outbox_high_water=int(r.get("delivery", "outbox_high_water", d.outbox_high_water)),
    )


@dataclass(frozen=True)
class PolicyFiles:
    """Where a node finds the federation's rules; empty means the packaged examples."""

    agreement: Path | None = None
    glossary: Path | None = None
    codelists_extra: tuple[Path, ...] = ()

    def __str__(self) -> str:
        named = [str(p) for p in (self.agreement, self.glossary, *self.codelists_extra) if p]
        return ", ".join(named) or "the packaged examples"


def _policy(r: _Reader) -> PolicyFiles:
    return policy_files(
        r.base,
        r.get("policy", "agreement", required=False),
        r.get("policy", "glossary", required=False),
        r.get("policy", "codelists_extra", [], required=False),
    )


def policy_files(base: Path, agreement: object, glossary: object, extra: Iterable[object]) -> PolicyFiles:
    """Where a node finds its policy, from its `[policy]` values (relative to `base`, the
    folder of its file); an empty value names the packaged example."""
    return PolicyFiles(
        agreement=(base / str(agreement)).resolve() if agreement else None,
        glossary=(base / str(glossary)).resolve() if glossary else None,
        codelists_extra=tuple((base / str(e)).resolve() for e in extra),
    )


@dataclass(frozen=True)
class GatewayLimits:
    """Back-pressure at the gateway: beyond these a sender is told BUSY or RESOURCE_EXHAUSTED."""

    envelopes_per_second: float = 2_000.0  # per sending node, token bucket
    envelope_burst: int = 4_000
    recipient_queue: int = 4_096  # frames waiting for one connected node
    max_concurrent_rpcs: int = 512
    # Per node, so nobody can enumerate families: subscribe, unsubscribe and discovery...
    control_per_second: float = 50.0
    control_burst: int = 500
    # ...and resolve, which every share makes (only about tokens the node is already linked to).
    resolve_per_second: float = 1_000.0
    resolve_burst: int = 10_000


def _limits(r: _Reader) -> GatewayLimits:
    d = GatewayLimits()
    return GatewayLimits(
        envelopes_per_second=float(r.get("limits", "envelopes_per_second", d.envelopes_per_second)),
        envelope_burst=int(r.get("limits", "envelope_burst", d.envelope_burst)),
        recipient_queue=int(r.get("limits", "recipient_queue", d.recipient_queue)),
        max_concurrent_rpcs=int(r.get("limits", "max_concurrent_rpcs", d.max_concurrent_rpcs)),
        control_per_second=float(r.get("limits", "control_per_second", d.control_per_second)),
        control_burst=int(r.get("limits", "control_burst", d.control_burst)),
        resolve_per_second=float(r.get("limits", "resolve_per_second", d.resolve_per_second)),
        resolve_burst=int(r.get("limits", "resolve_burst", d.resolve_burst)),
    )


@dataclass(frozen=True)
class GatewayConfig:
    gateway_id: str
    listen: str
    data_dir: Path
    log_level: str
    federation: FederationConfig
    tls: TlsFiles
    limits: GatewayLimits = GatewayLimits()
    metrics_listen: str = ""  # host:port for Prometheus; empty: off
    metalog_days: int = 0  # metadata-log entries kept this long; 0 keeps them all
    witness_key: Path | None = None  # Ed25519 key cosigning witnessed checkpoints; None: no cosigning
    unknown_settings: tuple[str, ...] = ()  # in the file, but not settings of this release: their defaults hold

    STORE_NAME = "gateway.sqlite"

    @property
    def store_path(self) -> Path:
        return self.data_dir / self.STORE_NAME

    @classmethod
    def load(cls, path: Path) -> GatewayConfig:
        r = _Reader(path, GATEWAY)
        if "node" in r.data:
            r.refuse("a node's configuration (it has a [node] section)", "the gateway's gateway.toml")
        witness_key = r.get("witness", "key", required=False)
        config = cls(
            gateway_id=r.get("gateway", "id"),
            listen=r.get("gateway", "listen", "127.0.0.1:7443"),
            data_dir=r.path_of("gateway", "data_dir", "."),
            log_level=r.get("gateway", "log_level", "info"),
            federation=_federation(r),
            tls=_tls(r),
            limits=_limits(r),
            metrics_listen=r.get("metrics", "listen", "", required=False) or "",
            metalog_days=int(r.get("retention", "metalog_days", 0)),
            witness_key=r.path_of("witness", "key") if witness_key else None,
            unknown_settings=r.unknown(),
        )
        r.done()
        return config


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    data_dir: Path
    log_level: str
    gateway_address: str
    gateway_server_name: str
    api_socket: Path
    message_keys: Path
    linkage_key: Path
    federation: FederationConfig
    tls: TlsFiles
    delivery: DeliverySettings = DeliverySettings()
    policy: PolicyFiles = PolicyFiles()
    retention_days: int = 0  # received summaries kept this long; 0 keeps them (the audit log is never purged)
    metrics_listen: str = ""  # host:port for Prometheus; empty: off
    unknown_settings: tuple[str, ...] = ()  # in the file, but not settings of this release: their defaults hold

    STORE_NAME = "store.sqlite"

    @property
    def store_path(self) -> Path:
        return self.data_dir / self.STORE_NAME

    @classmethod
    def load(cls, path: Path) -> NodeConfig:
        r = _Reader(path, NODE)
        if "node" not in r.data and "id" in r.data.get("gateway", {}):
            r.refuse("a gateway's configuration (it has [gateway] id and no [node])", "a node's node.toml")
        config = cls(
            node_id=r.get("node", "id"),
            data_dir=r.path_of("node", "data_dir", "."),
            log_level=r.get("node", "log_level", "info"),
            gateway_address=r.get("gateway", "address"),
            gateway_server_name=r.get("gateway", "server_name", "gateway"),
            api_socket=r.path_of("api", "socket", "api.sock"),
            message_keys=r.path_of("keys", "message_keys", "keys"),
            linkage_key=r.path_of("keys", "linkage_key", "keys/linkage.key"),
            federation=_federation(r),
            tls=_tls(r),
            delivery=_delivery(r),
            policy=_policy(r),
            retention_days=int(r.get("retention", "summaries_days", 0)),
            metrics_listen=r.get("metrics", "listen", "", required=False) or "",
            unknown_settings=r.unknown(),
        )
        r.done()
        return config
