"""The Ray actor of a shard: a thin shell of remote methods around a ``ShardCore``.

Ray wraps every method of an actor class (for tracing) with an extra Python frame, even methods the actor
calls on itself; on the per-message path that doubled the cost. So the actor is this thin shell with only
the remote methods, and the work happens in the plain ``ShardCore`` it holds.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ray

from ..usercode import UserCode, UserCodeError
from .shard import ShardConfig, ShardCore
from .status import ShardStatus

__all__ = ["HEALTH_GROUP", "ShardActor", "shard_actor_class"]

#: The concurrency group of ``health``: its own thread and event loop, beside the shard's (Ray's pattern for
#: health checks of asyncio actors)
HEALTH_GROUP = "health"


class ShardActor:
    """The Ray actor around a ShardCore (its remote methods and their signatures are the shard's API)."""

    def __init__(self, index: int, config: ShardConfig, standby: bool = False, code: UserCode | None = None) -> None:
        self.node = ray.get_runtime_context().get_node_id()
        if code is not None:  # the application's functions, sources and sinks: loaded here (see rayfun.usercode)
            try:
                app = code.load(f"{'a standby shard' if standby else f'shard {index}'} of {config.app_name!r}")
            except UserCodeError as exc:
                self.core: Any = _Unloaded(exc)
                return
            config = dataclasses.replace(
                config, functions=app.functions, endpoints=app.endpoints, sources=app.sources, sinks=app.sinks
            )
        self.core = ShardCore(index, config)
        self.core.standby = standby
        if standby and config.checkpoint_url is not None:
            from ..checkpoint.warmup import warm_up_restore

            warm_up_restore()  # its restore is a recovery's critical path: the first one's costs are paid now

    def __repr__(self) -> str:  # Ray shows it in the dashboard and before every log line of the actor
        return getattr(self.core, "role", "rayfun shard")

    def ready(self) -> str:
        """The id of the node this shard runs on (the coordinator places the standby by it); raises the
        ``UserCodeError`` of a shard that could not load the application's code."""
        if isinstance(self.core, _Unloaded):
            raise self.core.error
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

    def pause_sources(self, paused: bool, hold: bool = False) -> None:
        """Stop (or resume) reading sources; ``hold``: stop processing too, until the next restore."""
        self.core.pause_sources(paused, hold)

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

    async def failed(self) -> None:
        """Returns once this shard asks for a rollback (see ``ShardCore.failed``)."""
        await self.core.failed()

    @ray.method(concurrency_group=HEALTH_GROUP)
    async def health(self) -> tuple[str | None, float, str | None]:
        """``(failure, seconds its event loop has been blocked, in what)``: answered on the actor's own
        health thread, so a shard whose loop waits in a slow sink call is not taken for dead."""
        return self.core.health()

    async def until_quiet(self, timeout: float) -> bool:
        """True once this shard has nothing to do, False after ``timeout`` (see ``ShardCore.until_quiet``)."""
        return await self.core.until_quiet(timeout)

    def status(self) -> ShardStatus:
        status = self.core.status()
        status.node = self.node
        return status

    def get_state(self, typename: str, id: str) -> dict:
        return self.core.get_state(typename, id)

    def instance_count(self) -> dict[str, int]:
        return self.core.instance_count()


class _Unloaded:
    """The core of a shard that could not load the application's code: every call raises why, so the
    coordinator's first call (``ready``) reports it instead of a dead actor with a Ray traceback."""

    def __init__(self, error: UserCodeError) -> None:
        self.error = error

    def __getattr__(self, name: str) -> Any:
        raise self.error


def shard_actor_class():
    """The Ray actor class of a shard (``health`` in its own concurrency group)."""
    return ray.remote(concurrency_groups={HEALTH_GROUP: 1})(ShardActor)  # type: ignore[call-overload]  # Ray's stubs lack it
