"""CLI commands that talk to a running node's API (for practitioners and agency IT):
`linkage share ...`. Human-readable by default, `--json` for scripts."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from linkage.config import NodeConfig
from linkage.v1 import node_api_pb2, node_api_pb2_grpc, summary_pb2

T = TypeVar("T")


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, help="the node's node.toml (its API socket is found from it)")
    where.add_argument("--socket", type=Path, help="the node's API socket")
    parser.add_argument("--actor-id", default=os.environ.get("LINKAGE_ACTOR_ID"), help="your practitioner id")
    parser.add_argument("--actor-name", default=os.environ.get("LINKAGE_ACTOR_NAME", ""), help="your name")
    parser.add_argument("--actor-role", default=os.environ.get("LINKAGE_ACTOR_ROLE"), help="your role")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def actor(args: argparse.Namespace) -> summary_pb2.Practitioner:
    if not args.actor_id or not args.actor_role:
        raise SystemExit("linkage: say who is acting: --actor-id and --actor-role (or LINKAGE_ACTOR_ID/_ROLE)")
    return summary_pb2.Practitioner(id=args.actor_id, name=args.actor_name, role=args.actor_role)


def socket_of(args: argparse.Namespace) -> Path:
    return NodeConfig.load(args.config).api_socket if args.config else Path(args.socket)


def call(args: argparse.Namespace, work: Callable[[node_api_pb2_grpc.NodeApiAsyncStub], Awaitable[T]]) -> T:
    async def run() -> T:
        async with grpc.aio.insecure_channel(f"unix:{socket_of(args)}") as channel:
            return await work(node_api_pb2_grpc.NodeApiStub(channel))

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as exc:
        raise SystemExit(f"linkage: {exc.code().name}: {exc.details()}") from None


def emit_json(message: Message) -> None:
    print(json_format.MessageToJson(message, preserving_proto_field_name=True, indent=2))


def _share_request(args: argparse.Namespace) -> node_api_pb2.ShareSummaryRequest:
    decision = summary_pb2.ShareDecision()
    try:
        json_format.Parse(Path(args.decision).read_text(), decision)
    except (OSError, json_format.ParseError, json.JSONDecodeError) as exc:
        raise SystemExit(f"linkage: cannot read the decision file {args.decision}: {exc}") from None
    return node_api_pb2.ShareSummaryRequest(actor=actor(args), assessment_id=args.assessment, decision=decision)


def _outcome(value: int) -> str:
    return summary_pb2.DecisionOutcome.Name(value).removeprefix("DECISION_OUTCOME_")  # type: ignore[arg-type]


def _print_findings(findings: list[node_api_pb2.PolicyFinding]) -> None:
    for f in findings:
        print(f"  {f.severity}: {f.message} [{f.code}]")


def _print_recipients(records: list[summary_pb2.RecipientRecord]) -> None:
    for r in records:
        print(f"  {r.node_id} ({r.agency_type})")
        print(f"    fields: {', '.join(r.fields) or 'none'}")
        print(f"    data categories: {', '.join(r.data_categories) or 'none'}")
        for w in r.withheld:
            print(f"    withheld: {w}")


def share_preview(args: argparse.Namespace) -> int:
    request = _share_request(args)
    preview = call(args, lambda api: api.PreviewShare(request))
    if args.json:
        emit_json(preview)
        return 0
    print(f"If you share now: {_outcome(preview.outcome)} (nothing has been sent)")
    _print_recipients(list(preview.recipients))
    _print_findings(list(preview.findings))
    return 0


def share_send(args: argparse.Namespace) -> int:
    request = _share_request(args)
    response = call(args, lambda api: api.ShareSummary(request))
    if args.json:
        emit_json(response)
        return 0
    print(f"Decision {response.share_id}: {_outcome(response.outcome)}")
    _print_recipients(list(response.decision.recipients))
    for r in response.recipients:
        print(f"  {r.node_id}: {r.state} (message {r.message_id})")
    _print_findings(list(response.findings))
    return 0


def share_status(args: argparse.Namespace) -> int:
    request = node_api_pb2.ShareStatusRequest(actor=actor(args), share_id=args.share_id)
    status = call(args, lambda api: api.GetShareStatus(request))
    if args.json:
        emit_json(status)
        return 0
    print(f"Share {status.share_id}: {_outcome(status.outcome)}{' (settled)' if status.settled else ''}")
    for r in status.recipients:
        extra = f", receipt at {r.delivered_at_ms}" if r.delivered_at_ms else ""
        extra += f", {r.reason}" if r.reason else ""
        print(f"  {r.node_id}: {r.state} after {r.attempts} attempt(s){extra}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    share = commands.add_parser("share", help="preview, send and follow shares through your node")
    sub = share.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    for name, handler, text in (
        ("preview", share_preview, "dry run: who would get which fields, which rules fail or warn"),
        ("send", share_send, "share a summary of an assessment with the agencies linked to the family"),
    ):
        p = sub.add_parser(name, help=text)
        add_connection_arguments(p)
        p.add_argument("--assessment", required=True, help="assessment id (from RecordAssessment)")
        p.add_argument("--decision", required=True, type=Path, help="JSON ShareDecision: rationale, consent...")
        p.set_defaults(handler=handler)
    p = sub.add_parser("status", help="where each recipient's copy of a share is")
    add_connection_arguments(p)
    p.add_argument("share_id")
    p.set_defaults(handler=share_status)
