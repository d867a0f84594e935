"""The coordinator: one Ray actor per application that starts the shards, hands out source partitions,
triggers checkpoints, watches the shards, and on any failure rolls every shard back to the last complete
checkpoint. It also owns the driver's channel (``app.send``), so messages sent from a notebook since the
last checkpoint are re-sent after a rollback instead of being lost.

Checkpoint n (see shard.py for the shard side):
1. ``checkpoint(n)`` on every shard; each snapshots at its cut and sends marker n to every peer, records
   what arrives on a channel before that channel's marker, then writes its part and returns it.
2. When every part is written, the manifest is committed (last): only now does checkpoint n exist.
3. ``checkpoint_complete(n)`` lets shards publish the exactly-once egress of epochs <= n.

Every attempt gets a new id, past every manifest in the store (damaged ones included): a checkpoint that
fails (storage down, a shard that refuses its cut because it has asked for a rollback) is abandoned with
``checkpoint_aborted(n)`` and the next attempt starts afresh, after a backoff while failures go on.
A failed checkpoint loses nothing: the shards keep the changes and the egress it would have covered, and
the next checkpoint that completes covers them. Failures are logged, counted (``app.info()``) and
exported as Ray metrics, louder the longer they last.

Driver messages (``app.send``) carry one sequence number per destination shard for the coordinator's whole
life, never renumbered: a checkpoint records how far each shard had read, and a rollback re-sends the
logged batches from there, however many rollbacks to the same checkpoint come in a row.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError

from ..functions import StatefulFunctions
from ..io import Sink, Source
from .aio import cancel_quietly, retrieve
from .egress_collector import EgressCollector
from .shard import DRIVER, ShardActor, ShardConfig

log = logging.getLogger("rayfun")

__all__ = ["AppConfig", "Coordinator"]

FULL_EVERY = 50  # at the latest, a full base every this many checkpoints (shards write one sooner, as
# their deltas grow: see shard.FULL_AFTER); bounds the number of files in a chain
STANDBY_DELAY_S = 5.0  # after a recovery, wait this long before starting the next standby shard
STOP_TIMEOUT_S = 30.0  # how long app.stop() waits for the shards to flush and close their sinks
MONITOR_INTERVAL_S = 0.1  # how often the shards are asked whether they are alive and well
STATUS_TIMEOUT_S = 10.0  # a shard that does not answer a status call for this long is taken for dead
CHECKPOINT_TIMEOUT_S = 60.0  # a checkpoint not complete by then is abandoned (e.g. storage that hangs)
CHECKPOINT_BACKOFF_MAX_S = 5.0  # while checkpoints fail, attempts back off up to this far apart
CHECKPOINT_ALARM_AFTER = 3  # consecutive failed checkpoints before the log says so at ERROR level
RECOVERY_BACKOFF_MAX_S = 30.0  # repeated failures (a remote function down): rollbacks back off up to this
RECOVERY_CALM_S = 60.0  # a failure this long after the last recovery starts the backoff afresh


class CheckpointAbandoned(RuntimeError):
    """A checkpoint let go because the application is rolling back (not a failure of the checkpoint)."""


@dataclass
class AppConfig:
    functions: StatefulFunctions
    shards: int = 2
    key_groups: int = 1024
    endpoints: list = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    sinks: list[Sink] = field(default_factory=list)
    shard_options: dict = field(default_factory=dict)
    standby: bool = True  # keep an idle shard actor ready to replace one that dies
    checkpoint_dir: str | None = None
    checkpoint_interval: float | None = 1.0
    checkpoint_options: dict = field(default_factory=dict)
    name: str | None = None  # the application's name (tags its metrics)


class Coordinator:
    """Owns the shard actors of one application."""

    def __init__(self, config: AppConfig) -> None:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        self.config = config
        self.shards: list = []
        self.generation = 0
        self.collector = None
        self.store = None
        self.last_checkpoint: int | None = None
        self.recoveries = 0
        self._driver_seq = [0] * config.shards  # next sequence number per destination, never renumbered
        self._driver_sent = [0] * config.shards  # messages sent to each shard in this generation
        self._early_sends: dict[int, dict] = {}
        self._next_send = 0
        self._driver_log: list[list[tuple[int, list]]] = [[] for _ in range(config.shards)]
        # how far each retained checkpoint had read the driver's channel, oldest first: the log keeps what
        # the oldest did not read, so a fall back past a damaged checkpoint re-sends what it covered
        self._driver_covers: deque[list[int]] = deque(maxlen=config.checkpoint_options.get("retain", 3))
        self.incarnation = uuid.uuid4().hex[:16]  # this coordinator's driver-channel numbering
        self._send_lock: asyncio.Lock | None = None  # the driver's channel (sends, and a rollback's replay)
        self._checkpoint_lock: asyncio.Lock | None = None  # one checkpoint or recovery at a time
        self._next_id = 1  # the id of the next checkpoint attempt
        self.checkpoint_failures = 0  # consecutive failed checkpoints
        self.checkpoint_failures_total = 0
        self.last_checkpoint_error: str | None = None
        self._last_complete_at = time.monotonic()  # when the newest checkpoint completed (or the start)
        self._last_alarm = 0.0
        self._recoveries_in_a_row = 0
        self._recovered_at = 0.0
        self.last_failure: str | None = None
        self._metrics = None
        self._tasks: list[asyncio.Task] = []
        self._stopped = False
        self._compaction = None
        self._since_full = 0
        self._abandon = False
        self._spare = None  # a started, idle shard actor that replaces the next shard to die
        self.run_id = ""
        self._recovering = False
        self.last_recovery_s: float | None = None
        self.last_checkpoint_s: float | None = None  # how long the newest checkpoint took, trigger to complete
        self._checkpoint_ended = 0.0

    # -- start ------------------------------------------------------------------------------------------

    def _shard_config(self) -> ShardConfig:
        c = self.config
        return ShardConfig(
            functions=c.functions,
            shards=c.shards,
            key_groups=c.key_groups,
            endpoints=c.endpoints,
            sources=c.sources,
            sinks=c.sinks,
            checkpoint_url=c.checkpoint_dir,
            checkpoint_options=c.checkpoint_options,
            collector=self.collector,
            run_id=self.run_id,
        )

    def _new_shard(self, index: int):
        options = {"num_cpus": 0, "max_concurrency": 10_000, "max_restarts": 0, **self.config.shard_options}
        return ray.remote(ShardActor).options(**options).remote(index, self._shard_config())

    def _assign_partitions(self, positions: dict[tuple[int, str], Any]) -> list[list[tuple[int, str, Any]]]:
        """Spread every source partition over the shards, round-robin, each at its recorded position."""
        assignment: list[list[tuple[int, str, Any]]] = [[] for _ in range(self.config.shards)]
        k = 0
        for source_index, source in enumerate(self.config.sources):
            for name in source.partitions():
                assignment[k % self.config.shards].append((source_index, name, positions.get((source_index, name))))
                k += 1
        return assignment

    async def start(self) -> list:
        """Create the shards and start them, resuming from the newest complete checkpoint if there is one."""
        self._send_lock = asyncio.Lock()
        self._checkpoint_lock = asyncio.Lock()
        self._metrics = _CheckpointMetrics(self.config.name)
        self.collector = ray.remote(EgressCollector).options(num_cpus=0).remote()
        if self.config.checkpoint_dir is not None:
            from ..checkpoint import CheckpointStore

            self.store = CheckpointStore(self.config.checkpoint_dir, **self.config.checkpoint_options)
        checkpoint = await self._latest_checkpoint()
        if self.store is not None:  # past every manifest present, damaged or quarantined ones included
            self._next_id = await asyncio.get_running_loop().run_in_executor(None, self.store.next_checkpoint_id)
        # one id per application across restores (sinks scope their exactly-once markers by it)
        self.run_id = (checkpoint.app.get("run_id") if checkpoint is not None else None) or uuid.uuid4().hex[:16]
        self.shards = [self._new_shard(i) for i in range(self.config.shards)]
        # the standby starts with the shards: its process start (about a CPU-second) is part of the
        # application's start-up, not a hiccup in the middle of processing
        self._keep_standby()
        await asyncio.gather(*[s.ready.remote() for s in self.shards + [self._spare] if s is not None])
        if checkpoint is None:
            assignment = self._assign_partitions({})
            await asyncio.gather(*[s.start.remote(self.shards, assignment[i]) for i, s in enumerate(self.shards)])
        else:
            log.info("resuming from checkpoint %d in %s", checkpoint.checkpoint_id, self.config.checkpoint_dir)
            async with self._send_lock:
                await self._restore_newest(checkpoint)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._monitor()))
        if self.store is not None and self.config.checkpoint_interval:
            self._tasks.append(loop.create_task(self._checkpoint_loop()))
        return self.shards

    async def _latest_checkpoint(self, before: int | None = None):
        """The newest checkpoint that verifies; damaged ones on the way are quarantined (see the store)."""
        if self.store is None:
            return None
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.store.latest_valid(before, quarantine=True)
        )

    # -- the driver's channel ---------------------------------------------------------------------------

    async def send(self, call_seq: int, rows_by_shard: dict[int, list]) -> None:
        """Forward messages from the driver, keeping them until a checkpoint covers them. ``call_seq``
        numbers the driver's calls: Ray does not keep their order for an async actor, so this does."""
        self._early_sends[call_seq] = rows_by_shard
        async with self._send_lock:
            while self._next_send in self._early_sends:
                self._forward(self._early_sends.pop(self._next_send))
                self._next_send += 1

    def _forward(self, rows_by_shard: dict[int, list]) -> None:
        for dest, rows in rows_by_shard.items():
            seq = self._driver_seq[dest]
            self._driver_seq[dest] = seq + 1
            if self.store is not None:
                self._driver_log[dest].append((seq, rows))
            self._deliver_driver(dest, seq, rows)

    def _deliver_driver(self, dest: int, seq: int, rows: list) -> None:
        self._driver_sent[dest] += len(rows)
        self.shards[dest].deliver.remote(DRIVER, seq, pickle.dumps(rows, protocol=5), self.generation)

    # -- checkpoints ------------------------------------------------------------------------------------

    async def checkpoint(self) -> int:
        """Take a checkpoint now; returns its id once it is complete (its manifest written)."""
        if self.store is None:
            raise RuntimeError("checkpoints are off: start the application with checkpoint_dir=...")
        async with self._checkpoint_lock:
            return await self._checkpoint_locked()

    async def _checkpoint_locked(self) -> int:
        began = time.monotonic()
        n = self._next_id
        self._next_id += 1
        generation = self.generation
        # full bases cost the shards an encode (no read, no fold), not a compaction's full cycle
        full = self._since_full + 1 >= FULL_EVERY
        loop = asyncio.get_running_loop()
        try:
            parts = await self._gather_parts(n, full, generation)
            await loop.run_in_executor(
                None,
                lambda: self.store.commit(
                    n,
                    list(parts),
                    key_groups=self.config.key_groups,
                    app_meta={
                        "functions": self.config.functions.typenames,
                        "shards": self.config.shards,
                        "run_id": self.run_id,
                        "coordinator": self.incarnation,
                    },
                ),
            )
        except CheckpointAbandoned:
            raise
        except Exception as exc:
            await self._abort(n)
            self._checkpoint_failed(n, exc)
            raise
        self.last_checkpoint = n
        self._checkpoint_succeeded()
        self._since_full = 0 if all(p.full for p in parts) else self._since_full + 1
        self._maybe_compact(loop)
        self._driver_covers.append([part.meta.get("driver_seq", 0) for part in parts])
        for dest in range(self.config.shards):  # keep what some checkpoint we may restore has not read
            covered = min(cover[dest] for cover in self._driver_covers)
            self._driver_log[dest] = [(seq, rows) for seq, rows in self._driver_log[dest] if seq >= covered]
        await asyncio.gather(*[s.checkpoint_complete.remote(n) for s in self.shards])
        self._checkpoint_ended = time.monotonic()
        self.last_checkpoint_s = self._checkpoint_ended - began
        self._metrics.completed(self.last_checkpoint_s)
        return n

    async def _gather_parts(self, n: int, full: bool, generation: int) -> list:
        """Every shard's part of checkpoint ``n``; raises the first shard's error, CheckpointAbandoned if a
        recovery began meanwhile, TimeoutError after CHECKPOINT_TIMEOUT_S."""
        # return_exceptions: the errors of every shard are retrieved here, none is left for asyncio to
        # report as "never retrieved" when the gather is cancelled
        pending = asyncio.gather(*[s.checkpoint.remote(n, full) for s in self.shards], return_exceptions=True)
        deadline = time.monotonic() + CHECKPOINT_TIMEOUT_S
        while True:  # a shard that died mid-checkpoint leaves its peers waiting for its marker: give up then
            done, _ = await asyncio.wait({pending}, timeout=0.05)
            if done:
                results = pending.result()
                break
            if self._abandon:
                cancel_quietly(pending)
                raise CheckpointAbandoned(f"checkpoint {n} abandoned: a shard failed, rolling back")
            if time.monotonic() > deadline:
                cancel_quietly(pending)
                raise TimeoutError(f"checkpoint {n} did not complete within {CHECKPOINT_TIMEOUT_S:.0f} s")
        if generation != self.generation:
            raise CheckpointAbandoned(f"checkpoint {n} abandoned: the application was rolled back meanwhile")
        for index, result in enumerate(results):
            if isinstance(result, BaseException):
                raise RuntimeError(f"shard {index}: {_first_line(result)}") from result
        return results

    async def _abort(self, n: int) -> None:
        """Tell every shard that checkpoint ``n`` will never complete (best effort: a shard that does not
        answer is dead or stuck, and the failure monitor deals with it)."""
        aborts = asyncio.gather(*[s.checkpoint_aborted.remote(n) for s in self.shards], return_exceptions=True)
        aborts.add_done_callback(retrieve)  # wait_for cancels it on a timeout
        try:
            await asyncio.wait_for(aborts, 10)
        except asyncio.TimeoutError:
            log.warning("checkpoint %d: not every shard acknowledged its abort", n)

    def _checkpoint_failed(self, n: int, exc: BaseException) -> None:
        self.checkpoint_failures += 1
        self.checkpoint_failures_total += 1
        self.last_checkpoint_error = _first_line(exc)
        self._metrics.failed()
        age = time.monotonic() - self._last_complete_at
        now = time.monotonic()
        if self.checkpoint_failures < CHECKPOINT_ALARM_AFTER:
            log.warning("checkpoint %d failed (%s); retrying with a new checkpoint", n, self.last_checkpoint_error)
        elif self.checkpoint_failures == CHECKPOINT_ALARM_AFTER or now - self._last_alarm > 30:
            self._last_alarm = now
            log.error(
                "checkpoints keep failing: %d in a row, none complete for %.0f s (last: %s). Exactly-once "
                "egress is held back until one completes, and a failure now would roll back to "
                "checkpoint %s",
                self.checkpoint_failures,
                age,
                self.last_checkpoint_error,
                self.last_checkpoint,
            )

    def _checkpoint_succeeded(self) -> None:
        if self.checkpoint_failures >= CHECKPOINT_ALARM_AFTER:
            log.warning(
                "checkpoints complete again (checkpoint %d, after %d failures)",
                self.last_checkpoint,
                self.checkpoint_failures,
            )
        self.checkpoint_failures = 0
        self._last_complete_at = time.monotonic()

    def _maybe_compact(self, loop) -> None:
        """Fold the delta chain into bases in the background if it grew past its bound anyway (e.g. after a
        restore onto another shard count); the next checkpoint's manifest then references the bases (the
        store keeps this safe while checkpoints go on)."""
        if self._compaction is not None and not self._compaction.done():
            return
        from ..checkpoint import needs_compaction

        manifest = self.store.latest()
        if manifest is not None and needs_compaction(manifest, max_chain=2 * FULL_EVERY * len(manifest.shards)):
            self._compaction = loop.run_in_executor(None, self.store.compact, manifest)

    async def _checkpoint_loop(self) -> None:
        """A checkpoint every ``checkpoint_interval`` from start to start (Flink's meaning); after one that
        took longer, the next waits half an interval (Flink's min pause), so that slow checkpoints do not
        run back to back and leave the shards no time between them."""
        interval = self.config.checkpoint_interval
        began = time.monotonic()
        while not self._stopped:
            now = time.monotonic()
            wait = max(began + interval - now, interval / 2 - (now - self._checkpoint_ended), 0.0)
            if self.checkpoint_failures:  # back off while they fail (storage down): 2x per failure, capped
                wait = max(
                    wait, min(interval * 2 ** (self.checkpoint_failures - 1), max(CHECKPOINT_BACKOFF_MAX_S, interval))
                )
            await asyncio.sleep(wait)
            began = time.monotonic()
            self._metrics.age(began - self._last_complete_at)
            if self._recovering:
                continue
            try:
                await self.checkpoint()
            except CheckpointAbandoned:
                pass  # a recovery is under way
            except Exception:
                pass  # counted and logged by _checkpoint_failed

    # -- failures ---------------------------------------------------------------------------------------

    async def _monitor(self) -> None:
        while not self._stopped:
            await asyncio.sleep(MONITOR_INTERVAL_S)
            if self._recovering:
                continue
            try:
                failed = await self._failed_shards()
                if failed and not self._stopped:
                    await self.recover(failed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # e.g. another shard died during the recovery: look again, recover again
                log.warning("recovery failed (%s); recovering again", _first_line(exc))

    async def _failed_shards(self) -> dict[int, tuple[bool, str]]:
        """Shards that died or report a failure: ``index -> (dead, reason)``."""
        refs = [s.status.remote() for s in self.shards]
        failed: dict[int, tuple[bool, str]] = {}
        for i, ref in enumerate(refs):
            try:
                st = await asyncio.wait_for(ref, timeout=STATUS_TIMEOUT_S)
                if st["failure"]:
                    failed[i] = (False, st["failure"])
            except (RayActorError, asyncio.TimeoutError) as exc:
                failed[i] = (True, f"{type(exc).__name__}: {exc}".splitlines()[0])
        return failed

    async def recover(self, failed: dict[int, tuple[bool, str]]) -> None:
        """Roll every shard back to the newest complete checkpoint; replace the shards that died. Failures
        that come back soon after a recovery (a remote function that is down, with on_failure='restart')
        are rolled back after a growing pause: retried for as long as they fail, never dropped."""
        started = time.monotonic()
        self._recovering = True
        self._abandon = True  # a checkpoint in progress will never complete: let it go
        try:
            async with self._checkpoint_lock:
                self._abandon = False
                for index, (_, reason) in failed.items():
                    log.warning("shard %d failed (%s): rolling back to the last checkpoint", index, reason)
                self.last_failure = "; ".join(f"shard {i}: {reason}" for i, (_, reason) in failed.items())
                await self._recovery_backoff(any(dead for dead, _ in failed.values()))
                dead = [i for i, (is_dead, _) in failed.items() if is_dead]
                for i in dead:
                    try:
                        ray.kill(self.shards[i])
                    except Exception:
                        pass
                    self.shards[i] = await self._replacement(i)
                await asyncio.gather(*[self.shards[i].ready.remote() for i in dead])
                replaced = time.monotonic()
                checkpoint = await self._latest_checkpoint()
                found = time.monotonic()
                async with self._send_lock:
                    await self._restore_newest(checkpoint)
                self.recoveries += 1
                self._metrics.recovered()
                log.info(
                    "recovery: replacing %d shard(s) %.2f s, finding checkpoint %.2f s, restoring %.2f s",
                    len(dead),
                    replaced - started,
                    found - replaced,
                    time.monotonic() - found,
                )
        finally:
            self._recovering = False
            self._abandon = False
            self._recovered_at = time.monotonic()
        self.last_recovery_s = time.monotonic() - started
        # the next standby later: its process start costs about a CPU-second, which the shards need now
        asyncio.get_running_loop().call_later(STANDBY_DELAY_S, self._keep_standby)
        log.warning("recovered from checkpoint %s in %.2f s", self.last_checkpoint, self.last_recovery_s)

    async def _recovery_backoff(self, died: bool) -> None:
        """Pause before a rollback for a failure a shard reported (a remote function down, a sink that
        refuses) that follows the last recovery closely: 0, 0.5, 1, 2 ... s, capped. A shard that died is
        replaced at once: waiting would not bring it back, and its work waits."""
        if died:
            return
        if self._recovered_at and time.monotonic() - self._recovered_at < RECOVERY_CALM_S:
            self._recoveries_in_a_row += 1
        else:
            self._recoveries_in_a_row = 1
        if self._recoveries_in_a_row < 2:
            return
        pause = min(0.5 * 2 ** (self._recoveries_in_a_row - 2), RECOVERY_BACKOFF_MAX_S)
        log.warning(
            "failure %d in a row within %.0f s of the last recovery: rolling back in %.1f s (%s)",
            self._recoveries_in_a_row,
            RECOVERY_CALM_S,
            pause,
            self.last_failure,
        )
        await asyncio.sleep(pause)

    async def _replacement(self, index: int):
        """A shard actor to replace dead shard ``index``: the warm standby if there is one (starting an actor
        takes about a second, a large part of a recovery), else a new one."""
        spare, self._spare = self._spare, None
        if spare is not None:
            try:
                await asyncio.wait_for(spare.adopt.remote(index), timeout=10)
                return spare
            except Exception as exc:
                log.warning("the standby shard is unusable (%s); starting a new one", exc)
        return self._new_shard(index)

    def _keep_standby(self) -> None:
        if self._spare is None and not self._stopped and self.config.standby:
            self._spare = self._new_shard(0)

    async def _restore_newest(self, checkpoint) -> None:
        """Restore ``checkpoint``; if a shard finds one of its files damaged (a clear error naming the file),
        fall back to the previous complete checkpoint, and so on."""
        from ..checkpoint import CorruptCheckpointError

        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._restore_all(checkpoint)
                return
            except CorruptCheckpointError as exc:
                if checkpoint is None:
                    raise
                damaged = checkpoint.checkpoint_id
                log.error(
                    "checkpoint %d cannot be restored (%s); falling back to the one before. Egress that "
                    "it published will be published again by the replay (that epoch is at-least-once)",
                    damaged,
                    exc,
                )
                await loop.run_in_executor(None, self.store.quarantine, damaged, str(exc))
                checkpoint = await self._latest_checkpoint(before=damaged)

    async def _restore_all(self, checkpoint) -> None:
        self.generation += 1
        positions: dict[tuple[int, str], Any] = {}
        # where each shard's driver channel resumes: what the checkpoint had read, in this coordinator's
        # numbering (a checkpoint of an earlier coordinator read none of this one's messages)
        driver_from = [0] * self.config.shards
        if checkpoint is not None:
            self.last_checkpoint = checkpoint.checkpoint_id
            ours = checkpoint.app.get("coordinator") == self.incarnation
            for entry in checkpoint.shards:
                meta = entry.meta
                for source_index, name, position, _exhausted in meta.get("sources", []):
                    positions[(source_index, name)] = position
                if ours:
                    driver_from[entry.index] = meta.get("driver_seq", 0)
        assignment = self._assign_partitions(positions)
        checkpoint_id = None if checkpoint is None else checkpoint.checkpoint_id
        await asyncio.gather(
            *[
                s.restore.remote(self.generation, self.shards, assignment[i], checkpoint_id, driver_from[i])
                for i, s in enumerate(self.shards)
            ]
        )
        # the driver's channel: re-send what the checkpoint had not read, under the same numbers
        self._driver_sent = [0] * self.config.shards
        for dest in range(self.config.shards):  # the log itself keeps all (an older checkpoint may be next)
            for seq, rows in self._driver_log[dest]:
                if seq >= driver_from[dest]:
                    self._deliver_driver(dest, seq, rows)

    # -- introspection ----------------------------------------------------------------------------------

    def shard_handles(self) -> list:
        return self.shards

    def collector_handle(self):
        return self.collector

    def info(self) -> dict:
        return {
            "generation": self.generation,
            "last_checkpoint": self.last_checkpoint,
            "recoveries": self.recoveries,
            "last_recovery_s": self.last_recovery_s,
            "last_failure": self.last_failure,
            "last_checkpoint_s": self.last_checkpoint_s,
            "last_checkpoint_age_s": (time.monotonic() - self._last_complete_at if self.store is not None else None),
            "checkpoint_failures": self.checkpoint_failures,
            "checkpoint_failures_total": self.checkpoint_failures_total,
            "last_checkpoint_error": self.last_checkpoint_error,
            "standby": None if self._spare is None else self._spare._actor_id.hex(),
        }

    async def statuses(self) -> list[dict]:
        return await asyncio.gather(*[s.status.remote() for s in self.shards])

    async def flush(self) -> None:
        """Make every record emitted so far visible: a checkpoint (exactly-once egress is published when
        its checkpoint completes), or without checkpoints a flush of what the shards hold."""
        if self.store is not None:
            await self.checkpoint()
        else:
            await asyncio.gather(*[s.flush.remote() for s in self.shards])

    async def wait_idle(self, timeout: float | None = 60.0, timers: bool = True) -> bool:
        """Wait until nothing is queued, running or in flight anywhere (and, with ``timers``, no delayed
        message is pending): the same counters twice in a row, with every message sent also received."""
        deadline = None if timeout is None else time.monotonic() + timeout
        previous = None
        delay = 0.005
        while True:
            if not self._recovering:
                try:
                    statuses = await self.statuses()
                except RayActorError:
                    statuses = None
                if statuses is not None and self._quiet(statuses, self._driver_sent, timers):
                    key = [
                        (st["generation"], st["processed"], st["sent"], sorted(st["received"].items()))
                        for st in statuses
                    ]
                    if key == previous:
                        return True
                    previous = key
                else:
                    previous = None
            if deadline is not None and time.monotonic() > deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _quiet(self, statuses: list[dict], driver_sent: list[int], timers: bool) -> bool:
        for st in statuses:
            if st["generation"] != self.generation or st["failure"]:
                return False
            if st["backlog"] or st["in_progress"] or st["early"] or st["outstanding"] or st["sources_busy"]:
                return False
            if timers and st["timers"]:
                return False
        for j, st in enumerate(statuses):
            expected = {i: other["sent"][j] for i, other in enumerate(statuses) if other["sent"][j]}
            if driver_sent[j]:
                expected[DRIVER] = driver_sent[j]
            received = {k: v for k, v in st["received"].items() if v}
            if received != expected:
                return False
        return True

    async def stop(self) -> None:
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        # shards flush and close their sinks; one that does not answer in time (its loop blocked in a
        # sink call, say) must not keep the application from stopping: it is killed like the others
        stops = asyncio.gather(*[s.stop.remote() for s in self.shards], return_exceptions=True)
        stops.add_done_callback(retrieve)
        try:
            await asyncio.wait_for(stops, STOP_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.warning("shards did not stop within %.0f s: killing them (sinks may not have flushed)", STOP_TIMEOUT_S)
        for s in self.shards + ([self._spare] if self._spare is not None else []):
            ray.kill(s)
        self._spare = None
        if self.collector is not None:
            ray.kill(self.collector)
        self.shards = []


def _first_line(exc: BaseException) -> str:
    """One line naming an error: Ray wraps an actor's exception in a traceback, the cause is its last line."""
    cause = getattr(exc, "cause", None) if isinstance(exc, ray.exceptions.RayTaskError) else None
    exc = cause if isinstance(cause, BaseException) else exc
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class _CheckpointMetrics:
    """Checkpoint health as Ray metrics (Prometheus through Ray's metrics export), tagged by application."""

    def __init__(self, app_name: str | None) -> None:
        from ray.util import metrics

        tags = {"application": app_name or "rayfun"}
        self._failures = metrics.Counter(
            "rayfun_checkpoint_failures", "checkpoints that failed", tag_keys=("application",)
        )
        self._completed = metrics.Counter(
            "rayfun_checkpoints_completed", "checkpoints completed", tag_keys=("application",)
        )
        self._duration = metrics.Gauge(
            "rayfun_checkpoint_duration_seconds", "duration of the last checkpoint", tag_keys=("application",)
        )
        self._age = metrics.Gauge(
            "rayfun_checkpoint_age_seconds", "time since the last complete checkpoint", tag_keys=("application",)
        )
        self._recoveries = metrics.Counter(
            "rayfun_recoveries", "rollbacks to the last checkpoint", tag_keys=("application",)
        )
        for metric in (self._failures, self._completed, self._duration, self._age, self._recoveries):
            metric.set_default_tags(tags)

    def failed(self) -> None:
        self._failures.inc()

    def completed(self, duration_s: float) -> None:
        self._completed.inc()
        self._duration.set(duration_s)
        self._age.set(0.0)

    def age(self, seconds: float) -> None:
        self._age.set(seconds)

    def recovered(self) -> None:
        self._recoveries.inc()
