"""The in-memory egress: ``MemorySink`` and the one small actor per application its records go to.

Keeping the records out of the shards means a shard that dies does not take published records with it, and
a checkpointed epoch republished after a rollback is recognised and skipped: records are accepted once per
``(egress id, shard partition, epoch)``. ``app.egress(id)`` reads from here. The sink lives in the core, not
in ``rayfun.connectors``, because it is the default for every egress that no sink was declared for;
``rayfun.connectors.memory`` re-exports it for users.
"""

from __future__ import annotations

from typing import Any

from ..io import DeliverySemantic, Sink, SinkPartition
from ..messages import EgressMessage
from ..types import validate_typename

__all__ = ["EgressCollector", "MemorySink"]


class EgressCollector:
    """Collects (value typename, payload) per egress id, exactly once per partition and epoch."""

    def __init__(self) -> None:
        self._records: dict[str, list[tuple[str, Any]]] = {}
        self._seen: set[tuple[str, int, int]] = set()

    def append(self, egress_id: str, partition: int, epoch: int, records: list[tuple[str, Any]]) -> None:
        if epoch >= 0:
            key = (egress_id, partition, epoch)
            if key in self._seen:
                return
            self._seen.add(key)
        self._records.setdefault(egress_id, []).extend(records)

    def records(self, egress_id: str) -> list[tuple[str, Any]]:
        return list(self._records.get(egress_id, ()))

    def egress_ids(self) -> list[str]:
        return list(self._records)


class _MemorySinkPartition(SinkPartition):
    def __init__(self, sink_id: str, index: int, collector: Any) -> None:
        self._sink_id, self._index, self._collector = sink_id, index, collector
        self.pending_refs: list = []  # the runtime awaits these before it reports an epoch published

    def write_batch(self, records: list[EgressMessage], epoch: int) -> None:
        rows = [(r.value_type_name, r.payload) for r in records]
        # calls from one shard to the collector keep their order; the collector dedups by (partition, epoch)
        self.pending_refs.append(self._collector.append.remote(self._sink_id, self._index, epoch, rows))


class MemorySink(Sink):
    """An egress kept in memory, outside the shards (so it survives a shard's failure); read it with
    ``app.egress(id)``. Exactly-once by default, like every egress when checkpoints are on."""

    collector: Any = None  # the application's egress collector actor, set by the runtime

    def __init__(self, id: str, delivery: str = DeliverySemantic.EXACTLY_ONCE):
        validate_typename(id)
        self.id = id
        self.delivery = delivery

    def build_partition(self, index: int, count: int) -> SinkPartition:
        if self.collector is None:
            raise RuntimeError(f"MemorySink {self.id} used outside a running application")
        return _MemorySinkPartition(self.id, index, self.collector)
