"""Inbound channels: each sender's batches and checkpoint markers, released in sequence-number order.

Every channel (sender shard -> this shard, and the driver's) carries sequence numbers: Ray does not keep
call order for async actors, so what arrives early waits here until the numbers before it have come. The
same numbers order checkpoint markers among the batches (Chandy-Lamport needs FIFO channels): a marker is
an ``int`` item, a batch a list of rows. What to do with a released item (mailbox, marker, channel state of
a checkpoint in progress) is the shard core's business.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DRIVER", "Channel", "Channels"]

from .status import DRIVER

_NOTHING: tuple = ()


class Channel:
    """One sender's position: the next sequence number due, and what came ahead of it."""

    __slots__ = ("early", "expected", "received")

    def __init__(self, expected: int = 0) -> None:
        self.expected = expected
        self.early: dict[int, Any] = {}
        self.received = 0  # messages released from this channel (the coordinator compares with "sent")


class Channels:
    """Every inbound channel of a shard, created on a sender's first item."""

    def __init__(self) -> None:
        self._channels: dict[int, Channel] = {}

    def take(self, sender: int, seq: int, item: Any) -> tuple | list:
        """Item ``seq`` of ``sender`` arrived: return the items now in order (none if it came early).

        Per batch, not per message: the list it returns is the one allocation a delivery adds."""
        channel = self._channels.get(sender)
        if channel is None:
            channel = self._channels[sender] = Channel()
        if seq != channel.expected:
            channel.early[seq] = item
            return _NOTHING
        ready = [item]
        expected = seq + 1
        early = channel.early
        while expected in early:
            ready.append(early.pop(expected))
            expected += 1
        channel.expected = expected
        received = 0
        for x in ready:
            if type(x) is not int:
                received += len(x)
        channel.received += received
        return ready

    def expected(self, sender: int) -> int:
        """The next sequence number due from ``sender`` (what a checkpoint records of the driver's channel)."""
        channel = self._channels.get(sender)
        return channel.expected if channel else 0

    def received(self) -> dict[int, int]:
        return {s: c.received for s, c in self._channels.items()}

    def early(self) -> int:
        """Items waiting for an earlier one (the coordinator's idleness check wants none)."""
        return sum(len(c.early) for c in self._channels.values())

    def reset(self, driver_from: int = 0) -> None:
        """A rollback: every channel starts afresh, the driver's at ``driver_from`` (what the checkpoint had
        read of it: the coordinator re-sends the rest under the same numbers)."""
        self._channels.clear()
        if driver_from:
            self._channels[DRIVER] = Channel(driver_from)
