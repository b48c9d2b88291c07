"""The gateway as an attacker with root on its machine would see it: its process memory
holds no summary plaintext (S10), and oversized input does not make it balloon (S8)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import grpc
import pytest

from linkage import stories
from linkage.clock import SystemClock
from linkage.transport import secure_channel
from linkage.v1 import envelope_pb2, gateway_pb2, gateway_pb2_grpc, node_api_pb2
from tests.harness import PRACTITIONER, make_federation
from tests.process_cluster import process_cluster

CANARY = "CANARY-memory-5c0d1e"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(shutil.which("gcore") is None, reason="gdb's gcore is not installed")
async def test_gateway_memory_holds_no_plaintext_and_oversize_input_does_not_balloon(tmp_path: Path) -> None:
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh", "csc", "school"))
    async with process_cluster(federation, ("amh", "csc")) as cluster:
        family = stories.think_family_people()
        opened = await cluster.api("amh").OpenCase(
            node_api_pb2.OpenCaseRequest(actor=PRACTITIONER, case_ref="mem", people=family)
        )
        await cluster.api("csc").OpenCase(node_api_pb2.OpenCaseRequest(actor=PRACTITIONER, case_ref="m", people=family))
        parent, child = (p.link_token for p in opened.people)
        assessment = stories.parent_risk_change(parent, child)
        assessment.headline = CANARY
        recorded = await cluster.api("amh").RecordAssessment(
            node_api_pb2.RecordAssessmentRequest(actor=PRACTITIONER, case_id=opened.case_id, assessment=assessment)
        )
        shared = await cluster.api("amh").ShareSummary(
            node_api_pb2.ShareSummaryRequest(
                actor=PRACTITIONER, assessment_id=recorded.assessment_id, decision=stories.override_decision()
            )
        )
        async with asyncio.timeout(30):
            async for status in cluster.api("amh").WatchShareStatus(
                node_api_pb2.ShareStatusRequest(actor=PRACTITIONER, share_id=shared.share_id)
            ):
                done = status.settled
        assert done

        gateway_pid = cluster.processes["gateway"].proc.pid
        before = rss_kib(gateway_pid)
        tls = federation.node_configs["school"].tls  # a node that is not running: no session to replace
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{cluster.port}",
            tls.channel_credentials(),
            options=[("grpc.ssl_target_name_override", "gateway"), ("grpc.max_send_message_length", 1 << 24)],
        ) as channel:
            for _ in range(20):  # 8 MiB each, far above the 256 KiB limit
                call = gateway_pb2_grpc.GatewayStub(channel).Connect()
                await call.write(gateway_pb2.NodeFrame(send=envelope_pb2.Envelope(ciphertext=bytes(8 << 20))))
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await call.read()
                assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        grown = rss_kib(gateway_pid) - before
        assert grown < 64 * 1024, f"gateway grew by {grown} KiB"
        async with secure_channel(f"127.0.0.1:{cluster.port}", tls, "gateway") as channel:  # still serving
            await gateway_pb2_grpc.GatewayStub(channel).FetchDirectory(gateway_pb2.FetchDirectoryRequest())

        dump = tmp_path / "gateway-core"
        gcore = await asyncio.create_subprocess_exec(
            "gcore",
            "-o",
            str(dump),
            str(gateway_pid),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert await gcore.wait() == 0
    data = dump.with_name(f"gateway-core.{gateway_pid}").read_bytes()
    assert len(data) > 1 << 20  # a real dump
    for secret in (CANARY, stories.PARENT_NHS, stories.CHILD_NHS):
        assert secret.encode() not in data, f"{secret} in the gateway's memory"
