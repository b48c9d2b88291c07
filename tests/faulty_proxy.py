"""A TCP proxy on loopback between a node and the gateway that injects what networks do:
latency, connections cut, and a silent blackhole (R5). It relays bytes and knows nothing of
TLS or gRPC, so both ends see each other as they would through a real network."""

from __future__ import annotations

import asyncio
import contextlib


class FaultyProxy:
    def __init__(self, target_port: int, latency_s: float = 0.0) -> None:
        self.target_port = target_port
        self.latency_s = latency_s
        self.port = 0
        self.connections = 0  # accepted so far
        self._accepted = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._relaying = asyncio.Event()
        self._relaying.set()
        self._refusing = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> FaultyProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> None:
        """Reset every open connection, as a failing router or a restarted firewall does."""
        for writer in list(self._open):
            writer.transport.abort()

    def blackhole(self, on: bool) -> None:
        """Stop relaying, without closing anything: bytes are held, nobody is told."""
        if on:
            self._relaying.clear()
        else:
            self._relaying.set()

    def refuse(self, on: bool) -> None:
        """Reset every connection as it is made, as an unreachable gateway's network does
        (the node dials again and again, with back-off); with `on`, open ones are cut too."""
        self._refusing = on
        if on:
            self.cut()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._relaying.set()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def connection(self, number: int) -> None:
        """Until the `number`-th connection is accepted."""
        async with self._accepted:
            await self._accepted.wait_for(lambda: self.connections >= number)

    async def _accept(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        async with self._accepted:
            self.connections += 1
            self._accepted.notify_all()
        if self._refusing:
            client_out.transport.abort()
            return
        try:
            server_in, server_out = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_out.transport.abort()
            return
        self._open |= {client_out, server_out}
        for reader, writer in ((client_in, server_out), (server_in, client_out)):
            task = asyncio.create_task(self._relay(reader, writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Bytes read now are written `latency_s` later, in order, whatever else is in flight."""
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def deliver() -> None:
            while True:
                due, data = await held.get()
                if not data:
                    break
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)  # the latency injected, not a test waiting
                await self._relaying.wait()
                writer.write(data)
                await writer.drain()
            writer.close()

        delivering = asyncio.create_task(deliver())
        try:
            while data := await reader.read(65536):
                held.put_nowait((loop.time() + self.latency_s, data))
        except ConnectionError:
            pass
        finally:
            held.put_nowait((0.0, b""))
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await delivering
            self._open.discard(writer)
