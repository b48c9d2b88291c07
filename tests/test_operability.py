"""Health, reflection and TLS posture of a running federation."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import io
import json
import logging
import os
import re
import socket
import sys
import threading
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from linkage import logs
from linkage.config import ConfigError, PolicyFiles
from linkage.exclusive import InUse
from linkage.transport import LINK_HEALTH_SERVICE, api_channel
from linkage.v1 import node_api_pb2
from linkage.writability import StoreUnusable
from node.api import _logged
from node.cases import Cases
from node.server import NodeServer
from node.store import db as store_db
from tests.harness import PRACTITIONER, CapturedLogs, LocalFederation, running


async def test_health_and_reflection_on_node_and_gateway(federation: LocalFederation) -> None:
    async with running(federation, nodes=("amh",)) as cluster:
        node_channel = cluster.closes(api_channel(cluster.nodes["amh"].config.api_socket))
        gateway_channel = cluster.gateway_channel("amh")
        for channel, services in (
            (node_channel, ("", "linkage.v1.NodeApi", LINK_HEALTH_SERVICE)),
            (gateway_channel, ("", "linkage.v1.Gateway")),
        ):
            health: Any = health_pb2_grpc.HealthStub(channel)  # the typeshed stub lacks the aio methods
            for service in services:
                response = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert response.status == health_pb2.HealthCheckResponse.SERVING, service
            reflection: Any = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]
            answers = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            async for answer in answers:
                names = {s.name for s in answer.list_services_response.service}
                assert {"grpc.health.v1.Health", services[1]} <= names
                break


async def test_the_link_s_health_follows_the_node_s_stream_to_the_gateway(
    federation: LocalFederation, captured_logs: CapturedLogs
) -> None:
    """What a container's check and the demo wait on: NOT_SERVING from the moment the stream
    ends, SERVING again once the node is back on one. The outbox hears the same, so it sends
    nothing into a stream that is gone."""
    async with running(federation, nodes=("amh",)) as cluster:
        amh = cluster.nodes["amh"]
        assert amh.link is not None
        health: Any = health_pb2_grpc.HealthStub(cluster.closes(api_channel(amh.config.api_socket)))
        watch = health.Watch(health_pb2.HealthCheckRequest(service=LINK_HEALTH_SERVICE))
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        async with asyncio.timeout(30):
            # The node is on its stream; its health says so once the outbox has heard it.
            while (await watch.read()).status != serving:
                pass
            port = cluster.gateway.port
            await cluster.gateway.stop(grace=0)
            assert (await watch.read()).status == not_serving
            assert not amh.link.connected.is_set() and amh.outbox.idle()
            await cluster.start_gateway(port)
            assert (await watch.read()).status == serving
        watch.cancel()
    failed = captured_logs.records("gateway.unavailable")
    assert failed and all(e["code"] and e["problem"] for e in failed), failed
    assert [e["attempt"] for e in failed] == list(range(len(failed)))  # the gateway's stream had just opened
    assert captured_logs.records("gateway.connected")[-1]["attempt"] == len(failed)


async def test_every_stream_is_tls_1_3_and_logs_are_json_lines(
    federation: LocalFederation, captured_logs: CapturedLogs
) -> None:
    async with running(federation, nodes=("amh", "csc")):
        pass
    events = captured_logs.records()
    connects = [e for e in events if e["event"] == "connect"]
    assert len(connects) == 2
    assert {e["tls"] for e in connects} == {"TLSv1.3"}
    assert all({"event", "level", "timestamp"} <= e.keys() for e in events)


def test_a_log_line_is_sorted_json_whatever_it_is_given() -> None:
    captured = io.StringIO()
    logs.configure("info", stream=captured, node="amh")
    try:
        log = logs.get("test")
        log.info("odd.values", zeta=1, alpha=Path("/x"), big=2**70, agency="Cyngor Sir Ynys Môn")
        log.info("plain", count=3)
    finally:
        logs.configure("info")
    lines = captured.getvalue().splitlines()
    odd, plain = (json.loads(line) for line in lines)
    assert odd["big"] == 2**70 and odd["alpha"] == repr(Path("/x")) and odd["agency"].endswith("Môn")
    assert (plain["event"], plain["count"], plain["node"]) == ("plain", 3, "amh")
    assert all(list(json.loads(line)) == sorted(json.loads(line)) for line in lines)


async def test_a_refused_call_is_logged_with_its_method_and_code_and_never_what_it_was_sent(
    federation: LocalFederation, monkeypatch: pytest.MonkeyPatch, captured_logs: CapturedLogs
) -> None:
    async with running(federation, nodes=("amh", "csc")) as cluster:
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError):
                await cluster.api("amh").FindCases(
                    node_api_pb2.FindCasesRequest(actor=PRACTITIONER, case_ref="Ms Example's file", limit=501)
                )
        await cluster.api("amh").FindCases(node_api_pb2.FindCasesRequest(actor=PRACTITIONER))
        watch = cluster.api("amh").WatchShareStatus(node_api_pb2.ShareStatusRequest(actor=PRACTITIONER))
        with pytest.raises(grpc.aio.AioRpcError):  # a watch refused: no such share
            async for _ in watch:
                pass

        async def broken(*_: object) -> None:
            raise RuntimeError("a defect")

        monkeypatch.setattr(Cases, "open_case", broken)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await cluster.api("amh").OpenCase(node_api_pb2.OpenCaseRequest(actor=PRACTITIONER, case_ref="x"))
        assert failed.value.code() == grpc.StatusCode.UNKNOWN
    events = captured_logs.records()
    refused = [e for e in events if e["event"] == "api.refused"]
    assert [(e["method"], e["code"]) for e in refused] == [("FindCases", "INVALID_ARGUMENT")] * 2 + [
        ("WatchShareStatus", "NOT_FOUND")
    ]
    assert "Ms Example" not in captured_logs.getvalue()
    (failure,) = [e for e in events if e["event"] == "api.failed"]
    assert (failure["method"], failure["error"], failure["level"]) == ("OpenCase", "RuntimeError", "error")


def test_a_call_whose_caller_went_as_its_answer_was_written_is_said_but_not_as_a_failure(
    captured_logs: CapturedLogs,
) -> None:
    """A watch's caller that goes (its deadline passed) as the node writes it an answer: gRPC
    fails the write, now and then, rather than cancel the watch. That is no defect to report."""

    class Context:  # gRPC's, as far as the logging asks it
        def __init__(self, cancelled: bool) -> None:
            self._cancelled = cancelled

        def cancelled(self) -> bool:
            return self._cancelled

    for cancelled in (True, False):
        with pytest.raises(RuntimeError), _logged("WatchShareStatus", cast(Any, Context(cancelled))):
            raise RuntimeError('Failed "execute_batch"')  # as gRPC's own (private) error says it
    events = captured_logs.records()
    assert [(e["event"], e["level"]) for e in events] == [("api.caller_gone", "info"), ("api.failed", "error")]


async def test_what_python_and_its_libraries_say_comes_out_as_json_lines_too(captured_logs: CapturedLogs) -> None:
    """asyncio's word of a failure nobody retrieved, and a library's long warning, reach the
    log as JSON lines like every other, at their own level and cut short; their chatter below
    a warning does not."""
    failed = asyncio.get_running_loop().create_future()
    failed.set_exception(RuntimeError("nobody looked"))
    del failed
    gc.collect()  # asyncio says so as the future goes
    logging.getLogger("grpc").warning("x" * 10_000)
    logging.getLogger("grpc").info("a library's chatter")
    events = captured_logs.records()
    assert [(e["event"], e["logger"], e["level"]) for e in events] == [
        ("python.log", "asyncio", "error"),
        ("python.log", "grpc", "warning"),
    ]
    assert events[0]["message"].startswith("Future exception was never retrieved")
    assert events[0]["exception"].endswith("RuntimeError: nobody looked")
    assert len(events[1]["message"]) < 2_100


async def test_health_command_for_container_checks(federation: LocalFederation) -> None:
    import asyncio
    import os
    import sys

    async with running(federation, nodes=("amh",)) as cluster:

        async def health(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "linkage",
                "health",
                *args,
                stdout=asyncio.subprocess.PIPE,
                env={**os.environ, **(env or {})},
            )
            out, _ = await proc.communicate()
            return proc.returncode or 0, out.decode().strip()

        node_toml = str(cluster.nodes["amh"].config.data_dir / "node.toml")
        assert await health("--config", node_toml) == (0, "SERVING")
        assert await health("--config", node_toml, "--service", LINK_HEALTH_SERVICE) == (0, "SERVING")
        gateway_toml = str(federation.gateway_config.data_dir / "gateway.toml")
        listen = {"LINKAGE_GATEWAY_LISTEN": f"127.0.0.1:{cluster.gateway.port}"}
        assert await health("--gateway-config", gateway_toml, env=listen) == (0, "SERVING")
    code, out = await health("--config", node_toml)
    assert code == 1 and out.startswith("UNREACHABLE")
    for wrong in ("-1", "0", "soon", "nan"):  # once "UNREACHABLE: DEADLINE_EXCEEDED", blaming the node
        code, out = await health("--config", node_toml, "--timeout", wrong)
        assert (code, out) == (2, "")


@pytest.mark.parametrize("damaged", ["linkage key", "policy", "TLS files"])
async def test_a_node_with_a_damaged_file_says_which_and_opens_nothing(
    federation: LocalFederation, damaged: str
) -> None:
    config = federation.node_configs["amh"]
    if damaged == "policy":
        config = dataclasses.replace(config, policy=PolicyFiles(agreement=config.data_dir / "dsa.toml"))
    path = {"linkage key": config.linkage_key, "policy": config.policy.agreement, "TLS files": config.tls.cert}[damaged]
    assert path is not None
    path.write_text("not [ a key or an agreement")
    # The TLS files are named as a person reads them, each with what it is.
    source = f"{path} (certificate), {config.tls.key} (key)" if damaged == "TLS files" else path
    threads = threading.active_count()
    with pytest.raises(ConfigError, match=f"^cannot load the {damaged} from {re.escape(str(source))}"):
        await NodeServer(config).start()
    assert threading.active_count() == threads and not config.store_path.exists()


async def test_a_node_started_on_a_disk_that_refuses_writes_says_so_and_closes_its_store(
    federation: LocalFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node started on a disk remounted read-only opened its store, and then failed at its
    first write with SQLite's words ("attempt to write a readonly database") and a
    traceback. Now it says which file cannot be written, and what to do, in the one line
    `node serve` prints for a file it cannot use; and it closes the store, so the node
    starts on it once the disk is mended."""
    config = federation.node_configs["amh"]
    async with running(federation, nodes=("amh",)):
        pass  # its store made, as by its first start
    monkeypatch.setattr(store_db, "WRITER_PRAGMAS", (*store_db.WRITER_PRAGMAS, "query_only=ON"))
    said = (
        f"{config.store_path} cannot be written (SQLITE_READONLY): the node did not start; "
        "ask agency IT to free space on its disk or mend it, then start it again"
    )
    with pytest.raises(StoreUnusable, match=f"^{re.escape(said)}$"):
        await NodeServer(config).start()
    monkeypatch.undo()
    node = NodeServer(config)  # the store closed whole: its lock, let go last, is free
    await node.start()
    await node.stop(grace=0)


async def serve_and_fail(role: str, config: Path, **settings: str) -> tuple[int | None, str]:
    """`linkage ROLE serve` that should exit at once: its exit code and standard error. One
    that keeps running is killed after 30 s (and its code is then the kill's)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "linkage",
        role,
        "serve",
        "--config",
        str(config),
        env={**os.environ, "LINKAGE_GATEWAY_LISTEN": "127.0.0.1:0", **settings},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:  # it hung, or ran: leave no process behind
            process.kill()
            await process.wait()
    return process.returncode, stderr.decode()


@pytest.mark.parametrize(
    ("role", "setting", "says"),
    [
        ("gateway", "LINKAGE_METRICS_LISTEN", "[metrics] listen {}: Address already in use"),
        ("node", "LINKAGE_METRICS_LISTEN", "[metrics] listen {}: Address already in use"),
        ("gateway", "LINKAGE_GATEWAY_LISTEN", "[gateway] listen {}: cannot bind it (is it in use?)"),
        ("node", "LINKAGE_API_SOCKET", "[api] socket {}: cannot bind it"),
    ],
    ids=["gateway metrics", "node metrics", "gateway listen", "node API socket in no folder"],
)
async def test_a_server_that_cannot_start_exits_and_says_why(
    federation: LocalFederation, role: str, setting: str, says: str
) -> None:
    """A port it needs is taken, or its API socket cannot be made. A metrics port fails after
    the store (and, for a node, its API) is up: what was opened is closed again, so the
    process ends instead of hanging."""
    config = federation.gateway_config.data_dir / "gateway.toml"
    if role == "node":
        config = federation.node_configs["amh"].data_dir / "node.toml"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        if setting == "LINKAGE_API_SOCKET":  # a folder that is not there
            listen = str(federation.node_configs["amh"].data_dir / "no-such-folder" / "api.sock")
        code, stderr = await serve_and_fail(role, config, **{setting: listen})
    assert code == 2
    assert f"linkage: {says.format(listen)}" in stderr


@pytest.mark.parametrize("role", ["node", "gateway"])
async def test_a_second_server_on_the_same_store_refuses_to_start(federation: LocalFederation, role: str) -> None:
    """A node started twice on one store (a service manager's copy and one run by hand)
    ran both: two writers of one audit chain, each with its own head in memory, and two
    outboxes sending the same rows. The first holds the store; the second says who does,
    and exits. Once the first stops, the store can be opened again."""
    async with running(federation, nodes=("amh",)) as cluster:
        first = cluster.nodes["amh"] if role == "node" else cluster.gateway
        config = first.config.data_dir / ("node.toml" if role == "node" else "gateway.toml")
        code, stderr = await serve_and_fail(role, config)
        store = first.config.data_dir / ("store.sqlite" if role == "node" else "gateway.sqlite")
        assert code == 2
        assert f"linkage: {store} is in use by process {os.getpid()}: stop it" in stderr
        if role == "node":
            with pytest.raises(InUse):  # and in one process, a second server of it
                await NodeServer(cluster.nodes["amh"].config).start()
            await cluster.stop_node("amh")
            await cluster.start_node("amh")  # released on stop
