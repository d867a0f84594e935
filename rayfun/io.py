"""The contracts between the runtime and the outside world: sources (ingresses) and sinks (egresses).

Connectors (``rayfun.connectors``: memory, Kafka, files) are built only on these classes, so a user can
write their own the same way.

Sources are *partitioned* and *replayable*: each partition reports its position as plain picklable state
(``snapshot()``), the runtime stores that position in every checkpoint, and after a failure it rebuilds
the partition from that state (``build_partition(name, resume_state)``). That is what makes ingestion
exactly-once. Partitions run inside the shard actors, so reading, routing and processing share a process.

Sinks publish what functions emit. A sink partition lives in each shard. In exactly-once mode it is handed
the records of an epoch only after the checkpoint that covers them is complete, and may be handed the same
epoch again after a crash, so ``write_batch`` must be idempotent per ``(partition, epoch)``.

Two optional hooks exist for connectors that own a server (the playground's HTTP ingress and egress): a
source or sink is ``start``-ed by the coordinator before any shard is built (so what it makes, e.g. a Ray
actor handle, travels with it into the shards) and ``stop``-ped when the application stops; a source
partition hears ``checkpoint_complete(position)`` once a checkpoint that covers its records up to
``position`` is durable (so it can acknowledge them to the outside). All default to doing nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from .messages import EgressMessage, Message

__all__ = [
    "DEAD_LETTER_EGRESS",
    "AppContext",
    "DeadLetter",
    "DeliverySemantic",
    "Sink",
    "SinkPartition",
    "Source",
    "SourcePartition",
    "SourceRow",
    "SourceRows",
]

#: the egress that receives what could not be processed (malformed records, failing functions, ...).
DEAD_LETTER_EGRESS = "rayfun/dead-letters"


class DeadLetter:
    """An input that cannot become a message (e.g. a Kafka record without a key), with the reason why.

    A source partition may return these among its messages; the runtime counts them, logs one clear line
    and publishes them to the ``rayfun/dead-letters`` egress, so nothing is silently dropped.
    """

    __slots__ = ("payload", "reason", "source")

    def __init__(self, reason: str, source: str, payload: bytes | None = None):
        self.reason = reason
        self.source = source
        self.payload = payload

    def __repr__(self) -> str:
        return f"DeadLetter({self.source}: {self.reason})"


#: a runtime row as a source makes it: (target typename, target id, caller (None: from outside), value
#: typename, payload) (the payload as in rayfun.types: decoded for built-in types, bytes otherwise)
SourceRow: TypeAlias = tuple[str, str, None, str, Any]
#: what ``SourcePartition.next_rows`` returns: rows, and DeadLetters for records that cannot become one
SourceRows: TypeAlias = list[SourceRow | DeadLetter]


@dataclass(frozen=True)
class AppContext:
    """What a source or sink learns about its application when it starts (``Source.start``, ``Sink.start``)."""

    #: the application's name (e.g. to name the actors a connector starts)
    name: str
    #: whether checkpoints are taken: without them ``checkpoint_complete`` is never called
    checkpoints: bool
    #: ``typename in function_types``: whether a function type is bound (embedded or by an endpoint)
    function_types: Container[str]


class SourcePartition(ABC):
    """One partition of an ingress: an ordered stream of messages with a resumable position."""

    @abstractmethod
    def next_batch(self) -> list[Message | DeadLetter] | None:
        """Messages available now, in order (``[]`` when none are ready yet); None once exhausted for good."""

    #: Optional fast path: a partition may define ``next_rows()`` instead of relying on ``next_batch``,
    #: returning rows ``(target typename, target id, None, value typename, payload)`` (``SourceRow``),
    #: DeadLetters, or None when exhausted. It skips one Message object per record, which matters at
    #: hundreds of thousands of records/s. A subclass defines it as a method ``next_rows(self)``. The
    #: runtime checks each row's target where it routes it (a bound typename; a valid id, once per id) and
    #: makes a dead letter of a row that fails; the payload must already be what its value type holds.
    next_rows: Callable[[], SourceRows | None] | None = None

    @abstractmethod
    def snapshot(self) -> Any:
        """The position *after* the last message returned by ``next_batch`` (picklable, small)."""

    def lag(self) -> int | None:
        """Records the partition has not read yet, where the source knows it (Kafka: the high watermark
        minus the position), else None. Read every few seconds for metrics: keep it cheap (cached)."""
        return None

    def checkpoint_complete(self, position: Any) -> None:
        """A complete checkpoint holds this partition at ``position`` (a value ``snapshot()`` returned): the
        records before it are durable and will never be replayed. Called in the shard, after the checkpoint's
        manifest is written; a no-op by default (a replayable source needs nothing, the checkpoint is the
        truth). A source that must answer its producers (the playground's HTTP ingress) acknowledges here."""

    def close(self) -> None:
        """Release connections; the partition is not used after this."""


class Source(ABC):
    """An ingress: a set of named partitions, each rebuilt from its stored position on recovery."""

    #: the ingress id (a typename such as ``example/names``); it names the source in checkpoints.
    id: str = "rayfun/source"

    @abstractmethod
    def partitions(self) -> Sequence[str]:
        """Names of all partitions (stable across restarts)."""

    @abstractmethod
    def build_partition(self, partition: str, resume_state: Any | None) -> SourcePartition:
        """Open one partition at ``resume_state`` (None: from the configured start position)."""

    def start(self, app: AppContext) -> None:
        """Called once in the coordinator before any partition is built, e.g. to start a server the
        partitions read from (what it sets on ``self`` is pickled into the shards). No-op by default."""

    def stop(self) -> None:
        """Called once in the coordinator when the application stops (after the shards). No-op by default."""


class DeliverySemantic:
    EXACTLY_ONCE = "exactly-once"
    AT_LEAST_ONCE = "at-least-once"


class SinkPartition(ABC):
    """The part of an egress that lives in one shard."""

    @abstractmethod
    def write_batch(self, records: list[EgressMessage], epoch: int) -> None:
        """Publish ``records`` of ``epoch``; idempotent per epoch in exactly-once mode (see module doc)."""

    def close(self) -> None:
        """Flush and release connections."""


class Sink(ABC):
    """An egress, addressed by functions through its id (``context.send_egress(...)`` to that typename)."""

    #: the egress id (a typename such as ``example/greetings``).
    id: str = "rayfun/sink"
    #: when records become visible: after the checkpoint of their epoch, or at once.
    delivery: str = DeliverySemantic.EXACTLY_ONCE

    @abstractmethod
    def build_partition(self, index: int, count: int) -> SinkPartition:
        """The partition for shard ``index`` of ``count``."""

    def start(self, app: AppContext) -> None:
        """Called once in the coordinator before any partition is built (see ``Source.start``). No-op by default."""

    def stop(self) -> None:
        """Called once in the coordinator when the application stops (after the shards). No-op by default."""
