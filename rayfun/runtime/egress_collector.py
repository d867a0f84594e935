"""Where in-memory egress records live: one small actor per application, outside the shards.

Keeping them out of the shards means a shard that dies does not take published records with it, and a
checkpointed epoch republished after a rollback is recognised and skipped: records are accepted once per
``(egress id, shard partition, epoch)``. ``app.egress(id)`` reads from here.
"""

from __future__ import annotations

from typing import Any


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
