"""Recipient look-ups coalesce under load, and each share still gets exactly its own answer."""

from __future__ import annotations

import asyncio

import pytest

from node.resolver import Answers, Resolver

LINKED = {b"a": ["csc"], b"b": ["school"], b"c": ["csc", "police"]}


class Gateway:
    """Answers token by token, as ResolveRecipients does, refusing tokens the caller is not linked to."""

    def __init__(self) -> None:
        self.calls: list[list[bytes]] = []

    async def lookup(self, tokens: list[bytes]) -> Answers:
        self.calls.append(tokens)
        await asyncio.sleep(0)  # the call is in flight while others ask
        if any(t not in LINKED for t in tokens):
            raise PermissionError("subscribe to every link token before resolving")
        return Answers({t: LINKED[t] for t in tokens}, pushed=False)


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


class PushingGateway(Gateway):
    """Answers on the stream: the node may keep them until told they changed."""

    def __init__(self) -> None:
        super().__init__()
        self.during_call: list[bytes] | None = None  # a notice that crosses the next answer
        self.resolver: Resolver | None = None

    async def lookup(self, tokens: list[bytes]) -> Answers:
        answers = await super().lookup(tokens)
        if self.during_call is not None and self.resolver is not None:
            self.resolver.forget(self.during_call)
            self.during_call = None
        return Answers(answers.by_token, pushed=True)


async def test_answers_given_on_the_stream_are_kept_until_a_notice_about_their_tokens() -> None:
    gateway = PushingGateway()
    resolver = Resolver(gateway.lookup, max_tokens=64)
    assert await resolver.resolve([b"a", b"b"]) == ["csc", "school"]
    assert await resolver.resolve([b"b"]) == ["school"] and await resolver.resolve([b"a"]) == ["csc"]
    assert len(gateway.calls) == 1

    resolver.forget([b"a"])
    assert await resolver.resolve([b"b"]) == ["school"] and len(gateway.calls) == 1
    assert await resolver.resolve([b"a"]) == ["csc"] and len(gateway.calls) == 2

    resolver.forget()  # the directory changed, or the stream ended
    assert await resolver.resolve([b"b"]) == ["school"] and len(gateway.calls) == 3


async def test_an_answer_that_crosses_a_notice_is_used_once_and_not_kept() -> None:
    gateway = PushingGateway()
    resolver = gateway.resolver = Resolver(gateway.lookup, max_tokens=64)
    gateway.during_call = [b"c"]
    assert await resolver.resolve([b"a"]) == ["csc"]
    assert await resolver.resolve([b"a"]) == ["csc"]
    assert len(gateway.calls) == 2  # the first answer may have been computed before the change


async def test_answers_not_covered_by_notices_are_never_kept() -> None:
    gateway = Gateway()  # the unary call, while the stream is down
    resolver = Resolver(gateway.lookup, max_tokens=64)
    await resolver.resolve([b"a"])
    await resolver.resolve([b"a"])
    assert len(gateway.calls) == 2


async def test_the_oldest_answers_make_room_for_new_ones() -> None:
    gateway = PushingGateway()
    resolver = Resolver(gateway.lookup, max_tokens=64, keep=2)
    for token in (b"a", b"b", b"c"):
        await resolver.resolve([token])
    await resolver.resolve([b"c"])
    await resolver.resolve([b"b"])
    assert len(gateway.calls) == 3
    await resolver.resolve([b"a"])
    assert len(gateway.calls) == 4
