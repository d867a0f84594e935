"""The coordinator: one Ray actor that starts the shards, hands out source partitions, tells when the
application is idle, and (with checkpoints) triggers epochs and rolls everything back on a failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from ..functions import StatefulFunctions
from ..io import Sink, Source
from .shard import DRIVER, ShardActor, ShardConfig

log = logging.getLogger("rayfun")

__all__ = ["AppConfig", "Coordinator"]


@dataclass
class AppConfig:
    functions: StatefulFunctions
    shards: int = 2
    key_groups: int = 1024
    endpoints: list = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    sinks: list[Sink] = field(default_factory=list)
    shard_options: dict = field(default_factory=dict)
    checkpoint_dir: str | None = None
    checkpoint_interval: float = 1.0


class Coordinator:
    """Owns the shard actors of one application."""

    def __init__(self, config: AppConfig) -> None:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        self.config = config
        self.shards: list = []

    def _shard_config(self) -> ShardConfig:
        c = self.config
        return ShardConfig(functions=c.functions, shards=c.shards, key_groups=c.key_groups, endpoints=c.endpoints,
                           sources=c.sources, sinks=c.sinks, checkpointing=c.checkpoint_dir is not None)

    def _assign_partitions(self) -> list[list[tuple[int, str, Any]]]:
        """Spread every source partition over the shards, round-robin (source positions: from scratch)."""
        assignment: list[list[tuple[int, str, Any]]] = [[] for _ in range(self.config.shards)]
        k = 0
        for source_index, source in enumerate(self.config.sources):
            for name in source.partitions():
                assignment[k % self.config.shards].append((source_index, name, None))
                k += 1
        return assignment

    async def start(self) -> list:
        """Create the shards and start them; returns their handles."""
        shard_config = self._shard_config()
        options = {"num_cpus": 0, "max_concurrency": 10_000, "max_restarts": 0,
                   **self.config.shard_options}
        actor_cls = ray.remote(ShardActor)
        self.shards = [actor_cls.options(**options).remote(i, shard_config) for i in range(self.config.shards)]
        await asyncio.gather(*[s.ready.remote() for s in self.shards])
        assignment = self._assign_partitions()
        await asyncio.gather(*[s.start.remote(self.shards, assignment[i]) for i, s in enumerate(self.shards)])
        return self.shards

    def shard_handles(self) -> list:
        return self.shards

    async def statuses(self) -> list[dict]:
        return await asyncio.gather(*[s.status.remote() for s in self.shards])

    async def wait_idle(self, driver_sent: list[int], timeout: float | None = 60.0, timers: bool = True) -> bool:
        """Wait until nothing is queued, running or in flight anywhere (and, with ``timers``, no delayed
        message is pending): the same counters twice in a row, with every message sent also received."""
        deadline = None if timeout is None else time.monotonic() + timeout
        previous = None
        delay = 0.005
        while True:
            statuses = await self.statuses()
            for st in statuses:
                if st["failure"]:
                    raise RuntimeError(f"shard {st['index']} failed: {st['failure']}")
            if self._quiet(statuses, driver_sent, timers):
                key = [(st["processed"], st["sent"], sorted(st["received"].items())) for st in statuses]
                if key == previous:
                    return True
                previous = key
            else:
                previous = None
            if deadline is not None and time.monotonic() > deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    @staticmethod
    def _quiet(statuses: list[dict], driver_sent: list[int], timers: bool) -> bool:
        for st in statuses:
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
        await asyncio.gather(*[s.stop.remote() for s in self.shards], return_exceptions=True)
        for s in self.shards:
            ray.kill(s)
        self.shards = []
