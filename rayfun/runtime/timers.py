"""Durable delayed messages (``send_after``) of one shard, fired in time order, cancellable by token.

Timers live in the *sender's* shard (as in StateFun), keyed by the sending address; a cancellation token is
scoped to that address. A token may not be reused while its message is pending (an error, as in StateFun);
cancelling a token that is unknown or already delivered does nothing.

``TimerService`` is the store (a heap); ``Timers`` is the shard's timer stage around it: one event-loop
timer armed at the earliest due time, and what fires routed like any other message.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import RayfunError

if TYPE_CHECKING:
    from .services import ShardServices

__all__ = ["MAX_DUE_MS", "InvalidEffect", "Timer", "TimerService", "Timers", "TokenInUseError"]

MAX_DUE_MS = 2**63 - 1  # timers are stored as 64-bit milliseconds since the epoch


class InvalidEffect(RayfunError, ValueError):
    """An invocation asked for something that can never be applied or stored (the whole invocation is
    refused and its message dead-lettered: retrying it would give the same answer)."""


class TokenInUseError(InvalidEffect):
    """A cancellation token was reused while the delayed message it names is still pending."""


class Timer(NamedTuple):
    due_ms: int
    seq: int
    sender_typename: str
    sender_id: str
    token: str
    target_typename: str
    target_id: str
    value_typename: str
    payload: Any


class TimerService:
    """A min-heap of pending timers with lazy deletion for cancellations."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int]] = []
        self._timers: dict[int, Timer] = {}
        self._tokens: dict[tuple[str, str, str], int] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._timers)

    def token_pending(self, sender_typename: str, sender_id: str, token: str) -> bool:
        return (sender_typename, sender_id, token) in self._tokens

    def add(
        self,
        due_ms: int,
        sender_typename: str,
        sender_id: str,
        token: str,
        target_typename: str,
        target_id: str,
        value_typename: str,
        payload: Any,
        seq: int | None = None,
    ) -> Timer:
        if token and (sender_typename, sender_id, token) in self._tokens:
            raise TokenInUseError(f"cancellation token {token!r} of {sender_typename}/{sender_id} is still pending")
        if seq is None:
            seq = next(self._seq)
        else:  # restored timer: keep its sequence, and never hand it out again
            self._seq = itertools.count(max(seq + 1, next(self._seq)))
        timer = Timer(
            due_ms, seq, sender_typename, sender_id, token, target_typename, target_id, value_typename, payload
        )
        self._timers[seq] = timer
        if token:
            self._tokens[(sender_typename, sender_id, token)] = seq
        heapq.heappush(self._heap, (due_ms, seq))
        return timer

    def cancel(self, sender_typename: str, sender_id: str, token: str) -> bool:
        seq = self._tokens.pop((sender_typename, sender_id, token), None)
        if seq is None:
            return False
        self._timers.pop(seq, None)
        return True

    def next_due(self) -> int | None:
        heap = self._heap
        while heap and heap[0][1] not in self._timers:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, now_ms: int) -> list[Timer]:
        """Remove and return every timer due at ``now_ms``, in (due time, creation) order."""
        fired: list[Timer] = []
        heap, timers = self._heap, self._timers
        while heap and heap[0][0] <= now_ms:
            _, seq = heapq.heappop(heap)
            timer = timers.pop(seq, None)
            if timer is None:
                continue
            if timer.token:
                self._tokens.pop((timer.sender_typename, timer.sender_id, timer.token), None)
            fired.append(timer)
        return fired

    def all(self) -> list[Timer]:
        """Every pending timer (for checkpoints), in firing order."""
        return sorted(self._timers.values())

    def clear(self) -> None:
        self._heap.clear()
        self._timers.clear()
        self._tokens.clear()


class Timers:
    """The shard's timer stage: the pending timers (``service``, which the effects stage adds to and
    cancels in directly, per effect) and the one event-loop timer armed at the earliest due time."""

    def __init__(self, services: ShardServices, route: Callable[..., None], counters: dict[str, Any]) -> None:
        self.services = services
        self.route = route  # where fired messages go (the outbox's route)
        self.counters = counters  # the shard's: "timers_fired"
        self.service = TimerService()
        self._handle: asyncio.TimerHandle | None = None
        self._at: int | None = None  # when the armed timer fires

    def __len__(self) -> int:
        return len(self.service)

    def all(self) -> list[Timer]:
        return self.service.all()

    def schedule(self) -> None:
        """Arm the event-loop timer for the earliest due time, unless one is armed for no later."""
        due = self.service.next_due()
        if due is None or (self._at is not None and self._at <= due):
            return
        if self._handle is not None:
            self._handle.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, (due - self.services.now_ms()) / 1000.0)
        self._at = due
        self._handle = loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._at = None
        fired = self.fire_due(self.services.now_ms())
        self.schedule()
        if fired:
            self.services.wake()

    def fire_due(self, now_ms: int) -> int:
        """Route every timer due at ``now_ms`` (in due order, each with its sender as the caller); returns how
        many fired. The event-loop timer calls this; ``rayfun.testing`` calls it on its virtual clock."""
        fired = self.service.pop_due(now_ms)
        route = self.route
        for t in fired:
            route(t.target_typename, t.target_id, (t.sender_typename, t.sender_id), t.value_typename, t.payload)
        self.counters["timers_fired"] += len(fired)
        return len(fired)

    def load(self, rows: list) -> None:
        """Timers of a checkpoint (``Timer`` rows), keeping their sequence numbers, then arm."""
        add = self.service.add
        for t in rows:
            add(t[0], t[2], t[3], t[4], t[5], t[6], t[7], t[8], seq=t[1])
        self.schedule()

    def reset(self) -> None:
        """A rollback: no timers, none armed (the store is cleared in place: the effects stage holds it)."""
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._at = None
        self.service.clear()
