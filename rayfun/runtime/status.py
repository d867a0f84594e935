"""What a shard reports about itself (``ShardActor.status``): the counters the coordinator reads to tell
whether the application is idle and whether a shard has failed, plus figures for people (``app.metrics()``).

It sits between the shard and the coordinator so that neither reads the other's internals, and so that idle
detection can be tested on hand-made statuses without starting a shard.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DRIVER", "ShardStatus"]

DRIVER = -1  # channel id of messages sent by the driver (app.send)


@dataclass
class ShardStatus:
    """One shard's counters at one moment. Message counts are per channel and per generation: a rollback
    (a new generation) starts them afresh, which is why ``generation`` comes with them."""

    index: int
    pid: int
    backlog: int  # every message accepted and not yet done (queued, parked behind backpressure)
    in_progress: int  # invocations running (a remote function's batch in flight counts)
    sent: list[int]  # messages sent to each peer shard in this generation, by destination index
    received: dict[int, int]  # messages received per channel in this generation: peer index, or DRIVER
    early: int  # batches that arrived ahead of their turn on a channel and wait for the gap to close
    outstanding: int  # batches sent to peers and not yet acknowledged
    sources_busy: bool  # a source partition has data to read (not exhausted and not idle)
    sources_exhausted: bool  # every source partition has reached its end
    timers: int  # delayed messages pending
    failure: str | None  # why the shard asks for a rollback; None while it is well
    remote_requests: int
    remote_failures: int
    generation: int
    epoch: int  # the newest checkpoint whose cut the shard passed (records emitted now belong to epoch + 1)
    cpu_s: float  # the process's CPU time: a busy machine moves it less than wall time
    taken_at: float = 0.0  # when the shard read these counters (its wall clock, time.time()): a rate computed
    # from these stamps is exact, where the time a reply reached its reader lags by the reply's queueing
    counters: dict[str, Any] = field(default_factory=dict)  # processed, ingested, egress, snapshot times, ...
    node: str = ""  # the Ray node the shard runs on (its id, hex)
    functions: dict[str, dict[str, Any]] = field(default_factory=dict)  # per function type (runtime/metrics.py)
    function_backlog: dict[str, int] = field(default_factory=dict)  # messages a remote function type holds

    @property
    def processed(self) -> int:
        """Messages processed so far in this shard's life (idle detection watches it move)."""
        return self.counters.get("processed", 0)

    def as_dict(self) -> dict[str, Any]:
        """The flat dict ``app.metrics()`` has always returned (same keys, same order): the counters beside
        the other fields."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "counters"}
        out["sent"] = list(self.sent)
        out["received"] = dict(self.received)
        out.update(self.counters)
        return out
