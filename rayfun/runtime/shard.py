"""A shard: the Ray actor that owns a range of key groups and runs every function instance in it.

Data path inside a shard (one asyncio event loop, one thread, so no locks)::

    deliver() --> channels --.
    sources ----> ingress ---+--> outbox --(own rows)--> ingress.mailbox --> runner --> effects
    timers ------------------'     '--(peers' rows)--> Ray                              |-> outbox
                                                                                        |-> timers
                                                                                        '-> egress --> sinks
    checkpoints: snapshot (the cut gathers mailbox, timers, sources, egress; markers go out via the outbox)

``ShardCore`` is the coordinator of these stages, each in its own module and owning its state:
``channels`` (per-sender order, markers), ``ingress`` (mailbox, sources, backpressure), ``outbox``
(routing, batches, sequence numbers), ``effects`` (an invocation's sends/timers/egress, dead letters),
``timers`` (delayed messages), ``egress`` (sinks, at-least-once and per-epoch exactly-once), ``snapshot``
(checkpoints and restore). The stages never call each other: this core wires them, handing what one
produces to the next, and they reach it only through ``services.ShardServices``. The core keeps the
processing loop (``_run``, ``_process``: the hot path, inlined), the rollback gate of deliveries, the
runners, and the sequences that span stages (the cut, a restore). ``ShardActor`` (``shard_actor.py``) is
the thin Ray shell around it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from ..checkpoint.state_codec import StateLayout
from ..constants import (  # tuning knobs: see rayfun/constants.py
    CHUNK_SIZE,
    EGRESS_FLUSH_S,
    EGRESS_HIGH,
    FLUSH_DELAY_S,
    GIL_SWITCH_S,
    HEARTBEAT_S,
    LOCAL_COPY_MAX_BYTES,
    MAILBOX_HIGH,
    MAILBOX_LOW,
    MAX_IN_FLIGHT,
    MAX_REMOTE_HELD,
    MAX_STEP,
    METRICS_INTERVAL_S,
    SWEEP_INTERVAL_S,
    TRICKLE_ROWS,
    TRICKLE_WAIT_S,
    TURN_S,
    UNDO_MAX_SHARE,
)
from ..functions import StatefulFunctions
from ..io import Sink, Source
from ..keygroups import keep_key_groups
from ..logs import configure_logging
from .batchcodec import decode_rows
from .channels import DRIVER, Channels
from .effects import Effects
from .egress import Egress
from .ingress import Ingress
from .metrics import FunctionCounts, MetricsPublisher
from .outbox import Outbox
from .partitioning import Partitioner, shard_ranges
from .registry import TypeRegistry
from .runners.embedded import EmbeddedFunction
from .snapshot import FULL_AFTER, CheckpointRefused, Snapshots, release_memory
from .status import ShardStatus
from .timers import MAX_DUE_MS, Timers

log = logging.getLogger("rayfun")

# ShardActor: see __getattr__ at the end
__all__ = ["DRIVER", "FULL_AFTER", "MAX_DUE_MS", "CheckpointRefused", "ShardActor", "ShardConfig", "ShardCore"]  # noqa: F822


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
    run_id: str = ""  # the application's id across restores (see egress._sink)
    chunk_size: int = CHUNK_SIZE  # messages processed between flushes
    mailbox_high: int = MAILBOX_HIGH  # deliver() waits while the mailbox holds more than this
    mailbox_low: int = MAILBOX_LOW  # ... until it is back under this; sources read only below it
    max_remote_held: int = MAX_REMOTE_HELD  # messages remote functions hold: sources pause past it
    max_in_flight: int = MAX_IN_FLIGHT  # messages sent, not accepted yet, all peers together: sources pause
    egress_high: int = EGRESS_HIGH  # exactly-once records held for their checkpoint before sources pause
    local_copy_max_bytes: int = LOCAL_COPY_MAX_BYTES  # the in-memory rollback copy is dropped past this
    log_level: str = "INFO"  # of the rayfun logger in this actor (see rayfun.logs)
    app_name: str = "rayfun"  # the application's name (the actor's name and repr: rayfun:<app>/shard-3)


class ShardCore:
    """The shard's logic, in a plain class (see ShardActor for why it is not the actor itself).

    It is the ``ShardServices`` (and ``RunnerServices``) of its stages and runners. The effects a runner
    commits per message go straight to the stage that handles them: ``apply_effects``, ``invocation_failed``,
    ``dead_letter``, ``park``, ``unpark``, ``route`` and ``emit`` are the stages' bound methods, set as
    attributes in ``__init__``, so that the hot path pays no extra call for the delegation."""

    def __init__(self, index: int, config: ShardConfig) -> None:
        configure_logging(config.log_level)  # the rayfun logger only, never the worker's root logger
        self.index = index
        self.config = config
        self.partitioner = Partitioner(config.key_groups, config.shards)
        self.key_group_range = shard_ranges(config.key_groups, config.shards)[index]
        self.registry = TypeRegistry(config.functions.typenames, config.endpoints)
        self.epoch_token = object()
        self.generation = 0
        self._failure: str | None = None
        self._failed_waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None  # see ``failed``
        self._tasks: set[asyncio.Task] = set()
        self._wake_event: asyncio.Event | None = None
        self._quiet: asyncio.Event | None = None  # set while the loop has nothing to do (see until_quiet)
        self._loop_task: asyncio.Task | None = None
        self._restoring = False  # a rollback is loading state: deliveries of its generation wait
        # False from the start of a rollback until it has restored everything: one superseded while it read
        # (a recovery the coordinator retried) leaves the live state emptied or half-undone, with bookkeeping
        # that says "checkpoint n, nothing changed since", so the next rollback must not keep or undo it
        self._state_whole = True
        self.held = False  # a rescale is under way: nothing is processed until the restore (see pause_sources)
        self._restore_waiters: list[asyncio.Future] = []
        self._beat: float | None = None  # when the event loop last turned (see health); None: not started
        self._busy_in: str | None = None  # a long step on the event loop other than a sink call (see health)
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
            "restores_kept": 0,  # restores that kept the live state (see _keeps_live_state)
            "restores_undone": 0,  # restores that undid the changes since the checkpoint (see _changed_since)
        }
        self.functions: dict[str, FunctionCounts] = {}  # per function type (see runtime/metrics.py)
        self.metrics_publisher: MetricsPublisher | None = None  # made in the actor (needs Ray)
        # -- the stages, wired (each gets the shard's counters dict and writes its own keys) --
        self.channels = Channels()
        self.ingress = Ingress(
            config.sources, config.mailbox_high, config.mailbox_low, self.counters, config.max_remote_held
        )
        self.outbox = Outbox(self, index, config.shards, self.partitioner, self.registry)
        self.egress = Egress(
            self,
            config.sinks,
            index,
            config.shards,
            checkpoints=config.checkpoint_url is not None,
            collector=config.collector,
            run_id=config.run_id,
            counters=self.counters,
        )
        self.timers = Timers(self, self.outbox.route, self.counters)
        self.effects = Effects(
            self.registry,
            self.outbox.route,
            self.timers.service,
            self.timers.schedule,
            self.egress.emit,
            self.counters,
            self.counts_of,
        )
        self.snapshots = Snapshots(
            self, index, self.key_group_range, config.key_groups, config.local_copy_max_bytes, self.counters
        )
        # bound methods as attributes: the runners' per-message calls reach the stage directly
        self.route = self.outbox.route
        self.emit = self.egress.emit
        self.apply_effects = self.effects.apply
        self.invocation_failed = self.effects.invocation_failed
        self.dead_letter = self.effects.dead_letter
        self.park = self.ingress.park
        self.unpark = self.ingress.unpark
        self.hold_remote = self.ingress.hold_remote
        self.release_remote = self.ingress.release_remote
        # -- the runners --
        self.runners: dict[str, Any] = {spec.typename: EmbeddedFunction(spec, self) for spec in config.functions}
        self._run_fns = {typename: runner.run for typename, runner in self.runners.items()}
        self._clients: dict[Any, Any] = {}  # endpoint -> RemoteFunctionClient
        self._expiring = any(r.state.expiring for r in self.runners.values())
        self._next_sweep = 0.0
        self._step = 256  # messages between looks at the clock in _process (it adapts)
        self._layout_cache: dict[str, Any] = {}

    # -- services for the stages and runners (see services.ShardServices) ------------------------------

    def wake(self) -> None:
        if self._wake_event is not None:
            self._wake_event.set()

    @staticmethod
    def now_ms() -> int:
        return int(time.time() * 1000)

    def fail(self, reason: str) -> bool:
        """Ask the coordinator to roll everything back to the last checkpoint (its pending ``failed`` call
        answers now; safe from any thread)."""
        if self._failure is None:
            self._failure = reason
            waiter = self._failed_waiter
            if waiter is not None:
                loop, event = waiter
                try:
                    loop.call_soon_threadsafe(event.set)
                except RuntimeError:  # the loop is closed (the shard is going away): nobody waits any more
                    pass
            return True
        return False

    async def failed(self) -> None:
        """Return once this shard asks for a rollback: the coordinator keeps one such call pending on each
        shard, so a failure, and a shard that dies (the call fails), are noticed at once without asking
        every shard many times a second (each question costs the busy loop a GIL handoff)."""
        if self._failed_waiter is None:
            self._failed_waiter = (asyncio.get_running_loop(), asyncio.Event())
        if self._failure is None:
            await self._failed_waiter[1].wait()

    async def until_quiet(self, timeout: float) -> bool:
        """Return once this shard's loop has nothing to do (True), or after ``timeout`` (False): the
        coordinator's ``wait_idle`` waits on this between its looks, so it looks again as soon as the work
        ends instead of at its next poll (which made a 1 s run's ``app.wait`` 60-100 ms late). A hint
        only: whether the application is idle is still decided by the looks."""
        quiet = self._quiet
        if quiet is None:  # not started: nothing will set it before the timeout
            await asyncio.sleep(timeout)
            return False
        if quiet.is_set():
            return True
        try:
            await asyncio.wait_for(quiet.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def track_task(self, task: asyncio.Task) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def layout_changed(self, typename: str) -> None:
        self._layout_cache.pop(typename, None)
        self._expiring = any(r.state.expiring for r in self.runners.values())

    def counts_of(self, typename: str) -> FunctionCounts:
        counts = self.functions.get(typename)
        if counts is None:
            counts = self.functions[typename] = FunctionCounts()
        return counts

    # -- lifecycle --------------------------------------------------------------------------------------

    @property
    def role(self) -> str:
        """What this actor is, as operators see it: ``rayfun:<app>/shard-3`` (or ``.../standby``)."""
        return f"rayfun:{self.config.app_name}/{'standby' if self.standby else f'shard-{self.index}'}"

    standby = False  # an idle spare until it adopts a place (see adopt)

    def adopt(self, index: int) -> None:
        """Become shard ``index`` (a standby replacing a dead shard; nothing has run here yet). Its range is
        set by the restore that follows, which also gives the shard count (a rescale may have changed it)."""
        self.standby = False
        self.index = index
        self.outbox.index = self.egress.index = self.snapshots.index = index
        if index < self.config.shards:
            self._place(self.config.shards)

    def _place(self, shards: int) -> None:
        """Own this index's key-group range out of ``shards``: a rescale (or the start) sets it."""
        if shards != self.config.shards:
            self.config.shards = shards  # this actor's own copy of the configuration
            self.partitioner = Partitioner(self.config.key_groups, shards)
            self.outbox.resize(shards, self.partitioner)
            self.egress.resize(shards)
            self.snapshots.local = None  # the in-memory rollback copy holds the old range only
        self.key_group_range = self.snapshots.key_group_range = shard_ranges(self.config.key_groups, shards)[self.index]

    async def start(self, peers: list, source_partitions: list[tuple[int, str, Any]]) -> None:
        """Connect to the other shards, open the assigned source partitions, start processing."""
        self.outbox.peers = peers
        self._init_loop_objects()
        self.ingress.open(source_partitions)
        self.egress.open()
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    def _init_loop_objects(self) -> None:
        if self.config.checkpoint_url is not None:
            self.snapshots.open_store(self.config.checkpoint_url, self.config.checkpoint_options)
        # Millions of short-lived row tuples would trigger a young-generation collection every 700
        # allocations, and full collections would walk every instance's state: collect far less often.
        gc.set_threshold(100_000, 50, 1000)
        # The checkpoint writer (a thread) waits for the GIL at every handoff, up to the switch interval (5 ms
        # by default) while processing holds it: a write of 15 ms of CPU took 35-55 ms under load. It only
        # costs anything while another thread waits.
        sys.setswitchinterval(GIL_SWITCH_S)
        self._wake_event = asyncio.Event()
        self._quiet = asyncio.Event()
        self._heartbeat()
        self.ingress.start()
        if self.metrics_publisher is None:
            self.metrics_publisher = MetricsPublisher.for_actor(self.config.app_name, self.index)

    def _heartbeat(self) -> None:
        """Mark, every HEARTBEAT_S, that the event loop turns: ``health`` (answered on another thread) tells
        a loop blocked in one sink call or invocation from a shard that is gone."""
        self._beat = time.monotonic()
        asyncio.get_running_loop().call_later(HEARTBEAT_S, self._heartbeat)

    def health(self) -> tuple[str | None, float, str | None]:
        """``(failure, seconds the event loop has been blocked, what it is blocked in)``. Read from another
        thread while the loop may be busy: it only reads three attributes."""
        beat = self._beat
        blocked = 0.0 if beat is None else max(0.0, time.monotonic() - beat - HEARTBEAT_S)
        return self._failure, blocked, (self.egress.busy_in or self._busy_in) if blocked else None

    def _layout(self, typename: str):
        layout = self._layout_cache.get(typename)
        if layout is None:
            layout = self._layout_cache[typename] = StateLayout.of(typename, self.runners[typename].state.specs)
        return layout

    def _halt(self) -> None:
        """Stop processing: cancel the loop and every task, close the source partitions."""
        if self._loop_task:
            self._loop_task.cancel()
            self._loop_task = None  # the loop ends at its next turn even if a wait swallowed the cancel
        for task in list(self._tasks):
            task.cancel()
        self.ingress.close()

    async def stop(self) -> None:
        self._halt()
        self.egress.publish_now()
        await self._close()

    async def retire(self) -> None:
        """Leave the application (a rescale down): stop, publishing nothing (the checkpoint restored by the
        remaining shards holds what this shard had not published), and close the sinks (a Kafka
        transaction left open would hold read_committed readers back)."""
        self._halt()
        await self._close()

    async def _close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self.egress.close()

    def pause_sources(self, paused: bool, hold: bool = False) -> None:
        """Stop (or resume) reading sources: a savepoint's checkpoint then covers everything read. With
        ``hold``, also stop processing (deliveries, markers and the checkpoint's cut and write go on): a
        rescale's checkpoint then holds this shard's live state as it is, and its restore keeps that state
        instead of reading it back (see ``_keeps_live_state``). A restore ends the hold."""
        self.ingress.paused = paused
        self.held = hold and paused
        self.wake()

    async def flush_egress(self) -> None:
        """Publish what at-least-once egresses hold and wait until the in-memory egress has it."""
        self.egress.publish_now()
        await self.egress.published()

    # -- inbound ----------------------------------------------------------------------------------------

    async def deliver(
        self, sender: int, seq: int, data: bytes | None, generation: int, marker: int | None = None
    ) -> None:
        """Accept an encoded batch of rows (``batchcodec``), or checkpoint ``marker``, from ``sender`` (a
        shard index, or DRIVER) in channel order. Anything from an older generation (before a rollback) is dropped; a
        batch from a newer one (a peer that finished its rollback first) waits until this shard has too.
        Returns once the shard has room (backpressure, see ``ingress``)."""
        if (generation != self.generation or self._restoring) and (
            generation < self.generation or not await self._restored(generation)
        ):
            return
        arrived = marker if data is None else decode_rows(data)
        for item in self.channels.take(sender, seq, arrived):  # in channel order, markers among the batches
            if type(item) is int:
                self._on_marker(sender, item)
            elif item:
                self.ingress.accept(item)
                snap = self.snapshots.current
                if snap is not None and sender in snap.waiting:
                    snap.recorded.extend(item)  # in flight across the cut: part of the checkpoint's channel state
        self.wake()
        if self.ingress.over_high():
            await self.ingress.wait_for_room()

    async def _restored(self, generation: int) -> bool:
        """Wait until this shard has rolled back to ``generation``; False if it moved past it meanwhile."""
        while self.generation < generation or self._restoring:
            waiter = asyncio.get_running_loop().create_future()
            self._restore_waiters.append(waiter)
            await waiter
        return self.generation == generation

    # -- the processing loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        me = asyncio.current_task()
        ingress = self.ingress
        wake_event = self._wake_event  # made once, before the first loop (start, or restore for a replacement)
        quiet = self._quiet
        try:
            if wake_event is None or quiet is None:
                raise RuntimeError("the processing loop started before the shard's event-loop objects")
            # Python 3.11's wait_for can swallow a cancellation that races its timeout: the loop also ends
            # once it is no longer the shard's loop (it would read sources already closed)
            busy = False  # the last turn worked: a small batch for a peer may wait (see Outbox.flush)
            await asyncio.sleep(0)  # the call that started the loop answers first: a first turn may block
            while self._loop_task is me:
                worked = False
                read = 0
                held = self.held
                if not held and ingress.may_read() and self._may_read_sources():
                    read = self._read_sources()
                    if read:
                        self._flush(hold=busy)  # this shard's own rows join the mailbox: processed this turn
                        worked = True
                if ingress.mailbox and not held:
                    self._process(self.config.chunk_size)
                    worked = True
                worked = self._flush(hold=busy) or worked
                now = time.monotonic()
                if now >= self._next_sweep and not held:
                    self._housekeeping()
                publisher = self.metrics_publisher
                if publisher is not None and now >= publisher.next_at:
                    self.publish_metrics()
                busy = worked
                if worked:
                    quiet.clear()
                if worked and (read >= TRICKLE_ROWS or ingress.mailbox):
                    await asyncio.sleep(0)
                elif worked:  # a trickle: a moment for more to come (a delivery wakes it) rather than spin
                    await self._idle(wake_event, TRICKLE_WAIT_S)
                else:
                    self._flush()  # nothing else to do: what was held back goes now
                    if not self._in_progress():
                        quiet.set()  # (an invocation that ends wakes the loop, which comes back here)
                    timeout = 0.01 if ingress.polling() else None
                    if publisher is not None and publisher.behind(self.counters["processed"]):
                        # idle with counts Ray has not seen: wake for the next publish (once: then it is even)
                        timeout = max(0.0, min(timeout or METRICS_INTERVAL_S, publisher.next_at - now))
                    await self._idle(wake_event, timeout)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug: make it visible to the coordinator rather than hang
            log.exception("shard %d processing loop failed", self.index)
            self.fail(f"{type(exc).__name__}: {exc}")

    async def _idle(self, wake_event: asyncio.Event, timeout: float | None) -> None:
        """Wait until woken (a delivery, a finished invocation, a timer) or ``timeout``; counted as idle."""
        wake_event.clear()
        began = time.perf_counter()
        try:
            await asyncio.wait_for(wake_event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        self.counters["idle_s"] += time.perf_counter() - began

    def _process(self, budget: int) -> None:
        """Run up to ``budget`` mailbox rows, or fewer once the turn has taken ``TURN_S``. The hot path: the
        mailbox is the ingress stage's, read here directly, and the backlog is settled once per chunk.

        The clock is read every ``step`` messages, and ``step`` follows how long a message takes: a slow
        ``def`` function (1 ms a message) made one turn of 16k messages block the event loop for 16 s, so
        the shard answered no status call for longer than the coordinator waits, and was killed as dead,
        over and over."""
        ingress = self.ingress
        mailbox = ingress.mailbox
        egress, outbox = self.egress, self.outbox
        processed = 0
        run_fns = self._run_fns
        step = self._step
        began = time.perf_counter()
        publish_at = began + EGRESS_FLUSH_S
        while mailbox and processed < budget:
            batch, start = mailbox.popleft()
            end = min(len(batch), start + budget - processed, start + step)
            now = self.now_ms()
            i = start
            while i < end:
                run = run_fns.get(batch[i][0])
                if run is None:
                    run = self._remote_runner(batch[i][0])
                if run is None:
                    self.effects.unknown_target(*batch[i])
                    i += 1
                else:
                    i = run(batch, i, end, now)
            if end < len(batch):
                mailbox.appendleft((batch, end))
            processed += end - start
            clock = time.perf_counter()
            if egress.now and clock >= publish_at:  # at-least-once records wait no longer than this for the turn
                egress.publish_now()
                publish_at = clock + EGRESS_FLUSH_S
            held_since = outbox.held_since
            if held_since is not None and clock - held_since >= FLUSH_DELAY_S:
                self._flush()  # what this turn sent waits no longer than that for the turn's end either
            elapsed = clock - began
            if elapsed >= EGRESS_FLUSH_S:
                step = max(1, min(MAX_STEP, int(processed * EGRESS_FLUSH_S / elapsed)))
                if elapsed >= TURN_S:
                    break
        self._step = step
        ingress.backlog -= processed
        self.counters["processed"] += processed
        ingress.release()

    def _may_read_sources(self) -> bool:
        """The other stages' part of whether to read sources (the ingress's: ``Ingress.may_read``)."""
        if self.egress.held() > self.config.egress_high:
            return False  # egress waits for a checkpoint that does not come (storage down): stop reading
        if self._clients and (
            any(getattr(r, "blocked", 0) for r in self.runners.values())
            or any(c.saturated for c in self._clients.values())
        ):
            return False  # a remote function is the bottleneck: let it catch up (StateFun's backpressure)
        return self.outbox.accepting(self.config.max_in_flight)

    def _read_sources(self) -> int:
        """Poll the sources once; returns the records they returned."""
        got = 0
        route_input = self.outbox.route_input
        for source_id, batch in self.ingress.read():
            route_input(batch, source_id)
            got += len(batch)
        return got

    def _flush(self, hold: bool = False) -> bool:
        """Send the outbox (``hold``: small batches may wait, see ``Outbox.flush``); returns whether
        messages were queued locally (more work for this loop)."""
        local = self.outbox.flush(hold)
        if local is not None:
            self.ingress.accept(local)
        if self.egress.now:
            self.egress.publish_now()
        return local is not None

    def _housekeeping(self) -> None:
        """Every few seconds: drop expired values of instances nobody touched since (reads already hide
        them; this frees their memory and their rows in the next checkpoint). Without checkpoints, forget
        the recorded changes, which only snapshots consume (they would keep every id ever seen)."""
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL_S
        now = self.now_ms()
        for runner in self.runners.values():
            if self._expiring:
                runner.state.expire(now)
            if self.snapshots.store is None:
                runner.state.changed.clear()

    def _remote_runner(self, typename: str):
        """The runner of a remote function type, created on its first message (endpoints match patterns)."""
        endpoint = self.registry.endpoint_for(typename)
        if endpoint is None:
            return None
        from .runners.remote import RemoteFunction

        client = self._clients.get(endpoint)
        if client is None:
            from ..remote import RemoteFunctionClient

            client = self._clients[endpoint] = RemoteFunctionClient(endpoint)
        runner = self.runners[typename] = RemoteFunction(typename, endpoint, client, self)
        self._run_fns[typename] = runner.run
        return runner.run

    # -- checkpoints (Chandy-Lamport over the shard-to-shard channels, see snapshot.py) ------------------

    async def checkpoint(self, n: int, full: bool = False) -> dict:
        """Take this shard's part of checkpoint ``n`` (if a peer's marker has not started it already) and
        return it once written: the state changed since the last checkpoint, timers, unprocessed and
        in-flight messages, source positions and the epoch's egress records. Raises CheckpointRefused
        while this shard has asked for a rollback (see ``_begin_snapshot``)."""
        done = self.snapshots.requested(n, full)
        if done is None:
            done = self._begin_snapshot(n)
        return await done

    def checkpoint_aborted(self, n: int) -> None:
        """Checkpoint ``n`` will never complete (a shard failed to write its part, or storage is down): drop
        what this shard holds of it. Nothing is lost: the changes it took stay in ``uncommitted`` and its
        epoch's egress in ``egress.unpublished``, so the next checkpoint covers them."""
        self.snapshots.aborted(n)

    def _on_marker(self, sender: int, n: int) -> None:
        if self.snapshots.needs_begin(n):
            self._begin_snapshot(n)
        if self.snapshots.marker(sender, n):
            self._finish_snapshot()

    def _begin_snapshot(self, n: int) -> asyncio.Future:
        """The cut of checkpoint ``n``: every stage's part of it, then marker ``n`` down every channel."""
        began = time.perf_counter()
        done = self.snapshots.begin(n)
        if self._failure is not None:
            # This shard has asked for a rollback: what the failure dropped (a remote batch that failed for
            # good, an epoch whose publishing failed) is no longer in flight, so a cut now would miss it,
            # and the rollback would go to that cut. Refuse it; the peers get their marker all the same.
            self.outbox.send_markers(n)
            done.set_exception(
                CheckpointRefused(f"shard {self.index} refuses checkpoint {n}: a rollback is pending ({self._failure})")
            )
            return done
        if self.ingress.mailbox and not self.held and self._loop_task is not None:
            # What the mailbox holds arrived before the cut: processed now (at most a turn, TURN_S), it is
            # in the captured state instead of being written as unprocessed messages. Under load the mailbox
            # holds a source batch or more at every cut, and encoding those rows cost a quarter of the
            # checkpoint's CPU. Nothing that arrives after this call's marker is processed: this is one
            # synchronous step, and the deliveries after it are accepted once the cut is taken.
            self._process(self.ingress.backlog)
        self._flush()  # what was produced before the cut travels before the marker
        snap = self.snapshots.cut(n, self.runners, {t: self._layout(t) for t in self.runners})
        snap.timers = self.timers.all()
        snap.pending = self.ingress.pending()
        for runner in self.runners.values():
            snap.pending.extend(
                (runner.typename, id, caller, vtype, payload)
                for id, caller, vtype, payload in runner.pending_messages()
            )
        snap.meta["sources"] = self.ingress.positions(n)
        snap.meta["driver_seq"] = self.channels.expected(DRIVER)
        # exactly-once egress: this epoch's records, plus any earlier epoch not yet confirmed published
        snap.egress = self.egress.cut(n)
        snap.waiting = self.outbox.send_markers(n)
        all_in = self.snapshots.started(snap)
        self.counters["snapshot_capture_s"] += time.perf_counter() - began
        if all_in:
            self._finish_snapshot()
        return done

    def _finish_snapshot(self) -> None:
        self.snapshots.finish()

    async def checkpoint_complete(self, n: int) -> None:
        """Checkpoint ``n`` is durable everywhere: publish the exactly-once egress of epochs up to ``n``."""
        began = time.perf_counter()
        self.snapshots.complete(n, self.runners)
        self.egress.complete(n)
        self.ingress.checkpoint_complete(n)
        self.counters["snapshot_commit_s"] += time.perf_counter() - began
        await self.egress.published()

    # -- rollback ---------------------------------------------------------------------------------------

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
                self.ingress.let_go()  # deliveries of the old generation that waited for room: let them go

    def _keeps_live_state(self, checkpoint_id: int | None) -> bool:
        """Whether the live state is exactly what checkpoint ``checkpoint_id`` holds of this shard's range:
        it is the newest one committed here, no newer cut began, and no instance changed since its cut
        (a rescale holds processing from before its checkpoint, see ``pause_sources``). A restore then
        keeps the live instances of the new range instead of reading them back."""
        snapshots = self.snapshots
        return (
            checkpoint_id is not None
            and snapshots.committed == checkpoint_id
            and snapshots.epoch == checkpoint_id
            and snapshots.current is None
            and all(not runner.state.changed and not any(runner.uncommitted) for runner in self.runners.values())
        )

    async def _restore_now(
        self, generation: int, peers: list, source_partitions: list, checkpoint_id: int | None, driver_from: int
    ) -> None:
        self.epoch_token = object()
        self._halt()
        self.held = False
        whole, self._state_whole = self._state_whole, False  # until this rollback has restored everything
        keep = whole and self._keeps_live_state(checkpoint_id)
        old_range = self.key_group_range
        self._place(len(peers))  # a rescale changes the shard count and so this shard's key groups
        # after _place: a rescale drops the copy
        undo = None if keep or not whole else self._changed_since(checkpoint_id)
        # every stage back to empty (what survives a rollback, each stage's reset says)
        self.timers.reset()
        self.outbox.reset(peers, generation)
        self.channels.reset(driver_from)
        self.ingress.reset()
        self.egress.reset()
        self.snapshots.reset(checkpoint_id)
        self._failure = None
        if self._failed_waiter is not None:
            self._failed_waiter[1].clear()
        for runner in self.runners.values():
            runner.reset()
            if undo is not None:
                continue  # the changes recorded say what to undo: ``_restore_undone`` clears them
            if not keep:
                runner.state.instances.clear()
            runner.state.changed.clear()
            runner.uncommitted.clear()
        if keep and checkpoint_id is not None:
            await self._restore_kept(checkpoint_id, old_range)
            if generation != self.generation:
                return  # a newer rollback began while this one read: it wins
        elif undo is not None and checkpoint_id is not None:
            await self._restore_undone(generation, checkpoint_id, undo)
            if generation != self.generation:
                return  # a newer rollback began while this one read: it wins (restoring everything: _state_whole)
        elif checkpoint_id is not None:
            began = time.perf_counter()
            from_memory = self.snapshots.in_memory(checkpoint_id)  # this shard survived
            layouts = {t: self._layout(t) for t in self.runners} if from_memory else None
            restored = await self.snapshots.read(checkpoint_id, layouts)
            if generation != self.generation:
                return  # a newer rollback began while this one read (the coordinator fell back): it wins
            loaded = time.perf_counter()
            self._busy_in = f"loading checkpoint {checkpoint_id}"
            try:
                self._load(restored)
            finally:
                self._busy_in = None
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
            release_memory()
        self.ingress.open(source_partitions)
        self.egress.open()
        # the restored state is hundreds of thousands of long-lived lists: keep the collector from walking
        # them again and again right when the shard should catch up (gc.freeze: out of every collection;
        # no gc.collect first, it would walk them all once more, and the state holds no cycles to free)
        gc.freeze()
        self._state_whole = True  # not superseded: every await above returns early if a newer rollback began
        self._loop_task = asyncio.get_running_loop().create_task(self._run())
        self.wake()

    def _changed_since(self, checkpoint_id: int | None) -> dict[str, list[str]] | None:
        """The ids of each function type that changed since checkpoint ``checkpoint_id``'s cut, if this
        shard can roll back by undoing just those: the checkpoint is the newest committed here and its part
        is in the in-memory copy. Every change since the cut is recorded (``changed``, and the changes cuts
        took that no committed checkpoint holds yet, ``uncommitted``: a superset, which is safe), so the other
        instances hold the checkpoint's values already. None: restore everything (also when more than
        ``UNDO_MAX_SHARE`` of the instances changed)."""
        snapshots = self.snapshots
        if checkpoint_id is None or snapshots.committed != checkpoint_id or not snapshots.in_memory(checkpoint_id):
            return None
        undo = {}
        for typename, runner in self.runners.items():
            ids = set(runner.state.changed)
            for changes in runner.uncommitted:
                ids.update(changes)
            if ids:
                undo[typename] = list(ids)
        live = sum(len(runner.state.instances) for runner in self.runners.values())
        if sum(len(ids) for ids in undo.values()) > UNDO_MAX_SHARE * live:
            return None  # most of the state changed: restoring all of it is cheaper
        return undo

    async def _restore_undone(self, generation: int, checkpoint_id: int, undo: dict[str, list[str]]) -> None:
        """The restore of a shard that survived a failure: the instances that changed since checkpoint
        ``checkpoint_id`` (``_changed_since``) get its values back, from the in-memory copy, and the rest
        stay as they are: it reads and decodes the changed instances only, which for state of which a
        little changes between checkpoints is a small part of a whole restore."""
        began = time.perf_counter()
        rest, undone = await self.snapshots.read_instances(
            checkpoint_id, {t: (ids, self._layout(t), self.runners[t].state.single) for t, ids in undo.items()}
        )
        if generation != self.generation:
            return  # superseded while it read: the newer rollback restores everything (_state_whole)
        for typename, ids in undo.items():
            runner = self.runners[typename]
            instances, held = runner.state.instances, undone[typename]
            for id in ids:
                old = held.get(id)  # cells, or a single-cell type's value: as ``instances`` holds them
                if old is None:
                    instances.pop(id, None)  # it did not exist at the checkpoint
                else:
                    instances[id] = old
        for runner in self.runners.values():
            runner.state.changed.clear()
            runner.uncommitted.clear()
        self._load_rest(rest)
        self.snapshots.kept(self.snapshots.chain_rows)
        self.counters["restores_undone"] += 1
        log.info(
            "shard %d restored checkpoint %d by undoing %d changed instances, from memory, in %.2f s (%d messages)",
            self.index,
            checkpoint_id,
            sum(len(ids) for ids in undo.values()),
            time.perf_counter() - began,
            len(rest.messages),
        )

    async def _restore_kept(self, checkpoint_id: int, old_range: tuple[int, int]) -> None:
        """The restore of a shard whose live state is checkpoint ``checkpoint_id``'s (``_keeps_live_state``):
        drop the instances outside the new key-group range, read only the key groups it gains (a rescale)
        and, for the whole new range, the checkpoint's timers, messages and egress (all small)."""
        began = time.perf_counter()
        start, end = self.key_group_range
        dropped = sum(
            keep_key_groups(runner.state.instances, typename, self.config.key_groups, (start, end))
            for typename, runner in self.runners.items()
        )
        gained = [r for r in ((start, min(end, old_range[0])), (max(start, old_range[1]), end)) if r[0] < r[1]]
        chain_rows = self.snapshots.chain_rows
        rest, parts = await self.snapshots.read_ranges(checkpoint_id, gained)
        self._load_state(rest)
        for part in parts:
            self._load_state(part)
            chain_rows += max(0, part.chain_rows - part.state.num_rows)
        self._load_rest(rest)
        self.snapshots.kept(chain_rows)
        self.counters["restores_kept"] += 1
        log.info(
            "shard %d restored checkpoint %d from its live state in %.2f s (%d instances dropped, key groups %s "
            "read: %d state rows; %d messages)",
            self.index,
            checkpoint_id,
            time.perf_counter() - began,
            dropped,
            gained or "none",
            sum(part.state.num_rows for part in parts),
            len(rest.messages),
        )
        for part in (rest, *parts):
            part.close()

    def _load(self, restored) -> None:
        self._load_state(restored)
        self.snapshots.loaded(restored)
        self._load_rest(restored)

    def _load_state(self, restored) -> None:
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
                state = runner.state
                state.instances.update(restored.instances(typename, state.specs, values=state.single))
        for typename in set(restored.layouts) - set(self.runners):
            log.warning(
                "checkpoint %d holds state of %s, which is no longer bound: ignored", restored.checkpoint_id, typename
            )

    def _load_rest(self, restored) -> None:
        """Timers, unprocessed messages, and the egress epochs that may not have been published."""
        self.timers.load(restored.timers)
        if restored.messages:
            self.ingress.accept(list(restored.messages))
        self.egress.republish(restored.egress)

    # -- introspection ----------------------------------------------------------------------------------

    def status(self) -> ShardStatus:
        """Counters for idleness detection (the coordinator compares sent/received per channel)."""
        return ShardStatus(
            index=self.index,
            pid=os.getpid(),
            backlog=self.ingress.held(),  # every message accepted and not yet done
            in_progress=self._in_progress(),
            sent=list(self.outbox.sent),
            received=self.channels.received(),
            early=self.channels.early(),
            outstanding=sum(self.outbox.outstanding) + self.outbox.held(),  # a batch held back: not idle
            sources_busy=self.ingress.busy(),
            sources_exhausted=self.ingress.exhausted(),
            timers=len(self.timers),
            failure=self._failure,
            remote_requests=sum(c.stats["requests"] for c in self._clients.values()),
            remote_failures=sum(c.stats["failures"] for c in self._clients.values()),
            generation=self.generation,
            epoch=self.snapshots.epoch,
            cpu_s=time.process_time(),  # the process's CPU time: a busy machine moves it less than wall time
            taken_at=time.time(),
            counters=dict(self.counters),
            functions={typename: counts.as_dict() for typename, counts in self.functions.items()},
            function_backlog=self._function_backlog(),
        )

    def _in_progress(self) -> int:
        """Invocations started and not finished (async functions awaiting, remote calls in flight)."""
        return sum(getattr(r, "in_progress", 0) for r in self.runners.values())

    def publish_metrics(self) -> None:
        """Hand Ray's metrics what this shard counted since the last time (see runtime/metrics.py)."""
        publisher = self.metrics_publisher
        if publisher is None:
            return
        publisher.publish(
            self.functions,
            {client.endpoint.functions: (client.stats, client.latency) for client in self._clients.values()},
            self.ingress.held(),
            self._function_backlog(),
            self.ingress.lags(),
            self.counters["processed"],
        )

    def _function_backlog(self) -> dict[str, int]:
        """Messages each remote function type holds: in requests in flight and queued behind them."""
        return {
            typename: sum(len(b) for b in runner.inflight.values()) + sum(len(q) for q in runner.queued.values())
            for typename, runner in self.runners.items()
            if hasattr(runner, "queued")
        }

    def get_state(self, typename: str, id: str) -> dict[str, Any]:
        runner = self.runners.get(typename)
        if runner is None:
            raise ValueError(f"unknown function type {typename!r} (bound: {self.registry.describe()})")
        return runner.state.view(id, self.now_ms())

    def instance_count(self) -> dict[str, int]:
        return {t: len(r.state.instances) for t, r in self.runners.items()}


def __getattr__(name: str):
    """``ShardActor`` lives in ``shard_actor.py`` (which imports this module): imported on first use."""
    if name == "ShardActor":
        from .shard_actor import ShardActor

        return ShardActor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
