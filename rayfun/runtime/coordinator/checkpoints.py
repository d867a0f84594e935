"""Checkpoint scheduling: when the coordinator takes a checkpoint, and what it does when one fails.

Checkpoint n (see runtime/snapshot.py for the shard side):
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
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ...checkpoint.errors import CheckpointError
from ...constants import (  # tuning knobs: see rayfun/constants.py
    ABORT_TIMEOUT_S,
    CHECKPOINT_ALARM_AFTER,
    CHECKPOINT_ALARM_EVERY_S,
    CHECKPOINT_BACKOFF_MAX_S,
    CHECKPOINT_TIMEOUT_S,
    FULL_EVERY,
    POLL_S,
)
from ...errors import RayfunError
from ..aio import cancel_quietly, retrieve
from .driver_channel import DriverChannel
from .fleet import Fleet, first_line

log = logging.getLogger("rayfun")

__all__ = ["CheckpointAbandoned", "CheckpointMetrics", "CheckpointScheduler"]


class CheckpointAbandoned(RayfunError, RuntimeError):
    """A checkpoint let go because the application is rolling back (not a failure of the checkpoint)."""


class CheckpointMetrics:
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
        self._size = metrics.Gauge(
            "rayfun_checkpoint_size_bytes", "bytes the last complete checkpoint wrote", tag_keys=("application",)
        )
        for metric in (self._failures, self._completed, self._duration, self._age, self._size):
            metric.set_default_tags(tags)

    def failed(self) -> None:
        self._failures.inc()

    def completed(self, duration_s: float, size_bytes: int) -> None:
        self._completed.inc()
        self._duration.set(duration_s)
        self._size.set(size_bytes)
        self._age.set(0.0)

    def age(self, seconds: float) -> None:
        self._age.set(seconds)


def next_wait(interval: float, since_began: float, since_ended: float, failures: int) -> float:
    """Seconds until the next periodic checkpoint: ``interval`` from start to start (Flink's meaning); after
    one that took longer, half an interval after it ended (Flink's min pause), so that slow checkpoints do
    not run back to back and leave the shards no time between them; while checkpoints fail (storage down),
    2x the interval per failure, capped at CHECKPOINT_BACKOFF_MAX_S (or the interval, if longer)."""
    wait = max(interval - since_began, interval / 2 - since_ended, 0.0)
    if failures:
        wait = max(wait, min(interval * 2 ** (failures - 1), max(CHECKPOINT_BACKOFF_MAX_S, interval)))
    return wait


class CheckpointScheduler:
    """Takes checkpoints (on demand and every ``checkpoint_interval``) and keeps count of their failures."""

    def __init__(self, fleet: Fleet, driver: DriverChannel, metrics: CheckpointMetrics, next_id: int = 1) -> None:
        self.fleet = fleet
        self.driver = driver
        self.metrics = metrics
        self.next_id = next_id  # the id of the next checkpoint attempt
        self.failures = 0  # consecutive failed checkpoints
        self.failures_total = 0
        self.last_error: str | None = None
        self.last_complete_at = time.monotonic()  # when the newest checkpoint completed (or the start)
        self.last_duration_s: float | None = None  # how long the newest checkpoint took, trigger to complete
        self.last_size_bytes: int | None = None  # what the newest checkpoint wrote
        self.last_phases: dict[str, float] = {}  # seconds per phase of the newest: parts written, commit, complete
        self._ended = 0.0
        self._last_alarm = 0.0
        self._since_full = 0
        self._compaction = None
        self._retention: asyncio.Future | None = None

    async def checkpoint(self) -> int:
        """Take a checkpoint now; returns its id once it is complete (its manifest written)."""
        if self.fleet.store is None:
            raise CheckpointError("checkpoints are off: start the application with checkpoint_dir=...")
        async with self.fleet.lock:
            return await self.checkpoint_locked()

    async def checkpoint_locked(self, full: bool = False) -> int:
        """``checkpoint`` with the fleet lock held; ``full``: every shard writes a full base (a restore of it
        then reads each instance once, not a base and its deltas)."""
        fleet, config = self.fleet, self.fleet.config
        began = time.monotonic()
        n = self.next_id
        self.next_id += 1
        generation = fleet.generation
        # full bases cost the shards an encode (no read, no fold), not a compaction's full cycle
        full = full or self._since_full + 1 >= FULL_EVERY
        loop = asyncio.get_running_loop()
        deadline = began + CHECKPOINT_TIMEOUT_S
        try:
            parts = await self._gather_parts(n, full, generation, deadline)
            written = time.monotonic()
            commit = loop.run_in_executor(
                None,
                lambda: fleet.store.commit(
                    n,
                    list(parts),
                    key_groups=config.key_groups,
                    app_meta={
                        "functions": config.functions.typenames,
                        "shards": config.shards,
                        "run_id": fleet.run_id,
                        "coordinator": self.driver.incarnation,
                    },
                    retain=False,  # below, once the shards know: exactly-once egress does not wait for it
                ),
            )
            manifest = await self._storage_step(n, commit, deadline, "writing its manifest")
        except CheckpointAbandoned:
            raise
        except Exception as exc:
            await self._abort(n)
            self._failed(n, exc)
            raise
        fleet.last_checkpoint = n
        committed = time.monotonic()
        self._succeeded()
        self._since_full = 0 if all(p.full for p in parts) else self._since_full + 1
        self._maybe_compact(loop, manifest)
        self.driver.covered([part.meta.get("driver_seq", 0) for part in parts])
        # a shard whose loop is stuck answers this never (a `def` function that does not return): the
        # recovery that replaces it takes the fleet lock, so stop waiting once it asks (it restores n or later)
        told = asyncio.gather(*[s.checkpoint_complete.remote(n) for s in fleet.shards], return_exceptions=True)
        if not await self._unless_abandoned(told):
            raise CheckpointAbandoned(f"checkpoint {n} is complete; a shard failed before every shard heard it")
        for result in told.result():
            if isinstance(result, BaseException):
                raise result
        self._ended = time.monotonic()
        self._retain(loop, n)
        self.last_duration_s = self._ended - began
        self.last_phases = {
            "parts": written - began,
            "commit": committed - written,
            "complete": self._ended - committed,
        }
        self.last_size_bytes = sum(part.bytes_written for part in parts)
        self.metrics.completed(self.last_duration_s, self.last_size_bytes)
        return n

    async def _storage_step(self, n: int, step: asyncio.Future, deadline: float, what: str) -> Any:
        """Wait for a storage call of checkpoint ``n`` running in a thread (its result), but no longer than the
        checkpoint's deadline, and not at all once a recovery wants the fleet: storage that hangs must
        neither hold the checkpoints back past CHECKPOINT_TIMEOUT_S nor keep a recovery from starting.
        The thread goes on until its calls end (each is bounded, see rayfun/storage.py); if it writes the
        manifest after all, that checkpoint is a complete one the coordinator does not count (the shards
        build on their last committed one, and a restore of it is consistent: nothing is published before
        a checkpoint that counts completes)."""
        if await self._unless_abandoned(step, deadline):
            return step.result()
        step.add_done_callback(lambda f: self._late(n, what, f))
        if self.fleet.abandon:
            raise CheckpointAbandoned(f"checkpoint {n} abandoned while {what}: a shard failed, rolling back")
        raise TimeoutError(f"checkpoint {n}: {what} did not finish within {CHECKPOINT_TIMEOUT_S:.0f} s")

    async def _unless_abandoned(self, step: asyncio.Future, deadline: float | None = None) -> bool:
        """Wait for ``step``; False as soon as a recovery wants the fleet or ``deadline`` passed."""
        while True:
            done, _ = await asyncio.wait({step}, timeout=POLL_S)
            if done:
                return True
            if self.fleet.abandon or (deadline is not None and time.monotonic() > deadline):
                return False

    @staticmethod
    def _late(n: int, what: str, step: asyncio.Future) -> None:
        """A storage call given up on has ended: say how (see ``_storage_step``)."""
        if step.cancelled():
            return
        exc = step.exception()
        if exc is not None:
            log.info("checkpoint %d: %s, given up on, failed later: %s", n, what, first_line(exc))
        else:
            log.warning("checkpoint %d: %s, given up on, finished later; that checkpoint is not counted", n, what)

    def _retain(self, loop: asyncio.AbstractEventLoop, n: int) -> None:
        """Apply retention after checkpoint ``n`` in the background, one run at a time (it deletes only what
        no retained checkpoint needs, and logs its failures): storage that hangs in it must not hold the
        next checkpoint back."""
        if self._retention is not None and not self._retention.done():
            return  # the next checkpoint's retention covers what this one's would have
        self._retention = loop.run_in_executor(None, self.fleet.store.retain_quietly, n)
        self._retention.add_done_callback(retrieve)

    async def _gather_parts(self, n: int, full: bool, generation: int, deadline: float) -> list:
        """Every shard's part of checkpoint ``n``; raises the first shard's error, CheckpointAbandoned if a
        recovery began meanwhile, TimeoutError after ``deadline`` (CHECKPOINT_TIMEOUT_S after it began)."""
        # return_exceptions: the errors of every shard are retrieved here, none is left for asyncio to
        # report as "never retrieved" when the gather is cancelled
        pending = asyncio.gather(*[s.checkpoint.remote(n, full) for s in self.fleet.shards], return_exceptions=True)
        # a shard that died mid-checkpoint leaves its peers waiting for its marker: give up then
        if not await self._unless_abandoned(pending, deadline):
            cancel_quietly(pending)
            if self.fleet.abandon:
                raise CheckpointAbandoned(f"checkpoint {n} abandoned: a shard failed, rolling back")
            raise TimeoutError(f"checkpoint {n} did not complete within {CHECKPOINT_TIMEOUT_S:.0f} s")
        results = pending.result()
        if generation != self.fleet.generation:
            raise CheckpointAbandoned(f"checkpoint {n} abandoned: the application was rolled back meanwhile")
        for index, result in enumerate(results):
            if isinstance(result, BaseException):
                raise CheckpointError(f"checkpoint {n}: shard {index}: {first_line(result)}") from result
        return results

    async def _abort(self, n: int) -> None:
        """Tell every shard that checkpoint ``n`` will never complete (best effort: a shard that does not
        answer is dead or stuck, and the failure monitor deals with it)."""
        aborts = asyncio.gather(*[s.checkpoint_aborted.remote(n) for s in self.fleet.shards], return_exceptions=True)
        aborts.add_done_callback(retrieve)  # wait_for cancels it on a timeout
        try:
            await asyncio.wait_for(aborts, ABORT_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.warning("checkpoint %d: not every shard acknowledged its abort", n)

    def _failed(self, n: int, exc: BaseException) -> None:
        self.failures += 1
        self.failures_total += 1
        self.last_error = first_line(exc)
        self.metrics.failed()
        age = time.monotonic() - self.last_complete_at
        now = time.monotonic()
        if self.failures < CHECKPOINT_ALARM_AFTER:
            log.warning("checkpoint %d failed (%s); retrying with a new checkpoint", n, self.last_error)
        elif self.failures == CHECKPOINT_ALARM_AFTER or now - self._last_alarm > CHECKPOINT_ALARM_EVERY_S:
            self._last_alarm = now
            log.error(
                "checkpoints keep failing: %d in a row, none complete for %.0f s (last: %s). Exactly-once "
                "egress is held back until one completes, and a failure now would roll back to "
                "checkpoint %s",
                self.failures,
                age,
                self.last_error,
                self.fleet.last_checkpoint,
            )

    def _succeeded(self) -> None:
        if self.failures >= CHECKPOINT_ALARM_AFTER:
            log.warning(
                "checkpoints complete again (checkpoint %d, after %d failures)",
                self.fleet.last_checkpoint,
                self.failures,
            )
        self.failures = 0
        self.last_complete_at = time.monotonic()

    def _maybe_compact(self, loop, manifest) -> None:
        """Fold the delta chain of ``manifest`` (the one just committed) into bases in the background if it
        grew past its bound anyway (e.g. after a restore onto another shard count); the next checkpoint's
        manifest then references the bases (the store keeps this safe while checkpoints go on). It asks
        storage nothing: it used to read the newest manifest here, on the coordinator's event loop, and S3
        gone silent right after a commit then held the whole coordinator (status, app.wait, recoveries) for
        the storage call's bound, 30 s (the fault campaign, seed 2728)."""
        if self._compaction is not None and not self._compaction.done():
            return
        from ...checkpoint import needs_compaction

        if manifest is not None and needs_compaction(manifest, max_chain=2 * FULL_EVERY * len(manifest.shards)):
            self._compaction = loop.run_in_executor(None, self.fleet.store.compact, manifest)

    async def run(self) -> None:
        """A checkpoint every ``checkpoint_interval`` (see ``next_wait``), until the application stops."""
        interval = self.fleet.config.checkpoint_interval
        if interval is None:  # the coordinator runs this only for an application with periodic checkpoints
            raise RuntimeError("periodic checkpoints need a checkpoint_interval")
        began = time.monotonic()
        while not self.fleet.stopped:
            now = time.monotonic()
            await asyncio.sleep(next_wait(interval, now - began, now - self._ended, self.failures))
            began = time.monotonic()
            self.metrics.age(began - self.last_complete_at)
            if self.fleet.recovering:
                continue
            try:
                await self.checkpoint()
            except CheckpointAbandoned:
                pass  # a recovery is under way
            except Exception:
                pass  # counted and logged by _failed
