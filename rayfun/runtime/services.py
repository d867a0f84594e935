"""What a shard's stages and runners may ask of the shard: one small protocol, plus the row layouts.

The stages (channels, ingress, outbox, effects, timers, egress, snapshot) each own their state and never
call each other: the shard core wires them, handing what one produces to the next. What a stage needs of
the shard as a whole (report a dead letter, ask for a rollback, keep a task alive until a rollback
cancels it, wake the processing loop, read the clock) goes through ``ShardServices``, so a stage's unit
test passes a small fake of it instead of a shard. The runners (``runners/``) get a little more:
``RunnerServices`` adds committing an invocation's effects and the backpressure count of held messages.
"""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple, Protocol

from ..messages import EgressMessage
from .metrics import FunctionCounts
from .registry import TypeRegistry

__all__ = ["EgressRow", "Row", "RunnerServices", "ShardServices"]


class Row(NamedTuple):
    """A message as it travels between shards, waits in a mailbox, and is stored in a checkpoint.

    This names the layout; the per-message paths build and unpack plain tuples of it (``(ttype, tid,
    caller, vtype, payload)``): a NamedTuple costs several times more to build, and would pickle by class
    reference, which changes the wire format. Checkpoints store the same five fields."""

    target_typename: str
    target_id: str
    caller: tuple[str, str] | None
    value_typename: str
    payload: Any


class EgressRow(NamedTuple):
    """An exactly-once egress record held for its checkpoint (the layout of a checkpoint's egress file).

    As for ``Row``, the cut builds plain tuples of this layout; a restore reads them by position."""

    shard: int  # the shard that emitted it: its sink partition dedups the epoch
    epoch: int
    position: int  # within the epoch, so a republished epoch keeps its order
    egress_id: str
    value_typename: str
    payload: Any


class ShardServices(Protocol):
    """What any stage may ask of its shard."""

    def dead_letter(self, reason: str, **fields: Any) -> None:
        """Publish a record to the dead-letter egress (and count and log it)."""

    def fail(self, reason: str) -> bool:
        """Ask the coordinator for a rollback to the last checkpoint; True if this is the first reason."""

    def track_task(self, task: asyncio.Task) -> None:
        """Keep ``task`` until it ends; a rollback cancels it."""

    def wake(self) -> None:
        """There is work for the processing loop."""

    def now_ms(self) -> int:
        """Wall-clock milliseconds (what timers and state expiry compare against)."""


class RunnerServices(ShardServices, Protocol):
    """What a function runner (embedded or remote) may ask of its shard, on top of ``ShardServices``."""

    registry: TypeRegistry
    epoch_token: object  # replaced by every rollback: an invocation that began before one is discarded

    def apply_effects(
        self,
        typename: str,
        id: str,
        sends: list | None,
        timers: list | None,
        egress: list[EgressMessage] | None,
        now_ms: int,
        strict: bool = True,
    ) -> None:
        """Commit an invocation's sends, delayed messages and egress (raises InvalidEffect: none applied)."""

    def invocation_failed(
        self, typename: str, id: str, caller, vtype: str, payload: Any, exc: BaseException, endpoint: str | None = None
    ) -> None:
        """Dead-letter a message whose invocation raised."""

    def park(self, n: int = 1) -> None:
        """The runner holds ``n`` more messages until their invocations end (they count as backlog)."""

    def unpark(self, n: int = 1) -> None:
        """``n`` held messages are done."""

    def hold_remote(self, n: int = 1) -> None:
        """A remote function holds ``n`` more messages (in flight or queued; backlog, with a bound of its own)."""

    def release_remote(self, n: int = 1) -> None:
        """``n`` messages a remote function held are done."""

    def layout_changed(self, typename: str) -> None:
        """A remote function registered new state specs: its checkpoint layout is stale."""

    def counts_of(self, typename: str) -> FunctionCounts:
        """What this shard counts for ``typename`` (the runner adds its invocations and their time)."""
