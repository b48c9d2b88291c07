"""A family's chronology as the case system receives it: whole however long it grows,
in order, each entry in its summary's present state."""

from __future__ import annotations

from bench.scale import fill_inbox
from linkage import stories
from linkage.transport import MAX_MESSAGE_BYTES
from linkage.v1 import node_api_pb2
from tests.harness import LocalFederation, running
from tests.test_workflows import CSC_WORKER


async def test_answers_larger_than_a_federation_frame_reach_the_case_system(federation: LocalFederation) -> None:
    """The API's answers are not held to the federation's frame limit (256 KiB): a page of
    500 received summaries, and a family's chronology of 2,000 entries, arrive whole."""
    async with running(federation, nodes=("csc",)) as cluster:
        api = cluster.api("csc")
        opened = await api.OpenCase(
            node_api_pb2.OpenCaseRequest(actor=CSC_WORKER, case_ref="long", people=stories.think_family_people())
        )
        fill_inbox(cluster.nodes["csc"].config.store_path, 1000, [p.link_token for p in opened.people])

        page = await api.ListReceived(node_api_pb2.ListReceivedRequest(actor=CSC_WORKER, limit=500))
        assert len(page.items) == 500
        assert page.ByteSize() > MAX_MESSAGE_BYTES

        chronology = await api.Chronology(node_api_pb2.ChronologyRequest(actor=CSC_WORKER, case_id=opened.case_id))
        assert len(chronology.entries) == 2000  # two risk items in each
        assert chronology.ByteSize() > MAX_MESSAGE_BYTES
