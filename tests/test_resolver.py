"""Recipient look-ups coalesce under load, and each share still gets exactly its own answer."""

from __future__ import annotations

import asyncio

import pytest

from node.resolver import Resolver

LINKED = {b"a": ["csc"], b"b": ["school"], b"c": ["csc", "police"]}


class Gateway:
    """Answers token by token, as ResolveRecipients does, refusing tokens the caller is not linked to."""

    def __init__(self) -> None:
        self.calls: list[list[bytes]] = []

    async def lookup(self, tokens: list[bytes]) -> dict[bytes, list[str]]:
        self.calls.append(tokens)
        await asyncio.sleep(0)  # the call is in flight while others ask
        if any(t not in LINKED for t in tokens):
            raise PermissionError("subscribe to every link token before resolving")
        return {t: LINKED[t] for t in tokens}


async def test_concurrent_lookups_share_calls_and_each_gets_its_own_answer() -> None:
    gateway = Gateway()
    resolver = Resolver(gateway.lookup, max_tokens=64)
    asks = [[b"a"], [b"b"], [b"a", b"c"], [b"b", b"c"]] * 10
    answers = await asyncio.gather(*(resolver.resolve(tokens) for tokens in asks))
    assert answers == [["csc"], ["school"], ["csc", "police"], ["csc", "police", "school"]] * 10
    assert len(gateway.calls) < len(asks) / 4


async def test_a_refused_token_fails_only_the_share_that_asked_for_it() -> None:
    gateway = Gateway()
    resolver = Resolver(gateway.lookup, max_tokens=64)
    results = await asyncio.gather(
        resolver.resolve([b"a"]), resolver.resolve([b"x"]), resolver.resolve([b"b"]), return_exceptions=True
    )
    assert results[0] == ["csc"] and results[2] == ["school"]
    assert isinstance(results[1], PermissionError)


async def test_a_batch_never_asks_for_more_tokens_than_a_call_may_carry() -> None:
    gateway = Gateway()
    resolver = Resolver(gateway.lookup, max_tokens=2)
    await asyncio.gather(*(resolver.resolve(tokens) for tokens in ([b"a"], [b"b"], [b"c"], [b"a", b"b"])))
    assert all(len(call) <= 2 for call in gateway.calls)


async def test_a_caller_that_gives_up_does_not_stop_the_others() -> None:
    gateway = Gateway()
    resolver = Resolver(gateway.lookup, max_tokens=64)
    first = asyncio.create_task(resolver.resolve([b"a"]))
    impatient = asyncio.create_task(resolver.resolve([b"b"]))
    last = asyncio.create_task(resolver.resolve([b"c"]))
    await asyncio.sleep(0)
    impatient.cancel()
    assert await first == ["csc"] and await last == ["csc", "police"]
    with pytest.raises(asyncio.CancelledError):
        await impatient
