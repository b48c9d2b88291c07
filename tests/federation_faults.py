"""What goes wrong in a federation, for the tests that take random steps through it: the
gateway stops and comes back on its port, a node stops and starts again, a disk, a node's
or the gateway's, turns read-only until it is mended (as a filesystem remounted read-only
after an error: SQLite refuses every write), and a node's store is put back to its last
backup (as `linkage backup take` and `linkage backup restore` make and put back one)."""

from __future__ import annotations

import collections
import dataclasses
import random
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path

import grpc

from linkage import backup
from linkage.readonly import connect_read_only
from node.store import Store
from tests.harness import Cluster

GATEWAY = "gateway"  # its backup's key among the nodes'
# Refusals no person can act on: a defect in the node, whatever else was failing.
DEFECTS = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}


async def take(step: Callable[[], Awaitable[None]], refused: collections.Counter[str]) -> None:
    """One random step: a refusal must be one a person can act on, and is counted (by step and status)."""
    try:
        await step()
    except grpc.aio.AioRpcError as exc:
        assert exc.code() not in DEFECTS, f"{step.__qualname__}: {exc.code().name}: {exc.details()}"
        refused[f"{step.__name__} {exc.code().name}"] += 1


@dataclasses.dataclass
class Faults:
    cluster: Cluster
    rng: random.Random
    nodes: tuple[str, ...]  # those that may fail
    port: int  # where the gateway comes back
    away: set[str] = dataclasses.field(default_factory=set)
    read_only: set[str] = dataclasses.field(default_factory=set)
    gateway_up: bool = True
    gateway_read_only: bool = False
    backups: dict[str, Path] = dataclasses.field(default_factory=dict)  # each node's last, and the gateway's
    done: list[str] = dataclasses.field(default_factory=list)  # each fault made, and where: for a failure to name
    _sealed_to: str = ""

    def store(self, node: str) -> Store:
        store = self.cluster.nodes[node].store
        assert store is not None
        return store

    @property
    def may_link(self) -> bool:
        """A node starting waits to be linked, which a gateway that cannot take its subscriptions refuses."""
        return self.gateway_up and not self.gateway_read_only

    async def gateway_away(self) -> None:
        if self.gateway_up:
            await self.cluster.gateway.stop(grace=0)
            self.gateway_up = False
            self.done.append("gateway away")

    async def gateway_back(self) -> None:
        if not self.gateway_up:
            await self.cluster.start_gateway(self.port)
            self.gateway_up, self.gateway_read_only = True, False  # its store opened anew
            self.done.append("gateway back")

    async def node_away(self) -> None:
        node = self.rng.choice(self.nodes)
        if node not in self.away:
            await self.cluster.stop_node(node)
            self.away.add(node)
            self.read_only.discard(node)
            self.done.append(f"{node} away")

    async def node_back(self) -> None:
        if self.away and self.may_link:
            node = self.rng.choice(sorted(self.away))
            await self.cluster.start_node(node)
            self.away.discard(node)
            self.done.append(f"{node} back")

    async def restart(self) -> None:
        node = self.rng.choice(self.nodes)
        if node not in self.away and self.may_link:
            await self.cluster.stop_node(node)
            await self.cluster.start_node(node)
            self.read_only.discard(node)  # a new connection: as a disk mended while the node was stopped
            self.done.append(f"{node} restarted")

    async def disk_read_only(self) -> None:
        """A node's disk remounted read-only: every write it tries is refused until it is mended."""
        node = self.rng.choice(self.nodes)
        if node not in self.away:
            self.store(node).db.execute("PRAGMA query_only = ON")
            self.read_only.add(node)
            self.done.append(f"{node} disk read-only")

    async def gateway_disk_read_only(self) -> None:
        """The gateway's disk remounted read-only: it refuses subscription changes until mended."""
        if self.gateway_up:
            await self._gateway_pragma("query_only = ON")
            self.gateway_read_only = True
            self.done.append("gateway disk read-only")

    async def disks_mended(self) -> None:
        for node in self.read_only:
            self.store(node).db.execute("PRAGMA query_only = OFF")
        self.read_only.clear()
        if self.gateway_up:
            await self._gateway_pragma("query_only = OFF")
        self.gateway_read_only = False

    async def back_up(self) -> None:
        """A backup of a running node's store, taken as it runs."""
        node = self.rng.choice(self.nodes)
        if node not in self.away:
            taken = self._backups / f"{node}.age"
            backup.take(self._member(node), taken, backup.recipients([self._backup_key()]), self._now_ms())
            self.backups[node] = taken
            self.done.append(f"{node} backed up")

    async def put_back(self) -> tuple[str, set[str]] | None:
        """A running node stopped, its store put back to its last backup, and started again:
        which, and the message ids its outbox held once put back (the rest of what it sent
        comes back only from the agencies it reached)."""
        backed_up = sorted(n for n in self.backups if n in self.nodes and n not in self.away)
        if not backed_up or not self.may_link:
            return None
        node = self.rng.choice(backed_up)
        now_ms = self._now_ms()
        await self.cluster.stop_node(node)
        self.read_only.discard(node)
        member = self._member(node)
        keys = backup.identities(self._backups / "backup.key")
        backup.restore_store(member, self.backups[node], keys, now_ms)
        with closing(connect_read_only(member.store)) as db:
            held = {str(m) for (m,) in db.execute("SELECT message_id FROM outbox")}
        await self.cluster.start_node(node)
        self.done.append(f"{node} put back")
        return node, held

    async def gateway_back_up(self) -> None:
        """A backup of the running gateway's store, taken as it runs."""
        if self.gateway_up:
            taken = self._backups / "gateway.age"
            gateway = backup.Member.of(self.cluster.federation.gateway_config)
            backup.take(gateway, taken, backup.recipients([self._backup_key()]), self._now_ms())
            self.backups[GATEWAY] = taken
            self.done.append("gateway backed up")

    async def gateway_put_back(self) -> None:
        """The gateway stopped, if it runs, its store put back to its last backup, and started
        again: it holds the subscriptions and checkpoints of then."""
        if GATEWAY not in self.backups:
            return
        now_ms = self._now_ms()
        if self.gateway_up:
            await self.cluster.gateway.stop(grace=0)
        gateway = backup.Member.of(self.cluster.federation.gateway_config)
        backup.restore_store(gateway, self.backups[GATEWAY], backup.identities(self._backups / "backup.key"), now_ms)
        await self.cluster.start_gateway(self.port)
        self.gateway_up, self.gateway_read_only = True, False
        self.done.append("gateway put back")

    @property
    def _backups(self) -> Path:
        folder = self.cluster.federation.gateway_config.data_dir.parent / "backups"
        folder.mkdir(exist_ok=True)
        return folder

    def _backup_key(self) -> str:
        """The public half of the key the backups are sealed to, made at the first."""
        if not self._sealed_to:
            self._sealed_to = backup.generate_key(self._backups / "backup.key", "")
        return self._sealed_to

    def _member(self, node: str) -> backup.Member:
        return backup.Member.of(self.cluster.federation.node_configs[node])

    def _now_ms(self) -> int:
        return self.cluster.gateway.clock.now_ms()

    async def all_back(self) -> None:
        """The gateway up, every disk mended and every node running again."""
        await self.gateway_back()
        await self.disks_mended()
        while self.away:
            await self.node_back()

    async def _gateway_pragma(self, pragma: str) -> None:
        assert self.cluster.gateway._db is not None
        await self.cluster.gateway._db.db.execute(f"PRAGMA {pragma}")
