"""The shard actors of one application and what every part of the coordinator reads about them.

The parts (driver channel, checkpoint scheduling, supervision) share one ``Fleet`` rather than reaching into
each other: the shard handles (a recovery replaces dead ones), the generation (every rollback bumps it),
the newest complete checkpoint, and the flags and lock that keep a checkpoint and a recovery apart.

Placement: shards are spread over the cluster's nodes (Ray's ``SPREAD`` strategy) unless the application's
``shard_options`` give a ``scheduling_strategy`` of their own (node affinity, a placement group) or
``resources`` that pin them; the standby goes to the node with the fewest shards, so that it does not die
with the shards it would replace.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import ray

from ...constants import STOP_TIMEOUT_S  # tuning knob: see rayfun/constants.py
from ...functions import StatefulFunctions
from ...usercode import UserCode
from ..aio import retrieve
from ..shard import ShardConfig
from ..shard_actor import shard_actor_class
from .config import NAMESPACE, AppConfig, actor_name

log = logging.getLogger("rayfun")

SHARD_CPUS = 0.01  # what a shard asks of Ray by default (see new_shard); shard_options={"num_cpus": 1} reserves a core

__all__ = ["Fleet", "assign_partitions", "end_shards", "first_line", "on_this_node"]


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
    sources_paused: bool = False  # a savepoint is being taken
    nodes: dict[int, str] = field(default_factory=dict)  # shard index -> the Ray node it runs on
    home: str = ""  # the coordinator's node
    _standbys: int = 0  # standbys started so far (each gets its own actor name)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one checkpoint or recovery at a time
    #: the application's code as the driver packed it: shards load it themselves (see rayfun.usercode)
    code: UserCode | None = None

    def shard_config(self) -> ShardConfig:
        """The shard's configuration; with ``code``, without the user's objects (the shard loads those)."""
        c = self.config
        user = self.code is None
        return ShardConfig(
            functions=c.functions if user else StatefulFunctions(),
            shards=c.shards,
            key_groups=c.key_groups,
            endpoints=c.endpoints if user else [],
            sources=c.sources if user else [],
            sinks=c.sinks if user else [],
            checkpoint_url=c.checkpoint_dir,
            checkpoint_options=c.checkpoint_options,
            collector=self.collector,
            run_id=self.run_id,
            log_level=c.log_level,
            app_name=c.name or "rayfun",
        )

    def new_shard(self, index: int, standby: bool = False):
        """Start a shard actor (not yet given peers or partitions: ``start`` or ``restore`` does that),
        named after its place: ``rayfun:<app>/shard-3``, a standby ``rayfun:<app>/standby-1``."""
        user = self.config.shard_options
        # a tiny CPU request, not none: Ray places an actor that requests no resources on any node, whatever
        # its scheduling strategy (SPREAD and soft node affinity would be ignored)
        options: dict[str, Any] = {"num_cpus": SHARD_CPUS, "max_concurrency": 10_000, "max_restarts": 0}
        if "scheduling_strategy" not in user:
            options["scheduling_strategy"] = self._standby_placement() if standby else "SPREAD"
        options.update(user)
        if standby:
            self._standbys += 1
            role = f"standby-{self._standbys}"
        else:
            role = f"shard-{index}"
        actor = shard_actor_class()
        try:
            return actor.options(**options, name=actor_name(self.config.name, role), namespace=NAMESPACE).remote(
                index, self.shard_config(), standby, self.code
            )
        except ValueError:  # the name is still held by the actor this one replaces (Ray frees it late)
            return actor.options(**options).remote(index, self.shard_config(), standby, self.code)

    def _standby_placement(self):
        """Node affinity (soft) to the live node with the fewest shards, the coordinator's on a tie: a node
        that dies takes the standby along only when every node holds shards."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        try:
            alive = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
        except Exception:  # the GCS is busy: let Ray choose
            return "DEFAULT"
        if len(alive) < 2:
            return "DEFAULT"
        load = Counter(node for i, node in self.nodes.items() if i < len(self.shards))
        best = min(alive, key=lambda node: (load[node], node != self.home))
        return NodeAffinitySchedulingStrategy(node_id=best, soft=True)

    async def ready(self, indices) -> None:
        """Wait until the shards at ``indices`` have started, and note where each runs."""
        nodes = await asyncio.gather(*[self.shards[i].ready.remote() for i in indices])
        self.nodes.update(zip(indices, nodes))


async def end_shards(shards: list, method: str, late: str) -> None:
    """Call ``method`` (``stop``, ``retire``: they close their sinks) on every shard, wait STOP_TIMEOUT_S at
    most (one whose loop is blocked in a sink call must not hold the others), then end their actors. ``late``
    is the warning for shards that did not answer in time."""
    calls = asyncio.gather(*[getattr(s, method).remote() for s in shards], return_exceptions=True)
    calls.add_done_callback(retrieve)  # wait_for cancels it on a timeout
    try:
        await asyncio.wait_for(calls, STOP_TIMEOUT_S)
    except asyncio.TimeoutError:
        log.warning("%s (%.0f s)", late, STOP_TIMEOUT_S)
    for s in shards:
        ray.kill(s)


def on_this_node():
    """Hard node affinity to the node this runs on (Ray ignores a soft one for an actor that requests no
    resources): the coordinator on the driver's node, its helpers with it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)


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
