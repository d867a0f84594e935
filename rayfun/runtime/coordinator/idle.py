"""Idle detection: pure functions of the shards' statuses, and the loop that looks until idle (given how to
look and how to wait for the shards as callables: no Ray here, unit-testable).

The application is idle when nothing is queued, running or in flight anywhere (and, if asked, no delayed
message is pending). Each shard only knows its own counters, so the coordinator compares them across shards:
every message a shard sent on a channel must have been received at the other end, and every batch the
driver sent must have arrived. Counters read one shard at a time are not a consistent cut, though: a message
can be received after its receiver was asked and sent before its sender was. So idleness is only declared
when two looks in a row see the same counters (``IdleWatch``).

Between looks the coordinator waits for the shards to say their loops have nothing left to do
(``ShardCore.until_quiet``) when the last look saw work under way, so the look that ends a wait comes as the
work ends, not up to a poll's length later; a look that says "not idle" for another reason (a timer pending,
a failure, counters still moving) waits the poll's pause instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ...constants import IDLE_POLL_FIRST_S, IDLE_POLL_MAX_S
from ..status import DRIVER, ShardStatus

__all__ = ["IdleWatch", "Verdict", "progress_key", "wait_until_idle", "why_busy"]


@dataclass(frozen=True)
class Verdict:
    """Idle or not; ``reason`` says why not, for a person (a test's failure message, a log line)."""

    idle: bool
    reason: str = ""
    working: bool = False  # not idle because work is under way (queued, running, in flight): it will end

    def __bool__(self) -> bool:
        return self.idle


def why_busy(
    statuses: Sequence[ShardStatus | None], generation: int, driver_sent: Sequence[int], timers: bool = True
) -> str | None:
    """Why the application is not quiet in this one look, or None if it is. ``statuses[i]`` is shard i's
    status (None: it did not answer); ``driver_sent[i]`` counts the driver's messages sent to shard i in
    this generation; ``timers``: pending delayed messages count as work."""
    busy = _why_busy(statuses, generation, driver_sent, timers)
    return None if busy is None else busy[0]


def _why_busy(
    statuses: Sequence[ShardStatus | None], generation: int, driver_sent: Sequence[int], timers: bool
) -> tuple[str, bool] | None:
    """``why_busy``'s reason, and whether it is work under way (see ``Verdict.working``)."""
    if len(statuses) != len(driver_sent):
        return f"{len(statuses)} statuses for {len(driver_sent)} shards", False
    for i, st in enumerate(statuses):
        if st is None:
            return f"shard {i} has not reported", False
        if st.generation != generation:
            return f"shard {i} is in generation {st.generation}, not {generation} (a rollback is under way)", False
        if st.failure:
            return f"shard {i} failed: {st.failure}", False
        for name in ("backlog", "in_progress", "early", "outstanding"):
            if getattr(st, name):
                return f"shard {i}: {name} {getattr(st, name)}", True
        if st.sources_busy:
            return f"shard {i}: a source partition has data to read", True
        if timers and st.timers:
            return f"shard {i}: {st.timers} timer(s) pending", False
    present = [st for st in statuses if st is not None]  # all of them: a None returned above
    for j, st in enumerate(present):  # every channel into shard j: what was sent must have arrived
        expected = {i: other.sent[j] for i, other in enumerate(present) if other.sent[j]}
        if driver_sent[j]:
            expected[DRIVER] = driver_sent[j]
        received = {k: v for k, v in st.received.items() if v}
        if received != expected:
            return f"shard {j}: received {_channels(received)}, sent to it {_channels(expected)}", True
    return None


def _channels(counts: dict[int, int]) -> str:
    return "{" + ", ".join(f"{'driver' if k == DRIVER else k}: {v}" for k, v in sorted(counts.items())) + "}"


def progress_key(statuses: Sequence[ShardStatus]) -> list[tuple]:
    """What must not move between two quiet looks for the application to be idle."""
    return [(st.generation, st.processed, st.sent, sorted(st.received.items())) for st in statuses]


class IdleWatch:
    """Successive looks at the shards; idle once two quiet looks in a row show the same counters."""

    def __init__(self) -> None:
        self._previous: list[tuple] | None = None
        self._backoff = IDLE_POLL_FIRST_S  # the next pause while busy
        self._was_quiet = False

    def pause(self) -> float:
        """Seconds to wait before the next look: longer the longer the shards stay busy (each look asks
        every shard; ``IDLE_POLL_FIRST_S`` doubling up to ``IDLE_POLL_MAX_S``), but the first quiet look is
        confirmed at once (waiting up to the longest pause for it and as long again to confirm it made a
        1 s run's ``app.wait`` ~10 % longer). Quiet looks whose counters keep moving (a trickle) back off."""
        pause, self._backoff = self._backoff, min(self._backoff * 2, IDLE_POLL_MAX_S)
        quiet = self._previous is not None
        first_quiet, self._was_quiet = quiet and not self._was_quiet, quiet
        return IDLE_POLL_FIRST_S if first_quiet else pause

    def look(
        self,
        statuses: Sequence[ShardStatus | None],
        generation: int,
        driver_sent: Sequence[int],
        timers: bool = True,
        recovering: bool = False,
    ) -> Verdict:
        """One look. During a recovery the shards are not asked (nor is the last quiet look forgotten: the
        rollback bumps the generation, which changes the counters anyway)."""
        if recovering:
            return Verdict(False, "a recovery is under way")
        busy = _why_busy(statuses, generation, driver_sent, timers)
        if busy is not None:
            self._previous = None
            return Verdict(False, *busy)
        key = progress_key([st for st in statuses if st is not None])  # all of them: quiet means all reported
        if key == self._previous:
            return Verdict(True)
        self._previous = key
        return Verdict(False, "quiet, but the counters moved since the last look")


async def wait_until_idle(
    look: Callable[[IdleWatch], Awaitable[Verdict]],
    shards_quiet: Callable[[float], Awaitable[bool]],
    timeout: float | None,
) -> Verdict:
    """Look (``look(watch)``: one look at every shard) until idle or ``timeout`` seconds passed; the last
    verdict. Between looks, while work is under way, ``shards_quiet(pause)`` waits up to the pause for
    every shard's loop to have nothing left to do (True if they all did): the next look comes as the work
    ends. A wait that such a signal ended is followed by a plain pause, so shards that are quiet while
    the application is not idle (an async function running, a failure) cannot make this loop spin."""
    deadline = None if timeout is None else time.monotonic() + timeout
    watch = IdleWatch()
    woken = False  # the last wait ended because every shard went quiet
    while True:
        verdict = await look(watch)
        if verdict.idle or (deadline is not None and time.monotonic() > deadline):
            return verdict
        pause = watch.pause()
        if verdict.working and not woken:
            woken = await shards_quiet(pause)
        else:
            woken = False
            await asyncio.sleep(pause)
