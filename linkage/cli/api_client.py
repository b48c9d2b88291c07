"""What every CLI command that talks to a running node's API shares: where the node is,
who is acting, making the call (its errors as one line), and printing the answer."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
from collections.abc import AsyncIterable, Awaitable, Callable
from pathlib import Path
from typing import Protocol, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from linkage.config import NodeConfig
from linkage.transport import api_channel
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


def add_request_id_argument(parser: argparse.ArgumentParser) -> None:
    """For a command that changes something: given again after an answer that never came, it
    is answered as the first time and changes nothing more (the API's request_id)."""
    parser.add_argument(
        "--request-id",
        default="",
        help="any id of yours: the same command with the same one again is answered as the first, changing nothing",
    )


def actor(args: argparse.Namespace) -> summary_pb2.Practitioner:
    if not args.actor_id or not args.actor_role:
        raise SystemExit("linkage: say who is acting: --actor-id and --actor-role (or LINKAGE_ACTOR_ID/_ROLE)")
    return summary_pb2.Practitioner(id=args.actor_id, name=args.actor_name, role=args.actor_role)


def socket_of(args: argparse.Namespace) -> Path:
    return NodeConfig.load(args.config).api_socket if args.config else Path(args.socket)


def call(args: argparse.Namespace, work: Callable[[node_api_pb2_grpc.NodeApiAsyncStub], Awaitable[T]]) -> T:
    async def run() -> T:
        async with api_channel(socket_of(args)) as channel:
            return await work(node_api_pb2_grpc.NodeApiStub(channel))

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as exc:
        raise _failed(args, exc) from None


def _failed(args: argparse.Namespace, exc: grpc.aio.AioRpcError) -> SystemExit:
    """A call's failure as one line a person can act on."""
    if exc.code() == grpc.StatusCode.UNAVAILABLE and not _listening(socket_of(args)):
        return _no_node(socket_of(args))
    return SystemExit(f"linkage: {exc.code().name}: {exc.details()}")


def _listening(path: Path) -> bool:
    """Whether anything listens at the socket: a node that was killed leaves its file behind."""
    with contextlib.closing(socket.socket(socket.AF_UNIX)) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _no_node(path: Path) -> SystemExit:
    return SystemExit(f"linkage: no node is serving at {path} (is `linkage node serve` running?)")


class Numbered(Protocol):
    seq: int


Item = TypeVar("Item", bound=Numbered)
# A watch whose node went away (a restart, an upgrade) waits for it, trying again at most this
# far apart; a stream that ends again at once waits the first figure, doubling to the most.
RECONNECT_FIRST_S = 0.5
RECONNECT_MOST_S = 30.0
FIRST_ANSWER_S = 10.0  # how long a watch waits for its node at the start, before saying none serves


def follow(
    args: argparse.Namespace,
    watch: Callable[[node_api_pb2_grpc.NodeApiAsyncStub, int], AsyncIterable[Item]],
    emit: Callable[[Item], None],
) -> None:
    """Follow a watch stream until stopped, each item as it comes. A node that goes away once
    it has answered (restarted, upgraded) is waited for, and the watch resumes after the last
    item seen: what it feeds (a log, a script) misses nothing and is given nothing twice."""
    path = socket_of(args)

    async def run() -> None:
        after, delay, answered = args.after, RECONNECT_FIRST_S, False
        if not path.exists():
            raise _no_node(path)  # a file left by a node that stopped is waited on: one may be starting
        while True:
            async with api_channel(path, RECONNECT_MOST_S) as channel:
                try:
                    async with asyncio.timeout(None if answered else FIRST_ANSWER_S):
                        await channel.channel_ready()
                except TimeoutError:
                    raise _no_node(path) from None
                if answered:
                    print(f"linkage: the node is back; resuming after {after}", file=sys.stderr)
                answered = True
                try:
                    async for item in watch(node_api_pb2_grpc.NodeApiStub(channel), after):
                        emit(item)
                        sys.stdout.flush()  # each as it comes, into a pipe or a file too (they are block-buffered)
                        after, delay = item.seq, RECONNECT_FIRST_S
                    return
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:  # how a stream ends as its node stops
                        raise
                    print(f"linkage: the node stopped answering; waiting to resume after {after}", file=sys.stderr)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MOST_S)

    try:
        asyncio.run(run())
    except grpc.aio.AioRpcError as exc:
        raise _failed(args, exc) from None


def emit_json(message: Message) -> None:
    print(json_format.MessageToJson(message, preserving_proto_field_name=True, indent=2))


def emit_json_line(message: Message) -> None:
    """One item of a stream as one line of JSON (JSON Lines), as log shippers and line-reading
    scripts take them."""
    print(json_format.MessageToJson(message, preserving_proto_field_name=True, indent=None))


# What to do about a message that could not be delivered.
FOLLOW_UP = "tell them another way, then: linkage share follow-up {} --note ..."


def print_queued(statuses: list[node_api_pb2.DeliveryStatus]) -> None:
    """Each recipient's message as the call left it: queued, or not sent and why."""
    for r in statuses:
        print(f"  {r.node_id}: {r.state} (message {r.message_id}){': ' + r.reason if r.reason else ''}")


def report_queued(
    args: argparse.Namespace, answer: Message, title: str, statuses: list[node_api_pb2.DeliveryStatus]
) -> int:
    """A call that queued messages: its whole answer with --json, else each recipient's state."""
    if args.json:
        emit_json(answer)
        return 0
    print(f"{title}:")
    print_queued(statuses)
    return 0


def read_decision(path: Path) -> summary_pb2.ShareDecision:
    """A ShareDecision written as JSON (rationale, consent status, lawful basis...)."""
    decision = summary_pb2.ShareDecision()
    try:
        json_format.Parse(path.read_text(), decision)
    except (OSError, json_format.ParseError, json.JSONDecodeError) as exc:
        raise SystemExit(f"linkage: cannot read the decision file {path}: {exc}") from None
    return decision
