"""A minimal exactly-once file egress for the driver-kill chaos test: one file per (partition, epoch),
written to a temporary name and renamed, so publishing an epoch twice leaves one copy."""

from __future__ import annotations

import json
import os

from rayfun.io import Sink, SinkPartition


class _Partition(SinkPartition):
    def __init__(self, root: str, index: int) -> None:
        self.root, self.index = root, index

    def write_batch(self, records, epoch: int) -> None:
        os.makedirs(self.root, exist_ok=True)
        final = os.path.join(self.root, f"p{self.index}-e{epoch}.json")
        tmp = f"{final}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump([r.as_string() for r in records], f)
        os.replace(tmp, final)


class DirSink(Sink):
    def __init__(self, id: str, root: str) -> None:
        self.id, self.root = id, root

    def build_partition(self, index: int, count: int) -> SinkPartition:
        return _Partition(self.root, index)


def read_all(root: str) -> list[str]:
    out: list[str] = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        if name.endswith(".json"):
            with open(os.path.join(root, name)) as f:
                out.extend(json.load(f))
    return out
