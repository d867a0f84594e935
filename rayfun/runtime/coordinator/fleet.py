"""The shard actors of one application and what every part of the coordinator reads about them.

The parts (driver channel, checkpoint scheduling, supervision) share one ``Fleet`` rather than reaching into
each other: the shard handles (a recovery replaces dead ones), the generation (every rollback bumps it),
the newest complete checkpoint, and the flags and lock that keep a checkpoint and a recovery apart.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import ray

from ..shard import ShardActor, ShardConfig
from .config import AppConfig

__all__ = ["Fleet", "assign_partitions", "first_line"]


@dataclass
class Fleet:
    config: AppConfig
    store: Any = None  # the CheckpointStore; None with checkpoints off
    collector: Any = None  # the EgressCollector actor (shards hand it egress for app.egress)
    run_id: str = ""  # one id per application across restores (sinks scope their exactly-once markers by it)
    shards: list = field(default_factory=list)  # the shard actors, by index
    generation: int = 0  # bumped by every restore; messages of an older generation are dropped
    last_checkpoint: int | None = None  # the newest complete checkpoint (or the one restored)
    recovering: bool = False  # a recovery is under way: no checkpoint starts, idleness is not judged
    abandon: bool = False  # a recovery waits for the lock: a checkpoint in progress lets go
    stopped: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one checkpoint or recovery at a time

    def shard_config(self) -> ShardConfig:
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
            log_level=c.log_level,
        )

    def new_shard(self, index: int):
        """Start a shard actor (not yet given peers or partitions: ``start`` or ``restore`` does that)."""
        options = {"num_cpus": 0, "max_concurrency": 10_000, "max_restarts": 0, **self.config.shard_options}
        return ray.remote(ShardActor).options(**options).remote(index, self.shard_config())


def assign_partitions(
    sources: list, shards: int, positions: dict[tuple[int, str], Any]
) -> list[list[tuple[int, str, Any]]]:
    """Spread every source partition over the shards, round-robin, each at its recorded position."""
    assignment: list[list[tuple[int, str, Any]]] = [[] for _ in range(shards)]
    k = 0
    for source_index, source in enumerate(sources):
        for name in source.partitions():
            assignment[k % shards].append((source_index, name, positions.get((source_index, name))))
            k += 1
    return assignment


def first_line(exc: BaseException) -> str:
    """One line naming an error: Ray wraps an actor's exception in a traceback, the cause is its last line."""
    cause = getattr(exc, "cause", None) if isinstance(exc, ray.exceptions.RayTaskError) else None
    exc = cause if isinstance(cause, BaseException) else exc
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
