"""A shard: the Ray actor that owns a range of key groups and runs every function instance in it.

Data path inside a shard (one asyncio event loop, one thread, so no locks)::

    deliver() / sources / timers --> mailbox --> runner.invoke() --> effects
                                                                      |-> outbox[destination shard]
                                                                      |-> timers (send_after)
                                                                      '-> egress buffer --> sinks

- Messages between shards travel in batches of rows ``(target type, target id, caller, value type,
  payload)``: one Ray call per destination shard per flush, never one per message. Rows, not columns:
  building and iterating them is the cheapest thing in Python, and pickle moves them at ~0.1 us each
  (measured); the per-message Python work, not the transfer, is what bounds throughput. Messages for
  this shard skip Ray entirely.
- Every channel (sender shard -> this shard, and the driver's) carries sequence numbers: Ray does not keep
  call order for async actors, so ``deliver`` re-orders. The same channels will carry checkpoint markers.
- Backpressure: ``deliver`` returns only once the mailbox is below its high-water mark; a shard reads its
  sources only while its own mailbox is short and its batches to every peer have been accepted. Processing
  itself never waits on a peer, so cyclic messaging cannot deadlock.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import gc
import logging
import os
import pickle
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa

from ..checkpoint.state_codec import KeptPieces, StateDelta, StateLayout, iter_state
from ..functions import StatefulFunctions
from ..io import DEAD_LETTER_EGRESS, DeadLetter, DeliverySemantic, Sink, Source
from ..messages import EgressMessage, Message
from .aio import retrieve
from .deadletters import dead_letter_record
from .embedded import EmbeddedFunction
from .partitioning import Partitioner, shard_ranges
from .registry import TypeRegistry
from .status import ShardStatus
from .timers import InvalidEffect, TimerService, TokenInUseError

if TYPE_CHECKING:
    from ..checkpoint.store import RestoredShard

log = logging.getLogger("rayfun")

__all__ = ["DRIVER", "ShardActor", "ShardConfig", "ShardCore"]

DRIVER = -1  # channel id of messages sent by the driver (app.send)
MAX_DUE_MS = 2**63 - 1  # timers are stored as 64-bit milliseconds since the epoch
SWEEP_INTERVAL_S = 5.0  # how often expired state is dropped from instances that were not touched
FULL_AFTER = 3.0  # a full base once the deltas on the last one hold this many times the live rows (a restore
# then reads at most 4x the live rows; 1.5 wrote ~20 % more rows where most state changes)


@dataclass
class ShardConfig:
    """Everything a shard needs to run, shipped once when it starts."""

    functions: StatefulFunctions
    shards: int
    key_groups: int
    endpoints: list = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    sinks: list[Sink] = field(default_factory=list)
    checkpoint_url: str | None = None
    checkpoint_options: dict = field(default_factory=dict)
    collector: Any = None  # the in-memory egress collector actor (see egress_collector.py)
    run_id: str = ""  # the application's id across restores (see _sink)
    chunk_size: int = 16384  # messages processed between flushes
    mailbox_high: int = 65536  # deliver() waits while the mailbox holds more than this
    mailbox_low: int = 16384  # ... until it is back under this; sources read only below it
    max_outstanding: int = 4  # unacknowledged batches per peer before sources pause
    egress_high: int = 262144  # exactly-once records held for their checkpoint before sources pause
    local_copy_max_bytes: int = 256 * 2**20  # the in-memory rollback copy is dropped past this (big state)


class CheckpointRefused(RuntimeError):
    """A shard will not take part in a checkpoint: it has asked for a rollback, or gave that checkpoint up."""


def _release_memory() -> None:
    """Hand memory freed after a restore or a big checkpoint back to the system: Arrow's pool keeps freed
    buffers, and glibc keeps freed heap (its mmap threshold grows after big frees), so a shard that read a
    big checkpoint would otherwise stay at its peak."""
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class _Channel:
    """Re-orders the batches (and checkpoint markers) of one sender by sequence number."""

    __slots__ = ("early", "expected", "received")

    def __init__(self) -> None:
        self.expected = 0
        self.early: dict[int, tuple] = {}
        self.received = 0  # messages accepted from this channel


class _LocalCopy(NamedTuple):
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


class _Snapshot:
    """A checkpoint in progress on one shard: what was captured at the cut, and the channels whose marker
    has not arrived yet (messages on them are recorded as the checkpoint's channel state)."""

    def __init__(self, n: int) -> None:
        self.id = n
        self.waiting: set[int] = set()
        self.recorded: list[tuple] = []
        # per type (id -> cells, or -> value with True), until encoded
        self.captured: dict[str, tuple[dict, bool]] | None = {}
        self.rows = 0  # instances captured (changed ones, or all of them for a full snapshot)
        self.state: pa.Table | None = None  # the captured state, encoded (kept for the in-memory copy)
        self.too_big = False  # its state was too big to keep in memory (see local_copy_max_bytes)
        self.timers: list = []
        self.pending: list[tuple] = []
        self.egress: list[tuple] = []
        self.meta: dict[str, Any] = {}
        self.parent_id: int | None = None
        self.full = False


class _SourceSlot:
    __slots__ = ("exhausted", "idle", "name", "partition", "source_id", "source_index")

    def __init__(self, source_id: str, name: str, partition) -> None:
        self.source_id, self.name, self.partition = source_id, name, partition
        self.source_index = 0
        self.exhausted = False
        self.idle = False  # the last poll returned nothing


class ShardCore:
    """The shard's logic, in a plain class (see ShardActor for why it is not the actor itself)."""

    def __init__(self, index: int, config: ShardConfig) -> None:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        self.index = index
        self.config = config
        self.partitioner = Partitioner(config.key_groups, config.shards)
        self.key_group_range = shard_ranges(config.key_groups, config.shards)[index]
        self.registry = TypeRegistry(config.functions, config.endpoints)
        self.runners: dict[str, Any] = {spec.typename: EmbeddedFunction(spec, self) for spec in config.functions}
        self._run_fns = {typename: runner.run for typename, runner in self.runners.items()}
        self._route_cache: dict[str, dict[str, int]] = {}
        self._clients: dict[Any, Any] = {}  # endpoint -> RemoteFunctionClient
        self._expiring = any(r.state.expiring for r in self.runners.values())
        self._next_sweep = 0.0
        self.timers = TimerService()
        self.epoch_token = object()
        self.peers: list = []
        n = config.shards
        self._out: list[tuple | None] = [None] * n
        self._send_seq = [0] * n
        self._sent = [0] * n
        self._outstanding = [0] * n
        self._channels: dict[int, _Channel] = {}
        self._mailbox: deque = deque()
        self._backlog = 0  # messages in the mailbox
        # messages a runner holds until their invocations end (async functions: running and queued per
        # address; remote functions: in flight and queued): they count toward backpressure like the
        # mailbox, or a slow async function would let the sources read without bound
        self._parked = 0
        self._sources: list[_SourceSlot] = []
        self._sinks: dict[str, tuple[Sink, Any]] = {}
        self._sink_specs = {s.id: s for s in config.sinks}
        self._egress_now: dict[str, list[EgressMessage]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._wake_event: asyncio.Event | None = None
        self._below_high: asyncio.Event | None = None
        self._timer_handle: asyncio.TimerHandle | None = None
        self._timer_at: int | None = None
        self._loop_task: asyncio.Task | None = None
        self._failure: str | None = None
        self.generation = 0
        self._restoring = False  # a rollback is loading state: deliveries of its generation wait
        self._restore_waiters: list[asyncio.Future] = []
        self._epoch = 0  # records emitted now belong to checkpoint epoch + 1
        self._snapshot: _Snapshot | None = None
        self._snapshots_done: dict[int, asyncio.Future] = {}
        self._last_begun = 0  # the newest checkpoint id this shard began (ids only grow)
        self._epoch_egress: list[EgressMessage] = []  # exactly-once records of the current epoch
        self._unpublished: dict[int, list[EgressMessage]] = {}
        self._store = None
        self._committed: int | None = None  # the newest checkpoint known complete (deltas build on it)
        self._written: dict[int, _Snapshot] = {}
        self._full_next = False  # the next snapshot writes a full base (the coordinator asked)
        self._chain_rows = 0  # delta rows committed on top of this shard's newest committed base
        self._local: _LocalCopy | None = _LocalCopy(None, [], [], [], [])  # state as of ``_committed``
        self._layout_cache: dict[str, Any] = {}
        self.counters = {
            "snapshot_capture_s": 0.0,
            "snapshot_write_s": 0.0,
            "snapshot_write_cpu_s": 0.0,
            "snapshot_commit_s": 0.0,
            "idle_s": 0.0,
            "ingested": 0,
            "processed": 0,
            "dead_letters": 0,
            "egress": 0,
            "timers_fired": 0,
        }

    # -- lifecycle --------------------------------------------------------------------------------------

    def adopt(self, index: int) -> None:
        """Become shard ``index`` (a standby replacing a dead shard; nothing has run here yet)."""
        self.index = index
        self.key_group_range = shard_ranges(self.config.key_groups, self.config.shards)[index]

    async def start(self, peers: list, source_partitions: list[tuple[int, str, Any]]) -> None:
        """Connect to the other shards, open the assigned source partitions, start processing."""
        self.peers = peers
        self._init_loop_objects()
        self._open_sources(source_partitions)
        self._open_sinks()
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    def _init_loop_objects(self) -> None:
        if self.config.checkpoint_url is not None:
            from ..checkpoint import CheckpointStore

            self._store = CheckpointStore(self.config.checkpoint_url, **self.config.checkpoint_options)
        # Millions of short-lived row tuples would trigger a young-generation collection every 700
        # allocations, and full collections would walk every instance's state: collect far less often.
        gc.set_threshold(100_000, 50, 1000)
        self._wake_event = asyncio.Event()
        self._below_high = asyncio.Event()
        self._below_high.set()

    def _layout(self, typename: str):
        layout = self._layout_cache.get(typename)
        if layout is None:
            layout = self._layout_cache[typename] = StateLayout.of(typename, self.runners[typename].state.specs)
        return layout

    def _open_sources(self, source_partitions: list[tuple[int, str, Any]]) -> None:
        for source_index, name, resume_state in source_partitions:
            source = self.config.sources[source_index]
            slot = _SourceSlot(source.id, name, source.build_partition(name, resume_state))
            slot.source_index = source_index
            self._sources.append(slot)

    def _halt(self) -> None:
        """Stop processing: cancel the loop and every task, close the source partitions."""
        if self._loop_task:
            self._loop_task.cancel()
            self._loop_task = None  # the loop ends at its next turn even if a wait swallowed the cancel
        for task in list(self._tasks):
            task.cancel()
        for slot in self._sources:
            try:
                slot.partition.close()
            except Exception:
                log.exception("closing source partition %s/%s", slot.source_id, slot.name)

    async def stop(self) -> None:
        self._halt()
        self._publish_now()
        for client in self._clients.values():
            await client.close()
        for _, partition in self._sinks.values():
            try:
                partition.close()
            except Exception:
                log.exception("closing sink partition")

    # -- inbound ----------------------------------------------------------------------------------------

    async def deliver(
        self, sender: int, seq: int, data: bytes | None, generation: int, marker: int | None = None
    ) -> None:
        """Accept a pickled batch of rows, or checkpoint ``marker``, from ``sender`` (a shard index, or
        DRIVER) in channel order. Anything from an older generation (before a rollback) is dropped; a
        batch from a newer one (a peer that finished its rollback first) waits until this shard has too."""
        if (generation != self.generation or self._restoring) and (
            generation < self.generation or not await self._restored(generation)
        ):
            return
        item = marker if data is None else pickle.loads(data)
        channel = self._channels.get(sender)
        if channel is None:
            channel = self._channels[sender] = _Channel()
        if seq != channel.expected:
            channel.early[seq] = item
        else:
            self._take(sender, channel, item)
            channel.expected += 1
            while channel.expected in channel.early:
                self._take(sender, channel, channel.early.pop(channel.expected))
                channel.expected += 1
        self.wake()
        if self._backlog + self._parked > self.config.mailbox_high:
            self._below_high.clear()
            await self._below_high.wait()

    async def _restored(self, generation: int) -> bool:
        """Wait until this shard has rolled back to ``generation``; False if it moved past it meanwhile."""
        while self.generation < generation or self._restoring:
            waiter = asyncio.get_running_loop().create_future()
            self._restore_waiters.append(waiter)
            await waiter
        return self.generation == generation

    def _take(self, sender: int, channel: _Channel, item: Any) -> None:
        if type(item) is int:
            self._on_marker(sender, item)
            return
        self._accept(channel, item)
        snap = self._snapshot
        if snap is not None and sender in snap.waiting and item:
            snap.recorded.extend(item)  # in flight across the cut: part of the checkpoint's channel state

    def _accept(self, channel: _Channel, batch: list) -> None:
        n = len(batch)
        if n:
            self._mailbox.append((batch, 0))
            self._backlog += n
            channel.received += n

    # -- the processing loop ----------------------------------------------------------------------------

    def wake(self) -> None:
        if self._wake_event is not None:
            self._wake_event.set()

    @staticmethod
    def now_ms() -> int:
        return int(time.time() * 1000)

    async def _run(self) -> None:
        me = asyncio.current_task()
        try:
            # Python 3.11's wait_for can swallow a cancellation that races its timeout: the loop also ends
            # once it is no longer the shard's loop (it would read sources already closed)
            while self._loop_task is me:
                worked = False
                if self._mailbox:
                    self._process(self.config.chunk_size)
                    worked = True
                if self._sources and self._may_read_sources():
                    worked = self._read_sources() or worked
                worked = self._flush() or worked
                if time.monotonic() >= self._next_sweep:
                    self._housekeeping()
                if worked:
                    await asyncio.sleep(0)
                    continue
                self._wake_event.clear()
                polling = any(not s.exhausted for s in self._sources)
                t0 = time.perf_counter()
                try:
                    await asyncio.wait_for(self._wake_event.wait(), 0.01 if polling else None)
                except asyncio.TimeoutError:
                    pass
                self.counters["idle_s"] += time.perf_counter() - t0
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug: make it visible to the coordinator rather than hang
            log.exception("shard %d processing loop failed", self.index)
            self._failure = f"{type(exc).__name__}: {exc}"

    def _process(self, budget: int) -> None:
        processed = 0
        run_fns = self._run_fns
        while self._mailbox and processed < budget:
            batch, start = self._mailbox.popleft()
            end = min(len(batch), start + budget - processed)
            now = self.now_ms()
            i = start
            while i < end:
                run = run_fns.get(batch[i][0])
                if run is None:
                    run = self._remote_runner(batch[i][0])
                if run is None:
                    self._unknown_target(*batch[i])
                    i += 1
                else:
                    i = run(batch, i, end, now)
            if end < len(batch):
                self._mailbox.appendleft((batch, end))
            processed += end - start
        self._backlog -= processed
        self.counters["processed"] += processed
        self._release_deliveries()

    def park(self, n: int = 1) -> None:
        """A runner holds ``n`` more messages until their invocations end (see ``_parked``)."""
        self._parked += n

    def unpark(self, n: int = 1) -> None:
        """``n`` held messages are done: room for deliveries and sources again once under the low mark."""
        self._parked -= n
        self._release_deliveries()

    def _release_deliveries(self) -> None:
        """Let deliveries that wait for room go on once the shard holds no more than ``mailbox_low``."""
        if self._backlog + self._parked <= self.config.mailbox_low and not self._below_high.is_set():
            self._below_high.set()

    def _housekeeping(self) -> None:
        """Every few seconds: drop expired values of instances nobody touched since (reads already hide
        them; this frees their memory and their rows in the next checkpoint). Without checkpoints, forget
        the recorded changes, which only snapshots consume (they would keep every id ever seen)."""
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL_S
        now = self.now_ms()
        for runner in self.runners.values():
            if self._expiring:
                runner.state.expire(now)
            if self._store is None:
                runner.state.changed.clear()

    def _remote_runner(self, typename: str):
        """The runner of a remote function type, created on its first message (endpoints match patterns)."""
        endpoint = self.registry.endpoint_for(typename)
        if endpoint is None:
            return None
        from .remote import RemoteFunction

        client = self._clients.get(endpoint)
        if client is None:
            from ..remote import RemoteFunctionClient

            client = self._clients[endpoint] = RemoteFunctionClient(endpoint)
        runner = self.runners[typename] = RemoteFunction(typename, endpoint, client, self)
        self._run_fns[typename] = runner.run
        return runner.run

    def _may_read_sources(self) -> bool:
        if self._backlog + self._parked > self.config.mailbox_low:
            return False
        if len(self._epoch_egress) + sum(map(len, self._unpublished.values())) > self.config.egress_high:
            return False  # egress waits for a checkpoint that does not come (storage down): stop reading
        if self._clients and (
            any(getattr(r, "blocked", 0) for r in self.runners.values())
            or any(c.saturated for c in self._clients.values())
        ):
            return False  # a remote function is the bottleneck: let it catch up (StateFun's backpressure)
        limit = self.config.max_outstanding
        return all(o < limit for o in self._outstanding)

    def _read_sources(self) -> bool:
        got = False
        for slot in self._sources:
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
                self._route_input(slot, batch)
                got = True
        return got

    def _route_input(self, slot: _SourceSlot, batch: list) -> None:
        """Route what a source partition returned: rows, Messages or DeadLetters (rows: the fast path)."""
        registry, caches, out, owner = self.registry, self._route_cache, self._out, self.partitioner.shard_of
        for item in batch:
            if type(item) is tuple:
                ttype, tid = item[0], item[1]
                row = item
            elif isinstance(item, Message):
                ttype, tid = item.target_typename, item.target_id
                row = (ttype, tid, None, item.value_type_name, item.payload)
            elif isinstance(item, DeadLetter):
                self._dead_letter(item.reason, source=item.source, payload=item.payload)
                continue
            else:
                self._dead_letter(f"source returned {type(item).__name__}, not a Message", source=slot.source_id)
                continue
            cache = caches.get(ttype)
            if cache is None:
                if ttype not in registry:
                    self._dead_letter(
                        f"unknown function type {ttype!r} (bound: {registry.describe()})",
                        source=slot.source_id,
                        function=ttype,
                        id=tid,
                        value_typename=row[3],
                        payload=row[4],
                    )
                    continue
                cache = caches[ttype] = {}
            dest = cache.get(tid)
            if dest is None:
                if len(cache) > 1_000_000:
                    cache.clear()
                dest = cache[tid] = owner(ttype, tid)
            rows = out[dest]
            if rows is None:
                out[dest] = [row]
            else:
                rows.append(row)

    # -- outbound ---------------------------------------------------------------------------------------

    def route(self, ttype: str, tid: str, caller: tuple[str, str] | None, vtype: str, payload: Any) -> None:
        cache = self._route_cache.get(ttype)
        if cache is None:
            cache = self._route_cache[ttype] = {}
        dest = cache.get(tid)
        if dest is None:
            if len(cache) > 1_000_000:  # bound the memory of the cache, not of the state
                cache.clear()
            dest = cache[tid] = self.partitioner.shard_of(ttype, tid)
        rows = self._out[dest]
        if rows is None:
            self._out[dest] = [(ttype, tid, caller, vtype, payload)]
        else:
            rows.append((ttype, tid, caller, vtype, payload))

    def _flush(self) -> bool:
        """Send every outbox; returns whether messages were queued locally (more work for this loop)."""
        local = False
        out = self._out
        for dest in range(len(out)):
            rows = out[dest]
            if rows is None:
                continue
            out[dest] = None
            n = len(rows)
            if dest == self.index:
                self._mailbox.append((rows, 0))
                self._backlog += n
                local = True
                continue
            seq = self._send_seq[dest]
            self._send_seq[dest] = seq + 1
            self._sent[dest] += n
            self._outstanding[dest] += 1
            # pickled here: Ray's own path for a list (msgpack, then pickle per element) costs ~5x more
            ref = self.peers[dest].deliver.remote(self.index, seq, pickle.dumps(rows, protocol=5), self.generation)
            self.track_task(asyncio.get_running_loop().create_task(self._await_delivery(dest, ref)))
        if self._egress_now:
            self._publish_now()
        return local

    async def _await_delivery(self, dest: int, ref) -> None:
        generation = self.generation
        try:
            await ref
        except Exception as exc:
            if generation != self.generation:
                return
            if self._failure is None:  # once: the coordinator rolls everything back anyway
                log.error("shard %d: delivery to shard %d failed: %s", self.index, dest, str(exc).splitlines()[0])
            self._failure = f"shard {dest} is unreachable"
        finally:
            if generation == self.generation:  # a rollback reset the counters (and cancelled this task)
                self._outstanding[dest] -= 1
                self.wake()

    def track_task(self, task: asyncio.Task) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- effects of an invocation -----------------------------------------------------------------------

    def apply_effects(
        self,
        typename: str,
        id: str,
        sends: list | None,
        timers: list | None,
        egress: list | None,
        now_ms: int,
        strict: bool = True,
    ) -> None:
        """Commit a successful invocation's sends, timers and egress records (validated first).

        ``strict=False`` (remote answers, already past the function): a message to a function type that
        does not exist is dead-lettered rather than failing the whole answer."""
        if timers:
            self._check_timers(typename, id, timers, now_ms)
        caller = (typename, id)
        if sends:
            registry = self.registry
            for m in sends:
                if not strict and m.target_typename not in registry:
                    self._dead_letter(
                        f"{typename} (id {id!r}) sent to unknown function type "
                        f"{m.target_typename!r} (bound: {registry.describe()})",
                        function=m.target_typename,
                        id=m.target_id,
                        caller=caller,
                        value_typename=m.value_type_name,
                        payload=m.payload,
                    )
                    continue
                self.route(m.target_typename, m.target_id, caller, m.value_type_name, m.payload)
        if timers:
            for delay_ms, message, token in timers:
                if message is None:
                    self.timers.cancel(typename, id, token)
                else:
                    self.timers.add(
                        now_ms + delay_ms,
                        typename,
                        id,
                        token,
                        message.target_typename,
                        message.target_id,
                        message.value_type_name,
                        message.payload,
                    )
            self._schedule_timers()
        if egress:
            for record in egress:
                self.emit(record)

    def _check_timers(self, typename: str, id: str, timers: list, now_ms: int) -> None:
        """Refuse delayed messages that could never be stored (a due time past a 64-bit millisecond clock)
        and cancellation tokens still in use, before anything of the invocation is applied."""
        pending: dict[str, bool] = {}
        for delay_ms, message, token in timers:
            if message is not None and now_ms + delay_ms > MAX_DUE_MS:
                raise InvalidEffect(
                    f"{typename} (id {id!r}) sent a message to {message.target_typename} with a "
                    f"delay of {delay_ms} ms, past the latest time a timer can hold"
                )
            if not token:
                continue
            live = pending.get(token)
            if live is None:
                live = self.timers.token_pending(typename, id, token)
            if message is None:
                pending[token] = False
            elif live:
                raise TokenInUseError(f"cancellation token {token!r} of {typename}/{id} is still pending")
            else:
                pending[token] = True

    def invocation_failed(
        self, typename: str, id: str, caller, vtype: str, payload: Any, exc: BaseException, endpoint: str | None = None
    ) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        self._dead_letter(
            f"function {typename} (id {id!r}) failed: {reason}",
            function=typename,
            id=id,
            caller=caller,
            endpoint=endpoint,
            value_typename=vtype,
            payload=payload,
        )

    def _unknown_target(self, ttype: str, tid: str, caller, vtype: str, payload: Any) -> None:
        self._dead_letter(
            f"unknown function type {ttype!r} (bound: {self.registry.describe()})",
            function=ttype,
            id=tid,
            caller=caller,
            value_typename=vtype,
            payload=payload,
        )

    def fail(self, reason: str) -> None:
        """Ask the coordinator to roll everything back to the last checkpoint (it polls for this)."""
        if self._failure is None:
            self._failure = reason

    def dead_letter(self, reason: str, **fields: Any) -> None:
        self._dead_letter(reason, **fields)

    def layout_changed(self, typename: str) -> None:
        self._layout_cache.pop(typename, None)
        self._expiring = any(r.state.expiring for r in self.runners.values())

    def _dead_letter(self, reason: str, **fields: Any) -> None:
        self.counters["dead_letters"] += 1
        log.warning("dead letter: %s", reason)
        self.emit(dead_letter_record(reason, **fields))

    # -- timers -----------------------------------------------------------------------------------------

    def _schedule_timers(self) -> None:
        due = self.timers.next_due()
        if due is None or (self._timer_at is not None and self._timer_at <= due):
            return
        if self._timer_handle is not None:
            self._timer_handle.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, (due - self.now_ms()) / 1000.0)
        self._timer_at = due
        self._timer_handle = loop.call_later(delay, self._fire_timers)

    def _fire_timers(self) -> None:
        self._timer_handle = None
        self._timer_at = None
        fired = self.timers.pop_due(self.now_ms())
        for t in fired:
            self.route(t.target_typename, t.target_id, (t.sender_typename, t.sender_id), t.value_typename, t.payload)
        self.counters["timers_fired"] += len(fired)
        self._schedule_timers()
        if fired:
            self.wake()

    # -- egress -----------------------------------------------------------------------------------------

    def emit(self, record: EgressMessage) -> None:
        self.counters["egress"] += 1
        if self._store is not None and self._exactly_once(record.typename):
            self._epoch_egress.append(record)  # published once the checkpoint of this epoch completes
        else:
            self._egress_now.setdefault(record.typename, []).append(record)

    def _exactly_once(self, egress_id: str) -> bool:
        sink = self._sink_specs.get(egress_id)
        return sink is None or sink.delivery == DeliverySemantic.EXACTLY_ONCE

    def _sink(self, egress_id: str) -> tuple[Sink, Any]:
        entry = self._sinks.get(egress_id)
        if entry is None:
            sink = self._sink_specs.get(egress_id)
            if sink is None:  # undeclared egress: keep it in memory for app.egress()
                from .egress_collector import MemorySink

                sink = MemorySink(egress_id)
            if hasattr(sink, "collector") and sink.collector is None:
                sink.collector = self.config.collector
            if hasattr(sink, "run_id") and self.config.run_id:
                sink.run_id = self.config.run_id  # exactly-once markers stay valid across restores
            entry = self._sinks[egress_id] = (sink, sink.build_partition(self.index, self.config.shards))
        return entry

    def _publish_now(self) -> None:
        pending, self._egress_now = self._egress_now, {}
        for egress_id, records in pending.items():
            self._publish(egress_id, records, -1)

    def _publish(
        self, egress_id: str, records: list[EgressMessage], epoch: int, partition_index: int | None = None
    ) -> None:
        """Hand records to their sink: this shard's partition, or ``partition_index``'s (an old shard's
        unpublished epoch after rescaling is published under that shard's index, where its sink dedups).
        The one place where a sink's refusal or failure is handled: rejected records are dead-lettered,
        an exactly-once epoch that failed rolls back (it is published again after), others dead-lettered."""
        sink, partition = self._sink(egress_id)
        foreign = partition_index is not None and partition_index != self.index
        if foreign:
            partition = sink.build_partition(partition_index, self.config.shards)
        try:
            partition.write_batch(records, epoch)
        except Exception as exc:
            rejected = getattr(exc, "rejected", None)
            if rejected is not None:  # the sink published the rest: dead-letter just what it refused
                for record, reason in rejected:
                    self._dead_letter(
                        f"egress {egress_id} rejected the record: {reason}",
                        value_typename=record.value_type_name,
                        payload=record.payload,
                    )
            elif epoch >= 0:  # nothing was published: roll back, the epoch is published again after it
                log.error("egress %s: publishing epoch %d failed: %s", egress_id, epoch, exc)
                self.fail(f"egress {egress_id}: publishing epoch {epoch} failed: {exc}")
            elif egress_id != DEAD_LETTER_EGRESS:
                log.error("egress %s: publishing %d records failed: %s", egress_id, len(records), exc)
                for r in records:
                    self._dead_letter(
                        f"egress {egress_id} failed to publish the record: {exc}",
                        value_typename=r.value_type_name,
                        payload=r.payload,
                    )
        finally:
            if foreign:
                partition.close()

    def _open_sinks(self) -> None:
        """Open every declared sink's partition now: e.g. a Kafka partition's start aborts a transaction a
        crashed predecessor left open, which would otherwise hold read_committed readers back."""
        for sink in self.config.sinks:
            try:
                self._sink(sink.id)
            except Exception:
                log.exception("opening egress %s", sink.id)

    # -- checkpoints (Chandy-Lamport over the shard-to-shard channels) -----------------------------------

    async def checkpoint(self, n: int, full: bool = False) -> dict:
        """Take this shard's part of checkpoint ``n`` (if a peer's marker has not started it already) and
        return it once written: the state changed since the last checkpoint, timers, unprocessed and
        in-flight messages, source positions and the epoch's egress records. Raises CheckpointRefused
        while this shard has asked for a rollback (see ``_begin_snapshot``)."""
        self._full_next = full or self._full_next
        if n not in self._snapshots_done:
            if n <= self._last_begun:
                raise CheckpointRefused(f"shard {self.index}: checkpoint {n} was abandoned here")
            self._begin_snapshot(n)
        return await self._snapshots_done[n]

    def checkpoint_aborted(self, n: int) -> None:
        """Checkpoint ``n`` will never complete (a shard failed to write its part, or storage is down): drop
        what this shard holds of it. Nothing is lost: the changes it took stay in ``uncommitted`` and its
        epoch's egress in ``_unpublished``, so the next checkpoint covers them."""
        self._last_begun = max(self._last_begun, n)
        if self._snapshot is not None and self._snapshot.id <= n:
            self._snapshot = None
        for k in [k for k in self._snapshots_done if k <= n]:
            done = self._snapshots_done.pop(k)
            if not done.done():
                done.cancel()
        for k in [k for k in self._written if k <= n]:
            del self._written[k]

    def _on_marker(self, sender: int, n: int) -> None:
        snap = self._snapshot
        if snap is None or snap.id != n:
            if n <= self._last_begun:
                return  # a marker of a snapshot finished, refused or abandoned here
            self._begin_snapshot(n)
            snap = self._snapshot
            if snap is None:
                return  # refused (a rollback is pending) or already complete
        snap.waiting.discard(sender)
        if not snap.waiting:
            self._finish_snapshot()

    def _send_markers(self, n: int) -> set[int]:
        """Marker ``n`` down every channel to a peer; returns the peers whose marker this shard awaits."""
        waiting = set()
        for dest, peer in enumerate(self.peers):
            if dest != self.index:
                seq = self._send_seq[dest]
                self._send_seq[dest] = seq + 1
                peer.deliver.remote(self.index, seq, None, self.generation, n)
                waiting.add(dest)
        return waiting

    def _begin_snapshot(self, n: int) -> None:
        began = time.perf_counter()
        loop = asyncio.get_running_loop()
        self._last_begun = n
        if self._snapshot is not None:  # an older snapshot never completed (its checkpoint was given up)
            self.checkpoint_aborted(self._snapshot.id)
        done = self._snapshots_done[n] = loop.create_future()
        done.add_done_callback(retrieve)  # nobody may ask for a refused or failed one
        if self._failure is not None:
            # This shard has asked for a rollback: what the failure dropped (a remote batch that failed for
            # good, an epoch whose publishing failed) is no longer in flight, so a cut now would miss it,
            # and the rollback would go to that cut. Refuse it; the peers get their marker all the same.
            self._send_markers(n)
            done.set_exception(
                CheckpointRefused(f"shard {self.index} refuses checkpoint {n}: a rollback is pending ({self._failure})")
            )
            return
        self._flush()  # what was produced before the cut travels before the marker
        snap = _Snapshot(n)
        snap.parent_id = self._committed
        for runner in self.runners.values():
            # a delta on top of the last *committed* checkpoint: what changed since then, including what a
            # snapshot that never completed had taken
            runner.uncommitted.append(runner.state.take_changes())
        # a full base instead (every live instance) when asked, at the first, or once the chain a restore
        # would read holds FULL_AFTER times the live rows: a delta-only chain makes restores slow, a base
        # at fixed intervals rewrites all state however little of it changes
        delta_rows = sum(len(c) for r in self.runners.values() for c in r.uncommitted)
        live_rows = sum(len(r.state.instances) for r in self.runners.values())
        snap.full = (
            self._full_next or self._committed is None or self._chain_rows + delta_rows > FULL_AFTER * max(live_rows, 1)
        )
        self._full_next = False
        for typename, runner in self.runners.items():
            # the thread that encodes reads dicts nobody writes to any more (so the encoding sees the cut
            # and processing goes on): the changes taken, or a copy of every instance for a full snapshot
            if len(runner.uncommitted) > 1:  # an earlier snapshot never completed (rare): newer wins
                merged: dict = {}
                for changes in runner.uncommitted:
                    merged.update(changes)
                runner.uncommitted[:] = [merged]
            if snap.full and self._committed is not None:
                captured = (runner.state.instances.copy(), False)
            else:  # a delta, or the first base: the state was empty before the changes, so they are all of it
                captured = (runner.uncommitted[0], runner.state.single)
            snap.captured[typename] = captured
            snap.rows += len(captured[0])
        snap.timers = self.timers.all()
        for batch, start in self._mailbox:
            snap.pending.extend(batch[start:] if start else batch)
        for runner in self.runners.values():
            snap.pending.extend(
                (runner.typename, id, caller, vtype, payload)
                for id, caller, vtype, payload in runner.pending_messages()
            )
        snap.meta["sources"] = [
            [slot.source_index, slot.name, slot.partition.snapshot(), slot.exhausted] for slot in self._sources
        ]
        driver = self._channels.get(DRIVER)
        snap.meta["driver_seq"] = driver.expected if driver else 0
        # exactly-once egress: this epoch's records, plus any earlier epoch not yet confirmed published
        if self._epoch_egress:
            self._unpublished[n] = self._epoch_egress
            self._epoch_egress = []
        for epoch in sorted(self._unpublished):
            snap.egress.extend(
                (self.index, epoch, pos, r.typename, r.value_type_name, r.payload)
                for pos, r in enumerate(self._unpublished[epoch])
            )
        self._epoch = n
        snap.waiting = self._send_markers(n)
        self._snapshot = snap
        self.counters["snapshot_capture_s"] += time.perf_counter() - began
        if not snap.waiting:
            self._finish_snapshot()

    def _finish_snapshot(self) -> None:
        snap, self._snapshot = self._snapshot, None
        task = self._write_snapshot(snap, self._snapshots_done[snap.id], self.generation)
        self.track_task(asyncio.get_running_loop().create_task(task))

    async def _write_snapshot(self, snap: _Snapshot, done: asyncio.Future, generation: int) -> None:
        try:
            # encoding and I/O run in a thread: Parquet compression and storage calls release the GIL,
            # so processing goes on meanwhile (the captured dicts are not written to any more, and the cells
            # lists in them are never mutated in place)
            part = await asyncio.get_running_loop().run_in_executor(None, self._write_part, snap)
        except Exception as exc:
            log.exception("shard %d: writing checkpoint %d failed", self.index, snap.id)
            if not done.done():
                done.set_exception(exc)
            return
        if generation == self.generation and not done.done():
            self._written[snap.id] = snap
            done.set_result(part)

    def _write_part(self, snap: _Snapshot):
        began, cpu = time.perf_counter(), time.thread_time()
        try:
            return self._write_part_now(snap)
        finally:
            self.counters["snapshot_write_s"] += time.perf_counter() - began
            self.counters["snapshot_write_cpu_s"] += time.thread_time() - cpu

    def _write_part_now(self, snap: _Snapshot):
        deltas = [
            StateDelta(self._layout(t), instances, values=values) for t, (instances, values) in snap.captured.items()
        ]
        snap.captured = None  # the deltas hold the state now
        # encoded and written a piece at a time (big state is never all in Arrow); the pieces are kept for
        # the in-memory rollback copy only while they are small
        pieces = KeptPieces(iter_state(deltas, None), self.config.local_copy_max_bytes)  # key groups: readers'
        part = self._store.write_shard_part(
            snap.id,
            self.index,
            self.key_group_range,
            key_groups=self.config.key_groups,
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
            _release_memory()
        return part

    async def checkpoint_complete(self, n: int) -> None:
        """Checkpoint ``n`` is durable everywhere: publish the exactly-once egress of epochs up to ``n``."""
        began = time.perf_counter()
        if self._committed is None or n > self._committed:
            self._committed = n
            if self._epoch == n:  # no newer snapshot began: the changes it took are in the checkpoint now
                for runner in self.runners.values():
                    runner.uncommitted.clear()
            snap = self._written.pop(n, None)
            if snap is not None:
                self._chain_rows = 0 if snap.full else self._chain_rows + snap.rows
                self._keep_local_copy(snap)
        for k in [k for k in self._written if k <= n]:
            del self._written[k]
        for epoch in sorted(self._unpublished):
            if epoch > n:
                break
            records = self._unpublished.pop(epoch)
            self._publish_epoch(records, epoch)
        for k in [k for k in self._snapshots_done if k <= n]:
            del self._snapshots_done[k]
        self.counters["snapshot_commit_s"] += time.perf_counter() - began
        await self._published()

    async def _published(self) -> None:
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

    def _keep_local_copy(self, snap: _Snapshot) -> None:
        """Add a committed snapshot to the in-memory copy of the last complete checkpoint, so that a shard
        that survives a failure rolls back from memory instead of re-reading storage (only the replacement
        of the shard that died reads its part). A full snapshot replaces the layers; bases are frequent
        enough (``FULL_AFTER``) that the layers stay a small multiple of the live state. Past
        ``local_copy_max_bytes`` there is no copy (a second copy of big state would double the shard's
        memory): the shard then rolls back from storage, like a replacement."""
        local = self._local
        if snap.too_big or (not snap.full and (local is None or local.checkpoint_id != snap.parent_id)):
            self._local = None  # the copy is not the snapshot's parent: restore from storage next time
            return
        layers = [] if snap.full else list(local.layers)
        if snap.state is not None and (snap.full or snap.state.num_rows):
            layers.append(snap.state)
        self._local = self._bounded_copy(
            _LocalCopy(snap.id, layers, snap.timers, snap.pending + snap.recorded, snap.egress)
        )

    def _bounded_copy(self, copy: _LocalCopy) -> _LocalCopy | None:
        if sum(t.nbytes for t in copy.layers) > self.config.local_copy_max_bytes:
            return None
        return copy

    async def restore(
        self, generation: int, peers: list, source_partitions: list, checkpoint_id: int | None, driver_from: int = 0
    ) -> None:
        """Roll back to checkpoint ``checkpoint_id`` (None: to the very beginning). Everything in memory is
        dropped; then this shard's key-group range of state, timers and unprocessed messages is loaded,
        sources reopen at their recorded positions, and the egress epochs that the old shards (whose
        records this shard inherits) may not have published are published again (sinks dedup per epoch).
        The driver's channel resumes at sequence number ``driver_from`` (what the checkpoint had read of
        it: the coordinator re-sends the rest under the same numbers)."""
        if generation <= self.generation:
            return  # a newer rollback came first (e.g. a fallback from a damaged checkpoint)
        if self._wake_event is None:  # a replacement shard: restore is its start
            self._init_loop_objects()
        self.generation = generation
        self._restoring = True
        try:
            await self._restore_now(generation, peers, source_partitions, checkpoint_id, driver_from)
        finally:
            if self.generation == generation:  # not superseded by a newer rollback while loading
                self._restoring = False
                waiters, self._restore_waiters = self._restore_waiters, []
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
                self._below_high.set()  # deliveries of the old generation that waited for room: let them go

    async def _restore_now(
        self, generation: int, peers: list, source_partitions: list, checkpoint_id: int | None, driver_from: int
    ) -> None:
        self.epoch_token = object()
        self._halt()
        if self._timer_handle is not None:
            self._timer_handle.cancel()
        self._timer_handle = self._timer_at = None
        self.peers = peers
        n = self.config.shards
        self._out = [None] * n
        self._send_seq = [0] * n
        self._sent = [0] * n
        self._outstanding = [0] * n
        self._channels.clear()
        if driver_from:  # the driver's channel resumes where the checkpoint had read it
            self._channels[DRIVER] = _Channel()
            self._channels[DRIVER].expected = driver_from
        self._mailbox.clear()
        self._backlog = 0
        self._parked = 0
        self._sources = []
        self._egress_now = {}
        self._epoch_egress = []
        self._unpublished = {}
        self._snapshot = None
        for done in self._snapshots_done.values():
            if not done.done():
                done.cancel()
        self._snapshots_done = {}
        self._failure = None
        self.timers.clear()
        for runner in self.runners.values():
            runner.reset()
            runner.state.instances.clear()
            runner.state.changed.clear()
        self._committed = checkpoint_id
        self._epoch = checkpoint_id or 0
        for runner in self.runners.values():
            runner.uncommitted.clear()
        local = self._local
        self._written = {}
        if checkpoint_id is not None:
            began = time.perf_counter()
            from_memory = local is not None and local.checkpoint_id == checkpoint_id  # this shard survived
            if from_memory:
                layouts = {t: self._layout(t) for t in self.runners}
                read = functools.partial(local.restored, self.key_group_range, self.config.key_groups, layouts)
            else:
                read = functools.partial(self._store.load_shard, checkpoint_id, self.key_group_range)
            restored = await asyncio.get_running_loop().run_in_executor(None, read)
            if generation != self.generation:
                return  # a newer rollback began while this one read (the coordinator fell back): it wins
            loaded = time.perf_counter()
            self._load(restored)
            log.info(
                "shard %d restored checkpoint %d from %s: read %.2f s, loaded %.2f s (%d state rows, %d messages)",
                self.index,
                checkpoint_id,
                "memory" if from_memory else "storage",
                loaded - began,
                time.perf_counter() - loaded,
                restored.state.num_rows,
                len(restored.messages),
            )
            del restored
            _release_memory()
        self._open_sources(source_partitions)
        self._open_sinks()
        # the restored state is hundreds of thousands of long-lived lists: keep the collector from walking
        # them again and again right when the shard should catch up (gc.freeze: out of every collection;
        # no gc.collect first, it would walk them all once more, and the state holds no cycles to free)
        gc.freeze()
        self._loop_task = asyncio.get_running_loop().create_task(self._run())
        self.wake()

    def _load(self, restored) -> None:
        for typename, layout in restored.layouts.items():  # remote functions: their registered specs
            if typename not in self.runners and self._remote_runner(typename) is not None:
                self.runners[typename].register(
                    list(
                        zip(
                            layout.names,
                            layout.typenames,
                            layout.expire_modes or (None,) * len(layout.names),
                            layout.expire_after_ms or (0,) * len(layout.names),
                        )
                    )
                )
        for typename, runner in self.runners.items():
            if typename in restored.layouts:
                runner.state.instances.update(restored.instances(typename, runner.state.specs))
        for typename in set(restored.layouts) - set(self.runners):
            log.warning(
                "checkpoint %d holds state of %s, which is no longer bound: ignored", restored.checkpoint_id, typename
            )
        self._chain_rows = max(0, restored.chain_rows - restored.state.num_rows)  # the deltas, roughly
        state = restored.state  # kept for a rollback only if small (a big one was read from a file)
        self._local = None
        if state.in_memory and state.nbytes <= self.config.local_copy_max_bytes:
            self._local = self._bounded_copy(
                _LocalCopy(restored.checkpoint_id, [state.table()], restored.timers, restored.messages, restored.egress)
            )
        restored.close()
        self._load_rest(restored.timers, restored.messages, restored.egress)

    def _load_rest(self, timers: list, messages: list, egress: list) -> None:
        """Timers, unprocessed messages, and the egress epochs that may not have been published."""
        for t in timers:
            self.timers.add(t[0], t[2], t[3], t[4], t[5], t[6], t[7], t[8], seq=t[1])
        self._schedule_timers()
        if messages:
            self._mailbox.append((list(messages), 0))
            self._backlog += len(messages)
        # egress epochs the old shards may not have published: publish them again (sinks dedup per epoch)
        groups: dict[tuple[int, int], list[EgressMessage]] = {}
        for old_index, epoch, _, egress_id, vtype, payload in egress:  # in (shard, epoch, position) order
            groups.setdefault((old_index, epoch), []).append(EgressMessage(egress_id, vtype, payload))
        for (old_index, epoch), records in sorted(groups.items(), key=lambda kv: kv[0][1]):
            self._publish_epoch(records, epoch, old_index)

    # -- introspection ----------------------------------------------------------------------------------

    def status(self) -> ShardStatus:
        """Counters for idleness detection (the coordinator compares sent/received per channel)."""
        return ShardStatus(
            index=self.index,
            pid=os.getpid(),
            backlog=self._backlog + self._parked,  # every message accepted and not yet done
            in_progress=sum(getattr(r, "in_progress", 0) for r in self.runners.values()),
            sent=list(self._sent),
            received={s: c.received for s, c in self._channels.items()},
            early=sum(len(c.early) for c in self._channels.values()),
            outstanding=sum(self._outstanding),
            sources_busy=any(not s.exhausted and not s.idle for s in self._sources),
            sources_exhausted=all(s.exhausted for s in self._sources),
            timers=len(self.timers),
            failure=self._failure,
            remote_requests=sum(c.stats["requests"] for c in self._clients.values()),
            remote_failures=sum(c.stats["failures"] for c in self._clients.values()),
            generation=self.generation,
            epoch=self._epoch,
            cpu_s=time.process_time(),  # the process's CPU time: a busy machine moves it less than wall time
            counters=dict(self.counters),
        )

    def get_state(self, typename: str, id: str) -> dict[str, Any]:
        runner = self.runners.get(typename)
        if runner is None:
            raise ValueError(f"unknown function type {typename!r} (bound: {self.registry.describe()})")
        return runner.state.view(id, self.now_ms())

    def instance_count(self) -> dict[str, int]:
        return {t: len(r.state.instances) for t, r in self.runners.items()}


class ShardActor:
    """The Ray actor around a ShardCore.

    Ray wraps every method of an actor class (for tracing) with an extra Python frame, even methods the
    actor calls on itself; on the per-message path that doubled the cost. So the actor is this thin shell
    with only the remote methods, and the work happens in the plain ``ShardCore`` it holds.
    """

    def __init__(self, index: int, config: ShardConfig) -> None:
        self.core = ShardCore(index, config)

    def ready(self) -> bool:
        return True

    def adopt(self, index: int) -> None:
        """A standby shard takes over the place of shard ``index`` (before its restore)."""
        self.core.adopt(index)

    async def start(self, peers: list, source_partitions: list) -> None:
        await self.core.start(peers, source_partitions)

    async def stop(self) -> None:
        await self.core.stop()

    async def deliver(
        self, sender: int, seq: int, data: bytes | None, generation: int, marker: int | None = None
    ) -> None:
        await self.core.deliver(sender, seq, data, generation, marker)

    async def checkpoint(self, n: int, full: bool = False):
        return await self.core.checkpoint(n, full)

    def checkpoint_aborted(self, n: int) -> None:
        self.core.checkpoint_aborted(n)

    async def checkpoint_complete(self, n: int) -> None:
        await self.core.checkpoint_complete(n)

    async def flush(self) -> None:
        """Publish what at-least-once egresses hold and wait until the in-memory egress has it."""
        self.core._publish_now()
        await self.core._published()

    async def restore(
        self, generation: int, peers: list, source_partitions: list, checkpoint_id: int | None, driver_from: int = 0
    ) -> None:
        await self.core.restore(generation, peers, source_partitions, checkpoint_id, driver_from)

    def status(self) -> ShardStatus:
        return self.core.status()

    def get_state(self, typename: str, id: str) -> dict:
        return self.core.get_state(typename, id)

    def instance_count(self) -> dict[str, int]:
        return self.core.instance_count()
