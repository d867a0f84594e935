"""The driver's channel: messages the driver sends with ``app.send``, through the coordinator, so that a
rollback re-sends them instead of losing them.

Driver messages carry one sequence number per destination shard for the coordinator's whole life, never
renumbered: a checkpoint records how far each shard had read (its part's ``driver_seq``), and a rollback
re-sends the logged batches from there, however many rollbacks to the same checkpoint come in a row. The
numbering belongs to this coordinator (``incarnation``): a checkpoint an earlier coordinator wrote read none
of this one's messages.

Several drivers may send (the one that started the application and any that attached with
``rayfun.connect``): each numbers its own calls, and the channel keeps each driver's calls in order.

After a rescale (``rebase``) the channel starts a new numbering for the new shard count; what the rescale's
checkpoint had not read is routed anew and sent first. (A fall back past that checkpoint, to one from before
the rescale, would not re-send the driver's messages sent before it.)

The log is pruned only when a checkpoint completes, down to what every retained checkpoint has read (a fall
back past a damaged checkpoint re-sends what the older one did not cover); a restore never prunes it, since
an older checkpoint may be restored next.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Callable, Sequence

__all__ = ["DriverChannel"]

#: deliver(dest, seq, rows): hand batch ``seq`` of the driver's channel to shard ``dest`` (fire and forget)
Deliver = Callable[[int, int, list], None]
#: route(typename, id): the shard that owns an address, in the current shard count
Route = Callable[[str, str], int]


class DriverChannel:
    """Orders the driver's batches, numbers them per destination and keeps them until checkpoints cover them."""

    def __init__(self, shards: int, deliver: Deliver, *, logged: bool, retain: int = 3) -> None:
        self._deliver = deliver
        self._logged = logged  # without checkpoints nothing is ever replayed: keep no log
        self.incarnation = uuid.uuid4().hex[:16]  # this coordinator's driver-channel numbering
        self._seq = [0] * shards  # next sequence number per destination, never renumbered
        self.sent = [0] * shards  # messages sent to each shard in this generation (for idle detection)
        self._early: dict[str, dict[int, tuple[dict[int, list], int]]] = {}  # per driver: calls that overtook
        self._next_call: dict[str, int] = {}  # per driver: the number of its next call to forward
        self.log: list[list[tuple[int, list]]] = [[] for _ in range(shards)]
        # how far each retained checkpoint had read the driver's channel, oldest first: the log keeps what
        # the oldest did not read, so a fall back past a damaged checkpoint re-sends what it covered
        self._covers: deque[list[int]] = deque(maxlen=retain)
        self.lock = asyncio.Lock()  # sends, and a restore's replay: none interleave

    @property
    def shards(self) -> int:
        return len(self._seq)

    async def send(self, driver: str, call_seq: int, rows_by_shard: dict[int, list], shards: int, route: Route) -> None:
        """Forward messages from ``driver``, keeping them until a checkpoint covers them. ``call_seq``
        numbers that driver's calls: Ray does not keep their order for an async actor, so this does.
        ``shards`` is the shard count the driver routed for: after a rescale its rows are routed anew."""
        early = self._early.setdefault(driver, {})
        early[call_seq] = (rows_by_shard, shards)
        async with self.lock:
            next_call = self._next_call.get(driver, 0)
            while next_call in early:
                rows, routed_for = early.pop(next_call)
                self._forward(rows if routed_for == self.shards else _reroute(rows.values(), route))
                next_call += 1
            self._next_call[driver] = next_call

    def _forward(self, rows_by_shard: dict[int, list]) -> None:
        for dest, rows in rows_by_shard.items():
            seq = self._seq[dest]
            self._seq[dest] = seq + 1
            if self._logged:
                self.log[dest].append((seq, rows))
            self._send_one(dest, seq, rows)

    def _send_one(self, dest: int, seq: int, rows: list) -> None:
        self.sent[dest] += len(rows)
        self._deliver(dest, seq, rows)

    def covered(self, driver_seqs: Sequence[int]) -> None:
        """A checkpoint completed that had read ``driver_seqs[dest]`` batches of each shard's channel: drop
        from the log what every retained checkpoint has read."""
        self._covers.append(list(driver_seqs))
        for dest in range(len(self.log)):  # keep what some checkpoint we may restore has not read
            covered = min(cover[dest] for cover in self._covers)
            self.log[dest] = [(seq, rows) for seq, rows in self.log[dest] if seq >= covered]

    def driver_from(self, checkpoint) -> list[int]:
        """Where each shard's channel resumes after restoring ``checkpoint`` (None: the start): what the
        checkpoint had read, in this coordinator's numbering, else 0."""
        driver_from = [0] * len(self.log)
        if checkpoint is not None and checkpoint.app.get("coordinator") == self.incarnation:
            for entry in checkpoint.shards:
                driver_from[entry.index] = entry.meta.get("driver_seq", 0)
        return driver_from

    def rebase(self, checkpoint, shards: int, route: Route) -> None:
        """A rescale to ``shards``, restoring ``checkpoint`` (the caller holds the lock): a new numbering for
        the new shard count, with what the checkpoint had not read routed anew as its first batches (the
        restore's ``replay`` then sends them)."""
        driver_from = self.driver_from(checkpoint)
        unread = [rows for dest, log in enumerate(self.log) for seq, rows in log if seq >= driver_from[dest]]
        self.incarnation = uuid.uuid4().hex[:16]
        self._seq = [0] * shards
        self.sent = [0] * shards
        self.log = [[] for _ in range(shards)]
        self._covers.clear()
        for dest, rows in _reroute(unread, route).items():
            self._seq[dest] = 1
            self.log[dest].append((0, rows))

    def replay(self, driver_from: Sequence[int]) -> None:
        """After a restore (a new generation): re-send what the checkpoint had not read, under the same
        numbers. The log itself keeps all (an older checkpoint may be restored next)."""
        self.sent = [0] * len(self.log)
        for dest in range(len(self.log)):
            for seq, rows in self.log[dest]:
                if seq >= driver_from[dest]:
                    self._send_one(dest, seq, rows)


def _reroute(batches, route: Route) -> dict[int, list]:
    """Rows ``(target type, target id, ...)`` grouped by the shard that owns them now."""
    out: dict[int, list] = {}
    for rows in batches:
        for row in rows:
            out.setdefault(route(row[0], row[1]), []).append(row)
    return out
