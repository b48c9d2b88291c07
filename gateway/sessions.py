"""Who is connected now, and who is waiting for whom (memory only, never content at rest)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from linkage.frames import fits
from linkage.v1 import gateway_pb2

# A "forwarded" answer alone waits this long for another frame to the same node (usually the
# recipient's receipt, a few ms behind it) so that both go as one write: one stream message,
# one wake-up and, at the sender, one commit fewer per message. Every other frame goes at once.
ACK_LINGER_S = 0.02
# Beyond a node's queue limit, room for what answers its own requests (the answers to its sends,
# their receipts, look-ups) and for notices: several times the window a node sends at once
# (256), so a full queue of other nodes' messages never makes a node's own answers overflow.
ANSWER_HEADROOM = 1024


def _can_wait(frame: gateway_pb2.GatewayFrame) -> bool:
    return frame.WhichOneof("frame") == "send_ack" and frame.send_ack.status == gateway_pb2.SEND_STATUS_FORWARDED


@dataclass
class Session:
    node_id: str
    limit: int
    headroom: int = ANSWER_HEADROOM
    certificate: bytes = b""  # the SHA-256 of the certificate the node connected with
    queue: asyncio.Queue[gateway_pb2.GatewayFrame | None] = field(init=False)
    error: tuple[grpc.StatusCode, str] | None = None
    ending: bool = False  # closed: what is queued from now on would never be written
    # Nodes whose messages were queued here: when the stream ends, what it had not yet
    # written, or its node not yet read, is lost, and they are told when the node is back.
    senders: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        # One slot beyond the limit and the headroom is kept for the end-of-stream sentinel.
        self.queue = asyncio.Queue(self.limit + self.headroom + 1)

    def push(self, frame: gateway_pb2.GatewayFrame, answer: bool = False) -> bool:
        """Queue a frame for the node; False when its queue is full (back-pressure). Another
        node's message fits within the limit; an `answer` (to this node's own request, or a
        notice) also in the headroom beyond it."""
        if self.queue.qsize() >= self.limit + (self.headroom if answer else 0):
            return False
        self.queue.put_nowait(frame)
        return True

    async def frames(self) -> AsyncIterator[gateway_pb2.GatewayFrame]:
        """What to write to the node, until the stream is closed: frames waiting together
        go as one batch (gRPC's cost is per stream message), and a batch of answers that can
        wait lingers once, briefly, for company."""
        carry: gateway_pb2.GatewayFrame | None = None
        while True:
            first = carry if carry is not None else await self.queue.get()
            carry = None
            if first is None:
                return
            batch, size, end, lingered = [first], first.ByteSize(), False, False
            while True:
                if not self.queue.empty():
                    frame = self.queue.get_nowait()
                elif lingered or not all(_can_wait(f) for f in batch):
                    break
                else:
                    lingered = True
                    try:
                        async with asyncio.timeout(ACK_LINGER_S):
                            frame = await self.queue.get()  # a frame is taken only if this returns
                    except TimeoutError:
                        break
                if frame is None:
                    end = True
                    break
                if not fits(size, len(batch), frame):
                    carry = frame
                    break
                batch.append(frame)
                size += frame.ByteSize()
            yield first if len(batch) == 1 else gateway_pb2.GatewayFrame(batch=gateway_pb2.GatewayFrames(frames=batch))
            if end:
                return

    def close(self, error: tuple[grpc.StatusCode, str] | None = None) -> None:
        """End the stream once the frames already queued are written."""
        if error and not self.error:
            self.error = error
        self.ending = True
        if self.queue.full():
            return  # a sentinel is already queued: the reserved slot is taken
        self.queue.put_nowait(None)


class Sessions:
    def __init__(self, queue_limit: int = 4096, answer_headroom: int = ANSWER_HEADROOM) -> None:
        self.queue_limit = queue_limit
        self.answer_headroom = answer_headroom
        self._live: dict[str, Session] = {}
        self._waiting: dict[str, set[str]] = defaultdict(set)

    def __len__(self) -> int:
        return len(self._live)

    def get(self, node_id: str) -> Session | None:
        return self._live.get(node_id)

    def open(self, node_id: str, certificate: bytes = b"") -> Session:
        """A new stream for a node replaces any older one, and wakes its waiting senders,
        and those with messages queued on the one it replaces."""
        old = self._live.get(node_id)
        if old is not None:
            old.close((grpc.StatusCode.ABORTED, "replaced by a newer connection from the same node"))
            self._waiting[node_id] |= old.senders
        session = Session(node_id, self.queue_limit, self.answer_headroom, certificate)
        self._live[node_id] = session
        for sender in sorted(self._waiting.pop(node_id, set())):
            peer = self._live.get(sender)
            if peer is not None:
                peer.push(gateway_pb2.GatewayFrame(peer_online=gateway_pb2.PeerOnline(node_id=node_id)), answer=True)
        return session

    def live(self) -> list[Session]:
        return list(self._live.values())

    def end(self, session: Session) -> None:
        if self._live.get(session.node_id) is session:
            del self._live[session.node_id]
            self._waiting[session.node_id] |= session.senders

    def wait_for(self, recipient: str, sender: str) -> None:
        self._waiting[recipient].add(sender)

    @staticmethod
    def push_or_end(session: Session, frame: gateway_pb2.GatewayFrame) -> None:
        """Queue a frame the node keeps state for until it comes (a links-changed notice, the
        answer to a send). One that cannot be queued ends the stream instead: reconnecting
        makes the node forget what it kept and send everything unanswered again."""
        if not session.push(frame, answer=True):
            session.close((grpc.StatusCode.UNAVAILABLE, "this node's stream is too far behind; reconnect"))

    def notify(self, session: Session, change: gateway_pb2.LinksChanged) -> None:
        self.push_or_end(session, gateway_pb2.GatewayFrame(links_changed=change))

    def notify_all(self, change: gateway_pb2.LinksChanged) -> None:
        for session in list(self._live.values()):
            self.notify(session, change)

    def close_all(self, error: tuple[grpc.StatusCode, str]) -> None:
        for session in list(self._live.values()):
            session.close(error)
