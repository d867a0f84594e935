"""The Ray actor of a shard: a thin shell of remote methods around a ``ShardCore``.

Ray wraps every method of an actor class (for tracing) with an extra Python frame, even methods the actor
calls on itself; on the per-message path that doubled the cost. So the actor is this thin shell with only
the remote methods, and the work happens in the plain ``ShardCore`` it holds.
"""

from __future__ import annotations

import ray

from .shard import ShardConfig, ShardCore
from .status import ShardStatus

__all__ = ["ShardActor"]


class ShardActor:
    """The Ray actor around a ShardCore (its remote methods and their signatures are the shard's API)."""

    def __init__(self, index: int, config: ShardConfig, standby: bool = False) -> None:
        self.core = ShardCore(index, config)
        self.core.standby = standby
        self.node = ray.get_runtime_context().get_node_id()

    def __repr__(self) -> str:  # Ray shows it in the dashboard and before every log line of the actor
        return self.core.role

    def ready(self) -> str:
        """The id of the node this shard runs on (the coordinator places the standby by it)."""
        return self.node

    def adopt(self, index: int) -> None:
        """A standby shard takes over the place of shard ``index`` (before its restore)."""
        self.core.adopt(index)

    async def start(self, peers: list, source_partitions: list) -> None:
        await self.core.start(peers, source_partitions)

    async def stop(self) -> None:
        await self.core.stop()

    async def retire(self) -> None:
        """Leave the application after a rescale down (publishes nothing; closes the sinks)."""
        await self.core.retire()

    def pause_sources(self, paused: bool) -> None:
        self.core.pause_sources(paused)

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
        await self.core.flush_egress()

    async def restore(
        self, generation: int, peers: list, source_partitions: list, checkpoint_id: int | None, driver_from: int = 0
    ) -> None:
        await self.core.restore(generation, peers, source_partitions, checkpoint_id, driver_from)

    def status(self) -> ShardStatus:
        status = self.core.status()
        status.node = self.node
        return status

    def get_state(self, typename: str, id: str) -> dict:
        return self.core.get_state(typename, id)

    def instance_count(self) -> dict[str, int]:
        return self.core.instance_count()
