"""`linkage bench`: Linkage against the bare transport, side by side in one run.

Every cell uses the same payload size (the size of a Linkage envelope on the
wire), the same window or offered rate, the same event loop, and mTLS with the
federation's certificates on both hops; the bare relay is also run without TLS
to price mTLS itself. Scale figures follow. The last line is `ratio <value>`:
Linkage's end-to-end throughput over the bare relay's, measured in this run (the
median over rounds that each run both back to back).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any, Protocol

from bench import audit, lone, scale, targets
from bench.cpu import python_speed_us
from bench.e2e import LinkageRun, make_federation
from bench.relay import BareRelay, Endpoint, free_port
from bench.results import Result, combine

# The bare relay moves about three times as many messages a second as Linkage: its slices
# carry this many times Linkage's, so each lasts about as long and a moment's stall of this
# shared machine weighs as little in it (with slices of Linkage's count, the rounds of the
# mTLS ratio spread from 0.6 to 1.15).
BARE_SLICE = 4


class Side(Protocol):
    async def closed_loop(self, count: int, window: int) -> Result: ...

    async def paced(self, rate: float, seconds: float) -> Result: ...


@dataclass(frozen=True)
class Plan:
    messages: int  # per closed-loop cell, run in `rounds` alternating slices (see transport)
    rounds: int
    window: int
    # Other windows at which Linkage and the bare relay (mTLS) are also run, in two alternating
    # rounds each: how much more gets through with more in flight (the ratio stays at `window`).
    windows: tuple[int, ...]
    paced_seconds: float
    rates: tuple[int, ...]
    audit_entries: int
    subscriptions: tuple[int, ...]
    chronology_entries: int
    stored_summaries: int
    lone_calls: int  # per step and mode in bench/lone.py, at the start and at the end


QUICK = Plan(
    messages=3_000,
    rounds=4,
    window=64,
    windows=(),
    paced_seconds=4,
    rates=(250, 500),
    audit_entries=200_000,
    subscriptions=(1_000_000,),
    chronology_entries=10_000,
    stored_summaries=100_000,
    lone_calls=100,
)
FULL = Plan(
    messages=20_000,
    rounds=8,
    window=64,
    windows=(32, 128, 256),
    paced_seconds=20,
    rates=(250, 500),
    audit_entries=1_000_000,
    subscriptions=(1_000_000, 10_000_000),
    chronology_entries=10_000,
    stored_summaries=1_000_000,
    lone_calls=300,
)
TINY = Plan(  # for the smoke test: everything runs, nothing is measured seriously
    messages=40,
    rounds=2,
    window=8,
    windows=(4,),
    paced_seconds=0.2,
    rates=(50,),
    audit_entries=2_000,
    subscriptions=(20_000,),
    chronology_entries=200,
    stored_summaries=500,
    lone_calls=5,
)


def say(text: str = "") -> None:
    print(text, flush=True)


def _cell(name: str, r: Result) -> str:
    cpu = "  ".join(f"{k} {v:,.0f}" for k, v in r.cpu_us.items())
    return (
        f"{name:<34} {r.per_second:>8,.0f} msg/s  p50 {r.p50_ms:>7.1f} ms  p99 {r.p99_ms:>7.1f} ms  "
        f"CPU µs/msg: {cpu} (total {r.cpu_total_us:,.0f})"
    )


async def transport(plan: Plan, root: Path) -> dict[str, Any]:
    """The end-to-end and bare-relay cells; returns every figure by name.

    All three set-ups stay up together and take turns, closed loops in `plan.rounds`
    slices and each paced Linkage cell next to its bare twin, so a change in the shared
    machine's speed during the run falls on both sides of every ratio alike. The ratios
    are medians of the rounds' own ratios: one slow slice on this shared machine moves
    a median of pairs far less than it moves the totals."""
    federation = make_federation(root)
    async with LinkageRun(federation) as linkage:
        await linkage.closed_loop(min(200, plan.messages), plan.window)  # warm-up: connections, caches
        size = await linkage.envelope_bytes()
        say(f"(envelope on the wire: {size:,} bytes; the bare relay carries the same)")
        tls = Endpoint(
            free_port(),
            relay_tls=federation.gateway_tls(),
            client_tls=federation.node_tls("amh"),
            sink_tls=federation.node_tls("csc"),
        )
        with BareRelay(tls, size) as bare, BareRelay(Endpoint(free_port()), size) as plain:
            sides: dict[str, Side] = {"e2e": linkage, "bare": bare, "plain": plain}
            for relay in (bare, plain):
                await relay.closed_loop(min(200, plan.messages), plan.window)  # warm-up
            slices = await _alternate(sides, plan.rounds, max(1, plan.messages // plan.rounds), plan.window)
            figures: dict[str, Any] = {name: combine(parts) for name, parts in slices.items()}
            for name, top, bottom in (("throughput", "e2e", "bare"), ("mtls", "bare", "plain")):
                figures[f"{name}_rounds"], figures[f"{name}_ratio"] = _ratios(slices[top], slices[bottom])
            if figures["plain"].cpu_total_us:  # /proc counts CPU in clock ticks: a tiny run may see none
                figures["mtls_cpu_ratio"] = figures["bare"].cpu_total_us / figures["plain"].cpu_total_us
            for name, label in (("e2e", "linkage e2e"), ("bare", "bare relay mTLS"), ("plain", "bare relay plaintext")):
                say(_cell(f"{label}, window {plan.window}", figures[name]))
            for rate in plan.rates:
                paced: tuple[tuple[str, str, Side], ...] = (
                    ("e2e", "linkage e2e", linkage),
                    ("bare", "bare relay mTLS", bare),
                )
                for name, label, runner in paced:
                    figures[f"{name}@{rate}"] = r = await runner.paced(rate, plan.paced_seconds)
                    say(_cell(f"{label}, paced {rate}/s", r))
            # After the cells the targets judge, so that what these add to the stores does not
            # weigh on them.
            figures["window_ratios"] = {plan.window: figures["throughput_ratio"]}
            for window in plan.windows:
                figures.update(await _at_window(linkage, bare, window, max(1, plan.messages // plan.rounds)))
                figures["window_ratios"][window] = figures[f"throughput_ratio@w{window}"]
    figures["envelope_bytes"] = size
    return figures


async def _at_window(linkage: Side, bare: Side, window: int, count: int) -> dict[str, Any]:
    """Linkage and the bare relay (mTLS) in closed loops at another window, in two
    alternating rounds."""
    slices = await _alternate({"e2e": linkage, "bare": bare}, 2, count, window)
    figures: dict[str, Any] = {f"{name}@w{window}": combine(parts) for name, parts in slices.items()}
    figures[f"throughput_ratio@w{window}"] = _ratios(slices["e2e"], slices["bare"])[1]
    say(_cell(f"linkage e2e, window {window}", figures[f"e2e@w{window}"]))
    say(_cell(f"bare relay mTLS, window {window}", figures[f"bare@w{window}"]))
    return figures


async def _alternate(sides: dict[str, Side], rounds: int, count: int, window: int) -> dict[str, list[Result]]:
    """Closed loops of each side in turn, `rounds` slices each of `count` messages (the bare
    relay's `BARE_SLICE` times as many). Every other round runs the sides in reverse order,
    so a steady drift in the machine's speed, or the wake of the side before, falls on each
    side alike."""
    slices: dict[str, list[Result]] = {name: [] for name in sides}
    order = list(sides.items())
    for n in range(rounds):
        for name, side in order if n % 2 == 0 else order[::-1]:
            slices[name].append(await side.closed_loop(count * (1 if name == "e2e" else BARE_SLICE), window))
    return slices


def _alone(steps: list[lone.Slowdown]) -> str:
    shown = "; ".join(step.show() for step in steps)
    return f"machine: a step alone after {lone.GAP_S * 1000:g} ms idle (as between messages at 250 msg/s): {shown}"


def _ratios(top: list[Result], bottom: list[Result]) -> tuple[list[float], float]:
    """Each round's throughput ratio, and their median."""
    rounds = [t.per_second / b.per_second for t, b in zip(top, bottom, strict=True)]
    return rounds, median(rounds)


def _rounds(ratios: list[float]) -> str:
    return " ".join(f"{r:.2f}" for r in ratios)


def run(plan: Plan, json_out: Path | None = None) -> float:
    started = time.perf_counter()
    say(f"linkage bench: {plan.messages:,} messages per cell, window {plan.window}, paced {plan.rates} msg/s")
    speed = {"start": python_speed_us()}
    say(f"machine: sum(range(1000)) takes {speed['start']:.1f} µs")
    alone = {"start": lone.measure(plan.lone_calls)}
    say(_alone(alone["start"]))
    with tempfile.TemporaryDirectory(prefix="linkage-bench-") as tmp:
        figures = asyncio.run(transport(plan, Path(tmp)))
        e2e, bare, mtls = figures["e2e"], figures["bare"], figures["mtls_ratio"]
        for rate in plan.rates:
            say(
                f"paced {rate}/s: p99 linkage {figures[f'e2e@{rate}'].p99_ms:.1f} ms, "
                f"bare {figures[f'bare@{rate}'].p99_ms:.1f} ms"
            )
        say(
            f"mTLS cost: bare relay with mTLS runs at {mtls:.2f}x its plaintext throughput ({1 - mtls:.0%} lost; "
            f"rounds {_rounds(figures['mtls_rounds'])})"
        )
        say(f"throughput ratio by round, Linkage / bare relay: {_rounds(figures['throughput_rounds'])}")
        if len(figures["window_ratios"]) > 1:
            by_window = "  ".join(f"{w} {r:.2f}" for w, r in sorted(figures["window_ratios"].items()))
            say(f"throughput ratio by window, Linkage / bare relay (the target is at {plan.window}): {by_window}")
        if bare.cpu_total_us:  # /proc counts CPU in clock ticks: a tiny run may see none
            say(f"CPU per message, linkage / bare: {e2e.cpu_total_us / bare.cpu_total_us:.2f}x")
        if "mtls_cpu_ratio" in figures:  # steadier than throughput on this machine
            say(f"CPU per message, bare relay with mTLS / plaintext: {figures['mtls_cpu_ratio']:.2f}x")
            if e2e.cpu_total_us:
                # Linkage carries the same envelope over the same hops and frames, so the CPU mTLS
                # adds to the bare relay's message is what it adds to Linkage's: the target is
                # still judged on the bare relay, this says what it means for a deployment.
                added = bare.cpu_total_us - figures["plain"].cpu_total_us
                figures["mtls_share_of_linkage_cpu"] = share = added / e2e.cpu_total_us
                say(f"mTLS's share of Linkage's CPU per message, by what it adds to the bare relay's: {share:.1%}")
        figures.update(scale.measure_all(plan, Path(tmp), say))
    verify = audit.measure(plan.audit_entries)
    say(
        f"audit verify of {plan.audit_entries:,} entries: {verify['verify_per_s']:,.0f} entries/s in "
        f"{verify['verify_jobs']:.0f} processes, {verify['verify_one_process_per_s']:,.0f} in one (SHA-256 alone, "
        f"in one: {verify['baseline_sha256_per_s']:,.0f}/s); `audit list` of one person's entries with "
        f"one agency reads {verify['list_filtered_per_s']:,.0f} entries/s ({verify['listed']:,} found)"
    )
    figures["audit"] = verify
    figures["targets"] = {}
    for target, value, met in targets.check(figures):
        bound = "at most" if target.at_most else "at least"
        verdict = "met" if met else "NOT met"
        say(f"target {target.name}: {target.show(value)} ({bound} {target.show(target.limit)}) {verdict}")
        figures["targets"][target.name] = {"value": value, "limit": target.limit, "met": met}
    ratio = float(figures["throughput_ratio"])
    alone["end"] = lone.measure(plan.lone_calls)
    say(_alone(alone["end"]))
    figures["lone_steps"] = alone
    speed["end"] = python_speed_us()
    figures["python_speed_us"] = speed
    say(f"machine: sum(range(1000)) takes {speed['end']:.1f} µs (at the start {speed['start']:.1f})")
    say(f"took {time.perf_counter() - started:.0f} s")
    if json_out is not None:
        json_out.write_text(json.dumps(figures, default=lambda r: r.row(), indent=2))
    say(f"ratio {ratio:.3f}")
    return ratio


def main(quick: bool, json_out: Path | None = None) -> int:
    run(QUICK if quick else FULL, json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main("--quick" in sys.argv))
