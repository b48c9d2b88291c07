"""Who is linked to a family: recipient look-ups, coalesced.

Every share asks the gateway which agencies are linked to its people. Under load
many shares ask at once; while one call is in flight the others wait and go
together in the next call, which the gateway answers token by token, so each
share still gets exactly its own answer. At low load nothing waits: a lone
share's look-up is sent at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

Lookup = Callable[[list[bytes]], Awaitable[dict[bytes, list[str]]]]


class Resolver:
    def __init__(self, lookup: Lookup, max_tokens: int) -> None:
        self._lookup = lookup
        self._max_tokens = max_tokens
        self._pending: deque[tuple[list[bytes], asyncio.Future[list[str]]]] = deque()
        self._runner: asyncio.Task[None] | None = None

    async def resolve(self, tokens: list[bytes]) -> list[str]:
        """The agencies (other than this node) linked to any of `tokens`."""
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._pending.append((tokens, future))
        if self._runner is None:
            self._runner = asyncio.create_task(self._run())
        return await future

    def _next_batch(self) -> list[tuple[list[bytes], asyncio.Future[list[str]]]]:
        batch: list[tuple[list[bytes], asyncio.Future[list[str]]]] = []
        tokens: set[bytes] = set()
        while self._pending:
            wanted = tokens | set(self._pending[0][0])
            if batch and len(wanted) > self._max_tokens:
                break
            batch.append(self._pending.popleft())
            tokens = wanted
        return batch

    async def _run(self) -> None:
        try:
            while self._pending:
                batch = [(tokens, f) for tokens, f in self._next_batch() if not f.done()]  # some gave up
                if len(batch) > 1:
                    try:
                        answers = await self._lookup(sorted({t for tokens, _ in batch for t in tokens}))
                    except Exception:
                        pass  # one share's token may be the one refused: ask share by share below
                    else:
                        for tokens, future in batch:
                            _settle(future, tokens, answers)
                        continue
                for tokens, future in batch:
                    try:
                        answers = await self._lookup(sorted(set(tokens)))
                    except Exception as exc:
                        if not future.done():
                            future.set_exception(exc)
                        continue
                    _settle(future, tokens, answers)
        finally:
            self._runner = None


def _settle(future: asyncio.Future[list[str]], tokens: list[bytes], answers: dict[bytes, list[str]]) -> None:
    if not future.done():
        future.set_result(sorted({n for t in tokens for n in answers.get(t, ())}))
