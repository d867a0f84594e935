"""Stand-ins for what a shard's stages reach: the ``ShardServices`` protocol, peers, sources and sinks."""

from __future__ import annotations

import asyncio
from typing import Any

from rayfun.io import DeliverySemantic, Sink, SinkPartition, Source, SourcePartition


class FakeServices:
    """``ShardServices`` that records what a stage asked for."""

    def __init__(self, now_ms: int = 1_000) -> None:
        self.clock = now_ms
        self.dead_letters: list[tuple[str, dict]] = []
        self.failures: list[str] = []
        self.tasks: list[asyncio.Task] = []
        self.wakes = 0

    def dead_letter(self, reason: str, **fields: Any) -> None:
        self.dead_letters.append((reason, fields))

    def fail(self, reason: str) -> bool:
        self.failures.append(reason)
        return len(self.failures) == 1

    def track_task(self, task: asyncio.Task) -> None:
        self.tasks.append(task)

    def wake(self) -> None:
        self.wakes += 1

    def now_ms(self) -> int:
        return self.clock


class Calls:
    """A peer's remote method: records each ``.remote(...)`` and returns a future the test resolves."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.replies: list[asyncio.Future] = []

    def remote(self, *args):
        self.calls.append(args)
        reply = asyncio.get_running_loop().create_future()
        self.replies.append(reply)
        return reply


class Peer:
    def __init__(self) -> None:
        self.deliver = Calls()


class ListPartition(SourcePartition):
    """Returns the batches it was given, one per poll, then None (exhausted)."""

    def __init__(self, batches: list[list]) -> None:
        self.batches = list(batches)
        self.position = 0
        self.closed = False

    def next_batch(self):
        if not self.batches:
            return None
        batch = self.batches.pop(0)
        self.position += len(batch)
        return batch

    def snapshot(self):
        return self.position

    def close(self) -> None:
        self.closed = True


class ListSource(Source):
    def __init__(self, id: str, batches: dict[str, list[list]]) -> None:
        self.id = id
        self.batches = batches
        self.opened: list[tuple[str, Any]] = []

    def partitions(self):
        return list(self.batches)

    def build_partition(self, partition: str, resume_state):
        self.opened.append((partition, resume_state))
        return ListPartition(self.batches[partition])


class RecordingPartition(SinkPartition):
    def __init__(self, sink: RecordingSink, index: int) -> None:
        self.sink, self.index = sink, index

    def write_batch(self, records, epoch: int) -> None:
        if self.sink.error is not None:
            raise self.sink.error
        self.sink.written.append((self.index, epoch, [(r.typename, r.payload) for r in records]))

    def close(self) -> None:
        self.sink.closed.append(self.index)


class RecordingSink(Sink):
    """Records every ``write_batch`` as ``(partition index, epoch, [(egress id, payload)])``."""

    def __init__(self, id: str, delivery: str = DeliverySemantic.EXACTLY_ONCE) -> None:
        self.id = id
        self.delivery = delivery
        self.written: list[tuple[int, int, list]] = []
        self.closed: list[int] = []
        self.error: Exception | None = None

    def build_partition(self, index: int, count: int) -> SinkPartition:
        return RecordingPartition(self, index)
