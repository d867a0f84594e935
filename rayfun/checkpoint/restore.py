"""What a shard restores: the folded state of its key-group range, read so that big state never sits in
memory twice.

A state chain is a base and its deltas (``StateLayer`` each). The fold is decided on three narrow columns
(``state_codec.FOLD_COLUMNS``: no payload is read), which gives each layer a mask of the rows that survive;
the payloads are then read one row group at a time, filtered by that mask and decoded into the runtime's
``id -> cells`` before the next row group is read (``FoldedState.instances``). A restore of 750 MB of state
used to hold the file's bytes, the parsed table, the concatenated layers, the folded table and the decoded
cells at once (over 3x the state); now it holds the cells and one row group.

Small layers (the common case: most checkpoints are small deltas) are read whole into memory, as before.
Big ones are read from a local file: the checkpoint file itself on a local disk, else a copy downloaded to
the local temp directory, which goes when the ``FoldedState`` is closed or collected.
"""

from __future__ import annotations

import gc
import os
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..keygroups import in_range
from .errors import CheckpointError, CorruptCheckpointError
from .fileformat import ParquetFileReader
from .schema import STATE_SCHEMA
from .state_codec import (
    FOLD_COLUMNS,
    StateLayout,
    decode_instances_into,
    filter_key_groups,
    fold_masks,
    with_key_groups,
)

__all__ = ["FoldedState", "RestoredShard", "StateLayer"]

_RANGE_COLUMNS = ("key_group", "function_type", "id")


class StateLayer:
    """One file of a state chain, limited to a key-group range: in memory (a table) or a local Parquet file
    read a row group at a time. ``narrow`` holds the columns the fold needs."""

    def __init__(
        self,
        table: pa.Table | None = None,
        *,
        path: str | None = None,
        temporary: bool = False,
        checkpoint_id: int | None = None,
        key_group_range: tuple[int, int] | None = None,
        key_groups: int | None = None,
        file_range: tuple[int, int] | None = None,
    ) -> None:
        self.table, self.path, self.checkpoint_id = table, path, checkpoint_id
        self._range: pa.BooleanArray | None = None  # rows within the key-group range (None: all)
        if temporary and path is not None:
            self._finalizer = weakref.finalize(self, _remove, path)
        if table is not None:
            self.narrow = table.select(list(FOLD_COLUMNS))
            return
        columns = list(FOLD_COLUMNS)
        if key_group_range is not None and not _within(file_range, key_group_range):
            columns = list(dict.fromkeys([*_RANGE_COLUMNS, *FOLD_COLUMNS]))
        narrow = self._guarded(lambda reader: reader.read(columns))
        if "key_group" in columns:
            assert key_group_range is not None and key_groups is not None
            inside = in_range(with_key_groups(narrow, key_groups)["key_group"], key_group_range)
            if not pc.all(inside).as_py():
                self._range = inside.combine_chunks()
                narrow = narrow.filter(self._range)
        self.narrow = narrow.select(list(FOLD_COLUMNS))

    @classmethod
    def of_table(
        cls,
        table: pa.Table,
        key_group_range: tuple[int, int],
        key_groups: int,
        file_range: tuple[int, int] | None = None,
    ) -> StateLayer:
        return cls(filter_key_groups(table, key_group_range, key_groups, file_range))

    @property
    def num_rows(self) -> int:
        return self.narrow.num_rows

    def batches(self, mask: pa.BooleanArray | None) -> Iterator[pa.Table]:
        """The layer's rows that ``mask`` (over ``narrow``) keeps, a row group at a time for a file."""
        if self.table is not None:
            yield self.table if mask is None else self.table.filter(mask)
            return
        reader = self._open()
        try:
            offset = 0  # into the rows within the range (what ``mask`` covers)
            position = 0  # into the file's rows (what ``_range`` covers)
            for group in self._read_groups(reader):
                if self._range is not None:
                    in_file = group.num_rows
                    group = group.filter(self._range.slice(position, in_file))
                    position += in_file
                rows = group.num_rows
                if mask is not None:
                    group = group.filter(mask.slice(offset, rows))
                offset += rows
                if group.num_rows:
                    yield group
        finally:
            reader.close()

    def _read_groups(self, reader: ParquetFileReader) -> Iterator[pa.Table]:
        groups = reader.row_groups()
        while True:
            try:
                group = next(groups)
            except StopIteration:
                return
            except (pa.ArrowException, OSError, ValueError) as exc:
                raise CorruptCheckpointError(self.path or "?", "unreadable", str(exc), self.checkpoint_id) from None
            if not group.schema.equals(STATE_SCHEMA):
                try:
                    group = group.select(STATE_SCHEMA.names).cast(STATE_SCHEMA)
                except (pa.ArrowException, KeyError, ValueError) as exc:
                    raise CorruptCheckpointError(
                        self.path or "?", "unreadable", f"unexpected schema: {exc}", self.checkpoint_id
                    ) from None
            yield group

    def _open(self) -> ParquetFileReader:
        assert self.path is not None
        try:
            return ParquetFileReader(self.path)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise CorruptCheckpointError(self.path, "unreadable", str(exc), self.checkpoint_id) from None

    def _guarded(self, read: Any) -> pa.Table:
        reader = self._open()
        try:
            return read(reader)
        except (pa.ArrowException, OSError, ValueError, KeyError) as exc:
            raise CorruptCheckpointError(self.path or "?", "unreadable", str(exc), self.checkpoint_id) from None
        finally:
            reader.close()

    def close(self) -> None:
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()


class FoldedState:
    """The folded state of a chain of layers (oldest first): per instance the rows of the newest layer that
    holds it, no tombstones. Nothing is materialized until asked: ``instances`` decodes a batch at a time,
    ``table`` builds the whole table (for offline readers and small state)."""

    def __init__(self, layers: Iterable[StateLayer]) -> None:
        self.layers = [layer for layer in layers if layer.num_rows]
        self._filtered: list[pa.Table] | None = None
        self.masks = fold_masks([layer.narrow for layer in self.layers])
        self.chain_rows = sum(layer.num_rows for layer in self.layers)
        self.num_rows = sum(
            layer.num_rows if mask is None else (pc.sum(mask).as_py() or 0)
            for layer, mask in zip(self.layers, self.masks)
        )

    @classmethod
    def of_tables(cls, tables: Iterable[pa.Table]) -> FoldedState:
        """From tables already limited to the key-group range (e.g. a shard's in-memory rollback copy)."""
        return cls(StateLayer(t) for t in tables)

    @property
    def in_memory(self) -> bool:
        """Whether every layer is a table (none is read from a file)."""
        return all(layer.table is not None for layer in self.layers)

    @property
    def nbytes(self) -> int:
        """Bytes of the in-memory layers (files count nothing)."""
        return sum(layer.table.nbytes for layer in self.layers if layer.table is not None)

    def function_types(self) -> list[str]:
        found: set[str] = set()
        for layer, mask in zip(self.layers, self.masks):
            column = layer.narrow["function_type"]
            found.update(pc.unique(column if mask is None else column.filter(mask)).to_pylist())
        return sorted(found)

    def batches(self) -> Iterator[pa.Table]:
        """The surviving rows, layer by layer (a row group at a time for a file). In-memory layers are
        filtered once and kept until ``close``: a shard decodes them, then keeps them as its rollback copy."""
        if self._filtered is None and self.in_memory:
            self._filtered = [b for layer, mask in zip(self.layers, self.masks) for b in layer.batches(mask)]
        if self._filtered is not None:
            yield from self._filtered
            return
        for layer, mask in zip(self.layers, self.masks):
            yield from layer.batches(mask)

    def table(self) -> pa.Table:
        """All surviving rows as one table (``STATE_SCHEMA``)."""
        parts = [b for b in self.batches() if b.num_rows]
        if not parts:
            return STATE_SCHEMA.empty_table()
        return parts[0] if len(parts) == 1 else pa.concat_tables(parts, promote_options="permissive")

    def instances(self, layout: StateLayout, only_type: bool = True, values: bool = False) -> dict[str, Any]:
        """``id -> cells`` of ``layout``'s function type, decoded a batch at a time (``only_type=False``: the
        caller knows every row is of that type; ``values``: see ``decode_instances``)."""
        out: dict[str, Any] = {}
        collecting = gc.isenabled()
        gc.disable()  # hundreds of thousands of new lists: no collection can free any of them
        try:
            for batch in self.batches():
                if only_type:
                    batch = batch.filter(pc.equal(batch["function_type"], layout.function_type))
                if batch.num_rows:
                    decode_instances_into(out, batch, layout, values)
                del batch
        finally:
            if collecting:
                gc.enable()
        return out

    def close(self) -> None:
        """Remove the local copies of downloaded files (also done when this is collected)."""
        self._filtered = None
        for layer in self.layers:
            layer.close()


@dataclass
class RestoredShard:
    """What a (new) shard restores from a checkpoint for its key-group range.

    ``state`` holds the folded state rows (``STATE_SCHEMA``, no tombstones) of the range; turn them into the
    runtime's ``id -> cells`` with ``instances()``. ``timers``/``messages``/``egress`` are row tuples in the
    shapes of ``rayfun.checkpoint.records``; ``metas`` maps each *old* shard overlapping the range to the
    meta it stored. Egress records of an old shard are handed to exactly one new shard: the one whose range
    contains the old shard's first key group. Timers come in firing order; when they come from more than
    one old shard their ``seq`` is renumbered 0..n-1 (per-shard sequences would collide).
    """

    checkpoint_id: int
    key_group_range: tuple[int, int]
    key_groups: int
    state: FoldedState
    layouts: dict[str, StateLayout]
    timers: list[tuple] = field(default_factory=list)
    messages: list[tuple] = field(default_factory=list)
    egress: list[tuple] = field(default_factory=list)
    metas: dict[int, dict] = field(default_factory=dict)
    app: dict = field(default_factory=dict)
    chain_rows: int = 0  # state rows read: the base and every delta (``state`` holds the fold of them)

    def __post_init__(self) -> None:
        if isinstance(self.state, pa.Table):  # an already folded table
            self.state = FoldedState.of_tables([self.state])

    def function_types(self) -> list[str]:
        """The function types that have state in this range."""
        return self.state.function_types()

    def instances(self, function_type: str, specs: Iterable[Any] | None = None, values: bool = False) -> dict[str, Any]:
        """``id -> cells`` of one function type, laid out for ``specs`` (the function's current ValueSpecs or
        ``(name, typename)`` pairs; default: the layout stored in the checkpoint); with ``values`` (a
        single-cell layout) ``id -> the value``, as the runtime holds it."""
        layout = StateLayout.of(function_type, specs) if specs is not None else self.layouts.get(function_type)
        if layout is None:
            raise CheckpointError(
                f"checkpoint {self.checkpoint_id} has no state layout for {function_type!r}; pass its specs"
            )
        only_type = len(self.layouts) != 1 or function_type not in self.layouts
        return self.state.instances(layout, only_type, values)

    def close(self) -> None:
        self.state.close()


def _within(file_range: tuple[int, int] | None, key_group_range: tuple[int, int]) -> bool:
    return file_range is not None and key_group_range[0] <= file_range[0] and file_range[1] <= key_group_range[1]


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
