"""`linkage backup`: encrypted backups of a node's or the gateway's store and files, taken
while it runs; a check that one opens and is whole; its restore (docs/operations.md)."""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
from pathlib import Path

from google.protobuf.message import DecodeError

from linkage import backup
from linkage.cli.audit_entries import federation_directory
from linkage.clock import SystemClock, utc_second
from linkage.config import GatewayConfig, NodeConfig
from linkage.envelope import HYBRID
from linkage.reasons import Rejected
from linkage.store_notes import read_mark


def _config(args: argparse.Namespace) -> NodeConfig | GatewayConfig:
    return GatewayConfig.load(args.gateway_config) if args.gateway_config else NodeConfig.load(args.config)


def _member(args: argparse.Namespace) -> backup.Member:
    return backup.Member.of(_config(args))


def _seals_post_quantum(config: NodeConfig | GatewayConfig) -> bool:
    """Whether the federation chose the hybrid suite, by the directory this member holds (one
    it cannot read is another command's to report)."""
    try:
        return federation_directory(config).directory.suite == HYBRID
    except (OSError, DecodeError, Rejected):
        return False


def _say(manifest: backup.Manifest) -> None:
    facts = manifest.store
    taken = utc_second(manifest.taken_at_ms)
    log = "audit log" if manifest.kind == "node" else "metadata log"
    root = "root" if manifest.kind == "node" else "head"
    print(f"  {manifest.kind} {manifest.member_id} of {manifest.federation_id}, taken {taken}")
    print(f"  store: {facts.bytes:,} bytes, SHA-256 {facts.sha256}")
    print(f"  {log}: {facts.log_entries:,} entries, {root} {facts.log_root} (checked)")
    print(f"  files: {len(manifest.files)} ({', '.join(manifest.files)})")


def _keygen(args: argparse.Namespace) -> int:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    recipient = backup.generate_key(args.out, now, post_quantum=args.post_quantum)
    print(f"wrote a backup key to {args.out} (keep it off the machine it backs up, and keep a second copy)")
    print(f"public key, to back up to: {recipient}")
    return 0


def _create(args: argparse.Namespace) -> int:
    config = _config(args)
    member = backup.Member.of(config)
    to = backup.recipients(args.to)
    manifest = backup.take(member, args.out, to, SystemClock().now_ms())
    kind = "post-quantum " if to.post_quantum else ""
    print(f"OK: backed up to {args.out}, encrypted to {len(to.keys)} {kind}key(s)")
    _say(manifest)
    if member.kind == "node":
        print(
            "  the node enters it in its audit log (store.backed_up) at its next look: within 5 minutes, or on SIGHUP"
        )
    if not to.post_quantum and _seals_post_quantum(config):
        print(
            "  warning: this federation seals its messages post-quantum (its hybrid suite), and this backup to a "
            "classic key only: make a key with `linkage backup keygen --post-quantum` and back up to that"
        )
    if member.outside:  # a machine rebuilt from this backup alone would lack them
        print(f"  not in it, as outside {member.data_dir}: {', '.join(map(str, member.outside))}: back them up too")
    return 0


def _check(args: argparse.Namespace) -> int:
    keys = backup.identities(args.identity)
    with backup.opened(args.from_, keys, args.work or Path(tempfile.gettempdir())) as found:
        print(f"OK: {args.from_} opens and is whole")
        _say(found.manifest)
    return 0


def _restore(args: argparse.Namespace) -> int:
    keys = backup.identities(args.identity)
    if args.into:
        manifest = backup.restore_all(args.from_, keys, args.into, SystemClock().now_ms())
        print(f"OK: restored the whole {manifest.kind} into {args.into}")
        _say(manifest)
        config = "node.toml" if manifest.kind == "node" else "gateway.toml"
        print(f"  next: start it with {args.into / config}, then run `linkage audit verify` (with --from-gateway)")
        if manifest.kind == "node":
            _asks(args.into / NodeConfig.STORE_NAME)
        return 0
    member = _member(args)
    manifest, kept = backup.restore_store(member, args.from_, keys, SystemClock().now_ms())
    print(f"OK: restored the store of {member.kind} {member.member_id} from {args.from_}")
    _say(manifest)
    if kept:
        print(f"  the store it replaced is kept as {kept}: delete it once the {member.kind} runs well")
    if member.kind == "node":
        print("  next: start the node, then run `linkage audit verify --config ... --from-gateway`")
        _asks(member.store)
    return 0


def _asks(store: Path) -> None:
    """What the node does with the restore's mark when it starts (node/redelivery.py)."""
    restored = read_mark(store)
    if restored is not None:
        print(
            "  once started, it asks every other node for what it delivered here since the backup; "
            f"follow that with `linkage share status {restored.restore_id}`"
        )


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    top = commands.add_parser("backup", help="encrypted backups of a node's or the gateway's store and files")
    sub = top.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser("keygen", help="a key pair to encrypt backups to (age's format)")
    p.add_argument("--out", type=Path, required=True, help="where to write the private key (never overwritten)")
    p.add_argument(
        "--post-quantum",
        action="store_true",
        help="ML-KEM-768 + X25519 (age1pq1..., age 1.3's -pq keys): safe from a future quantum computer",
    )
    p.set_defaults(handler=_keygen)

    p = sub.add_parser("create", help="back up a running node or gateway, encrypted, checked before it is kept")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, help="a node's node.toml")
    where.add_argument("--gateway-config", type=Path, help="the gateway's gateway.toml")
    p.add_argument(
        "--to",
        action="append",
        required=True,
        help="a public key (age1... or age1pq1...), or a file of them; repeatable",
    )
    p.add_argument("--out", type=Path, required=True, help="the backup file to write (whole, or not at all)")
    p.set_defaults(handler=_create)

    p = sub.add_parser("check", help="prove a backup opens and is whole, changing nothing")
    p.add_argument("--from", dest="from_", type=Path, required=True, help="the backup file")
    p.add_argument("--identity", type=Path, required=True, help="the private key file (from keygen)")
    p.add_argument("--work", type=Path, help="a private folder is made here while checking (default: TMPDIR)")
    p.set_defaults(handler=_check)

    p = sub.add_parser("restore", help="put a backup's store back (the node or gateway stopped), or rebuild a member")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, help="restore this node's store")
    where.add_argument("--gateway-config", type=Path, help="restore the gateway's store")
    where.add_argument("--into", type=Path, help="rebuild the whole member, files and store, in this new folder")
    p.add_argument("--from", dest="from_", type=Path, required=True, help="the backup file")
    p.add_argument("--identity", type=Path, required=True, help="the private key file (from keygen)")
    p.set_defaults(handler=_restore)
