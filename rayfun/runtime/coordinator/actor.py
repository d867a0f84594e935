"""The coordinator actor: one per application. It starts the shards and hands out source partitions, and
composes the parts that do the rest, each in its own module:

- ``driver_channel``: the driver's messages (``app.send``), numbered and logged for replay after a rollback;
- ``checkpoints``: periodic and on-demand checkpoints, their failures and backoff;
- ``supervisor``: watching the shards, the standby, the rollback to the last complete checkpoint;
- ``idle``: whether anything is left to do (``app.wait``), from the shards' statuses alone;
- ``operations``: a live rescale, and a stop with a savepoint.

They share a ``Fleet`` (the shard handles, generation, last checkpoint, and the lock that lets one
checkpoint or recovery run at a time). The remote methods here are what ``rayfun.app`` calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import ray
from ray.exceptions import RayActorError

from ...constants import STOP_TIMEOUT_S  # tuning knobs: see rayfun/constants.py
from ...functions import StatefulFunctions
from ...io import AppContext, Sink, Source
from ...logs import configure_logging
from ...usercode import UserCode, UserCodeError, user_code_error
from ..batchcodec import encode_rows
from ..egress_collector import EgressCollector
from ..partitioning import Partitioner
from ..registry import TypeRegistry
from ..status import DRIVER, ShardStatus
from .checkpoints import CheckpointMetrics, CheckpointScheduler
from .config import AppConfig, AppLayout
from .driver_channel import DriverChannel
from .fleet import Fleet, assign_partitions, end_shards, on_this_node
from .idle import IdleWatch, Verdict, wait_until_idle
from .operations import Operations
from .supervisor import RecoveryMetrics, Supervisor

log = logging.getLogger("rayfun")

__all__ = ["STOP_TIMEOUT_S", "Coordinator"]


class Coordinator:
    """Owns the shard actors of one application."""

    def __init__(self, code: UserCode | AppConfig) -> None:
        self._code_error: UserCodeError | None = None
        if isinstance(code, AppConfig):  # in-process (tests): nothing to load
            config, packed = code, None
        else:  # from rayfun.start: the driver's pickled AppConfig, loaded here (see rayfun.usercode)
            packed = code
            try:
                config = code.load("the coordinator")
            except UserCodeError as exc:  # start() raises it: a clean error for the driver, not a dead actor
                self._code_error, config = exc, AppConfig(functions=StatefulFunctions())
        configure_logging(config.log_level)  # the rayfun logger only, never the worker's root logger
        self.config = config
        self.fleet = Fleet(config, code=packed)
        self.driver = DriverChannel(
            config.shards,
            self._deliver_driver,
            logged=config.checkpoint_dir is not None,
            retain=config.checkpoint_options.get("retain", 3),
        )
        self.checkpoints = CheckpointScheduler(self.fleet, self.driver, CheckpointMetrics(config.name))
        self.supervisor = Supervisor(self.fleet, self.driver, RecoveryMetrics(config.name))
        self.operations = Operations(self.fleet, self.driver, self.checkpoints, self.supervisor)
        self.state = "starting"  # running, stopping, stopped (rayfun status; rayfun run exits on stopped)
        # The driver that asked for the stop has its answer (the savepoint id): until then the owning driver
        # (``rayfun run``) must not exit, for its exit ends this actor and the answer with it.
        self.stop_answered = False
        self._partitioner, self._routed_for = Partitioner(config.key_groups, config.shards), config.shards
        self._tasks: list[asyncio.Task] = []
        self._started_io: list[
            Source | Sink
        ] = []  # the sources and sinks whose start hook ran (their stop runs at the end)

    def _deliver_driver(self, dest: int, seq: int, rows: list) -> None:
        self.fleet.shards[dest].deliver.remote(DRIVER, seq, encode_rows(rows), self.fleet.generation)

    async def start(self) -> list:
        """Create the shards and start them, resuming from the newest complete checkpoint if there is one."""
        if self._code_error is not None:
            raise self._code_error
        fleet, config = self.fleet, self.config
        fleet.home = ray.get_runtime_context().get_node_id()
        fleet.collector = ray.remote(EgressCollector).options(num_cpus=0, scheduling_strategy=on_this_node()).remote()
        await self._start_io()
        if self.fleet.code is not None and self._started_io:
            # what the hooks set (a server's handle) must reach the shards, which load their own copy
            self.fleet.code = UserCode.pack(config, statefun_alias=self.fleet.code.statefun_alias)
        if config.checkpoint_dir is not None:
            from ...checkpoint import CheckpointStore

            fleet.store = CheckpointStore(config.checkpoint_dir, **config.checkpoint_options)
        checkpoint = await self.supervisor.latest_checkpoint()
        if fleet.store is not None:  # past every manifest present, damaged or quarantined ones included
            self.checkpoints.next_id = await asyncio.get_running_loop().run_in_executor(
                None, fleet.store.next_checkpoint_id
            )
        # one id per application across restores (sinks scope their exactly-once markers by it)
        fleet.run_id = (checkpoint.app.get("run_id") if checkpoint is not None else None) or uuid.uuid4().hex[:16]
        fleet.shards = [fleet.new_shard(i) for i in range(config.shards)]
        # the standby starts with the shards: its process start (about a CPU-second) is part of the
        # application's start-up, not a hiccup in the middle of processing
        self.supervisor.keep_standby()
        spare = self.supervisor.spare
        try:
            await asyncio.gather(fleet.ready(range(config.shards)), *([spare.ready.remote()] if spare else []))
        except Exception as exc:
            error = user_code_error(exc)
            if error is None:
                raise
            for shard in [*fleet.shards, *([spare] if spare else [])]:  # nothing started in them yet
                ray.kill(shard)
            fleet.shards, self.supervisor.spare = [], None
            raise error from None
        if checkpoint is None:
            assignment = assign_partitions(config.sources, config.shards, {})
            await asyncio.gather(*[s.start.remote(fleet.shards, assignment[i]) for i, s in enumerate(fleet.shards)])
        else:
            log.info("resuming from checkpoint %d in %s", checkpoint.checkpoint_id, config.checkpoint_dir)
            async with self.driver.lock:
                await self.supervisor.restore_newest(checkpoint)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.supervisor.run()))
        if fleet.store is not None and config.checkpoint_interval:
            self._tasks.append(loop.create_task(self.checkpoints.run()))
        self.state = "running"
        return fleet.shards

    async def _start_io(self) -> None:
        """Run every source's and sink's ``start`` hook (see rayfun.io), before any shard is built, so that
        what a hook sets on its source or sink (e.g. a server actor's handle) is in the shards' copies. A
        hook that fails stops the ones started before it and fails the start with its error."""
        config = self.config
        context = AppContext(
            name=config.name or "rayfun",
            checkpoints=config.checkpoint_dir is not None,
            function_types=TypeRegistry(config.functions.typenames, config.endpoints),
        )
        loop = asyncio.get_running_loop()
        components: list[Source | Sink] = [*config.sources, *config.sinks]
        for component in components:
            try:  # in a thread: a hook may wait for a server (ray.get), which must not block this event loop
                await loop.run_in_executor(None, component.start, context)
            except BaseException:
                await self._stop_io()
                raise
            self._started_io.append(component)

    async def _stop_io(self) -> None:
        loop = asyncio.get_running_loop()
        started, self._started_io = self._started_io, []
        for component in reversed(started):
            try:
                await loop.run_in_executor(None, component.stop)
            except Exception:
                log.exception("stopping %s %s", type(component).__name__, getattr(component, "id", "?"))

    def layout(self) -> AppLayout:
        """What a driver needs to send to and read from this application (see AppLayout)."""
        config = self.config
        return AppLayout(
            name=config.name or "rayfun",
            shards=len(self.fleet.shards),
            key_groups=config.key_groups,
            typenames=tuple(config.functions.typenames),
            endpoints=tuple(config.endpoints),
            sink_ids=tuple(s.id for s in config.sinks),
            checkpoint_dir=config.checkpoint_dir,
        )

    # -- the driver's channel ---------------------------------------------------------------------------

    async def send(self, driver: str, call_seq: int, rows_by_shard: dict[int, list], shards: int) -> int:
        """Forward messages from a driver (see DriverChannel.send); returns the shard count now, so that a
        driver that routed for another one (a rescale happened) learns it."""
        await self.driver.send(driver, call_seq, rows_by_shard, shards, self._route)
        return self.driver.shards

    def _route(self, typename: str, id: str) -> int:
        """The shard that owns an address now (for rows a driver routed before a rescale)."""
        shards = self.driver.shards
        if self._routed_for != shards:
            self._partitioner, self._routed_for = Partitioner(self.config.key_groups, shards), shards
        return self._partitioner.shard_of(typename, id)

    # -- operations -------------------------------------------------------------------------------------

    async def rescale(self, shards: int) -> int | None:
        """Change the number of shards of the running application (see operations.py)."""
        return await self.operations.rescale(shards)

    # -- checkpoints and recovery -----------------------------------------------------------------------

    async def checkpoint(self) -> int:
        """Take a checkpoint now; returns its id once it is complete (its manifest written)."""
        return await self.checkpoints.checkpoint()

    async def recover(self, failed: dict[int, tuple[bool, str]]) -> None:
        """Roll every shard back to the newest complete checkpoint (see Supervisor.recover)."""
        await self.supervisor.recover(failed)

    # -- introspection ----------------------------------------------------------------------------------

    def shard_handles(self) -> list:
        return self.fleet.shards

    def collector_handle(self):
        return self.fleet.collector

    def info(self) -> dict:
        fleet, checkpoints, supervisor = self.fleet, self.checkpoints, self.supervisor
        return {
            "generation": fleet.generation,
            "last_checkpoint": fleet.last_checkpoint,
            "recoveries": supervisor.recoveries,
            "last_recovery_s": supervisor.last_recovery_s,
            "last_failure": supervisor.last_failure,
            "last_checkpoint_s": checkpoints.last_duration_s,
            "last_checkpoint_phases": dict(checkpoints.last_phases),
            "last_checkpoint_bytes": checkpoints.last_size_bytes,
            "last_checkpoint_age_s": (
                time.monotonic() - checkpoints.last_complete_at if fleet.store is not None else None
            ),
            "checkpoint_failures": checkpoints.failures,
            "checkpoint_failures_total": checkpoints.failures_total,
            "last_checkpoint_error": checkpoints.last_error,
            "standby": None if supervisor.spare is None else supervisor.spare._actor_id.hex(),
            "name": self.config.name,
            "state": self.state,
            "stop_answered": self.stop_answered,
            "shards": len(fleet.shards),
            "nodes": [fleet.nodes.get(i) for i in range(len(fleet.shards))],
            "rescales": self.operations.rescales,
            "last_rescale_s": self.operations.last_rescale_s,
            "last_rescale_phases": dict(self.operations.last_rescale_phases),
            "checkpoint_dir": self.config.checkpoint_dir,
        }

    async def statuses(self) -> list[dict]:
        """Every live shard's status as the flat dict ``app.metrics()`` returns (a shard that just died is
        left out until its replacement answers: asking for metrics never fails because of a recovery)."""
        return [st.as_dict() for st in await self._shard_statuses() if st is not None]

    async def _shard_statuses(self) -> list[ShardStatus | None]:
        """Every shard's status; None for a shard that died (a dead shard is the supervisor's business)."""
        results = await asyncio.gather(*[s.status.remote() for s in self.fleet.shards], return_exceptions=True)
        statuses: list[ShardStatus | None] = []
        for result in results:
            if isinstance(result, RayActorError):
                statuses.append(None)
            elif isinstance(result, BaseException):
                raise result
            else:
                statuses.append(result)
        return statuses

    async def flush(self) -> None:
        """Make every record emitted so far visible: a checkpoint (exactly-once egress is published when
        its checkpoint completes), or without checkpoints a flush of what the shards hold."""
        if self.fleet.store is not None:
            await self.checkpoint()
        else:
            await asyncio.gather(*[s.flush.remote() for s in self.fleet.shards])

    async def wait_idle(self, timeout: float | None = 60.0, timers: bool = True) -> Verdict:
        """Wait until nothing is queued, running or in flight anywhere (and, with ``timers``, no delayed
        message is pending): the same counters twice in a row, with every message sent also received.
        A verdict that is not idle says what was still busy at the deadline (for the caller's error)."""

        async def look(watch: IdleWatch) -> Verdict:
            recovering = self.fleet.recovering
            statuses = [] if recovering else await self._shard_statuses()
            return watch.look(statuses, self.fleet.generation, self.driver.sent, timers, recovering)

        verdict = await wait_until_idle(look, self._shards_quiet, timeout)
        if not verdict:
            log.info("not idle within %s s: %s", timeout, verdict.reason)
        return verdict

    async def _shards_quiet(self, timeout: float) -> bool:
        """Wait until every shard's loop has nothing to do (True), or ``timeout`` (False): see idle.py."""
        calls = [shard.until_quiet.remote(timeout) for shard in self.fleet.shards]
        try:  # a shard whose loop is blocked answers late: the bound is the caller's pause, not the shard
            answers = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 2 * timeout)
        except asyncio.TimeoutError:
            return False
        return all(answer is True for answer in answers)

    async def stop(self, savepoint: bool = False) -> int | None:
        """Stop the application: with ``savepoint``, first a checkpoint with the sources paused (see
        operations.py), whose id is returned; starting again from the same checkpoint directory resumes
        there. A savepoint that fails raises OperationFailed, and the application goes on running."""
        if self.state in ("stopping", "stopped"):
            return None
        saved = None
        if savepoint:
            saved = await self.operations.savepoint(lambda timeout: self.wait_idle(timeout, timers=False))
        self.state = "stopping"
        await self._stop()
        self.state = "stopped"
        return saved

    def answer_received(self) -> None:
        """The caller of ``stop`` has its answer: the owning driver may now exit (and end this actor)."""
        self.stop_answered = True

    async def _stop(self) -> None:
        self.fleet.stopped = True
        for task in self._tasks:
            task.cancel()
        # shards flush and close their sinks
        await end_shards(self.fleet.shards, "stop", "shards did not stop in time: killed (sinks may not have flushed)")
        if self.supervisor.spare is not None:
            ray.kill(self.supervisor.spare)
        self.supervisor.spare = None
        await self._stop_io()
        if self.fleet.collector is not None:
            ray.kill(self.fleet.collector)
        self.fleet.shards = []
