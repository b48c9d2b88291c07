"""`linkage` - federation tooling, servers and the demo."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from linkage import __version__, jurisdictions
from linkage.cli.terminal import harmless_output
from linkage.clock import SystemClock

Handler = Callable[[argparse.Namespace], int]

# The commands each of these modules registers: a command line that names one loads its module
# alone, so that a container's health check, run every ten seconds, does not import every
# command's code (a fifth of its CPU); help, or no command, loads them all, in this order.
MODULE_COMMANDS = {
    "health": ("health",),
    "share": ("share",),
    "casework": ("case", "involvement"),
    "inbox": ("inbox", "chronology"),
    "duty": ("due",),
    "audit": ("audit",),
    "directory_listing": ("directory",),
    "backup": ("backup",),
}


def _federation_init(args: argparse.Namespace) -> int:
    from linkage.federation import init_federation

    fed = init_federation(args.dir, args.federation_id, SystemClock().now_ms(), args.suite)
    print(f"created federation {fed.federation_id} in {fed.root}")
    print("keep this folder off-line: it holds the CA key, the directory key and the linkage key")
    return 0


def _federation_enrol(args: argparse.Namespace) -> int:
    from linkage.federation import Federation, enrol_node

    fed = Federation.open(args.dir)
    config = enrol_node(
        fed,
        args.node_id,
        args.agency_name,
        args.agency_type,
        args.out,
        args.gateway_address,
        SystemClock().now_ms(),
        contact_role=args.contact_role,
        gateway_name=args.gateway_name,
        jurisdiction=args.jurisdiction,
    )
    print(f"enrolled node {args.node_id}; bundle and configuration in {config.parent}")
    print("run 'linkage federation publish' so the federation learns of it")
    return 0


def _federation_enrol_gateway(args: argparse.Namespace) -> int:
    from linkage.federation import Federation, enrol_gateway

    fed = Federation.open(args.dir)
    config = enrol_gateway(fed, args.gateway_id, args.out, args.listen, SystemClock().now_ms())
    print(f"enrolled gateway {args.gateway_id}; bundle and configuration in {config.parent}")
    return 0


def _federation_rotate(args: argparse.Namespace) -> int:
    from linkage.federation import Federation, rotate_keys

    key_id = rotate_keys(
        Federation.open(args.dir),
        args.node_id,
        args.bundle,
        SystemClock().now_ms(),
        args.overlap_days,
        args.activate_in_hours,
    )
    print(
        f"new key {key_id} for {args.node_id}: publish the directory; the running node takes the new key from "
        f"its bundle within 5 minutes (at once on SIGHUP), before senders move to it in {args.activate_in_hours} "
        f"hour(s); the old key stays valid {args.overlap_days} more days"
    )
    return 0


def _federation_bootstrap(args: argparse.Namespace) -> int:
    from linkage.bootstrap import FederationSpec, bootstrap

    spec = FederationSpec.load(args.spec)
    fed = bootstrap(spec, args.out, SystemClock().now_ms())
    print(f"federation {fed.federation_id}: gateway and {len(spec.nodes)} node bundles in {args.out}")
    return 0


def _config_check(args: argparse.Namespace) -> int:
    from linkage.configcheck import check
    from node.policy_files import load_policy

    if (args.file is None) == (args.config_file is None):
        print("name one file to check: linkage config check FILE (or --config FILE)", file=sys.stderr)
        return 2
    file = args.file or args.config_file
    problems = check(file, load_policy)
    for problem in problems:
        print(problem)
    if not problems:
        print(f"OK: {file}")
    return 1 if problems else 0


def _federation_revoke(args: argparse.Namespace) -> int:
    from linkage.federation import Federation, revoke_node

    revoke_node(Federation.open(args.dir), args.node_id)
    print(f"node {args.node_id} revoked; run 'linkage federation publish' to take it out of the federation")
    return 0


def _federation_renew_tls(args: argparse.Namespace) -> int:
    from linkage.clock import utc_minute
    from linkage.federation import Federation, renew_certificate, write_roots_file
    from linkage.pki import certificate_facts, parse_spiffe_id

    fed, written = Federation.open(args.dir), args.out or args.cert
    roots = None if args.ca is None else write_roots_file(fed, args.ca)  # first: harmless alone, unlike a renewal
    identity, fingerprint = renew_certificate(fed, args.cert, SystemClock().now_ms(), args.out)
    _, lapses = certificate_facts(written.read_bytes())
    print(
        f"renewed the certificate of {identity} for its own key, valid to {utc_minute(lapses)}, in {written} "
        f"(SHA-256 {fingerprint.hex()})"
    )
    if roots is not None:
        print(f"wrote the CAs the federation trusts now ({roots}) to {args.ca}")
    kind, _ = parse_spiffe_id(identity, fed.federation_id) or ("", "")
    if kind == "node":
        print(
            "publish the directory now: the node moves to the new certificate once it holds that directory, "
            "without a restart (SIGHUP makes it look at once); the old one is accepted until it lapses"
        )
    else:
        print("the gateway presents it from its next connection, without a restart")
    return 0


def _federation_rotate_directory_key(args: argparse.Namespace) -> int:
    from linkage.federation import Federation, rotate_directory_key

    new = rotate_directory_key(Federation.open(args.dir), SystemClock().now_ms())
    print(
        f"the directory is signed by a new key from now on ({new.hex()}); the old one handed over to it and is "
        "destroyed. Publish now (linkage federation publish): each node and the gateway follow the handover as "
        "they take that directory, even one away until long after, and trust the new key alone from then on"
    )
    return 0


def _federation_rotate_ca(args: argparse.Namespace) -> int:
    from linkage.federation import Federation, retire_ca, rotate_ca

    fed = Federation.open(args.dir)
    if args.retire:
        retired = retire_ca(fed)
        if not retired:
            print("only the CA that issues is trusted: there is nothing to retire")
            return 0
        print(
            f"retired {len(retired)} CA ({', '.join(f.hex()[:16] for f in retired)}): publish now (linkage federation "
            "publish), and each member trusts only the new CA as it takes that directory"
        )
        return 0
    new = rotate_ca(fed, SystemClock().now_ms())
    print(
        f"a new federation CA issues from now ({new.hex()[:16]}); the old one certified it, and its key is destroyed. "
        "Publish now (linkage federation publish): every member trusts both CAs as it takes that directory. Then "
        "renew every member's certificate (linkage federation renew-tls, with --ca for its CA file) and publish; "
        "once each runs its new one, retire the old CA (linkage federation rotate-ca --retire) and publish"
    )
    return 0


def _federation_publish(args: argparse.Namespace) -> int:
    from linkage.federation import Federation, publish_directory

    fed = Federation.open(args.dir)
    directory = publish_directory(fed, SystemClock().now_ms(), args.validity_days, tuple(args.copy_to))
    print(
        f"published directory version {directory.version} with {len(directory.nodes)} nodes, "
        f"valid for {args.validity_days} days, to {fed.directory_path}"
        + "".join(f" and {d / 'directory.pb'}" for d in args.copy_to)
    )
    return 0


def _gateway_serve(args: argparse.Namespace) -> int:
    from gateway.server import serve
    from linkage import logs
    from linkage.config import GatewayConfig

    config = GatewayConfig.load(args.config)
    logs.configure(config.log_level, gateway=config.gateway_id)
    _say_unknown(config.unknown_settings)
    asyncio.run(serve(config))
    return 0


def _node_serve(args: argparse.Namespace) -> int:
    from linkage import logs
    from linkage.config import NodeConfig
    from node.server import serve

    config = NodeConfig.load(args.config)
    logs.configure(config.log_level, node=config.node_id)
    _say_unknown(config.unknown_settings)
    asyncio.run(serve(config))
    return 0


def _say_unknown(settings: tuple[str, ...]) -> None:
    """A setting the file names that this release does not know leaves the default in force:
    said as the process starts, not refused (a file written for a newer release still serves)."""
    from linkage import logs

    for setting in settings:
        logs.get("config").warning("config.unknown_setting", setting=setting, remedy="linkage config check FILE")


def _demo(args: argparse.Namespace) -> int:
    from linkage.demo import run_demo

    return run_demo(args.keep)


def _bench(args: argparse.Namespace) -> int:
    try:
        from bench.run import main as bench_main
    except ImportError:
        print("linkage: the benchmarks run from a source checkout (the bench/ folder); see the README", file=sys.stderr)
        return 2
    return bench_main(args.quick, args.json)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command, or those of `command`'s module and the ones defined here."""
    parser = argparse.ArgumentParser(
        prog="linkage",
        description="Linkage: a secure, federated exchange of risk-assessment summaries between safeguarding agencies.",
    )
    parser.add_argument("--version", action="version", version=f"linkage {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fed = commands.add_parser("federation", help="create a federation, enrol members, publish the directory")
    fed_cmds = fed.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

    p = fed_cmds.add_parser("init", help="create the CA, directory signing key and linkage key")
    p.add_argument("--dir", type=Path, required=True, help="new federation folder (keep it off-line)")
    p.add_argument("--federation-id", required=True, help="e.g. solihull.linkage.example")
    p.add_argument(
        "--suite",
        choices=["classic", "hybrid"],
        default="classic",
        help="hybrid: ML-KEM-768 + X25519 sealing and an ML-DSA-65 co-signature (post-quantum)",
    )
    p.set_defaults(handler=_federation_init)

    p = fed_cmds.add_parser("enrol", help="enrol an agency node: TLS certificate, message keys, configuration")
    p.add_argument("--dir", type=Path, required=True, help="the federation folder")
    p.add_argument("--node-id", required=True, help="short lowercase id, e.g. csc")
    p.add_argument("--agency-name", required=True)
    p.add_argument("--agency-type", required=True, help="code from the agency_type list, e.g. POLICE")
    p.add_argument("--contact-role", default="", help="who other agencies should contact")
    p.add_argument(
        "--jurisdiction",
        default=jurisdictions.DEFAULT,
        help="whose law the agency shares under: ENG, WLS, SCT or NIR (default %(default)s)",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the node's bundle")
    p.add_argument("--gateway-address", required=True, help="host:port of the gateway")
    p.add_argument("--gateway-name", default="gateway", help="the gateway's TLS name (its id)")
    p.set_defaults(handler=_federation_enrol)

    p = fed_cmds.add_parser("enrol-gateway", help="issue the gateway's TLS certificate, witness key and configuration")
    p.add_argument("--dir", type=Path, required=True, help="the federation folder")
    p.add_argument("--gateway-id", default="gateway")
    p.add_argument("--out", type=Path, required=True, help="folder for the gateway's bundle")
    p.add_argument("--listen", default="127.0.0.1:7443", help="host:port to listen on")
    p.set_defaults(handler=_federation_enrol_gateway)

    p = fed_cmds.add_parser("bootstrap", help="a whole federation from one spec file (for a container init step)")
    p.add_argument("--spec", type=Path, required=True, help="federation.toml: federation id, gateway, [[node]]s")
    p.add_argument("--out", type=Path, required=True, help="folder for federation/ and one bundle per service")
    p.set_defaults(handler=_federation_bootstrap)

    p = fed_cmds.add_parser("rotate-keys", help="a new generation of a node's message keys, with an overlap")
    p.add_argument("--dir", type=Path, required=True, help="the federation folder")
    p.add_argument("--node-id", required=True)
    p.add_argument("--bundle", type=Path, required=True, help="the node's bundle folder (its keys/ are updated)")
    p.add_argument(
        "--overlap-days", type=int, default=7, help="how long the old key stays valid once the new one is, 0-365 (7)"
    )
    p.add_argument(
        "--activate-in-hours", type=int, default=1, help="when senders switch to the new key, 1-720 hours (1)"
    )
    p.set_defaults(handler=_federation_rotate)

    p = fed_cmds.add_parser(
        "renew-tls", help="renew a node's or the gateway's TLS certificate, for the same key, without a restart"
    )
    p.add_argument("--dir", type=Path, required=True, help="the federation folder")
    p.add_argument(
        "--cert", type=Path, required=True, help="the certificate in use (e.g. BUNDLE/tls/node.pem): replaced whole"
    )
    p.add_argument("--out", type=Path, help="write the new certificate here instead (to copy it into place)")
    p.add_argument(
        "--ca",
        type=Path,
        help="also write the CAs the federation trusts now to this file (the member's [tls] ca, e.g. "
        "BUNDLE/tls/ca.pem): a member away while a CA was retired trusts none the gateway's certificate chains to",
    )
    p.set_defaults(handler=_federation_renew_tls)

    p = fed_cmds.add_parser(
        "rotate-directory-key", help="replace the key that signs the directory, without touching any node or gateway"
    )
    p.add_argument("--dir", type=Path, required=True, help="the federation folder")
    p.set_defaults(handler=_federation_rotate_directory_key)

    p = fed_cmds.add_parser("rotate-ca", help="put a new federation CA in place, without a restart")
    p.add_argument("--dir", type=Path, required=True, help="the federation folder")
    p.add_argument(
        "--retire",
        action="store_true",
        help="the end: trust only the new CA (once every member runs a certificate it issued)",
    )
    p.set_defaults(handler=_federation_rotate_ca)

    p = fed_cmds.add_parser("revoke", help="revoke a node (takes effect with the next published directory)")
    p.add_argument("--dir", type=Path, required=True, help="the federation folder")
    p.add_argument("--node-id", required=True)
    p.set_defaults(handler=_federation_revoke)

    p = fed_cmds.add_parser("publish", help="sign and write a new directory version")
    p.add_argument("--dir", type=Path, required=True, help="the federation folder")
    p.add_argument("--validity-days", type=int, default=7, help="days until the directory expires (default 7)")
    p.add_argument("--copy-to", type=Path, action="append", default=[], help="also write to DIR/directory.pb")
    p.set_defaults(handler=_federation_publish)

    gw = commands.add_parser("gateway", help="run the federation gateway")
    gw_cmds = gw.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    p = gw_cmds.add_parser("serve", help="serve until SIGTERM")
    p.add_argument("--config", type=Path, required=True, help="gateway.toml")
    p.set_defaults(handler=_gateway_serve)

    node = commands.add_parser("node", help="run an agency node")
    node_cmds = node.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    p = node_cmds.add_parser("serve", help="serve until SIGTERM")
    p.add_argument("--config", type=Path, required=True, help="node.toml")
    p.set_defaults(handler=_node_serve)

    config = commands.add_parser("config", help="check configuration files")
    config_cmds = config.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    p = config_cmds.add_parser("check", help="report every problem in a node.toml or gateway.toml, with its line")
    p.add_argument("file", type=Path, nargs="?", help="the file to check")
    # Every other command names its file with --config; so may this one.
    p.add_argument("--config", type=Path, dest="config_file", help="the same, as other commands name it")
    p.set_defaults(handler=_config_check)

    named = [module for module, names in MODULE_COMMANDS.items() if command in names]
    for module in named or MODULE_COMMANDS:
        importlib.import_module(f"linkage.cli.{module}").register(commands)

    p = commands.add_parser("demo", help="run a local federation and play a Think-Family story")
    p.add_argument("--keep", type=Path, default=None, help="use this folder and keep it (default: a temp folder)")
    p.set_defaults(handler=_demo)

    p = commands.add_parser("bench", help="measure Linkage end to end against a bare gRPC relay, and at scale")
    p.add_argument("--quick", action="store_true", help="a smaller run (under 2 minutes)")
    p.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    p.set_defaults(handler=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    with harmless_output():  # much of what is printed was written at another agency
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    handler: Handler = args.handler
    try:
        code = handler(args)
        sys.stdout.flush()  # here, so that a reader gone away is met below, not at exit
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # a clear one-line error for people, not a traceback
        from linkage.backup import BackupError
        from linkage.config import ConfigError
        from linkage.federation import FederationError

        if isinstance(exc, BackupError | ConfigError | FederationError | OSError):  # OSError: a file's name and trouble
            print(f"linkage: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
