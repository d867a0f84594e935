"""How a shard holds the instances of one function type: ``FunctionState`` (a dict of instances) and, for
the slot runner's types, ``ColumnState`` (the same state held by column).

Both record what changed since the last checkpoint's cut, which is what a snapshot writes (see
``StateDelta``): a snapshot looks no id up.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any, cast

import pyarrow as pa

from ...types import BUILTIN_TYPES

__all__ = ["ColumnChanges", "ColumnState", "FunctionState", "slot_eligible"]

#: A column state squeezes out the holes deleted instances leave once there are more of them than this and
#: than live instances (renumbering costs about as much as a cut that takes every instance).
SQUEEZE_MIN_HOLES = 4096


def slot_eligible(specs: Iterable[Any]) -> bool:
    """One state value that never expires, of a built-in type stored as written (int, long, string, bool:
    a float is rounded as it is written, which a slot cannot do): the slot runner and ``ColumnState`` can
    hold it."""
    specs = tuple(specs)
    builtin = BUILTIN_TYPES.get(specs[0].type.typename) if len(specs) == 1 else None
    return builtin is not None and builtin.python_type is not float and not specs[0].expire_mode


class FunctionState:
    """All instances of one function type on one shard, plus which changed since the last checkpoint
    snapshot, with their new cells (None: gone): what the checkpoint encoder reads (see ``StateDelta``), so
    a snapshot looks no id up.

    ``instances`` maps ``id -> cells``, except for a single-cell type (``single``: one value that never
    expires, the common case), which maps ``id -> the value itself`` and records its changes as values:
    no list to allocate at every write and one pointer less to follow at every read (a list per instance
    cost ~150 ns a message, measured over 10k instances). Code that wants cells whatever the type uses
    ``cells_of``, ``working_cells`` and ``put``."""

    def __init__(self, typename: str, specs) -> None:
        self.typename = typename
        self.specs = tuple(specs)
        self.n = len(self.specs)
        self.expiring = any(s.expire_mode for s in self.specs)
        self.width = self.n * 2 if self.expiring else self.n
        # the cells of a new instance: n values (payloads, None: absent), then n expiry deadlines (ms, 0: none)
        self.empty: list[Any] = [None] * self.n + ([0] * self.n if self.expiring else [])
        self.after_call = tuple(
            (i, s.expire_after_millis) for i, s in enumerate(self.specs) if s.expire_mode == "after_call"
        )
        self.single = self.width == 1  # ``instances`` and ``changed`` hold values, not cells
        self.instances: MutableMapping[str, Any] = {}
        self.changed: MutableMapping[str, Any] = {}

    def cells_of(self, id: str) -> list | None:
        """The instance's cells (None: no instance); not to be changed in place (see ``working_cells``)."""
        held = self.instances.get(id)
        if self.single:
            return None if held is None else [held]
        return held

    def working_cells(self, id: str) -> list:
        """A fresh copy of the instance's cells (empty cells if there is none) for an invocation to change."""
        held = self.instances.get(id)
        if self.single:
            return [held]
        return held.copy() if held is not None else self.empty.copy()

    def put(self, id: str, cells: list, maybe_empty: bool = True) -> None:
        """Store an instance's cells, dropping the instance once it holds no value (idle costs nothing).
        ``maybe_empty=False`` (no value was deleted) skips the emptiness scan: the hot path."""
        if maybe_empty:
            for i in range(self.n):
                if cells[i] is not None:
                    break
            else:
                self.instances.pop(id, None)
                self.changed[id] = None
                return
        if self.single:
            self.instances[id] = self.changed[id] = cells[0]
        else:
            self.instances[id] = self.changed[id] = cells

    def cell_items(self) -> Iterator[tuple[str, list]]:
        """``(id, cells)`` of every instance (cells not to be changed in place)."""
        if self.single:
            return ((id, [value]) for id, value in self.instances.items())
        return iter(self.instances.items())

    def take_changes(self) -> Mapping[str, Any]:
        """The changes recorded so far (see ``changed``), handed over for good: recording starts afresh."""
        changes, self.changed = self.changed, {}
        return changes

    def capture_all(self) -> Mapping[str, Any]:
        """Every live instance as the encoder reads it (``id -> cells``, or values where ``single``), in a
        mapping that processing no longer writes to: what a full snapshot writes."""
        return dict(self.instances)

    def expire(self, now_ms: int) -> int:
        """Drop expired values everywhere (reads already hide them; this frees memory). Returns count."""
        if not self.expiring:
            return 0
        n, dropped = self.n, 0
        for id, cells in list(self.instances.items()):
            hit = False
            for i in range(n):
                d = cells[n + i]
                if cells[i] is not None and 0 < d <= now_ms:
                    cells = cells.copy() if not hit else cells
                    cells[i], cells[n + i], hit = None, 0, True
                    dropped += 1
            if hit:
                self.put(id, cells)
        return dropped

    def view(self, id: str, now_ms: int) -> dict[str, Any]:
        """The instance's current values by state name (decoded; expired values left out)."""
        cells = self.cells_of(id)
        out: dict[str, Any] = {}
        if cells is None:
            return out
        n = self.n
        for i, spec in enumerate(self.specs):
            value = cells[i]
            if value is None or (self.expiring and 0 < cells[n + i] <= now_ms):
                continue
            if isinstance(value, (bytes, bytearray)):
                value = spec.type.serializer().deserialize(value)
            out[spec.name] = value
        return out


class ColumnState(FunctionState):
    """The state of a slot-runner type (``slot_eligible``: one value that never expires) held by column,
    so that a checkpoint takes arrays instead of walking Python objects.

    Each instance has a slot for life: ``slots`` maps its id to it, ``values[slot]`` holds its value,
    ``ids[slot]`` its id, ``live[slot]`` and ``dirty[slot]`` whether it exists and whether it changed since
    the last cut (bytes of 0 or 1), and ``gone`` the ids deleted since then (tombstones). ``id_column``
    holds the ids as an Arrow array, each converted once, when the first cut after its instance's creation
    takes it. A cut swaps ``dirty`` for a zeroed one and picks the marked values (one C-level pass); the
    writer thread filters the ids in Arrow and converts the values (for integers through ``array('q')``).
    Before, the cut handed over a dict of the changes, and encoding it walked the dict and converted every
    changed id where it lay in memory: ~0.25 us a changed instance, most of a checkpoint's cost
    (bench/checkpoint_cpu.py). The values stay Python objects in a list: an ``array('q')`` would box an int
    at every read, 70 ns a message more on the slot runner (measured over 10k instances).

    A deleted instance leaves a hole (its slot is not reused, so that ``id_column`` never changes under a
    slot); holes are squeezed out at a cut once they outnumber the live instances. ``instances`` and
    ``changed`` are views with the dict interface of ``FunctionState``'s, for the paths that are not hot
    (restores, undo, queries, the general runner)."""

    def __init__(self, typename: str, specs) -> None:
        super().__init__(typename, specs)
        if not slot_eligible(self.specs):
            raise ValueError(f"{typename}: ColumnState holds one non-expiring value of a built-in type")
        self._empty_columns()
        self.instances = ColumnInstances(self)
        self.changed = ColumnChanged(self)

    def _empty_columns(self) -> None:
        self.slots: dict[str, int] = {}
        self.values: list[Any] = []
        self.ids: list[str | None] = []
        self.live = bytearray()
        self.dirty = bytearray()
        self.gone: dict[str, None] = {}
        self.holes = 0
        self.id_column: pa.Array = pa.array([], pa.string())

    # -- the slot runner's operations (it reads ``slots``, ``values`` and ``dirty`` directly) -------------

    def new_slot(self, id: str) -> int:
        """A slot for a new instance (no value yet, not marked changed)."""
        slot = len(self.ids)
        self.ids.append(id)
        self.values.append(None)
        self.live.append(1)
        self.dirty.append(0)
        self.slots[id] = slot
        if self.gone:
            self.gone.pop(id, None)  # deleted and created again since the cut: its row replaces the tombstone
        return slot

    def drop(self, id: str) -> None:
        """Delete an instance (KeyError if there is none); records no change (see ``delete``)."""
        slot = self.slots.pop(id)
        self.ids[slot] = None
        self.live[slot] = self.dirty[slot] = 0
        self.values[slot] = None  # let the value go
        self.holes += 1

    def delete(self, id: str) -> None:
        """Delete an instance if it exists, and record the tombstone (as ``FunctionState.put`` does)."""
        if id in self.slots:
            self.drop(id)
        self.gone[id] = None

    # -- snapshots --------------------------------------------------------------------------------------

    def take_changes(self) -> ColumnChanges:
        changes = self._capture(self.dirty, list(self.gone))
        self.forget_changes()
        return changes

    def forget_changes(self) -> None:
        """Record changes afresh (after a cut took them, or where nothing checkpoints), and squeeze out the
        holes once they outnumber the live instances: with no change marked, slots can be renumbered."""
        self.dirty = bytearray(len(self.ids))
        self.gone = {}
        if self.holes > max(SQUEEZE_MIN_HOLES, len(self.slots)):
            self._squeeze()

    def capture_all(self) -> ColumnChanges:
        return self._capture(bytearray(self.live), [])

    def _capture(self, mask: bytearray, gone: list[str]) -> ColumnChanges:
        """The instances marked in ``mask`` (a bytearray nobody writes to any more), as of now."""
        n = len(self.ids)
        if len(self.id_column) < n:  # ids of the instances created since the last cut, converted once
            self.id_column = pa.concat_arrays([self.id_column, pa.array(self.ids[len(self.id_column) :], pa.string())])
        values = list(itertools.compress(self.values, mask))  # the marked values, in slot order
        return ColumnChanges(self.id_column, mask, values, gone)

    def _squeeze(self) -> None:
        """Drop the holes (after a cut: nothing is marked changed, no tombstone is pending)."""
        live = self.live
        converted = len(self.id_column)  # a prefix of the slots; the ids after it are converted at the next cut
        self.id_column = self.id_column.filter(_bool_column(live[:converted]))
        self.ids = list(itertools.compress(self.ids, live))
        self.values = list(itertools.compress(self.values, live))
        self.slots = dict(zip(cast(list[str], self.ids), range(len(self.ids))))
        self.live = bytearray(b"\x01") * len(self.ids)
        self.dirty = bytearray(len(self.ids))
        self.holes = 0

    # -- bulk loading (restores) ------------------------------------------------------------------------

    def load(self, values_by_id: Mapping[str, Any]) -> None:
        """Add instances (``id -> value``) without recording changes: in bulk (no bytecode per instance)
        where the state is empty, as after a rollback cleared it."""
        if self.slots:
            for id, value in values_by_id.items():
                self.instances[id] = value
            return
        first, ids = len(self.ids), list(values_by_id)
        self.ids.extend(ids)
        self.values.extend(values_by_id.values())
        self.live.extend(b"\x01" * len(ids))
        self.dirty.extend(bytes(len(ids)))
        self.slots.update(zip(ids, range(first, first + len(ids))))

    def clear(self) -> None:
        """No instance and no recorded change."""
        self._empty_columns()


def _bool_column(flags: bytes | bytearray) -> pa.Array:
    """A boolean Arrow array of bytes of 0 or 1 (without a copy of the bytes)."""
    return pa.Array.from_buffers(pa.uint8(), len(flags), [None, pa.py_buffer(flags)]).cast(pa.bool_())


class ColumnInstances(MutableMapping):
    """``ColumnState.instances``: ``id -> value`` of the live instances, as ``FunctionState`` holds them.
    Writing through it records no change (as writing ``FunctionState.instances`` does not)."""

    def __init__(self, state: ColumnState) -> None:
        self._state = state

    def get(self, id: str, default: Any = None) -> Any:
        slot = self._state.slots.get(id)
        return default if slot is None else self._state.values[slot]

    def __getitem__(self, id: str) -> Any:
        return self._state.values[self._state.slots[id]]

    def __setitem__(self, id: str, value: Any) -> None:
        state = self._state
        slot = state.slots.get(id)
        if slot is None:
            slot = state.new_slot(id)
        state.values[slot] = value

    def __delitem__(self, id: str) -> None:
        self._state.drop(id)

    def __contains__(self, id: object) -> bool:
        return id in self._state.slots

    def __iter__(self) -> Iterator[str]:
        return iter(self._state.slots)

    def __len__(self) -> int:
        return len(self._state.slots)

    def clear(self) -> None:
        self._state.clear()

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        if isinstance(other, Mapping) and not kwargs:
            self._state.load(other)
        else:
            super().update(other, **kwargs)

    def copy(self) -> dict[str, Any]:
        return dict(self.items())


class ColumnChanged(MutableMapping):
    """``ColumnState.changed``: ``id -> value`` (None: gone) of what changed since the last cut, as
    ``FunctionState`` records it. Setting a value marks the instance (its value must be in ``instances``
    already, as ``FunctionState.put`` writes both); setting None records a tombstone."""

    def __init__(self, state: ColumnState) -> None:
        self._state = state

    def __getitem__(self, id: str) -> Any:
        state = self._state
        if id in state.gone:
            return None
        slot = state.slots[id]
        if not state.dirty[slot]:
            raise KeyError(id)
        return state.values[slot]

    def __setitem__(self, id: str, value: Any) -> None:
        state = self._state
        if value is None:
            state.gone[id] = None
            return
        state.dirty[state.slots[id]] = 1
        state.gone.pop(id, None)

    def __delitem__(self, id: str) -> None:
        state = self._state
        if id in state.gone:
            del state.gone[id]
            return
        slot = state.slots[id]
        if not state.dirty[slot]:
            raise KeyError(id)
        state.dirty[slot] = 0

    def __iter__(self) -> Iterator[str]:
        state = self._state
        return itertools.chain(cast(list[str], itertools.compress(state.ids, state.dirty)), list(state.gone))

    def __len__(self) -> int:
        return self._state.dirty.count(1) + len(self._state.gone)

    def clear(self) -> None:
        self._state.forget_changes()


class ColumnChanges(Mapping):
    """What a ``ColumnState`` cut took: the marked instances' ids and values as columns, and the
    tombstones. The checkpoint encoder reads ``columns()`` (Arrow, in the writer thread); the rare paths
    that want ``id -> value`` (a rollback's undo, merging the changes of a snapshot that never completed)
    read it as a mapping, built on first use.

    ``ids`` (an Arrow array, one id a slot) and ``mask`` (a byte a slot) cover the slots at the cut,
    ``values`` are the marked slots' values in slot order."""

    def __init__(self, ids: pa.Array, mask: bytearray, values: Sequence[Any], gone: list[str]) -> None:
        self._ids, self._mask, self._values, self.gone = ids, mask, values, gone
        self._dict: dict[str, Any] | None = None

    def columns(self) -> tuple[pa.Array, Sequence[Any]]:
        """The marked instances' ids (Arrow) and their values (in the same order)."""
        if not self._values:
            return pa.array([], pa.string()), []
        n = len(self._mask)
        return self._ids.slice(0, n).filter(_bool_column(self._mask)), self._values

    def _as_dict(self) -> dict[str, Any]:
        if self._dict is None:
            ids, values = self.columns()
            self._dict = dict(zip(ids.to_pylist(), values))
            self._dict.update(dict.fromkeys(self.gone))
        return self._dict

    def __getitem__(self, id: str) -> Any:
        return self._as_dict()[id]

    def __iter__(self) -> Iterator[str]:
        if self._dict is not None:
            return iter(self._dict)
        return itertools.chain(self.columns()[0].to_pylist(), self.gone)  # a rollback's undo wants ids only

    def __len__(self) -> int:
        return len(self._values) + len(self.gone)
