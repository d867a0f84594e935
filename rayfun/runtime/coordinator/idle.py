"""Idle detection, as pure functions of the shards' statuses (no Ray, no clock: unit-testable).

The application is idle when nothing is queued, running or in flight anywhere (and, if asked, no delayed
message is pending). Each shard only knows its own counters, so the coordinator compares them across shards:
every message a shard sent on a channel must have been received at the other end, and every batch the
driver sent must have arrived. Counters read one shard at a time are not a consistent cut, though: a message
can be received after its receiver was asked and sent before its sender was. So idleness is only declared
when two looks in a row see the same counters (``IdleWatch``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ...constants import IDLE_POLL_FIRST_S, IDLE_POLL_MAX_S
from ..status import DRIVER, ShardStatus

__all__ = ["IdleWatch", "Verdict", "progress_key", "why_busy"]


@dataclass(frozen=True)
class Verdict:
    """Idle or not; ``reason`` says why not, for a person (a test's failure message, a log line)."""

    idle: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.idle


def why_busy(
    statuses: Sequence[ShardStatus | None], generation: int, driver_sent: Sequence[int], timers: bool = True
) -> str | None:
    """Why the application is not quiet in this one look, or None if it is. ``statuses[i]`` is shard i's
    status (None: it did not answer); ``driver_sent[i]`` counts the driver's messages sent to shard i in
    this generation; ``timers``: pending delayed messages count as work."""
    if len(statuses) != len(driver_sent):
        return f"{len(statuses)} statuses for {len(driver_sent)} shards"
    for i, st in enumerate(statuses):
        if st is None:
            return f"shard {i} has not reported"
        if st.generation != generation:
            return f"shard {i} is in generation {st.generation}, not {generation} (a rollback is under way)"
        if st.failure:
            return f"shard {i} failed: {st.failure}"
        for name in ("backlog", "in_progress", "early", "outstanding"):
            if getattr(st, name):
                return f"shard {i}: {name} {getattr(st, name)}"
        if st.sources_busy:
            return f"shard {i}: a source partition has data to read"
        if timers and st.timers:
            return f"shard {i}: {st.timers} timer(s) pending"
    present = [st for st in statuses if st is not None]  # all of them: a None returned above
    for j, st in enumerate(present):  # every channel into shard j: what was sent must have arrived
        expected = {i: other.sent[j] for i, other in enumerate(present) if other.sent[j]}
        if driver_sent[j]:
            expected[DRIVER] = driver_sent[j]
        received = {k: v for k, v in st.received.items() if v}
        if received != expected:
            return f"shard {j}: received {_channels(received)}, sent to it {_channels(expected)}"
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
        reason = why_busy(statuses, generation, driver_sent, timers)
        if reason is not None:
            self._previous = None
            return Verdict(False, reason)
        key = progress_key([st for st in statuses if st is not None])  # all of them: quiet means all reported
        if key == self._previous:
            return Verdict(True)
        self._previous = key
        return Verdict(False, "quiet, but the counters moved since the last look")
