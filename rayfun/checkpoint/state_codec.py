"""Fast conversion between a shard's in-memory state (``id -> cells`` per function type) and Arrow tables.

The runtime holds an instance as a flat list ``cells``: the payload of each ValueSpec in order, then, for
function types with an expiring spec, each spec's deadline in ms since the epoch (0 = none). Payloads of
built-in types are Python values, all others bytes (see ``rayfun.types``).

Encoding converts a few thousand instances at a time (while their scattered objects are in cache): per
spec one ``itemgetter`` pass builds a Python list that Arrow converts in C (for ints and floats through
``array.array``, the fastest path measured). Changes of single-cell types arrive as values, not cells,
which skips that pass. Key groups, when asked for, are one CRC-32 per id through ``map`` (no bytecode per
row), spread with Arrow compute.

Layers fold newest-first: a changed instance in delta n replaces *all* its rows of earlier layers (so a
state that was deleted simply has no row), and a tombstone row removes the instance.
"""

from __future__ import annotations

import gc
import itertools
import logging
import operator
import sys
from array import array
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..constants import ENCODE_CHUNK, PIECE_BYTES  # tuning knobs: see rayfun/constants.py
from ..keygroups import in_range, key_groups_mixed, key_groups_of
from ..types import BUILTIN_TYPES, decode_payload, encode_payload
from .errors import CheckpointError
from .schema import ADDRESS_COLUMNS, STATE_SCHEMA, VALUE_COLUMNS, value_column

log = logging.getLogger("rayfun.checkpoint")

__all__ = [
    "KeptPieces",
    "StateDelta",
    "StateLayout",
    "decode_instances",
    "decode_instances_into",
    "encode_state",
    "filter_key_groups",
    "fold_layers",
    "fold_masks",
    "iter_state",
    "key_groups_mixed",
    "key_groups_of",
    "with_key_groups",
]


# ---------------------------------------------------------------------------------------------------------
# Layouts and deltas: what the runtime hands over.


@dataclass(frozen=True)
class StateLayout:
    """How the cells of one function type are laid out: spec names and typenames in order, and whether the
    deadlines follow the payloads (any spec expires). ``expire_modes``/``expire_after_ms`` are kept only so
    the manifest can describe the specs fully (e.g. to rebuild a remote function's registered specs)."""

    function_type: str
    names: tuple[str, ...]
    typenames: tuple[str, ...]
    expiring: bool = False
    expire_modes: tuple[str | None, ...] = ()
    expire_after_ms: tuple[int, ...] = ()

    @property
    def width(self) -> int:
        return len(self.names) * (2 if self.expiring else 1)

    def empty_cells(self) -> list:
        n = len(self.names)
        return [None] * n + ([0] * n if self.expiring else [])

    @classmethod
    def of(cls, function_type: str, specs: Iterable[Any]) -> StateLayout:
        """Build from ``ValueSpec`` objects, ``(name, typename)`` or ``(name, typename, expire_mode,
        expire_after_ms)`` tuples, or dicts with those keys (as stored in a manifest)."""
        names, typenames, modes, ttls = [], [], [], []
        for spec in specs:
            if hasattr(spec, "type") and hasattr(spec, "name"):  # a rayfun ValueSpec
                name, typename = spec.name, spec.type.typename
                mode, ttl = spec.expire_mode, spec.expire_after_millis
            elif isinstance(spec, Mapping):
                name, typename = spec["name"], spec["typename"]
                mode, ttl = spec.get("expire_mode"), int(spec.get("expire_after_ms") or 0)
            else:
                name, typename, *rest = spec
                mode = rest[0] if rest else None
                ttl = int(rest[1]) if len(rest) > 1 else 0
            names.append(name)
            typenames.append(typename)
            modes.append(mode)
            ttls.append(ttl)
        if len(set(names)) != len(names):
            raise CheckpointError(f"{function_type}: duplicate state names in {names}")
        return cls(function_type, tuple(names), tuple(typenames), any(m for m in modes), tuple(modes), tuple(ttls))

    def to_json(self) -> list[dict]:
        modes = self.expire_modes or (None,) * len(self.names)
        ttls = self.expire_after_ms or (0,) * len(self.names)
        return [
            {"name": n, "typename": t, "expire_mode": m, "expire_after_ms": a}
            for n, t, m, a in zip(self.names, self.typenames, modes, ttls)
        ]

    @classmethod
    def from_json(cls, function_type: str, specs: list[dict]) -> StateLayout:
        return cls.of(function_type, specs)


@dataclass
class StateDelta:
    """The state of one function type that a shard checkpoints: the instances changed since its previous
    checkpoint (or all of them, for a full snapshot) and the ids whose instance is gone (tombstones).

    ``instances`` maps id -> cells (None: the instance is gone); with ``values=True`` (single-cell layouts
    only) id -> the value itself (None: gone), which is how the runtime records changes of such types: the
    encoder then reads one object per instance instead of three. The mapping is read while encoding, in
    a thread, so it must not change meanwhile: the runtime hands over a dict it no longer writes to.
    """

    layout: StateLayout
    instances: Mapping[str, Any] = field(default_factory=dict)
    deleted: Collection[str] = field(default_factory=tuple)
    values: bool = False

    def __post_init__(self) -> None:
        if self.values and self.layout.width != 1:
            raise ValueError(
                f"{self.layout.function_type}: values=True needs a single-cell layout, this one "
                f"has {self.layout.width} cells"
            )

    @classmethod
    def from_function_state(cls, state: Any, full: bool = False) -> StateDelta:
        """From the runtime's ``FunctionState`` (``typename``, ``specs``, ``instances``, ``changed``): the
        changed instances and tombstones, or with ``full`` every live instance."""
        layout = StateLayout.of(state.typename, state.specs)
        values = bool(getattr(state, "single", False))  # a single-cell type holds values, not cells
        if full:
            return cls(layout, state.capture_all(), values=values)
        return cls(layout, {id: state.instances.get(id) for id in state.changed}, values=values)


# ---------------------------------------------------------------------------------------------------------
# Encoding.

_ARROW_TYPE = {
    "value_int": pa.int64(),
    "value_float": pa.float64(),
    "value_str": pa.string(),
    "value_bool": pa.bool_(),
    "value": pa.binary(),
}
_ARRAY_CODE = {"value_int": "q", "value_float": "d"}
_CONVERSION_ERRORS = (TypeError, ValueError, OverflowError, pa.ArrowInvalid, pa.ArrowTypeError)


def _typed_array(values: Sequence, column: str, typename: str, function_type: str, name: str) -> pa.Array:
    """Arrow array of one spec's payloads (None = unset); tolerates wire bytes for built-in types."""
    code = _ARRAY_CODE.get(column)
    if code is not None:
        try:  # no None, no stray type: a C loop into a buffer, then zero-copy into Arrow
            buf = array(code, values)
            return pa.Array.from_buffers(_ARROW_TYPE[column], len(buf), [None, pa.py_buffer(buf)])
        except (TypeError, OverflowError):
            pass
    try:
        return pa.array(values, _ARROW_TYPE[column])
    except _CONVERSION_ERRORS:
        pass
    try:  # payloads not in the runtime convention (e.g. a remote function's wire bytes): normalize
        if column == "value":
            values = [None if v is None else encode_payload(typename, v) for v in values]
        else:
            values = [
                decode_payload(typename, v) if isinstance(v, (bytes, bytearray, memoryview)) else v for v in values
            ]
        return pa.array(values, _ARROW_TYPE[column])
    except _CONVERSION_ERRORS as exc:
        raise CheckpointError(
            f"state {name!r} of {function_type} ({typename}) holds a value that cannot be stored: {exc}"
        ) from None


def _constant(value: str | None, indices: pa.Array) -> pa.DictionaryArray:
    """A column holding one string (or nulls) as a dictionary: no per-row string, and Parquet writes the
    dictionary as is instead of hashing a million equal strings (measured ~2x faster per column)."""
    return pa.DictionaryArray.from_arrays(indices, pa.array([] if value is None else [value], pa.string()))


def _null_columns(n: int) -> dict[str, pa.Array]:
    """All-null arrays for every value column and ``expires_at_ms``, sharing one lazily zeroed buffer
    (``pa.nulls`` memsets each: ~20 ms per million rows for the six, measured)."""
    zeros = _zeros(n)
    return {
        name: _lazy_nulls(typ, n, zeros)
        for name, typ in (*((c, _ARROW_TYPE[c]) for c in VALUE_COLUMNS), ("expires_at_ms", pa.int64()))
    }


def _zeros(n: int) -> pa.Buffer:
    """A zeroed buffer big enough for any all-null array of ``n`` rows (calloc: pages stay untouched until
    read)."""
    return pa.py_buffer(bytes(8 * n + 8))


def _lazy_nulls(typ: pa.DataType, n: int, zeros: pa.Buffer | None = None) -> pa.Array:
    """An all-null array on a lazily zeroed buffer (``_zeros``; arrays of one length may share one)."""
    zeros = _zeros(n) if zeros is None else zeros
    validity = zeros.slice(0, (n + 7) // 8)
    if typ in (pa.string(), pa.binary()):
        bufs = [validity, zeros.slice(0, 4 * (n + 1)), zeros.slice(0, 0)]
    elif typ == pa.bool_():
        bufs = [validity, validity]
    else:
        bufs = [validity, zeros.slice(0, typ.bit_width // 8 * n)]
    return pa.Array.from_buffers(typ, n, bufs, null_count=n)


def _empty_state() -> pa.Table:
    return STATE_SCHEMA.empty_table()


def _spec_columns(layout: StateLayout, cells: list) -> list[tuple[list, list | None]]:
    """Per spec, its payloads and (for an expiring layout) its deadlines, one C-level pass each. Raises
    TypeError if a cell is None (a tombstone), IndexError if one is too short."""
    n = len(layout.names)
    return [
        (list(map(itemgetter(i), cells)), list(map(itemgetter(n + i), cells)) if layout.expiring else None)
        for i in range(n)
    ]


def _key_group_column(typename: str, ids: Sequence[str] | pa.Array, key_groups: int | None) -> pa.Array:
    """The key groups of ``ids``, or nulls for readers to compute (``key_groups=None``, see ``schema``)."""
    if key_groups is not None:
        return key_groups_of(typename, ids, key_groups)
    return _lazy_nulls(pa.int32(), len(ids))  # ``pa.nulls`` memsets


_SAMPLE = 8  # instances whose Python sizes guess the size of the first chunk
_COLUMN_CHUNK = 16 * ENCODE_CHUNK  # values of column-held changes converted at a time (no per-row Python work)


class _Pieces:
    """A delta's rows as Arrow tables of about ``PIECE_BYTES`` each, converted ``ENCODE_CHUNK`` instances at
    a time (fewer when instances are big). The changed instances lie scattered in memory: converting each
    chunk in every column while its objects are in cache is ~2x faster than a pass per column over all of
    them (measured on 300k changed instances). Chunks are gathered into a piece per spec until the piece
    holds ``PIECE_BYTES``, so small state still makes one table per spec, while big state never exists in
    Arrow all at once: the writer writes each piece and drops it (a whole-table encoding held a second copy
    of every byte of state, and the builder's slack on top). Tombstones found on the way go to ``deleted``
    and come last."""

    def __init__(self, delta: StateDelta, key_groups: int | None) -> None:
        self.delta, self.key_groups = delta, key_groups
        self.layout = delta.layout
        self.deleted = list(delta.deleted)
        self._clear()

    def _clear(self) -> None:
        n = len(self.layout.names)
        self.ids: list[pa.Array] = []
        self.kgs: list[pa.Array] = []
        self.payloads: list[list[pa.Array]] = [[] for _ in range(n)]
        self.deadlines: list[list[pa.Array]] = [[] for _ in range(n)] if self.layout.expiring else []
        self.nbytes = 0

    def __iter__(self) -> Iterator[pa.Table]:
        layout, delta = self.layout, self.delta
        if not layout.names:
            self.deleted += [id for id, cells in delta.instances.items() if cells is None]
        elif hasattr(delta.instances, "columns"):
            yield from self._from_columns(delta.instances)
        else:
            mapping = delta.instances
            ids_left, cells_left = iter(mapping), iter(mapping.values())
            left = len(mapping)
            chunk = _first_chunk(list(itertools.islice(iter(mapping.values()), _SAMPLE)), delta.values)
            while left:
                ids = list(itertools.islice(ids_left, chunk))
                cells = list(itertools.islice(cells_left, chunk))
                left -= len(ids)
                if delta.values:  # None is a missing value, and an instance without values is written as gone
                    added = self._add(ids, [(cells, None)])
                else:
                    added = self._add(*self._split(ids, cells))
                if self.nbytes >= PIECE_BYTES:
                    yield from self._flush()
                if added:  # the next chunk: as many instances as fit a quarter piece at this chunk's size
                    chunk = max(1, min(ENCODE_CHUNK, len(ids) * PIECE_BYTES // 4 // max(added, 1)))
            yield from self._flush()
        if self.deleted:
            yield _tombstones(self.layout.function_type, self.deleted, self.key_groups)

    def _from_columns(self, changes: Any) -> Iterator[pa.Table]:
        """Changes that the runtime holds by column (``ColumnChanges`` of a single-value type): the ids are
        an Arrow array already (converted once per instance, not once per checkpoint), the values a list in
        the same order, converted a chunk at a time as ``__iter__`` does (big values never all at once)."""
        layout = self.layout
        ft, name, typename = layout.function_type, layout.names[0], layout.typenames[0]
        column = value_column(typename)
        ids, values = changes.columns()
        self.deleted += changes.gone
        start, chunk = 0, _first_chunk(list(values[:_SAMPLE]), True)
        while start < len(values):
            part = values[start : start + chunk]
            arrow_values = _typed_array(part, column, typename, ft, name)
            id_part = ids.slice(start, len(part))
            self.ids.append(id_part)
            self.kgs.append(
                _key_group_column(ft, id_part if self.key_groups is None else id_part.to_pylist(), self.key_groups)
            )
            self.payloads[0].append(arrow_values)
            added = arrow_values.get_total_buffer_size() + 16 * len(part)  # the ids' share, about
            self.nbytes += added
            start += len(part)
            if self.nbytes >= PIECE_BYTES:
                yield from self._flush()
            chunk = max(1, min(_COLUMN_CHUNK, len(part) * PIECE_BYTES // 4 // added))
        yield from self._flush()

    def _split(self, ids: list, cells: list) -> tuple[list, list]:
        """The live ids of a chunk and their columns; tombstones go to ``deleted``."""
        layout = self.layout
        try:
            return ids, _spec_columns(layout, cells)
        except TypeError:
            if None not in cells:
                raise
            live = [c is not None for c in cells]  # tombstones among the captured cells (rare)
            self.deleted += itertools.compress(ids, map(operator.not_, live))
            cells = list(itertools.compress(cells, live))
            return list(itertools.compress(ids, live)), _spec_columns(layout, cells)
        except IndexError:
            bad = next(c for c in cells if c is not None and len(c) < layout.width)
            raise CheckpointError(
                f"{layout.function_type}: an instance has {len(bad)} cells, its layout expects "
                f"{layout.width} ({len(layout.names)} specs"
                f"{', expiring' if layout.expiring else ''})"
            ) from None

    def _add(self, ids: list, columns: list) -> int:
        """Convert a chunk; returns its Arrow bytes."""
        if not ids:
            return 0
        layout = self.layout
        ft = layout.function_type
        arrays = [pa.array(ids, pa.string()), _key_group_column(ft, ids, self.key_groups)]
        self.ids.append(arrays[0])
        self.kgs.append(arrays[1])
        for i, (name, typename) in enumerate(zip(layout.names, layout.typenames)):
            values, deadlines = columns[i]
            arrays.append(_typed_array(values, value_column(typename), typename, ft, name))
            self.payloads[i].append(arrays[-1])
            if deadlines is not None:
                arrays.append(pa.array(deadlines, pa.int64()))
                self.deadlines[i].append(arrays[-1])
        added = sum(a.get_total_buffer_size() for a in arrays)  # fresh arrays: nbytes costs 20x more
        self.nbytes += added
        return added

    def _flush(self) -> Iterator[pa.Table]:
        """The gathered chunks as one table per spec (rows of instances that hold a value in it)."""
        if not self.ids:
            return
        layout = self.layout
        ft = layout.function_type
        id_arr = pa.chunked_array(self.ids, pa.string())
        n_inst = len(id_arr)
        kg = pa.chunked_array(self.kgs, pa.int32())
        zero = pa.repeat(pa.scalar(0, pa.int32()), n_inst)
        ft_arr = _constant(ft, zero)
        not_deleted = pa.repeat(pa.scalar(False), n_inst)
        nulls = _null_columns(n_inst)
        no_deadline = nulls["expires_at_ms"]
        any_value: pa.ChunkedArray | None = None  # per instance: holds a value in some spec seen so far
        every_instance_has_value = False
        tables = []
        for i, (name, typename) in enumerate(zip(layout.names, layout.typenames)):
            column = value_column(typename)
            arr = pa.chunked_array(self.payloads[i], _ARROW_TYPE[column])
            if self.deadlines:
                d = pa.chunked_array(self.deadlines[i], pa.int64())
                expires = pc.if_else(pc.equal(d, 0), pa.scalar(None, pa.int64()), d)
            else:
                expires = no_deadline
            cols = dict(nulls)
            cols[column] = arr
            table = pa.Table.from_arrays(
                [
                    kg,
                    ft_arr,
                    id_arr,
                    _constant(name, zero),
                    _constant(typename, zero),
                    cols["value_int"],
                    cols["value_float"],
                    cols["value_str"],
                    cols["value_bool"],
                    cols["value"],
                    expires,
                    not_deleted,
                ],
                schema=STATE_SCHEMA,
            )
            if arr.null_count:
                valid = arr.is_valid()
                table = table.filter(valid)
                if not every_instance_has_value:
                    any_value = valid if any_value is None else pc.or_(any_value, valid)
            else:
                every_instance_has_value = True
            if table.num_rows:
                tables.append(table)
        if not every_instance_has_value:
            # an instance without any value is gone (the runtime normally drops it): write it as a tombstone,
            # or older layers would bring its old values back
            empty = id_arr if any_value is None else id_arr.filter(pc.invert(any_value))
            self.deleted += empty.to_pylist()
        self._clear()
        yield from tables


def _first_chunk(sample: list, values: bool) -> int:
    """How many instances the first chunk converts: ``ENCODE_CHUNK``, or fewer if the sampled instances are
    big (a chunk of 4096 instances of 5 MB would be 20 GB of Arrow at once)."""
    if not sample:
        return ENCODE_CHUNK
    getsizeof = sys.getsizeof
    if values:
        size = sum(getsizeof(v) for v in sample)
    else:
        size = sum(getsizeof(c) for cells in sample if cells is not None for c in cells)
    per_instance = max(1, size // len(sample))
    return max(1, min(ENCODE_CHUNK, PIECE_BYTES // 4 // per_instance))


def _tombstones(ft: str, deleted: list, key_groups: int | None) -> pa.Table:
    n = len(deleted)
    return pa.Table.from_arrays(
        [
            _key_group_column(ft, deleted, key_groups),
            _constant(ft, pa.repeat(pa.scalar(0, pa.int32()), n)),
            pa.array(deleted, pa.string()),
            _constant(None, pa.nulls(n, pa.int32())),
            _constant(None, pa.nulls(n, pa.int32())),
            *(pa.nulls(n, _ARROW_TYPE[c]) for c in VALUE_COLUMNS),
            pa.nulls(n, pa.int64()),
            pa.repeat(pa.scalar(True), n),
        ],
        schema=STATE_SCHEMA,
    )


def iter_state(deltas: Mapping[str, StateDelta] | Iterable[StateDelta], key_groups: int | None) -> Iterator[pa.Table]:
    """The state rows of a shard's deltas (see ``encode_state``) as tables of about ``PIECE_BYTES``, for a
    writer that writes each and lets it go."""
    if isinstance(deltas, Mapping):
        deltas = deltas.values()
    for delta in deltas:
        yield from _Pieces(delta, key_groups)


def encode_state(deltas: Mapping[str, StateDelta] | Iterable[StateDelta], key_groups: int | None) -> pa.Table:
    """The state rows (``STATE_SCHEMA``) of a shard's deltas, one per non-empty value, plus tombstones.
    ``key_groups=None`` leaves the ``key_group`` column null for readers to compute (see ``schema``)."""
    pieces = list(iter_state(deltas, key_groups))
    if not pieces:
        return _empty_state()
    return pieces[0] if len(pieces) == 1 else pa.concat_tables(pieces)


class KeptPieces:
    """Passes tables through (to a writer) and keeps them while they hold at most ``max_bytes`` in all, so
    that small state can also be kept in memory (a shard's rollback copy) without a second encoding, and
    big state is never held twice."""

    def __init__(self, pieces: Iterable[pa.Table], max_bytes: int) -> None:
        self._pieces, self.max_bytes = pieces, max_bytes
        self.kept: list[pa.Table] | None = []
        self.nbytes = 0
        self.rows = 0

    def __iter__(self) -> Iterator[pa.Table]:
        for piece in self._pieces:
            self.nbytes += piece.nbytes
            self.rows += piece.num_rows
            if self.kept is not None:
                if self.nbytes > self.max_bytes:
                    self.kept = None
                else:
                    self.kept.append(piece)
            yield piece

    def table(self) -> pa.Table | None:
        """Everything that passed, as one table; None if it was more than ``max_bytes``."""
        if self.kept is None:
            return None
        if not self.kept:
            return _empty_state()
        return self.kept[0] if len(self.kept) == 1 else pa.concat_tables(self.kept)


# ---------------------------------------------------------------------------------------------------------
# Restoring: range filter, fold of layers, back to cells.


def with_key_groups(
    table: pa.Table,
    key_groups: int,
    address: tuple[str, str] = ADDRESS_COLUMNS["state"],
) -> pa.Table:
    """``table`` with its ``key_group`` column computed where it is null (rows as shards write them), from
    the ``address`` columns (typename, id): see ``schema.ADDRESS_COLUMNS``."""
    kg = table["key_group"]
    if table.num_rows == 0 or kg.null_count == 0:
        return table
    typenames, ids = table[address[0]], table[address[1]]
    if pa.types.is_dictionary(typenames.type):
        typenames = typenames.cast(pa.string())
    types = pc.unique(typenames).to_pylist()
    if len(types) == 1:  # the common case: one function type's rows (no typename list to build)
        computed = key_groups_of(types[0], ids.to_pylist(), key_groups)
    else:
        computed = key_groups_mixed(typenames.to_pylist(), ids.to_pylist(), key_groups)
    if kg.null_count != table.num_rows:
        computed = pc.coalesce(kg, computed)
    return table.set_column(table.schema.get_field_index("key_group"), table.schema.field("key_group"), computed)


def filter_key_groups(
    table: pa.Table,
    key_group_range: tuple[int, int],
    key_groups: int,
    file_range: tuple[int, int] | None = None,
    address: tuple[str, str] = ADDRESS_COLUMNS["state"],
) -> pa.Table:
    """The rows whose key group lies in ``[start, end)``. A file written for ``file_range`` holds only
    rows of that range: if it lies within ``[start, end)``, no key group is looked at (or computed)."""
    start, end = key_group_range
    if table.num_rows == 0:
        return table
    if file_range is not None and start <= file_range[0] and file_range[1] <= end:
        return table
    table = with_key_groups(table, key_groups, address)
    kg = table["key_group"]
    lo, hi = pc.min_max(kg).values()
    if lo.as_py() >= start and hi.as_py() < end:
        return table
    return table.filter(in_range(kg, key_group_range))


FOLD_COLUMNS = ("function_type", "id", "deleted")  # what deciding a fold needs: no payload is read


def fold_layers(layers: Sequence[pa.Table]) -> pa.Table:
    """Full state from state layers, oldest first (a base, then deltas): per (function type, id) only the
    rows of the newest layer that holds the instance survive, and tombstones are dropped (see
    ``fold_masks``)."""
    layers = [t for t in layers if t.num_rows]
    kept = [t if m is None else t.filter(m) for t, m in zip(layers, fold_masks(layers))]
    kept = [t for t in kept if t.num_rows]
    if not kept:
        return _empty_state()
    return kept[0] if len(kept) == 1 else pa.concat_tables(kept, promote_options="permissive")


def fold_masks(layers: Sequence[pa.Table]) -> list[pa.BooleanArray | None]:
    """Per layer (oldest first; each needs only ``FOLD_COLUMNS``), the rows that survive the fold, or None
    where all of them do. Deciding on these narrow columns first lets a restore read each layer's payloads
    a row group at a time and keep only what survives.

    Vectorized in Arrow: the layers are concatenated newest first, so an id's first row is in the newest
    layer that holds it; ``_newest_layer_rows`` keeps that layer's rows (an instance has a row per value) in
    a few passes whatever the chain length (half the time of a hash aggregation per id, measured)."""
    live = [i for i, t in enumerate(layers) if t.num_rows]
    masks: list[pa.BooleanArray | None] = [None] * len(layers)
    if len(live) == 1:
        only = layers[live[0]]
        deleted = only["deleted"]
        deleted = deleted.combine_chunks() if isinstance(deleted, pa.ChunkedArray) else deleted
        if pc.any(deleted).as_py():
            masks[live[0]] = pc.invert(deleted)
        return masks
    if not live:
        return masks
    newest_first = [layers[i].select(list(FOLD_COLUMNS)) for i in reversed(live)]
    table = pa.concat_tables(newest_first, promote_options="permissive").combine_chunks()
    layer = pa.concat_arrays([pa.nulls(t.num_rows, pa.int32()).fill_null(i) for i, t in enumerate(newest_first)])
    function_types = table["function_type"]
    types = pc.unique(function_types).to_pylist()
    alive = pc.invert(table["deleted"].combine_chunks())
    if len(types) == 1:  # tombstones count: they hide older rows
        keep = pc.and_(_newest_layer_rows(table["id"].combine_chunks(), layer), alive)
    else:
        if pa.types.is_dictionary(function_types.type):
            function_types = function_types.cast(pa.string())
        order, newest = [], []  # rows grouped by function type, and the fold's answer for each
        for ft in types:
            where = pc.indices_nonzero(pc.equal(function_types, ft))
            order.append(where)
            newest.append(_newest_layer_rows(pc.take(table["id"], where).combine_chunks(), pc.take(layer, where)))
        # back in row order: ``order`` is a permutation, and sorting it gives its inverse
        back = pc.sort_indices(pa.chunked_array(order))
        keep = pc.and_(pc.take(pa.chunked_array(newest), back), alive)
    if isinstance(keep, pa.ChunkedArray):
        keep = keep.combine_chunks()
    offset = 0
    for i, t in zip(reversed(live), newest_first):
        part = keep.slice(offset, t.num_rows)
        offset += t.num_rows
        masks[i] = None if pc.all(part).as_py() else part
    return masks


def _newest_layer_rows(ids: pa.Array, layer: pa.Array) -> pa.BooleanArray:
    """True at the rows whose layer is the first (newest, with layers numbered newest first) to hold their id.

    The oldest layer (usually a base) comes last. Under a single newer layer, or newer layers of fewer
    than 2/3 of its rows, its rows survive where no newer row holds their id: a probe of a hash set of the
    newer ids (``is_in``) costs half of numbering its ids too (51 against 122 ms for a base of 500k under a
    delta of 160k). Otherwise, and among the newer layers, ``_first_layer_rows`` numbers the ids."""
    n = len(ids)
    oldest = layer[n - 1].as_py()
    split = pc.index(layer, oldest).as_py()  # the oldest layer's rows are the tail
    if split == 0:
        return pa.repeat(pa.scalar(True), n)
    newer_ids, newer_layer = ids.slice(0, split), layer.slice(0, split)
    if newer_layer[0].as_py() == newer_layer[split - 1].as_py():  # one newer layer: all of it survives
        newer_keep: pa.Array = pa.repeat(pa.scalar(True), split)
        newer_set = newer_ids
    elif 2 * (n - split) > 3 * split:  # the base outweighs the newer layers: numbering them alone pays
        newer_keep, newer_set = _first_layer_rows(newer_ids, newer_layer)
    else:
        return _first_layer_rows(ids, layer)[0]
    older_keep = pc.invert(pc.is_in(ids.slice(split), value_set=newer_set))
    return pa.concat_arrays([newer_keep, older_keep])


def _first_layer_rows(ids: pa.Array, layer: pa.Array) -> tuple[pa.BooleanArray, pa.Array]:
    """``_newest_layer_rows`` by numbering every id, and the distinct ids. ``dictionary_encode`` numbers ids
    in the order they first appear, so an id's first row is where the running maximum of the codes grows,
    and those rows, taken in order, give each code's layer."""
    encoded = pc.dictionary_encode(ids)
    codes = encoded.indices
    running = pc.cumulative_max(codes)
    n = len(running)
    first = pa.concat_arrays([pa.array([True]), pc.greater(running.slice(1), running.slice(0, n - 1))])
    layer_of_code = layer.filter(first)
    return pc.equal(pc.take(layer_of_code, codes), layer), encoded.dictionary


def _needs_conversion(stored: str, declared: str) -> bool:
    """Payloads of ``stored`` are not valid payloads of ``declared`` (int/long and float/double are; bytes
    of one user type are bytes of another)."""
    stored_builtin, declared_builtin = stored in BUILTIN_TYPES, declared in BUILTIN_TYPES
    if stored_builtin and declared_builtin:
        return value_column(stored) != value_column(declared)
    return stored_builtin or declared_builtin


def _convert(values: list, stored: str, declared: str, function_type: str, name: str) -> list:
    """Read payloads stored as ``stored`` as ``declared`` (a type change): through the wire bytes."""
    out = []
    for v in values:
        try:
            out.append(decode_payload(declared, encode_payload(stored, v)))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(
                f"state {name!r} of {function_type} was stored as {stored} and cannot be "
                f"read as its declared type {declared}: {exc}"
            ) from None
    return out


def decode_instances(table: pa.Table, layout: StateLayout, values: bool = False) -> dict[str, Any]:
    """``id -> cells`` for the rows of one function type (folded: no tombstones, one row per value); with
    ``values`` (a single-cell layout) ``id -> the value itself``, as the runtime holds such a type.

    Rows of a state name the layout does not declare are dropped with a warning (StateFun drops state of a
    removed spec too); a value stored under another type is converted through its wire bytes or raises.
    """
    out: dict[str, list] = {}
    if table.num_rows == 0:
        return out
    collecting = gc.isenabled()
    gc.disable()  # hundreds of thousands of new lists: no collection can free any of them
    try:
        decode_instances_into(out, table, layout, values)
        return out
    finally:
        if collecting:
            gc.enable()


def decode_instances_into(out: dict[str, Any], table: pa.Table, layout: StateLayout, values: bool = False) -> None:
    """``decode_instances`` into ``out``, which may hold instances of earlier batches: a restore decodes a
    row group at a time, and an instance's rows (one per value) may span two of them."""
    if values and layout.width != 1:
        raise ValueError(f"{layout.function_type}: values=True needs a single-cell layout")
    ft = layout.function_type
    index = {name: i for i, name in enumerate(layout.names)}
    n = len(layout.names)
    width1 = layout.width == 1
    empty = layout.empty_cells()
    names = pc.unique(table["state_name"]).to_pylist()
    single = len(names) == 1
    for name in names:
        i = index.get(name)
        sub = table if single else table.filter(pc.equal(table["state_name"], name))
        if i is None:
            log.warning(
                "checkpoint: dropping %d values of state %r of %s: not declared (declared: %s)",
                sub.num_rows,
                name,
                ft,
                list(layout.names),
            )
            continue
        declared = layout.typenames[i]
        stored_types = pc.unique(sub["value_typename"]).to_pylist()
        for stored in stored_types:
            part = sub if len(stored_types) == 1 else sub.filter(pc.equal(sub["value_typename"], stored))
            ids = part["id"].to_pylist()
            payloads = part[value_column(stored)].to_pylist()
            if stored != declared and _needs_conversion(stored, declared):
                payloads = _convert(payloads, stored, declared, ft, name)
            if values:  # the runtime's single-cell types, C-level (after the fold an id has one row)
                out.update(zip(ids, payloads))
                continue
            if width1:  # C-level: ~15% faster than a loop
                out.update(zip(ids, map(list, zip(payloads))))
                continue
            if layout.expiring:
                deadlines = part["expires_at_ms"].fill_null(0).to_pylist()
                for id, v, d in zip(ids, payloads, deadlines):
                    cells = out.get(id)
                    if cells is None:
                        cells = out[id] = empty.copy()
                    cells[i] = v
                    cells[n + i] = d
            else:
                for id, v in zip(ids, payloads):
                    cells = out.get(id)
                    if cells is None:
                        cells = out[id] = empty.copy()
                    cells[i] = v
