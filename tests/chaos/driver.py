"""A driver program for the driver/coordinator-kill chaos test: runs the seeded workload with checkpoints
and a file egress, resuming from whatever checkpoint the directory holds; on success writes the final
state of every instance to ``<work>/state.json``. Run as ``python -m tests.chaos.driver ADDRESS WORK SEED``."""

from __future__ import annotations

import json
import os
import sys

import ray

import rayfun
from rayfun.connectors.memory import MemorySource
from tests.chaos.dir_sink import DirSink
from tests.chaos.workload import EGRESS, FN, Commands, Generator, build_functions


def main(address: str, work: str, seed: int, instances: int, messages: int) -> None:
    ray.init(address=address, log_to_driver=False, namespace="rayfun-chaos")
    gen = Generator(seed, instances=instances, messages=messages)
    source = MemorySource(gen.records, partitions=3, id="chaos/commands", batch_size=50, value_type=Commands)
    app = rayfun.start(
        build_functions(),
        shards=3,
        ingresses=[source],
        egresses=[DirSink(EGRESS, f"{work}/egress")],
        checkpoint_dir=f"{work}/cp",
        checkpoint_interval=0.3,
        name=f"chaos-{os.getpid()}",
    )
    with open(f"{work}/coordinator-{os.getpid()}", "w") as f:
        f.write(f"rayfun:chaos-{os.getpid()}/coordinator")
    app.wait(timeout=300)
    app.checkpoint()  # publish the last epoch
    state = {str(i): app.state(FN, str(i), wait=False) for i in range(instances)}
    with open(f"{work}/state.json.tmp", "w") as f:
        json.dump(state, f)
    os.replace(f"{work}/state.json.tmp", f"{work}/state.json")
    app.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
