"""Egress: records emitted by functions, handed to their sinks, at least once or exactly once.

- At-least-once sinks (and every sink without checkpoints) get their records at the next flush of the
  processing loop (``publish_now``).
- Exactly-once sinks get a checkpoint epoch's records only once that checkpoint is complete
  (``complete``): until then they are held (``epoch``, then ``unpublished`` from the cut on) and stored in
  the checkpoint, so a rollback republishes them (``republish``) and the sink dedups per epoch.
- ``_publish`` is the one publish path: where a sink's refusal or failure is handled.
- An undeclared egress id is kept in memory for ``app.egress()`` (``_sink``: the one place that builds
  the default sink), but only while the application declares no sink at all: once it declares its egresses,
  a record to any other id is a dead letter naming the id and the declared ones (``emit``), so that a typo
  in an egress id is seen instead of piling up in memory.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..io import DEAD_LETTER_EGRESS, DeliverySemantic, Sink
from ..messages import EgressMessage
from .deadletters import dead_letter_record
from .services import ShardServices

log = logging.getLogger("rayfun")

__all__ = ["Egress"]


class Egress:
    """The sink partitions of one shard and the records waiting for them."""

    def __init__(
        self,
        services: ShardServices,
        sinks: list[Sink],
        index: int,
        shards: int,
        *,
        checkpoints: bool,
        collector: Any = None,
        run_id: str = "",
        counters: dict[str, Any],
    ) -> None:
        self.services = services
        self.index = index
        self.shards = shards
        self.checkpoints = checkpoints  # without checkpoints there are no epochs: everything publishes now
        self.collector = collector  # the in-memory egress collector actor (see egress_collector.py)
        self.run_id = run_id  # the application's id across restores (see _sink)
        self.counters = counters  # the shard's: "egress"
        self._specs = {s.id: s for s in sinks}
        #: the egress ids records may go to, when sinks are declared (None: any id, kept in memory if undeclared)
        self.declared: frozenset[str] | None = frozenset({*self._specs, DEAD_LETTER_EGRESS}) if sinks else None
        self._warned: set[str] = set()  # undeclared ids already logged (one WARNING each)
        self._sinks: dict[str, tuple[Sink, Any]] = {}
        #: the sink call under way (the shard's health check names it when the call blocks the event loop)
        self.busy_in: str | None = None
        self.reset()

    def reset(self) -> None:
        """A rollback: every held record is dropped (the checkpoint restored holds what must be republished).
        Open sink partitions stay open."""
        self.now: dict[str, list[EgressMessage]] = {}  # at-least-once, published at the next flush
        self.epoch: list[EgressMessage] = []  # exactly-once records of the current epoch
        self.unpublished: dict[int, list[EgressMessage]] = {}  # epoch -> records cut, not yet published

    def emit(self, record: EgressMessage) -> None:
        declared = self.declared
        if declared is not None and record.typename not in declared:
            record = self._undeclared(record)
        self.counters["egress"] += 1
        if self.checkpoints and self._exactly_once(record.typename):
            self.epoch.append(record)  # published once the checkpoint of this epoch completes
        else:
            self.now.setdefault(record.typename, []).append(record)

    def _undeclared(self, record: EgressMessage) -> EgressMessage:
        """The dead letter that replaces a record sent to an egress id no sink declares."""
        egress_id = record.typename
        declared = sorted(self._specs)
        reason = f"egress {egress_id!r} is not declared (declared egresses: {declared})"
        if egress_id not in self._warned:
            self._warned.add(egress_id)
            log.warning("%s: its records go to the dead-letter egress %s", reason, DEAD_LETTER_EGRESS)
        self.counters["dead_letters"] += 1
        return dead_letter_record(reason, value_typename=record.value_type_name, payload=record.payload)

    def held(self) -> int:
        """Exactly-once records waiting for their checkpoint (sources pause past ``egress_high``)."""
        return len(self.epoch) + sum(map(len, self.unpublished.values()))

    def _exactly_once(self, egress_id: str) -> bool:
        sink = self._specs.get(egress_id)
        return sink is None or sink.delivery == DeliverySemantic.EXACTLY_ONCE

    def _sink(self, egress_id: str) -> tuple[Sink, Any]:
        entry = self._sinks.get(egress_id)
        if entry is None:
            sink = self._specs.get(egress_id)
            if sink is None:  # undeclared egress: keep it in memory for app.egress()
                from .egress_collector import MemorySink

                sink = MemorySink(egress_id)
            if hasattr(sink, "collector") and sink.collector is None:
                sink.collector = self.collector
            if hasattr(sink, "run_id") and self.run_id:
                sink.run_id = self.run_id  # exactly-once markers stay valid across restores
            entry = self._sinks[egress_id] = (sink, sink.build_partition(self.index, self.shards))
        return entry

    def open(self) -> None:
        """Open every declared sink's partition now: e.g. a Kafka partition's start aborts a transaction a
        crashed predecessor left open, which would otherwise hold read_committed readers back."""
        for sink_id in self._specs:
            self.busy_in = f"egress {sink_id}: opening its partition"
            try:
                self._sink(sink_id)
            except Exception:
                log.exception("opening egress %s", sink_id)
            finally:
                self.busy_in = None

    def close(self) -> None:
        for _, partition in self._sinks.values():
            try:
                partition.close()
            except Exception:
                log.exception("closing sink partition")

    def resize(self, shards: int) -> None:
        """A rescale: the sink partitions were built for the old shard count; the restore opens new ones."""
        self.close()
        self._sinks.clear()
        self.shards = shards

    # -- publishing -------------------------------------------------------------------------------------

    def publish_now(self) -> None:
        """Hand the at-least-once records to their sinks."""
        pending, self.now = self.now, {}
        for egress_id, records in pending.items():
            self._publish(egress_id, records, -1)

    def cut(self, n: int) -> list[tuple]:
        """Checkpoint ``n``'s cut: the current epoch's records become epoch ``n``'s; return the rows
        (``services.EgressRow``) of every epoch not yet published, which the checkpoint stores."""
        if self.epoch:
            self.unpublished[n] = self.epoch
            self.epoch = []
        rows: list[tuple] = []
        index = self.index
        for epoch in sorted(self.unpublished):
            rows.extend(
                (index, epoch, pos, r.typename, r.value_type_name, r.payload)
                for pos, r in enumerate(self.unpublished[epoch])
            )
        return rows

    def complete(self, n: int) -> None:
        """Checkpoint ``n`` is durable everywhere: publish the held epochs up to ``n``."""
        for epoch in sorted(self.unpublished):
            if epoch > n:
                break
            self._publish_epoch(self.unpublished.pop(epoch), epoch)

    def republish(self, rows: list) -> None:
        """After a restore: the egress epochs the old shards (whose records this shard inherits) may not
        have published, published again under the old shard's index, in epoch order (sinks dedup)."""
        groups: dict[tuple[int, int], list[EgressMessage]] = {}
        for old_index, epoch, _, egress_id, vtype, payload in rows:  # in (shard, epoch, position) order
            groups.setdefault((old_index, epoch), []).append(EgressMessage(egress_id, vtype, payload))
        for (old_index, epoch), records in sorted(groups.items(), key=lambda kv: kv[0][1]):
            self._publish_epoch(records, epoch, old_index)

    async def published(self) -> None:
        """Wait until sinks that publish asynchronously (the in-memory one) have taken what was handed over."""
        for _, partition in list(self._sinks.values()):
            refs = getattr(partition, "pending_refs", None)
            if refs:
                pending, refs[:] = list(refs), []
                await asyncio.gather(*pending)

    def _publish_epoch(self, records: list[EgressMessage], epoch: int, partition_index: int | None = None) -> None:
        by_egress: dict[str, list[EgressMessage]] = {}
        for r in records:
            by_egress.setdefault(r.typename, []).append(r)
        for egress_id, group in by_egress.items():
            self._publish(egress_id, group, epoch, partition_index)

    def _publish(
        self, egress_id: str, records: list[EgressMessage], epoch: int, partition_index: int | None = None
    ) -> None:
        """Hand records to their sink: this shard's partition, or ``partition_index``'s (an old shard's
        unpublished epoch after rescaling is published under that shard's index, where its sink dedups).
        The one place where a sink's refusal or failure is handled: rejected records are dead-lettered,
        an exactly-once epoch that failed rolls back (it is published again after), others dead-lettered."""
        self.busy_in = f"egress {egress_id}: publishing {len(records)} records" + (
            f" of epoch {epoch}" if epoch >= 0 else ""
        )
        try:
            self._publish_to(egress_id, records, epoch, partition_index)
        finally:
            self.busy_in = None

    def _publish_to(
        self, egress_id: str, records: list[EgressMessage], epoch: int, partition_index: int | None
    ) -> None:
        sink, partition = self._sink(egress_id)
        foreign = False
        if partition_index is not None and partition_index != self.index:
            partition, foreign = sink.build_partition(partition_index, self.shards), True
        dead_letter = self.services.dead_letter
        try:
            partition.write_batch(records, epoch)
        except Exception as exc:
            rejected = getattr(exc, "rejected", None)
            if rejected is not None:  # the sink published the rest: dead-letter just what it refused
                for record, reason in rejected:
                    dead_letter(
                        f"egress {egress_id} rejected the record: {reason}",
                        value_typename=record.value_type_name,
                        payload=record.payload,
                    )
            elif epoch >= 0:  # nothing was published: roll back, the epoch is published again after it
                log.error("egress %s: publishing epoch %d failed: %s", egress_id, epoch, exc)
                self.services.fail(f"egress {egress_id}: publishing epoch {epoch} failed: {exc}")
            elif egress_id != DEAD_LETTER_EGRESS:
                log.error("egress %s: publishing %d records failed: %s", egress_id, len(records), exc)
                for r in records:
                    dead_letter(
                        f"egress {egress_id} failed to publish the record: {exc}",
                        value_typename=r.value_type_name,
                        payload=r.payload,
                    )
        finally:
            if foreign:
                partition.close()
