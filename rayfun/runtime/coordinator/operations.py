"""Operating a running application: a live rescale, and a stop with a savepoint.

Both are a checkpoint taken with the driver's channel held (no message slips past it) and then a switch:

- **rescale** to N shards: checkpoint n; the shards beyond N retire (they publish nothing more: checkpoint n
  published what they had); new shards start (the warm standby takes the first new place); every shard is
  then restored from checkpoint n at the new count, each loading the key groups it owns now; the driver's
  unread messages are routed anew. Egress stays exactly once: what came after checkpoint n is replayed.
- **savepoint**: sources paused, in-flight work given a moment to finish, then a checkpoint (it captures
  what is still in flight); the application then stops, and starting it again with the same checkpoint
  directory resumes exactly there.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ...constants import SAVEPOINT_ATTEMPTS, SAVEPOINT_DRAIN_S, STANDBY_DELAY_S  # tuning knobs: see rayfun/constants.py
from ...errors import RayfunError
from ..partitioning import Partitioner
from .checkpoints import CheckpointAbandoned, CheckpointScheduler
from .driver_channel import DriverChannel
from .fleet import Fleet, end_shards, first_line
from .supervisor import Supervisor

log = logging.getLogger("rayfun")

__all__ = ["OperationFailed", "Operations"]


class OperationFailed(RayfunError, RuntimeError):
    """A rescale or a savepoint could not be done; the application goes on as it was."""


class Operations:
    """Rescales and savepoints, over the parts of the coordinator that they combine."""

    def __init__(
        self, fleet: Fleet, driver: DriverChannel, checkpoints: CheckpointScheduler, supervisor: Supervisor
    ) -> None:
        self.fleet = fleet
        self.driver = driver
        self.checkpoints = checkpoints
        self.supervisor = supervisor
        self.rescales = 0
        self.last_rescale_s: float | None = None
        self.last_rescale_phases: dict[str, float] = {}  # seconds per phase of the last rescale

    # -- rescale ----------------------------------------------------------------------------------------

    async def rescale(self, shards: int) -> int | None:
        """Change the number of shards to ``shards``; returns the checkpoint the new layout started from."""
        fleet, config = self.fleet, self.fleet.config
        if not isinstance(shards, int) or not 1 <= shards <= config.key_groups:
            raise ValueError(f"shards must be an int from 1 to the key groups ({config.key_groups}), got {shards!r}")
        if fleet.store is None:
            raise OperationFailed("a rescale needs checkpoints: start the application with checkpoint_dir=...")
        if fleet.stopped:
            raise OperationFailed("the application is stopped")
        if shards == len(fleet.shards):
            return fleet.last_checkpoint
        began = time.monotonic()
        # Hold the shards (no source read, nothing processed; deliveries, markers and checkpoint writes go
        # on) while a periodic checkpoint in progress finishes: the rescale's checkpoint then captures each
        # shard's live state as it stays, so a shard that goes on keeps it instead of reading it back, and
        # no work is done that the restore would roll back.
        generation = fleet.generation
        await self._pause(True, hold=True)
        paused, switching = time.monotonic(), False
        try:
            async with fleet.lock, self.driver.lock:  # the order every recovery takes them in
                locked = time.monotonic()
                if fleet.generation != generation:  # a recovery came first: its restore ended the hold
                    await self._pause(True, hold=True)
                try:
                    n = await self.checkpoints.checkpoint_locked(full=True)
                except Exception as exc:
                    why = f"a shard failed first ({exc})" if isinstance(exc, CheckpointAbandoned) else first_line(exc)
                    raise OperationFailed(f"rescale to {shards} shards: its checkpoint failed: {why}") from exc
                self.last_rescale_phases = {
                    "hold": paused - began,
                    "lock": locked - paused,
                    **{f"checkpoint {k}": v for k, v in self.checkpoints.last_phases.items()},
                }
                fleet.sources_paused = False  # the restore opens the sources afresh, unpaused
                fleet.recovering = switching = True  # the monitor and idleness wait; a death now is recovered after
                try:
                    await self._switch(shards, n)
                except Exception as exc:  # a shard died while switching: the supervisor's recovery completes it
                    raise OperationFailed(
                        f"rescale to {shards} shards: a shard failed while switching ({first_line(exc)}); the "
                        f"application recovers with {shards} shards from checkpoint {n}"
                    ) from exc
                finally:
                    fleet.recovering = False
        except BaseException:
            if not switching:  # the application goes on as it was (cancelled, or the checkpoint failed)
                await asyncio.shield(self._pause(False))
            raise
        self.rescales += 1
        self.last_rescale_s = time.monotonic() - began
        # the next standby later, as after a recovery: its process start costs the catching-up shards a CPU-second
        asyncio.get_running_loop().call_later(STANDBY_DELAY_S, self.supervisor.keep_standby)
        log.warning(
            "rescaled to %d shards from checkpoint %d in %.2f s (%s)",
            shards,
            n,
            self.last_rescale_s,
            ", ".join(f"{phase} {seconds:.2f} s" for phase, seconds in self.last_rescale_phases.items()),
        )
        return n

    async def _switch(self, shards: int, n: int) -> None:
        fleet, config = self.fleet, self.fleet.config
        phases, began = self.last_rescale_phases, time.monotonic()
        old = list(fleet.shards)
        checkpoint = await asyncio.get_running_loop().run_in_executor(None, fleet.store.manifest, n)
        if shards < len(old):
            # they close their sinks and publish nothing more (checkpoint n published what they had)
            await end_shards(old[shards:], "retire", "retiring shards did not stop in time: ending them")
            fleet.shards = old[:shards]
            for i in range(shards, len(old)):
                fleet.nodes.pop(i, None)
        config.shards = shards  # new shards are made for the new count; the others learn it on restore
        if shards > len(old):
            added = range(len(old), shards)
            fleet.shards = old + [await self.supervisor.replacement(i) for i in added]
            await fleet.ready(added)
        phases["shards"] = time.monotonic() - began
        route = Partitioner(config.key_groups, shards).shard_of
        self.driver.rebase(checkpoint, shards, route)
        await self.supervisor.restore_newest(checkpoint)
        phases["restore"] = time.monotonic() - began - phases["shards"]

    # -- savepoint --------------------------------------------------------------------------------------

    async def savepoint(self, wait_idle) -> int:
        """Pause the sources, let in-flight work finish (``wait_idle(timeout)``, bounded), take a checkpoint
        and return its id. On failure the sources resume and ``OperationFailed`` says why."""
        fleet = self.fleet
        if fleet.store is None:
            raise OperationFailed("a savepoint needs checkpoints: start the application with checkpoint_dir=...")
        await self._pause(True)
        try:
            await wait_idle(SAVEPOINT_DRAIN_S)
            for attempt in range(1, SAVEPOINT_ATTEMPTS + 1):
                try:
                    n = await self.checkpoints.checkpoint()
                    log.warning("savepoint: checkpoint %d", n)
                    return n
                except Exception as exc:  # a recovery came first, or storage failed: try again
                    if attempt == SAVEPOINT_ATTEMPTS:
                        raise OperationFailed(
                            f"savepoint failed {attempt} times (last: {first_line(exc)}); the newest complete "
                            f"checkpoint is {fleet.last_checkpoint}"
                        ) from exc
                    await asyncio.sleep(0.5 * attempt)
            raise AssertionError("unreachable")
        except BaseException:
            await self._pause(False)
            raise

    async def _pause(self, paused: bool, hold: bool = False) -> None:
        self.fleet.sources_paused = paused
        await asyncio.gather(*[s.pause_sources.remote(paused, hold) for s in self.fleet.shards], return_exceptions=True)
