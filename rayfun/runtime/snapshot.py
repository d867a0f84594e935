"""Snapshots: this shard's part of the exactly-once checkpoints (Chandy-Lamport over the shard channels).

The coordinator asks every shard for checkpoint ``n``; a shard cuts at that call or at the first marker
``n`` from a peer, whichever comes first, and sends marker ``n`` down every channel out. What arrives on a
channel after the cut and before that channel's marker was in flight across the cut: it is recorded as
the checkpoint's channel state (``Snapshot.recorded``). The cut captures the state changed since the last
*committed* checkpoint (a delta), or every live instance (a full base); the timers; the unprocessed
messages; the source positions; the egress epochs not yet published. Once every marker is in, a thread
encodes and writes it as Parquet, and the coordinator commits the checkpoint (``complete``) or gives it up
(``aborted``).

This stage owns the bookkeeping of checkpoints (which began, which are written, which is committed, the
delta chain, the in-memory copy of the last complete one) and the encoding and reading. What the cut
gathers from the other stages (mailbox, timers, sources, egress, markers out) the shard core hands over.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from ..checkpoint.state_codec import KeptPieces, StateDelta, iter_state
from ..constants import FULL_AFTER, WRITE_INLINE_ROWS  # tuning knobs: see rayfun/constants.py
from ..errors import RayfunError
from .aio import retrieve

if TYPE_CHECKING:
    from ..checkpoint.store import CheckpointStore, RestoredShard
    from .services import ShardServices

log = logging.getLogger("rayfun")

__all__ = ["FULL_AFTER", "CheckpointRefused", "LocalCopy", "Snapshot", "Snapshots", "release_memory"]


class CheckpointRefused(RayfunError, RuntimeError):
    """A shard will not take part in a checkpoint: it has asked for a rollback, or gave that checkpoint up."""


def release_memory() -> None:
    """Hand memory freed after a restore or a big checkpoint back to the system: Arrow's pool keeps freed
    buffers, and glibc keeps freed heap (its mmap threshold grows after big frees), so a shard that read a
    big checkpoint would otherwise stay at its peak."""
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class LocalCopy(NamedTuple):
    """A shard's part of its last complete checkpoint, kept in memory for a fast rollback (no storage read).

    The state is kept as the snapshots encoded it: Arrow tables (a base, then deltas), folded only if a
    rollback needs them, the way a restore from storage folds them. Keeping the captured Python objects
    instead would keep every replaced cells list alive until the next base (~150 bytes per instance and
    layer, against ~20 in Arrow), and would hold the snapshot's dicts past their encoding."""

    checkpoint_id: int | None
    layers: list[pa.Table]
    timers: list
    messages: list
    egress: list

    def restored(self, key_group_range: tuple[int, int], key_groups: int, layouts: dict) -> RestoredShard:
        """This copy as what a shard restores from storage, state folded."""
        from ..checkpoint.restore import FoldedState, RestoredShard

        if self.checkpoint_id is None:  # the empty copy of "no checkpoint yet": a rollback to it reads nothing
            raise RuntimeError("the in-memory copy holds no checkpoint to restore")
        return RestoredShard(
            self.checkpoint_id,
            key_group_range,
            key_groups,
            FoldedState.of_tables(self.layers),
            layouts,
            self.timers,
            self.messages,
            self.egress,
            chain_rows=sum(t.num_rows for t in self.layers),
        )

    def rest(self, key_group_range: tuple[int, int], key_groups: int) -> RestoredShard:
        """This copy's timers, messages and egress, without its state (a restore that keeps or undoes the
        live instances)."""
        from ..checkpoint.restore import FoldedState, RestoredShard

        if self.checkpoint_id is None:  # as ``restored``: "no checkpoint yet" has nothing to restore
            raise RuntimeError("the in-memory copy holds no checkpoint to restore")
        return RestoredShard(
            self.checkpoint_id,
            key_group_range,
            key_groups,
            FoldedState.of_tables([]),
            {},
            self.timers,
            self.messages,
            self.egress,
        )


class Snapshot:
    """A checkpoint in progress on one shard: what was captured at the cut, and the channels whose marker
    has not arrived yet (messages on them are recorded as the checkpoint's channel state)."""

    def __init__(self, n: int) -> None:
        self.id = n
        self.waiting: set[int] = set()
        self.recorded: list[tuple] = []
        # per type (id -> cells, or -> value with True), until encoded
        self.captured: dict[str, tuple[Mapping, bool]] | None = {}
        self.layouts: dict[str, Any] = {}  # per type, as of the cut (what the captured cells are laid out by)
        self.rows = 0  # instances captured (changed ones, or all of them for a full snapshot)
        self.state: pa.Table | None = None  # the captured state, encoded (kept for the in-memory copy)
        self.too_big = False  # its state was too big to keep in memory (see local_copy_max_bytes)
        self.timers: list = []
        self.pending: list[tuple] = []
        self.egress: list[tuple] = []
        self.meta: dict[str, Any] = {}
        self.parent_id: int | None = None
        self.full = False


class Snapshots:
    """The checkpoints of one shard: in progress, written, committed, and the in-memory rollback copy."""

    def __init__(
        self,
        services: ShardServices,
        index: int,
        key_group_range: tuple[int, int],
        key_groups: int,
        local_copy_max_bytes: int,
        counters: dict[str, Any],
    ) -> None:
        self.services = services
        self.index = index
        self.key_group_range = key_group_range
        self.key_groups = key_groups
        self.local_copy_max_bytes = local_copy_max_bytes  # the in-memory copy is dropped past this
        self.counters = counters  # the shard's: "snapshot_*"
        self.store: CheckpointStore | None = None
        self.last_begun = 0  # the newest checkpoint id this shard began (ids only grow; kept across rollbacks)
        self.full_next = False  # the next snapshot writes a full base (the coordinator asked)
        self.chain_rows = 0  # delta rows committed on top of this shard's newest committed base
        self.local: LocalCopy | None = LocalCopy(None, [], [], [], [])  # state as of ``committed``
        self._rollbacks = 0  # a write that ends after a rollback belongs to a discarded world
        self.done: dict[int, asyncio.Future] = {}
        self.reset(None)

    def open_store(self, url: str, options: dict) -> None:
        from ..checkpoint import CheckpointStore

        self.store = CheckpointStore(url, **options)

    def _store(self) -> CheckpointStore:
        """The checkpoint store, which a shard of an application without checkpoints does not have."""
        store = self.store
        if store is None:
            raise RuntimeError(f"shard {self.index}: no checkpoint store (the application has no checkpoint_url)")
        return store

    def reset(self, checkpoint_id: int | None) -> None:
        """A rollback to ``checkpoint_id``: nothing in progress or written; that checkpoint is the committed
        one (deltas build on it) and records emitted from now on belong to its next epoch."""
        self._rollbacks += 1
        self.current: Snapshot | None = None
        for done in self.done.values():
            if not done.done():
                done.cancel()
        self.done = {}
        self.written: dict[int, Snapshot] = {}
        self.committed: int | None = checkpoint_id  # the newest checkpoint known complete
        self.epoch = checkpoint_id or 0  # records emitted now belong to checkpoint epoch + 1

    # -- starting and ending ------------------------------------------------------------------------------

    def requested(self, n: int, full: bool) -> asyncio.Future | None:
        """The coordinator asks for checkpoint ``n``: its future, or None if the caller must begin it.
        Raises CheckpointRefused for one this shard abandoned."""
        self.full_next = full or self.full_next
        done = self.done.get(n)
        if done is None and n <= self.last_begun:
            raise CheckpointRefused(f"shard {self.index}: checkpoint {n} was abandoned here")
        return done

    def needs_begin(self, n: int) -> bool:
        """A marker ``n`` arrived: whether it starts a snapshot here (not one finished, refused or abandoned)."""
        snap = self.current
        return (snap is None or snap.id != n) and n > self.last_begun

    def begin(self, n: int) -> asyncio.Future:
        """Start checkpoint ``n``'s bookkeeping (before the cut): its future, which nobody may ask for."""
        self.last_begun = n
        if self.current is not None:  # an older snapshot never completed (its checkpoint was given up)
            self.aborted(self.current.id)
        done = self.done[n] = asyncio.get_running_loop().create_future()
        done.add_done_callback(retrieve)  # nobody may ask for a refused or failed one
        return done

    def cut(self, n: int, runners: dict[str, Any], layouts: dict[str, Any]) -> Snapshot:
        """Capture the state of checkpoint ``n``: what changed since the last committed checkpoint, or every
        live instance (a full base). The other parts of the cut are the shard core's to fill in."""
        snap = Snapshot(n)
        by_type: dict[str, tuple[Mapping, bool]] = {}  # what ``snap.captured`` holds until encoded
        snap.captured = by_type
        snap.parent_id = self.committed
        snap.layouts = layouts
        for runner in runners.values():
            # a delta on top of the last *committed* checkpoint: what changed since then, including what a
            # snapshot that never completed had taken
            runner.uncommitted.append(runner.state.take_changes())
        # a full base instead (every live instance) when asked, at the first, or once the chain a restore
        # would read holds FULL_AFTER times the live rows: a delta-only chain makes restores slow, a base
        # at fixed intervals rewrites all state however little of it changes
        delta_rows = sum(len(c) for r in runners.values() for c in r.uncommitted)
        live_rows = sum(len(r.state.instances) for r in runners.values())
        snap.full = (
            self.full_next or self.committed is None or self.chain_rows + delta_rows > FULL_AFTER * max(live_rows, 1)
        )
        self.full_next = False
        for typename, runner in runners.items():
            # the thread that encodes reads captures nobody writes to any more (so the encoding sees the cut
            # and processing goes on): the changes taken, or every instance for a full snapshot
            # (``capture_all``: a dict's copy, or a column state's columns)
            if len(runner.uncommitted) > 1:  # an earlier snapshot never completed (rare): newer wins
                merged: dict = {}
                for changes in runner.uncommitted:
                    merged.update(changes)
                runner.uncommitted[:] = [merged]
            if snap.full and self.committed is not None:
                captured = (runner.state.capture_all(), runner.state.single)
            else:  # a delta, or the first base: the state was empty before the changes, so they are all of it
                captured = (runner.uncommitted[0], runner.state.single)
            by_type[typename] = captured
            snap.rows += len(captured[0])
        return snap

    def started(self, snap: Snapshot) -> bool:
        """The cut is complete and its markers are out: True if no marker is awaited (write it now)."""
        self.epoch = snap.id
        self.current = snap
        return not snap.waiting

    def marker(self, sender: int, n: int) -> bool:
        """Marker ``n`` from ``sender`` arrived: True if it was the last one the snapshot awaited."""
        snap = self.current
        if snap is None or snap.id != n:
            return False  # refused (a rollback is pending) or already complete
        snap.waiting.discard(sender)
        return not snap.waiting

    def aborted(self, n: int) -> None:
        """Checkpoint ``n`` will never complete: drop what this shard holds of it and of older ones."""
        self.last_begun = max(self.last_begun, n)
        if self.current is not None and self.current.id <= n:
            self.current = None
        for k in [k for k in self.done if k <= n]:
            done = self.done.pop(k)
            if not done.done():
                done.cancel()
        for k in [k for k in self.written if k <= n]:
            del self.written[k]

    def complete(self, n: int, runners: dict[str, Any]) -> None:
        """Checkpoint ``n`` is durable everywhere: it is the base of the next deltas."""
        if self.committed is None or n > self.committed:
            self.committed = n
            if self.epoch == n:  # no newer snapshot began: the changes it took are in the checkpoint now
                for runner in runners.values():
                    runner.uncommitted.clear()
            snap = self.written.pop(n, None)
            if snap is not None:
                self.chain_rows = 0 if snap.full else self.chain_rows + snap.rows
                self._keep_local_copy(snap)
        for k in [k for k in self.written if k <= n]:
            del self.written[k]
        for k in [k for k in self.done if k <= n]:
            del self.done[k]

    # -- writing ------------------------------------------------------------------------------------------

    def finish(self) -> None:
        """Every marker is in: write the snapshot in progress (a task that resolves its ``done`` future)."""
        snap, self.current = self.current, None
        if snap is None:
            raise RuntimeError(f"shard {self.index}: no snapshot in progress to write")
        task = asyncio.get_running_loop().create_task(self._write(snap, self.done[snap.id], self._rollbacks))
        self.services.track_task(task)

    async def _write(self, snap: Snapshot, done: asyncio.Future, rollbacks: int) -> None:
        try:
            if self._inline(snap):
                part = self._write_part(snap)
            else:
                # encoding and I/O run in a thread: Parquet compression and storage calls release the GIL,
                # so processing goes on meanwhile (the captures are not written to any more, and the
                # cells lists in them are never mutated in place)
                part = await asyncio.get_running_loop().run_in_executor(None, self._write_part, snap)
        except Exception as exc:
            log.exception("shard %d: writing checkpoint %d failed", self.index, snap.id)
            if not done.done():
                done.set_exception(exc)
            return
        if rollbacks == self._rollbacks and not done.done():
            self.written[snap.id] = snap
            done.set_result(part)

    def _inline(self, snap: Snapshot) -> bool:
        """Write ``snap`` on the event loop rather than in a thread: a small part to a local disk. A thread
        hands the GIL back and forth with the busy loop (up to GIL_SWITCH_S each time): a part of 10k
        instances took ~30 ms in a thread for ~10 ms of CPU, and the checkpoint, and with it exactly-once
        egress, waited for it."""
        rows = snap.rows + len(snap.pending) + len(snap.recorded) + len(snap.timers) + len(snap.egress)
        return rows <= WRITE_INLINE_ROWS and self._store().blobs.local

    def _write_part(self, snap: Snapshot):
        began, cpu = time.perf_counter(), time.thread_time()
        try:
            return self._write_part_now(snap)
        finally:
            self.counters["snapshot_write_s"] += time.perf_counter() - began
            self.counters["snapshot_write_cpu_s"] += time.thread_time() - cpu

    def _write_part_now(self, snap: Snapshot):
        captured, store = snap.captured, self._store()
        if captured is None:
            raise RuntimeError(f"shard {self.index}: snapshot {snap.id} was written already")
        deltas = [StateDelta(snap.layouts[t], instances, values=values) for t, (instances, values) in captured.items()]
        snap.captured = None  # the deltas hold the state now
        # encoded and written a piece at a time (big state is never all in Arrow); the pieces are kept for
        # the in-memory rollback copy only while they are small
        pieces = KeptPieces(iter_state(deltas, None), self.local_copy_max_bytes)  # key groups: readers'
        part = store.write_shard_part(
            snap.id,
            self.index,
            self.key_group_range,
            key_groups=self.key_groups,
            state_pieces=pieces,
            layouts={d.layout.function_type: d.layout for d in deltas},
            parent_id=snap.parent_id,
            full=snap.full,
            timers=snap.timers,
            messages=snap.pending + snap.recorded,
            egress=snap.egress,
            meta=snap.meta,
        )
        del deltas
        snap.state = pieces.table()
        if snap.state is None:  # big state: no second copy in memory
            snap.too_big = True
            release_memory()
        return part

    # -- the in-memory copy and restoring ---------------------------------------------------------------

    def _keep_local_copy(self, snap: Snapshot) -> None:
        """Add a committed snapshot to the in-memory copy of the last complete checkpoint, so that a shard
        that survives a failure rolls back from memory instead of re-reading storage (only the replacement
        of the shard that died reads its part). A full snapshot replaces the layers; bases are frequent
        enough (``FULL_AFTER``) that the layers stay a small multiple of the live state. Past
        ``local_copy_max_bytes`` there is no copy (a second copy of big state would double the shard's
        memory): the shard then rolls back from storage, like a replacement."""
        local = self.local
        if snap.too_big or (not snap.full and (local is None or local.checkpoint_id != snap.parent_id)):
            self.local = None  # the copy is not the snapshot's parent: restore from storage next time
            return
        layers = [] if snap.full or local is None else list(local.layers)  # not full: local is the parent
        if snap.state is not None and (snap.full or snap.state.num_rows):
            layers.append(snap.state)
        self.local = self._bounded(LocalCopy(snap.id, layers, snap.timers, snap.pending + snap.recorded, snap.egress))

    def _bounded(self, copy: LocalCopy) -> LocalCopy | None:
        if sum(t.nbytes for t in copy.layers) > self.local_copy_max_bytes:
            return None
        return copy

    def in_memory(self, checkpoint_id: int) -> bool:
        """Whether checkpoint ``checkpoint_id`` can be restored from the in-memory copy (this shard survived)."""
        return self.local is not None and self.local.checkpoint_id == checkpoint_id

    async def read(self, checkpoint_id: int, layouts: dict | None) -> RestoredShard:
        """This shard's part of ``checkpoint_id``, from memory if ``layouts`` is given (see ``in_memory``),
        else from storage; read in a thread."""
        if layouts is not None:
            local = self.local
            if local is None:
                raise RuntimeError(f"shard {self.index}: no in-memory copy of checkpoint {checkpoint_id}")

            def read():
                return local.restored(self.key_group_range, self.key_groups, layouts)

        else:
            store, key_group_range = self._store(), self.key_group_range

            def read():
                return store.load_shard(checkpoint_id, key_group_range)

        return await asyncio.get_running_loop().run_in_executor(None, read)

    async def read_ranges(
        self, checkpoint_id: int, state_ranges: list[tuple[int, int]]
    ) -> tuple[RestoredShard, list[RestoredShard]]:
        """For a shard that keeps its live state (see ``ShardCore._keeps_live_state``): the timers, messages
        and egress of checkpoint ``checkpoint_id`` for this shard's range (from the in-memory copy when it is
        that checkpoint's and the range gains nothing), and the state of each of ``state_ranges`` (from
        storage), read in a thread."""

        local, key_group_range, key_groups = self.local, self.key_group_range, self.key_groups
        store = self._store()

        def read():
            if not state_ranges and local is not None and local.checkpoint_id == checkpoint_id:
                rest = local.rest(key_group_range, key_groups)
            else:
                rest = store.load_shard(checkpoint_id, key_group_range, tables=("timers", "messages", "egress"))
            return rest, [store.load_shard(checkpoint_id, r, tables=("state",)) for r in state_ranges]

        return await asyncio.get_running_loop().run_in_executor(None, read)

    async def read_instances(
        self, checkpoint_id: int, wanted: dict[str, tuple[list[str], Any, bool]]
    ) -> tuple[RestoredShard, dict[str, dict[str, Any]]]:
        """For a shard that undoes what changed since checkpoint ``checkpoint_id``, its in-memory copy's (see
        ``ShardCore._changed_since``): the copy's timers, messages and egress, and per function type the
        checkpoint's cells of the ids ``wanted`` (``typename -> (ids, StateLayout, values)``, ``values``:
        a single-cell type's values instead of cells; an id it did not hold is absent), folded from the
        copy's layers the way a restore folds them; read in a thread."""
        from ..checkpoint.restore import FoldedState

        local, key_group_range, key_groups = self.local, self.key_group_range, self.key_groups
        if local is None or local.checkpoint_id != checkpoint_id:
            raise RuntimeError(f"shard {self.index}: no in-memory copy of checkpoint {checkpoint_id}")

        def read():
            rest = local.rest(key_group_range, key_groups)
            cells = {}
            for typename, (ids, layout, values) in wanted.items():
                value_set = pa.array(ids, pa.string())
                tables = [
                    t.filter(pc.and_(pc.equal(t["function_type"], typename), pc.is_in(t["id"], value_set=value_set)))
                    for t in local.layers
                ]
                cells[typename] = FoldedState.of_tables(tables).instances(layout, only_type=False, values=values)
            return rest, cells

        return await asyncio.get_running_loop().run_in_executor(None, read)

    def kept(self, chain_rows: int) -> None:
        """A restore kept the live state: it is the committed checkpoint's, and the base of the next deltas
        (the in-memory copy stays if it is that checkpoint's and the range did not change: see ``_place``)."""
        self.chain_rows = chain_rows
        if self.local is not None and self.local.checkpoint_id != self.committed:
            self.local = None

    def loaded(self, restored: RestoredShard) -> None:
        """A checkpoint was restored: it is the in-memory copy and the base of the delta chain now."""
        self.chain_rows = max(0, restored.chain_rows - restored.state.num_rows)  # the deltas, roughly
        state = restored.state  # kept for a rollback only if small (a big one was read from a file)
        self.local = None
        if state.in_memory and state.nbytes <= self.local_copy_max_bytes:
            self.local = self._bounded(
                LocalCopy(restored.checkpoint_id, [state.table()], restored.timers, restored.messages, restored.egress)
            )
