"""Ingress: the mailbox the processing loop drains, the source partitions that feed it, and backpressure.

Backpressure, by the mailbox's marks: a delivery from a peer returns only once the mailbox holds no more
than ``high`` messages (``wait_for_room``), and is let go once it is back under ``low``; sources are read
only under ``low``. "Held" counts the mailbox and the messages async functions park until their
invocations end (running and queued per address), or a slow async function would let the sources read
without bound. What remote functions hold (in flight and queued per address) has a bound of its own,
``max_remote_held``: what waits behind a remote invocation is its next batch, and under the mailbox's low
mark a remote function over 1,000 addresses got batches of ~25 messages, and the function's server spent
a fifth of its time on HTTP (StateFun's own bound is per address: ``max_num_batch_requests``). Processing
itself never waits on a peer, so cyclic messaging cannot deadlock. The other reasons not to read (peers that have not accepted our
batches, egress held for a checkpoint, a saturated remote function) belong to other stages: the shard
core asks them and this stage together.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from ..io import Source

log = logging.getLogger("rayfun")

__all__ = ["Ingress", "SourceSlot"]


class SourceSlot:
    """One open source partition and where it stands."""

    __slots__ = ("exhausted", "idle", "name", "partition", "source_id", "source_index")

    def __init__(self, source_id: str, name: str, partition) -> None:
        self.source_id, self.name, self.partition = source_id, name, partition
        self.source_index = 0
        self.exhausted = False
        self.idle = False  # the last poll returned nothing


class Ingress:
    """The mailbox (batches of rows with a start offset), its held count, and the source partitions.

    ``mailbox``, ``backlog``, ``parked`` and ``remote_held`` are read and written by the shard's processing
    loop directly (once per chunk, not per message): they are this stage's state, exposed for the hot path."""

    def __init__(
        self,
        sources: list[Source],
        high: int,
        low: int,
        counters: dict[str, Any],
        max_remote_held: int | None = None,
    ) -> None:
        self.sources_config = sources
        self.high = high
        self.low = low
        self.max_remote_held = low if max_remote_held is None else max_remote_held
        self.counters = counters  # the shard's: "ingested"
        self.mailbox: deque = deque()
        self.backlog = 0  # messages in the mailbox
        self.parked = 0  # messages async functions hold until their invocations end
        self.remote_held = 0  # messages remote functions hold (in flight and queued)
        self.sources: list[SourceSlot] = []
        self.paused = False  # a savepoint or rescale is under way: no source is read (a rollback unpauses)
        # checkpoint id -> (slot, position) of each partition at that checkpoint's cut, until it completes
        self._cuts: dict[int, list[tuple[SourceSlot, Any]]] = {}
        # set while deliveries need not wait; made by start(), in the event loop, which comes before any
        # delivery (declared, not assigned: the checks on every release stay a plain attribute read)
        self._room: asyncio.Event

    def start(self) -> None:
        """Create what needs the event loop (once, before the first delivery)."""
        self._room = asyncio.Event()
        self._room.set()

    # -- the mailbox --------------------------------------------------------------------------------------

    def accept(self, batch: list) -> None:
        """A batch of rows for this shard's functions (from a peer, the driver, itself or a checkpoint)."""
        n = len(batch)
        if n:
            self.mailbox.append((batch, 0))
            self.backlog += n

    def park(self, n: int = 1) -> None:
        self.parked += n

    def unpark(self, n: int = 1) -> None:
        """``n`` parked messages are done: room for deliveries and sources again once under the marks."""
        self.parked -= n
        self.release()

    def hold_remote(self, n: int = 1) -> None:
        self.remote_held += n

    def release_remote(self, n: int = 1) -> None:
        """``n`` messages a remote function held are done."""
        self.remote_held -= n
        self.release()

    def held(self) -> int:
        """Every message accepted and not yet done (the ``backlog`` a shard reports)."""
        return self.backlog + self.parked + self.remote_held

    def has_room(self) -> bool:
        """The shard holds no more than ``low`` and its remote functions no more than ``max_remote_held``:
        deliveries go on and sources may be read."""
        return self.backlog + self.parked <= self.low and self.remote_held <= self.max_remote_held

    def release(self) -> None:
        """The one place that lets waiting deliveries go, once the shard ``has_room``."""
        if self.has_room() and not self._room.is_set():
            self._room.set()

    def over_high(self) -> bool:
        return self.backlog + self.parked > self.high or self.remote_held > self.max_remote_held

    async def wait_for_room(self) -> None:
        """Hold a delivery (and so its sender's flush) until the shard is back under ``low``."""
        self._room.clear()
        await self._room.wait()

    def let_go(self) -> None:
        """After a rollback: deliveries of the old generation that waited for room may return."""
        self._room.set()

    def pending(self) -> list:
        """Every row in the mailbox not yet processed (a checkpoint's unprocessed messages)."""
        out: list = []
        for batch, start in self.mailbox:
            out.extend(batch[start:] if start else batch)
        return out

    # -- sources ------------------------------------------------------------------------------------------

    def open(self, source_partitions: list[tuple[int, str, Any]]) -> None:
        """Open the assigned partitions ``(source index, partition name, resume state)``."""
        for source_index, name, resume_state in source_partitions:
            source = self.sources_config[source_index]
            slot = SourceSlot(source.id, name, source.build_partition(name, resume_state))
            slot.source_index = source_index
            self.sources.append(slot)

    def may_read(self) -> bool:
        """This stage's part of whether to read sources: there are some, and the shard ``has_room``."""
        return bool(self.sources) and not self.paused and self.has_room()

    def read(self) -> list[tuple[str, list]]:
        """Poll every partition once: ``(source id, batch)`` for each that returned something."""
        got = []
        for slot in self.sources:
            if slot.exhausted:
                continue
            partition = slot.partition
            try:
                batch = partition.next_rows() if partition.next_rows is not None else partition.next_batch()
            except Exception as exc:
                log.error("source %s partition %s failed: %s", slot.source_id, slot.name, exc)
                raise
            if batch is None:
                slot.exhausted = True
                continue
            slot.idle = not batch
            if batch:
                self.counters["ingested"] += len(batch)
                got.append((slot.source_id, batch))
        return got

    def positions(self, n: int | None = None) -> list[list]:
        """Every partition's resume position (a checkpoint's ``sources``); with ``n``, remembered as checkpoint
        ``n``'s cut, so that ``checkpoint_complete(n)`` can tell each partition where it stood."""
        rows = [[slot.source_index, slot.name, slot.partition.snapshot(), slot.exhausted] for slot in self.sources]
        if n is not None:
            self._cuts[n] = [(slot, row[2]) for slot, row in zip(self.sources, rows)]
        return rows

    def checkpoint_complete(self, n: int) -> None:
        """Checkpoint ``n`` is durable: each partition hears its position at the newest cut up to ``n`` (see
        ``SourcePartition.checkpoint_complete``). A partition's failure here is logged, never raised: the
        checkpoint is complete whatever the partition makes of it."""
        done = [k for k in self._cuts if k <= n]
        if not done:
            return
        cut = self._cuts[max(done)]
        for k in done:
            del self._cuts[k]
        for slot, position in cut:
            try:
                slot.partition.checkpoint_complete(position)
            except Exception:
                log.exception("source %s partition %s: checkpoint_complete failed", slot.source_id, slot.name)

    def lags(self) -> dict[str, int]:
        """``source/partition -> records not read yet`` for the partitions that know (metrics)."""
        out = {}
        for slot in self.sources:
            try:
                lag = slot.partition.lag()
            except Exception:  # a metric must never fail the shard
                lag = None
            if lag is not None:
                out[f"{slot.source_id}/{slot.name}"] = lag
        return out

    def polling(self) -> bool:
        """Some partition may still return records (the loop then polls instead of sleeping)."""
        return any(not s.exhausted for s in self.sources)

    def busy(self) -> bool:
        """A partition has data to read (a paused source has none to read now)."""
        return not self.paused and any(not s.exhausted and not s.idle for s in self.sources)

    def exhausted(self) -> bool:
        return all(s.exhausted for s in self.sources)

    def close(self) -> None:
        for slot in self.sources:
            try:
                slot.partition.close()
            except Exception:
                log.exception("closing source partition %s/%s", slot.source_id, slot.name)

    def reset(self) -> None:
        """A rollback (after ``close``): no messages, none held, no partitions (they reopen at a position)."""
        self.mailbox.clear()
        self.backlog = 0
        self.parked = 0
        self.remote_held = 0
        self.sources = []
        self._cuts.clear()
        self.paused = False  # the coordinator pauses the restored sources again if it must
