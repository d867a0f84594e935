"""In-memory ingress and egress: replayable lists or generators in, Python lists out.

``MemorySource`` is replayable because its records are a sequence (or a picklable factory that yields the
same records each time it is called): its position is simply how many records of the partition were read.
``MemorySink`` (the core's default egress, re-exported here) sends what was published to the application's
egress collector, outside the shards; ``app.egress(id)`` reads it.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeAlias, cast

from rayfun.io import DeadLetter, Source, SourcePartition, SourceRow, SourceRows
from rayfun.messages import _VALID_TYPENAMES, Message, to_message  # the cache is shared: to_row inlines its fast path
from rayfun.runtime.egress_collector import MemorySink
from rayfun.types import MAX_ID_CHARS, IntType, StringType, Type, describe_record

__all__ = ["MemorySink", "MemorySource", "to_message"]

_INT = IntType.typename
_STRING = StringType.typename

#: a MemorySource factory: ``factory(partition_index, partition_count)``, or, to resume without skipping
#: through the records before it, ``factory(partition_index, partition_count, start)``
RecordFactory: TypeAlias = Callable[[int, int], Iterable[Any]]
ResumableRecordFactory: TypeAlias = Callable[[int, int, int], Iterable[Any]]


def to_row(record: Any, value_type: Type | None = None) -> SourceRow:
    """A record as a runtime row ``(typename, id, None, value typename, payload)`` (see SourcePartition)."""
    if type(record) is tuple and len(record) == 3 and value_type is None:
        typename, id, value = record  # the hot path, as in to_message
        if typename in _VALID_TYPENAMES and type(id) is str and id and id.isascii() and len(id) <= MAX_ID_CHARS:
            kind = type(value)
            if kind is int and -2147483648 <= value <= 2147483647:
                return (typename, id, None, _INT, value)
            if kind is str and value.isascii():
                return (typename, id, None, _STRING, value)
    m = to_message(record, value_type)
    return (m.target_typename, m.target_id, None, m.value_type_name, m.payload)


class _MemoryPartition(SourcePartition):
    def __init__(
        self, records: Iterable[Any], position: int, batch_size: int, value_type: Type | None, skip: int, source_id: str
    ):
        self._source_id = source_id
        self._it = itertools.islice(iter(records), skip, None) if skip else iter(records)
        self._position = position
        self._batch_size = batch_size
        self._value_type = value_type
        self._done = False

    def _take(self) -> list[Any] | None:
        """The next records (advancing the position), or None once exhausted."""
        if self._done:
            return None
        chunk = list(itertools.islice(self._it, self._batch_size))
        if not chunk:
            self._done = True
            return None
        self._position += len(chunk)
        return chunk

    def next_batch(self) -> list[Message | DeadLetter] | None:
        chunk = self._take()
        return None if chunk is None else [self._convert(to_message, r) for r in chunk]

    def _convert(self, convert: Callable[[Any, Type | None], Any], record: Any) -> Any:
        """One record as a message or row; a record that cannot become one is a DeadLetter naming why (the
        source goes on: raising here would fail the shard, and the replay would fail it again)."""
        try:
            return convert(record, self._value_type)
        except (TypeError, ValueError) as exc:
            return DeadLetter(
                f"record {describe_record(record)} cannot become a message: {exc}",
                self._source_id,
                repr(record).encode("utf-8", "backslashreplace"),
            )

    def next_rows(self) -> SourceRows | None:
        chunk = self._take()
        if chunk is None:
            return None
        if self._value_type is not None:
            return [self._convert(to_row, r) for r in chunk]
        rows: SourceRows = []
        append = rows.append
        for r in chunk:  # this loop runs once per ingested record: it checks only what routing does not
            if type(r) is tuple:
                try:
                    typename, id, value = r
                except ValueError:  # not three fields: to_row says so
                    append(self._convert(to_row, r))
                    continue
                # the typename and the id are checked where the row is routed (``Outbox.route_input``: the
                # typename once per run of one type, the id once per id), not once per record here
                if type(value) is int and -2147483648 <= value <= 2147483647:
                    append((typename, id, None, _INT, value))
                    continue
            append(self._convert(to_row, r))
        return rows

    def snapshot(self) -> int:
        return self._position


class MemorySource(Source):
    """A finite, replayable ingress from Python records, split round-robin over ``partitions``.

    ``records`` is a sequence of ``Message``s or ``(typename, id, value)`` tuples, or a picklable callable
    ``factory(partition_index, partition_count) -> iterable`` that returns the same records every call
    (use it to generate large inputs inside the shards instead of shipping them). A factory that takes a
    third argument ``start`` is asked to begin at that record, so a recovery need not skip through
    everything before it.
    """

    def __init__(
        self,
        records: Sequence[Any] | RecordFactory | ResumableRecordFactory,
        *,
        partitions: int = 1,
        id: str = "rayfun/memory-ingress",
        batch_size: int = 2048,
        value_type: Type | None = None,
    ):
        if partitions < 1:
            raise ValueError("partitions must be >= 1")
        if not callable(records):
            records = list(records)
            for r in records[:1]:
                to_message(r, value_type)  # fail here, in the caller, on a malformed first record
        self.id = id
        self._records = records
        self._count = partitions
        self._batch_size = batch_size
        self._value_type = value_type

    def partitions(self) -> list[str]:
        return [str(i) for i in range(self._count)]

    def build_partition(self, partition: str, resume_state: Any | None) -> SourcePartition:
        index = int(partition)
        position = int(resume_state or 0)
        skip = position
        records: Iterable[Any]
        if callable(self._records):
            # which of the two a factory is, only its signature tells
            if len(inspect.signature(self._records).parameters) >= 3:
                records, skip = cast(ResumableRecordFactory, self._records)(index, self._count, position), 0
            else:
                records = cast(RecordFactory, self._records)(index, self._count)
        else:
            records = itertools.islice(self._records, index, None, self._count)
        return _MemoryPartition(records, position, self._batch_size, self._value_type, skip, self.id)
