"""The driver program of the cluster tests: ``python -m tests.cluster.driver SPEC_JSON`` with ``RAY_ADDRESS``
set to the cluster. It runs the chaos campaign's seeded workload (``tests.chaos.campaign.Workload``: command
trees that message each other in cycles, delayed and cancelled messages, expiring state, uniquely labelled
egress) from a ``MemorySource``, with checkpoints in ``SPEC["work"]/cp`` and the exactly-once file egress
``DirSink`` in ``SPEC["work"]/egress``, its shards spread over the nodes; resumes from what the checkpoint
directory holds. While it runs it writes ``status.json`` (the coordinator's info, the actor ids of the
shards, coordinator and collector, and the node this driver is on) every 0.2 s; once idle it takes a last
checkpoint (publishing the last epoch), writes every instance's state to ``state.json`` and stops."""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import ray

import rayfun
from rayfun.connectors.memory import MemorySource
from tests.chaos.campaign import EGRESS, EMBEDDED, TALLY, Workload, build_functions, commands_type
from tests.chaos.dir_sink import DirSink
from tests.chaos.workload import let_scratch_expire

NAMESPACE = "rayfun-cluster"


def workload(spec: dict) -> Workload:
    return Workload(spec["seed"], (EMBEDDED,), spec["instances"], spec["roots"], spec["spread_ms"])


def write_json(path: str, value) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def main(spec: dict) -> None:
    work = spec["work"]
    ray.init(address=os.environ["RAY_ADDRESS"], namespace=NAMESPACE, log_to_driver=False)
    node = ray.get_runtime_context().get_node_id()
    records = workload(spec).records
    source = MemorySource(
        records, partitions=spec["shards"], id="cluster/commands", batch_size=50, value_type=commands_type()
    )
    started = time.monotonic()
    app = rayfun.start(
        build_functions(),
        shards=spec["shards"],
        ingresses=[source],
        egresses=[DirSink(EGRESS, os.path.join(work, "egress"))],
        checkpoint_dir=os.path.join(work, "cp"),
        checkpoint_interval=spec["interval"],
        # rayfun's default placement: shards spread over the nodes, the standby on the node with the fewest
        name=f"cluster-{os.getpid()}",
    )
    first = app.info()
    status_path = os.path.join(work, f"status-{os.getpid()}.json")
    done = threading.Event()

    def report() -> None:
        while not done.wait(0.2):
            try:
                shards = ray.get(app._coordinator.shard_handles.remote(), timeout=10)
                write_json(
                    status_path,
                    {
                        "pid": os.getpid(),
                        "driver_node": node,
                        "started_s": time.monotonic() - started,
                        "first_info": first,
                        "info": app.info(),
                        "shards": [s._actor_id.hex() for s in shards],
                        "coordinator": app._coordinator._actor_id.hex(),
                        "collector": app._collector._actor_id.hex(),
                    },
                )
            except Exception as exc:  # a recovery under way, a node going: report again
                print(f"status: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr, flush=True)

    reporter = threading.Thread(target=report, daemon=True, name="status")
    reporter.start()
    try:
        app.wait(timeout=spec["wait_s"])
        let_scratch_expire()
        app.checkpoint()  # publishes the last epoch's egress
        state = {str(i): app.state(EMBEDDED, str(i), wait=False) for i in range(spec["instances"])}
        tally = {str(i): app.state(TALLY, str(i), wait=False) for i in range(spec["instances"])}
        done.set()
        reporter.join(timeout=15)
        write_json(os.path.join(work, "state.json"), {"state": state, "tally": tally, "info": app.info()})
    finally:
        done.set()
        app.stop()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
