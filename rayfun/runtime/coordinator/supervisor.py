"""Supervision: the coordinator watches the shards and, on any failure, rolls every shard back to the last
complete checkpoint (exactly-once: what happened since is replayed, from the sources' recorded positions and
the driver channel's log). A shard that died is replaced, by the warm standby if there is one; a failure a
shard reports (a remote function down, a sink that refuses) is rolled back after a growing pause when it
follows the last recovery closely.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray
from ray.exceptions import RayActorError

from ...constants import (  # tuning knobs: see rayfun/constants.py
    ADOPT_TIMEOUT_S,
    HEALTH_CHECK_S,
    LOOP_STALL_S,
    MONITOR_INTERVAL_S,
    RECOVERY_BACKOFF_FIRST_S,
    RECOVERY_BACKOFF_MAX_S,
    RECOVERY_CALM_S,
    RECOVERY_WARN_S,
    RECOVERY_WATCH_S,
    STANDBY_DELAY_S,
    STATUS_TIMEOUT_S,
)
from .driver_channel import DriverChannel
from .fleet import Fleet, assign_partitions, first_line

log = logging.getLogger("rayfun")

__all__ = ["RecoveryMetrics", "Supervisor", "recovery_pause"]


class RecoveryMetrics:
    """Rollbacks as a Ray metric (Prometheus through Ray's metrics export), tagged by application."""

    def __init__(self, app_name: str | None) -> None:
        from ray.util import metrics

        self._recoveries = metrics.Counter(
            "rayfun_recoveries", "rollbacks to the last checkpoint", tag_keys=("application",)
        )
        self._duration = metrics.Gauge(
            "rayfun_recovery_duration_seconds",
            "the last rollback, from the failure seen to processing again",
            tag_keys=("application",),
        )
        for metric in (self._recoveries, self._duration):
            metric.set_default_tags({"application": app_name or "rayfun"})

    def recovered(self) -> None:
        self._recoveries.inc()

    def took(self, seconds: float) -> None:
        self._duration.set(seconds)


def recovery_pause(in_a_row: int) -> float:
    """The pause before rollback number ``in_a_row`` of a run of failures close together: 0, 0.5, 1, 2 ...
    s, capped at RECOVERY_BACKOFF_MAX_S."""
    if in_a_row < 2:
        return 0.0
    return min(RECOVERY_BACKOFF_FIRST_S * 2 ** (in_a_row - 2), RECOVERY_BACKOFF_MAX_S)


class Supervisor:
    """Finds failed shards, replaces dead ones and rolls the application back to its last checkpoint."""

    def __init__(self, fleet: Fleet, driver: DriverChannel, metrics: RecoveryMetrics) -> None:
        self.fleet = fleet
        self.driver = driver
        self.metrics = metrics
        self.recoveries = 0
        self.last_failure: str | None = None
        self.last_recovery_s: float | None = None
        self.spare = None  # a started, idle shard actor that replaces the next shard to die
        self._in_a_row = 0
        self._recovered_at = 0.0
        self._blocked_warned: dict[int, float] = {}  # shard -> how long it was blocked when last warned about
        self._watches: dict[Any, asyncio.Future] = {}  # shard actor id -> its pending ``failed`` call (_news)

    async def run(self) -> None:
        """Look at the shards whenever one of them fails or dies (see ``_news``), and at the latest every
        HEALTH_CHECK_S (a frozen process, a blocked loop), and recover from what failed, until the app stops."""
        try:
            while not self.fleet.stopped:
                await asyncio.sleep(MONITOR_INTERVAL_S)  # at most this often, whatever happens
                await self._news(HEALTH_CHECK_S)
                if self.fleet.recovering or self.fleet.stopped:
                    continue
                try:
                    failed = await self.failed_shards()
                    if failed and not self.fleet.stopped:
                        await self.recover(failed)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # e.g. another shard died during the recovery: look again, recover again
                    log.warning("recovery failed (%s); recovering again", first_line(exc))
        finally:
            for watch in self._watches.values():
                watch.cancel()
            self._watches.clear()

    async def _news(self, timeout: float) -> None:
        """Wait until a shard asks for a rollback or dies, or ``timeout``. Each shard has one ``failed`` call
        pending, which answers when it fails and raises when it dies: no shard is asked anything while all
        is well (asking each one ten times a second cost its busy loop a GIL handoff each time, and the
        latency of the messages that crossed to it)."""
        watches = self._watches
        current = {shard._actor_id: shard for shard in self.fleet.shards}
        for actor_id in [a for a in watches if a not in current]:  # replaced or rescaled away
            watches.pop(actor_id).cancel()
        for actor_id, shard in current.items():
            if actor_id not in watches:
                watches[actor_id] = asyncio.ensure_future(shard.failed.remote())
        if not watches:
            await asyncio.sleep(timeout)
            return
        done, _ = await asyncio.wait(list(watches.values()), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for actor_id in [a for a, w in watches.items() if w in done]:
            watch = watches.pop(actor_id)  # a new one is made next time
            if not watch.cancelled():
                watch.exception()  # retrieved here: failed_shards asks the shard itself what happened

    async def failed_shards(self) -> dict[int, tuple[bool, str]]:
        """Shards that died or report a failure: ``index -> (dead, reason)``. A shard's health is answered on
        its own thread: no answer means its process is gone or frozen. A shard whose event loop is blocked
        (a slow sink call, a ``def`` function that does not return) is warned about while it is, and taken
        for dead once it has been for LOOP_STALL_S: it could not even roll back."""
        refs = [s.health.remote() for s in self.fleet.shards]
        failed: dict[int, tuple[bool, str]] = {}
        for i, ref in enumerate(refs):
            try:
                failure, blocked_s, blocked_in = await asyncio.wait_for(ref, timeout=STATUS_TIMEOUT_S)
            except asyncio.TimeoutError:
                failed[i] = (True, f"no answer to its health check within {STATUS_TIMEOUT_S:g} s")
                continue
            except RayActorError as exc:
                failed[i] = (True, f"{type(exc).__name__}: {exc}".splitlines()[0])
                continue
            if failure:
                failed[i] = (False, failure)
            elif blocked_s >= LOOP_STALL_S:
                failed[i] = (
                    True,
                    f"its event loop has been blocked for {blocked_s:.0f} s in {blocked_in or 'processing'}",
                )
            elif blocked_s >= STATUS_TIMEOUT_S:
                self._warn_blocked(i, blocked_s, blocked_in)
            else:
                self._blocked_warned.pop(i, None)
        return failed

    def _warn_blocked(self, index: int, blocked_s: float, blocked_in: str | None) -> None:
        """One WARNING per stall and per LOOP_STALL_S / 6 of it (a slow broker is waited for, not hidden)."""
        last = self._blocked_warned.get(index)
        if last is not None and blocked_s - last < LOOP_STALL_S / 6:
            return
        self._blocked_warned[index] = blocked_s
        log.warning(
            "shard %d: its event loop has been blocked for %.0f s in %s (it answers nothing meanwhile); "
            "it is replaced and the application rolled back if this lasts %.0f s",
            index,
            blocked_s,
            blocked_in or "processing (a `def` function that does not return?)",
            LOOP_STALL_S,
        )

    async def recover(self, failed: dict[int, tuple[bool, str]]) -> None:
        """Roll every shard back to the newest complete checkpoint; replace the shards that died. Failures
        that come back soon after a recovery (a remote function that is down, with on_failure='restart')
        are rolled back after a growing pause: retried for as long as they fail, never dropped."""
        fleet = self.fleet
        started = time.monotonic()
        fleet.recovering = True
        fleet.abandon = True  # a checkpoint in progress will never complete: let it go
        try:
            async with fleet.lock:
                fleet.abandon = False
                for index, (_, reason) in failed.items():
                    log.warning("shard %d failed (%s): rolling back to the last checkpoint", index, reason)
                self.last_failure = "; ".join(f"shard {i}: {reason}" for i, (_, reason) in failed.items())
                await self._backoff(any(dead for dead, _ in failed.values()))
                dead = [i for i, (is_dead, _) in failed.items() if is_dead]
                for i in dead:
                    try:
                        ray.kill(fleet.shards[i])
                    except Exception:
                        pass
                    fleet.shards[i] = await self.replacement(i)
                await self._waiting(fleet.ready(dead), "starting the replacement shard(s)", watch=False)
                replaced = time.monotonic()
                checkpoint = await self.latest_checkpoint()
                found = time.monotonic()
                async with self.driver.lock:
                    await self._waiting(self.restore_newest(checkpoint), "restoring the shards", watch=True)
                self.recoveries += 1
                self.metrics.recovered()
                log.info(
                    "recovery: replacing %d shard(s) %.2f s, finding checkpoint %.2f s, restoring %.2f s",
                    len(dead),
                    replaced - started,
                    found - replaced,
                    time.monotonic() - found,
                )
        finally:
            fleet.recovering = False
            fleet.abandon = False
            self._recovered_at = time.monotonic()
        self.last_recovery_s = time.monotonic() - started
        self.metrics.took(self.last_recovery_s)
        # the next standby later: its process start costs about a CPU-second, which the shards need now
        asyncio.get_running_loop().call_later(STANDBY_DELAY_S, self.keep_standby)
        log.warning("recovered from checkpoint %s in %.2f s", fleet.last_checkpoint, self.last_recovery_s)

    async def _waiting(self, step: Any, what: str, watch: bool) -> None:
        """Await a step of a recovery, saying every RECOVERY_WARN_S that it still waits (an actor no node has
        room for never starts). With ``watch``, check the shards' health every RECOVERY_WATCH_S: a shard that
        died or got stuck meanwhile (e.g. its restore blocked in a sink's start) fails this recovery, and the
        next one starts over, instead of this one waiting forever."""
        task = asyncio.ensure_future(step)
        began = time.monotonic()
        warn_at = began + RECOVERY_WARN_S
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=RECOVERY_WATCH_S)
                if done:
                    task.result()
                    return
                if watch:
                    dead = {i: reason for i, (is_dead, reason) in (await self.failed_shards()).items() if is_dead}
                    if dead:
                        found = "; ".join(f"shard {i}: {reason}" for i, reason in dead.items())
                        raise RuntimeError(f"{found}, while {what}")
                now = time.monotonic()
                if now >= warn_at:
                    log.warning("recovery: still %s after %.0f s", what, now - began)
                    warn_at = now + RECOVERY_WARN_S
        finally:
            if not task.done():
                task.cancel()

    async def _backoff(self, died: bool) -> None:
        """Pause before a rollback for a failure a shard reported (a remote function down, a sink that
        refuses) that follows the last recovery closely (see ``recovery_pause``). A shard that died is
        replaced at once: waiting would not bring it back, and its work waits."""
        if died:
            return
        if self._recovered_at and time.monotonic() - self._recovered_at < RECOVERY_CALM_S:
            self._in_a_row += 1
        else:
            self._in_a_row = 1
        pause = recovery_pause(self._in_a_row)
        if not pause:
            return
        log.warning(
            "failure %d in a row within %.0f s of the last recovery: rolling back in %.1f s (%s)",
            self._in_a_row,
            RECOVERY_CALM_S,
            pause,
            self.last_failure,
        )
        await asyncio.sleep(pause)

    async def replacement(self, index: int):
        """A shard actor to replace dead shard ``index``: the warm standby if there is one (starting an actor
        takes about a second, a large part of a recovery), else a new one."""
        spare, self.spare = self.spare, None
        if spare is not None:
            try:
                await asyncio.wait_for(spare.adopt.remote(index), timeout=ADOPT_TIMEOUT_S)
                return spare
            except Exception as exc:
                log.warning("the standby shard is unusable (%s); starting a new one", exc)
        return self.fleet.new_shard(index)

    def keep_standby(self) -> None:
        """Start a standby shard unless there is one (or the application stops, or standby is off)."""
        if self.spare is None and not self.fleet.stopped and self.fleet.config.standby:
            self.spare = self.fleet.new_shard(0, standby=True)

    async def latest_checkpoint(self, before: int | None = None):
        """The newest checkpoint that verifies; damaged ones on the way are quarantined (see the store)."""
        store = self.fleet.store
        if store is None:
            return None
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: store.latest_valid(before, quarantine=True)
        )

    async def restore_newest(self, checkpoint) -> None:
        """Restore ``checkpoint``; if a shard finds one of its files damaged (a clear error naming the file),
        fall back to the previous complete checkpoint, and so on. The caller holds the driver channel's lock
        (no send may slip between the restore and the replay)."""
        from ...checkpoint import CorruptCheckpointError

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
                await loop.run_in_executor(None, self.fleet.store.quarantine, damaged, str(exc))
                checkpoint = await self.latest_checkpoint(before=damaged)

    async def _restore_all(self, checkpoint) -> None:
        fleet = self.fleet
        fleet.generation += 1
        positions: dict[tuple[int, str], Any] = {}
        if checkpoint is not None:
            fleet.last_checkpoint = checkpoint.checkpoint_id
            for entry in checkpoint.shards:
                for source_index, name, position, _exhausted in entry.meta.get("sources", []):
                    positions[(source_index, name)] = position
        # where each shard's driver channel resumes: what the checkpoint had read of this coordinator's
        driver_from = self.driver.driver_from(checkpoint)
        assignment = assign_partitions(fleet.config.sources, fleet.config.shards, positions)
        checkpoint_id = None if checkpoint is None else checkpoint.checkpoint_id
        generation, shards = fleet.generation, fleet.shards
        await asyncio.gather(
            *[
                s.restore.remote(generation, shards, assignment[i], checkpoint_id, driver_from[i])
                for i, s in enumerate(shards)
            ]
        )
        self.driver.replay(driver_from)  # what the checkpoint had not read, under the same numbers
        if fleet.sources_paused:  # a savepoint is being taken: the restored shards read no source either
            await asyncio.gather(*[s.pause_sources.remote(True) for s in shards])
