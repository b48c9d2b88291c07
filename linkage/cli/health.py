"""`linkage health`: ask a node or the gateway its standard gRPC health status
(for container health checks and monitoring). Exit 0 only when SERVING."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from linkage.cli.values import seconds
from linkage.config import GatewayConfig, NodeConfig
from linkage.transport import api_channel, secure_channel


def _check(args: argparse.Namespace) -> int:
    async def ask() -> str:
        if args.gateway_config:
            gw = GatewayConfig.load(args.gateway_config)
            port = gw.listen.rsplit(":", 1)[1]
            channel = secure_channel(f"127.0.0.1:{port}", gw.tls, gw.gateway_id)  # its own certificate
        else:
            channel = api_channel(NodeConfig.load(args.config).api_socket)
        async with channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)  # the typeshed stub lacks the aio methods
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))

    try:
        status = asyncio.run(ask())
    except grpc.aio.AioRpcError as exc:
        print(f"UNREACHABLE: {exc.code().name}")
        return 1
    print(status)
    return 0 if status == "SERVING" else 1


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser("health", help="ask a node or the gateway for its health (exit 0 when SERVING)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, help="a node's node.toml")
    where.add_argument("--gateway-config", type=Path, help="the gateway's gateway.toml")
    p.add_argument("--service", default="", help="a service name, e.g. linkage.v1.GatewayLink (default: overall)")
    p.add_argument("--timeout", type=seconds, default=5.0, help="seconds to wait for an answer (default 5)")
    p.set_defaults(handler=_check)
