"""Who is linked to a family: recipient look-ups, coalesced and remembered.

Every share asks the gateway which agencies are linked to its people. Under load
many shares ask at once; while one call is in flight the others wait and go
together in the next call, which the gateway answers token by token, so each
share still gets exactly its own answer. At low load nothing waits: a lone
share's look-up is sent at once.

An answer the gateway gave on the node's stream is kept until the gateway says it
no longer holds (an agency subscribed or unsubscribed, or the directory changed)
or the stream ends, as Matrix servers keep device lists until told of a change.
An answer that crosses such a notice on the way is not kept: the gateway may have
computed it before the change.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

# Tokens whose answers are kept (about 100 bytes each); the oldest go first.
KEEP_TOKENS = 65_536


@dataclass(frozen=True)
class Answers:
    by_token: dict[bytes, list[str]]  # the other agencies linked to each token asked about
    pushed: bool  # the gateway will say when these stop holding, so they may be kept


Lookup = Callable[[list[bytes]], Awaitable[Answers]]
Waiter = tuple[list[bytes], asyncio.Future[list[str]]]


class Resolver:
    def __init__(self, lookup: Lookup, max_tokens: int, keep: int = KEEP_TOKENS) -> None:
        self._lookup = lookup
        self._max_tokens = max_tokens
        self._keep = keep
        self._pending: deque[Waiter] = deque()
        self._runner: asyncio.Task[None] | None = None
        self._known: dict[bytes, tuple[str, ...]] = {}
        self._changes = 0  # notices seen: an answer asked for before the latest one is not kept

    async def resolve(self, tokens: list[bytes]) -> list[str]:
        """The agencies (other than this node) linked to any of `tokens`."""
        known = self._known
        if all(t in known for t in tokens):  # none at all: linked to nobody
            return sorted({n for t in tokens for n in known[t]})
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._pending.append((tokens, future))
        if self._runner is None:
            self._runner = asyncio.create_task(self._run())
        return await future

    def forget(self, tokens: Iterable[bytes] | None = None) -> None:
        """Answers about `tokens` (None: every answer) no longer hold."""
        self._changes += 1
        if tokens is None:
            self._known.clear()
            return
        for token in tokens:
            self._known.pop(token, None)

    def _remember(self, answers: Answers, asked_at: int) -> None:
        if not answers.pushed or asked_at != self._changes:
            return
        for token, nodes in answers.by_token.items():
            self._known.pop(token, None)
            if len(self._known) >= self._keep:
                del self._known[next(iter(self._known))]
            self._known[token] = tuple(nodes)

    async def _ask(self, tokens: list[bytes]) -> dict[bytes, list[str]]:
        asked_at = self._changes
        answers = await self._lookup(tokens)
        self._remember(answers, asked_at)
        return answers.by_token

    def _next_batch(self) -> list[Waiter]:
        batch: list[Waiter] = []
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
                        answers = await self._ask(sorted({t for tokens, _ in batch for t in tokens}))
                    except Exception:
                        pass  # one share's token may be the one refused: ask share by share below
                    else:
                        for tokens, future in batch:
                            _settle(future, tokens, answers)
                        continue
                for tokens, future in batch:
                    try:
                        answers = await self._ask(sorted(set(tokens)))
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
