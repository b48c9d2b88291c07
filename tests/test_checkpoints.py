"""When a node lodges checkpoints of its audit log with the witness: once a count of
entries waits, or when the period since the last try ends while any wait; and the store
wakes the lodging task only then, not at every commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from linkage.clock import Clock, ManualClock, SystemClock
from linkage.directory import TrustedDirectory
from linkage.keys import MessageKeys
from linkage.v1 import audit_pb2, gateway_pb2
from node import checkpoints
from node.checkpoints import LODGE_EVERY_ENTRIES, Checkpointer
from node.store import Store
from tests.harness import reads_refused


class Witness:
    """Stands in for the gateway link: records what is lodged (the only calls a Checkpointer makes)."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.connected.set()
        self.sizes: list[int] = []
        self.lodged = asyncio.Event()

    async def witnessed(self) -> gateway_pb2.WitnessedCheckpoints:
        return gateway_pb2.WitnessedCheckpoints()

    async def lodge_checkpoint(
        self, signed: audit_pb2.SignedCheckpoint, from_size: int, proof: list[bytes]
    ) -> gateway_pb2.LodgeCheckpointResponse:
        size = audit_pb2.Checkpoint.FromString(signed.checkpoint).tree_size
        self.sizes.append(size)
        self.lodged.set()
        return gateway_pb2.LodgeCheckpointResponse(tree_size=size)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "store.sqlite", SystemClock())
    yield store
    await store.close()


async def _append(store: Store, entries: int) -> None:
    async with store.tx() as tx:
        for _ in range(entries):
            await tx.audit("case.opened")


async def _until(condition: Callable[[], bool]) -> None:
    """Let other tasks run until `condition` holds (they need only a few turns)."""
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the checkpointer never got there")


def _checkpointer(store: Store, witness: Witness, clock: Clock) -> Checkpointer:
    trust = TrustedDirectory("fed", ed25519.Ed25519PrivateKey.generate().public_key())  # unused: nothing is cosigned
    return Checkpointer(store, witness, MessageKeys.generate("k1"), "amh", clock, trust)  # type: ignore[arg-type]


async def _running(store: Store, witness: Witness, clock: Clock | None = None) -> asyncio.Task[None]:
    checkpointer = _checkpointer(store, witness, clock or SystemClock())
    task = asyncio.create_task(checkpointer.run())
    await _until(lambda: store.wake_at == 1)  # nothing waits: the first entry wakes it
    return task


async def test_lodged_once_enough_entries_wait_and_not_woken_by_each_commit_before(store: Store) -> None:
    witness = Witness()
    task = await _running(store, witness)
    try:
        await _append(store, 1)  # the first entry to wait: from now on only the count wakes it
        await _until(lambda: store.wake_at == LODGE_EVERY_ENTRIES)
        for _ in range(LODGE_EVERY_ENTRIES - 2):
            await _append(store, 1)
            assert not store.appended.is_set()
        assert not witness.sizes
        await _append(store, 1)
        await asyncio.wait_for(witness.lodged.wait(), 5)
        assert witness.sizes == [LODGE_EVERY_ENTRIES]
    finally:
        task.cancel()


async def test_lodged_when_the_period_ends_while_entries_wait(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoints, "LODGE_EVERY_S", 0.05)
    witness = Witness()
    task = await _running(store, witness)
    try:
        await _append(store, 3)
        await asyncio.wait_for(witness.lodged.wait(), 5)
        assert witness.sizes == [3]
    finally:
        task.cancel()


class RefusingWitness(Witness):
    """A gateway that cannot take a checkpoint now (its store refuses writes, say), for the
    first `refusals` times it is asked."""

    def __init__(self, refusals: int = 2**31) -> None:
        super().__init__()
        self.asked, self.refusals = 0, refusals

    async def witnessed(self) -> gateway_pb2.WitnessedCheckpoints:
        self.asked += 1
        if self.asked > self.refusals:
            return await super().witnessed()
        self.lodged.set()
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "refused")


async def test_a_lodge_that_failed_is_tried_again_when_the_period_ends_not_at_every_commit(store: Store) -> None:
    """Once enough entries waited, a lodge the gateway refused was tried again at every commit
    that followed: under load, a call, a warning here and a metadata-log entry there at every
    commit, to a gateway that was failing already. Now it waits for the period's end."""
    witness = RefusingWitness()
    task = await _running(store, witness)
    try:
        await _append(store, LODGE_EVERY_ENTRIES)
        await asyncio.wait_for(witness.lodged.wait(), 5)
        await _until(lambda: store.wake_at == checkpoints.NEVER)
        for _ in range(5):
            await _append(store, 1)
            assert not store.appended.is_set()  # not even woken
            for _ in range(20):  # turns enough for a try, had the commit woken it
                await asyncio.sleep(0)
        assert witness.asked == 1
    finally:
        task.cancel()


async def test_a_lodge_that_failed_is_lodged_when_the_period_ends(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints, "LODGE_EVERY_S", 0.05)
    witness = RefusingWitness(refusals=1)
    task = await _running(store, witness)
    try:
        await _append(store, LODGE_EVERY_ENTRIES)
        async with asyncio.timeout(5):
            while not witness.sizes:
                witness.lodged.clear()
                await witness.lodged.wait()
        assert witness.asked == 2 and witness.sizes == [LODGE_EVERY_ENTRIES]
    finally:
        task.cancel()


HOUR_MS = 3_600_000


async def test_a_wall_clock_set_back_does_not_put_off_the_period(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The period is time that passed, whatever the wall clock is set to meanwhile."""
    monkeypatch.setattr(checkpoints, "LODGE_EVERY_S", 0.05)
    witness, clock = Witness(), ManualClock()
    task = await _running(store, witness, clock)
    try:
        clock.advance(-HOUR_MS)
        await _append(store, 3)
        await asyncio.wait_for(witness.lodged.wait(), 5)
        assert witness.sizes == [3]
    finally:
        task.cancel()


async def test_a_receipt_checkpoint_follows_the_log_after_the_wall_clock_is_set_back(store: Store) -> None:
    clock = ManualClock()
    checkpointer = _checkpointer(store, Witness(), clock)
    await _append(store, 1)
    assert audit_pb2.Checkpoint.FromString(checkpointer.for_receipt().checkpoint).tree_size == 1
    clock.advance(-HOUR_MS)
    await _append(store, 1)
    assert audit_pb2.Checkpoint.FromString(checkpointer.for_receipt().checkpoint).tree_size == 2


async def test_one_receipt_checkpoint_serves_for_a_tenth_of_a_second_while_the_log_grows(store: Store) -> None:
    """Under load one signature serves many receipts: a receipt's checkpoint is signed again
    only once the log has grown and the last is 100 ms old, or the wall clock was set back
    (by however little). `latest()` is the log as it stands, even within the millisecond."""
    clock = ManualClock()
    checkpointer = _checkpointer(store, Witness(), clock)
    await _append(store, 1)
    first = checkpointer.for_receipt()
    await _append(store, 1)
    assert checkpointer.for_receipt() is first  # in the same millisecond
    clock.advance(checkpoints.RECEIPT_CHECKPOINT_MAX_AGE_MS - 1)
    assert checkpointer.for_receipt() is first
    clock.advance(1)
    second = checkpointer.for_receipt()
    assert audit_pb2.Checkpoint.FromString(second.checkpoint).tree_size == 2
    clock.advance(-1)
    await _append(store, 1)
    third = checkpointer.for_receipt()
    assert audit_pb2.Checkpoint.FromString(third.checkpoint).tree_size == 3
    clock.advance(HOUR_MS)
    assert checkpointer.for_receipt() is third  # however old, while the log has not grown
    await _append(store, 1)
    assert audit_pb2.Checkpoint.FromString(checkpointer.latest().checkpoint).tree_size == 4


async def test_a_lodge_with_nothing_new_succeeds_without_a_call_to_the_witness(store: Store) -> None:
    witness = Witness()
    checkpointer = _checkpointer(store, witness, SystemClock())
    await _append(store, 2)
    assert await checkpointer.lodge() is True
    assert await checkpointer.lodge() is True  # a failure here would put off the next try a period
    assert witness.sizes == [2]


class LosingWitness(Witness):
    """A witness that holds what it was lodged, and whose answer to the lodges numbered in
    `lost` (from 1) never reaches the node: the call fails as the connection drops."""

    def __init__(self, lost: set[int]) -> None:
        super().__init__()
        self.lost, self.latest = lost, audit_pb2.SignedCheckpoint()

    async def witnessed(self) -> gateway_pb2.WitnessedCheckpoints:
        answer = gateway_pb2.WitnessedCheckpoints()
        if self.latest.checkpoint:
            answer.latest.CopyFrom(self.latest)
        return answer

    async def lodge_checkpoint(
        self, signed: audit_pb2.SignedCheckpoint, from_size: int, proof: list[bytes]
    ) -> gateway_pb2.LodgeCheckpointResponse:
        answer = await super().lodge_checkpoint(signed, from_size, proof)
        self.latest = signed
        if len(self.sizes) in self.lost:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "gone")
        return answer


async def test_a_lodge_whose_answer_was_lost_is_proved_again_from_what_the_witness_holds(store: Store) -> None:
    """A witness that cannot be reached is not asked again at once (the next try is at the
    period's end); then the node asks what it holds, and a log no longer than that is not
    behind it: this node's own checkpoint, lodged, with nothing appended since."""
    witness = LosingWitness(lost={2})
    checkpointer = _checkpointer(store, witness, SystemClock())
    await _append(store, 2)
    assert await checkpointer.lodge()
    await _append(store, 1)
    assert not await checkpointer.lodge()
    assert witness.sizes == [2, 3]
    assert await checkpointer.lodge()  # proved from 3 entries to the same 3
    assert witness.sizes == [2, 3, 3] and checkpointer.lodged_size == 3


async def test_a_lodge_whose_store_refuses_a_read_is_not_lodged_and_goes_at_the_next_try(store: Store) -> None:
    """Lodging after a lost answer reads what the witness holds from the store. A store that
    refused that read raised out of the lodge: the node's final lodge then cut its stop short
    (its store left open), and the lodging duty was begun again as a failure. Now the lodge
    is not made, is said, and the next try lodges it."""
    witness = LosingWitness(lost={2})
    checkpointer = _checkpointer(store, witness, SystemClock())
    await _append(store, 2)
    assert await checkpointer.lodge()
    await _append(store, 1)
    assert not await checkpointer.lodge()  # the answer lost: what the witness holds is asked next time
    async with reads_refused(store, "witnessed"):
        assert not await checkpointer.lodge()
    assert await checkpointer.lodge()
    assert witness.sizes == [2, 3, 3] and checkpointer.lodged_size == 3
